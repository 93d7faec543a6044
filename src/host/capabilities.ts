// Least privilege at runtime: which capabilities the daemon keeps once its BPF programs are attached
// and the sockets that predate it are seeded, and reading what every thread holds.
//
// Measured on Linux 6.18 (docs/reliability.md, "Least privilege at runtime"): after startup nothing the
// daemon does needs a capability except reading /proc/PID/ns/net of other processes to name container
// network namespaces at scrape time, which needs CAP_SYS_PTRACE. Map reads, updates and deletes through
// the file descriptors it already holds, program info, the ring buffer, /run/netns, /proc/PID/cgroup,
// the cgroup tree and detaching need none. Kernels 5.8 to 5.18 with kernel.unprivileged_bpf_disabled set
// are the exception: there every bpf() command needs CAP_BPF (or CAP_SYS_ADMIN), so it is kept where a
// probe finds that gate.
import { readFileSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'

/** Linux capability names by number (include/uapi/linux/capability.h), lower case as libcap prints them. */
export const CAPABILITY_NAMES: readonly string[] = [
  'cap_chown',
  'cap_dac_override',
  'cap_dac_read_search',
  'cap_fowner',
  'cap_fsetid',
  'cap_kill',
  'cap_setgid',
  'cap_setuid',
  'cap_setpcap',
  'cap_linux_immutable',
  'cap_net_bind_service',
  'cap_net_broadcast',
  'cap_net_admin',
  'cap_net_raw',
  'cap_ipc_lock',
  'cap_ipc_owner',
  'cap_sys_module',
  'cap_sys_rawio',
  'cap_sys_chroot',
  'cap_sys_ptrace',
  'cap_sys_pacct',
  'cap_sys_admin',
  'cap_sys_boot',
  'cap_sys_nice',
  'cap_sys_resource',
  'cap_sys_time',
  'cap_sys_tty_config',
  'cap_mknod',
  'cap_lease',
  'cap_audit_write',
  'cap_audit_control',
  'cap_setfcap',
  'cap_mac_override',
  'cap_mac_admin',
  'cap_syslog',
  'cap_wake_alarm',
  'cap_block_suspend',
  'cap_audit_read',
  'cap_perfmon',
  'cap_bpf',
  'cap_checkpoint_restore',
]

export const CAP_SYS_PTRACE = 19
export const CAP_SYS_ADMIN = 21
export const CAP_BPF = 39

export function capBit(cap: number): bigint {
  return 1n << BigInt(cap)
}

/** The names of the capabilities in a mask, in number order; unknown bits as `cap_<n>`. */
export function capabilityNames(mask: bigint): string[] {
  const out: string[] = []
  for (let i = 0; i < 64; i++) {
    if (mask & capBit(i)) out.push(CAPABILITY_NAMES[i] ?? `cap_${i}`)
  }
  return out
}

/** A capability's number from `cap_sys_ptrace`, `CAP_SYS_PTRACE` or `sys_ptrace`; undefined if unknown. */
export function capabilityNumber(name: string): number | undefined {
  const n = name.trim().toLowerCase()
  const i = CAPABILITY_NAMES.indexOf(n.startsWith('cap_') ? n : `cap_${n}`)
  return i < 0 ? undefined : i
}

/**
 * What `--capabilities.keep` asks for: `auto` (what the running daemon uses), `all` (no drop), or an
 * explicit list (`none` is the empty list).
 */
export type KeepSpec = { kind: 'auto' } | { kind: 'all' } | { kind: 'list'; mask: bigint }

export const KEEP_FLAG = '--capabilities.keep'

export function formatKeep(spec: KeepSpec): string {
  if (spec.kind !== 'list') return spec.kind
  return spec.mask === 0n ? 'none' : capabilityNames(spec.mask).join(',')
}

/** Why each capability is kept, for the log. */
interface KeepPlan {
  /** the capabilities to keep (only those held are kept) */
  mask: bigint
  reasons: Record<string, string>
}

/**
 * The set to keep. `held` is the permitted set, `bpfGate` whether this kernel refuses bpf() commands on
 * open file descriptors without CAP_BPF/CAP_SYS_ADMIN (then one of them is kept whatever the list says,
 * or the exporter could not read its maps).
 */
export function keepPlan(spec: Exclude<KeepSpec, { kind: 'all' }>, held: bigint, bpfGate: boolean): KeepPlan {
  const reasons: Record<string, string> = {}
  let mask = 0n
  const add = (cap: number, why: string): void => {
    if (!(held & capBit(cap))) return
    mask |= capBit(cap)
    reasons[CAPABILITY_NAMES[cap]!] = why
  }
  if (spec.kind === 'auto') {
    add(CAP_SYS_PTRACE, 'read /proc/PID/ns/net of other processes: container network namespace names')
  } else {
    for (let i = 0; i < 64; i++) if (spec.mask & capBit(i)) add(i, `${KEEP_FLAG}`)
  }
  if (bpfGate && !(mask & (capBit(CAP_BPF) | capBit(CAP_SYS_ADMIN)))) {
    const why =
      'this kernel refuses bpf() on open maps without it (kernel.unprivileged_bpf_disabled, before 5.19)'
    if (held & capBit(CAP_BPF)) add(CAP_BPF, why)
    else add(CAP_SYS_ADMIN, why)
  }
  return { mask, reasons }
}

/** One thread's capability sets, from /proc/PID/task/TID/status. */
export interface ThreadCapabilities {
  tid: number
  comm: string
  inheritable: bigint
  permitted: bigint
  effective: bigint
  bounding: bigint
  ambient: bigint
  noNewPrivs: boolean
}

/** Parse the capability lines of a /proc status file. */
export function parseStatusCapabilities(text: string): Omit<ThreadCapabilities, 'tid'> {
  const field = (k: string): string => new RegExp(`^${k}:\\s*(\\S*)`, 'm').exec(text)?.[1] ?? ''
  const hex = (k: string): bigint => {
    const v = field(k)
    if (!/^[0-9a-f]+$/i.test(v)) throw new Error(`no ${k} line in the status file`)
    return BigInt(`0x${v}`)
  }
  return {
    comm: field('Name'),
    inheritable: hex('CapInh'),
    permitted: hex('CapPrm'),
    effective: hex('CapEff'),
    bounding: hex('CapBnd'),
    ambient: hex('CapAmb'),
    noNewPrivs: field('NoNewPrivs') === '1',
  }
}

/** Every thread of a process and its capability sets; threads that end while being read are left out. */
export async function threadCapabilities(pid: number | 'self' = 'self'): Promise<ThreadCapabilities[]> {
  const dir = path.join('/proc', String(pid), 'task')
  const tids = (await readdir(dir)).filter((t) => /^\d+$/.test(t))
  const out: ThreadCapabilities[] = []
  for (const tid of tids) {
    let text: string
    try {
      text = await readFile(path.join(dir, tid, 'status'), 'utf8')
    } catch {
      continue // it ended
    }
    out.push({ tid: Number(tid), ...parseStatusCapabilities(text) })
  }
  return out.sort((a, b) => a.tid - b.tid)
}

/** What the daemon did at startup, for the log, /readyz and the landing page. */
export interface CapabilityStatus {
  /** the --capabilities.keep value */
  keep: string
  /** false with --capabilities.keep=all */
  dropped: boolean
  /** held by every thread after the drop (effective = permitted) */
  kept: string[]
  /** held before, dropped by every thread */
  removed: string[]
  /** the bounding set was reduced to `kept` too (needs CAP_SETPCAP, which only root has) */
  boundingSetReduced: boolean
}

/** The addon's part (src/kernel/binding.ts), injectable for tests. */
export interface CapabilityBinding {
  dropCapabilities(keep: bigint): { before: bigint; after: bigint; boundingDropped: boolean; threads: number }
  bpfNeedsCapability(): boolean
}

interface DropResult {
  status: CapabilityStatus
  /** why each kept capability is kept */
  reasons: Record<string, string>
  /** threads that dropped (0 when nothing was dropped) */
  threads: number
}

/** The permitted set of this process's main thread. */
export function heldCapabilities(): bigint {
  return parseStatusCapabilities(readFileSync('/proc/self/status', 'utf8')).permitted
}

/**
 * Drop every capability `spec` does not keep, in every thread. `held` is the permitted set before.
 * Throws the addon's BpfError (op "drop capabilities: ...") when a step fails.
 */
export function dropCapabilities(binding: CapabilityBinding, spec: KeepSpec, held: bigint): DropResult {
  if (spec.kind === 'all') {
    const kept = capabilityNames(held)
    return {
      status: { keep: 'all', dropped: false, kept, removed: [], boundingSetReduced: false },
      reasons: {},
      threads: 0,
    }
  }
  const plan = keepPlan(spec, held, binding.bpfNeedsCapability())
  const d = binding.dropCapabilities(plan.mask)
  return {
    status: {
      keep: formatKeep(spec),
      dropped: true,
      kept: capabilityNames(d.after),
      removed: capabilityNames(d.before & ~d.after),
      boundingSetReduced: d.boundingDropped,
    },
    reasons: plan.reasons,
    threads: d.threads,
  }
}
