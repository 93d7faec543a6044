// The exporter's kernel state in bpffs: pinned maps and links, so that a restart or an
// upgrade of the daemon keeps counting without a gap and keeps every counter.
//
//   ROOT/STATE_ID/maps/MAP          the maps of PINNED_MAPS (counters, per-socket state, ...)
//   ROOT/STATE_ID/links/GEN/PROGRAM the links of the copy of the programs that counts
//
// STATE_ID names everything the maps' layout depends on (STATE_VERSION and the settings that
// size them), so a daemon only ever takes over maps it can read. Each daemon loads its own copy
// of the programs with a fresh generation, attached while inactive; activate() then switches the
// `control` map to it in one write and the previous copy's links are removed. A stopped daemon
// leaves its programs counting in the kernel; `tcptracer-exporter unpin` removes them.
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, rmdirSync, rmSync, statfsSync } from 'node:fs'
import path from 'node:path'
import type { Binding, RecordLayout } from './binding.js'

/**
 * Where the systemd unit pins the kernel state (`--bpf.pin-path`), and where `unpin` looks by default.
 * The daemon pins only when asked: a plain start detaches everything at exit.
 */
export const DEFAULT_PIN_PATH = '/sys/fs/bpf/tcptracer-exporter'

/** Where the kernel state lives and where it came from, for the startup log, /readyz and the metrics. */
export interface KernelState {
  /** restored: taken over from a previous run; new: pinned by this run; unpinned: dies with this run */
  origin: 'restored' | 'new' | 'unpinned'
  /** the state directory in bpffs, '' when unpinned */
  path: string
  /** why the state is not pinned */
  reason?: string
}

/** The reason an exporter started without `--bpf.pin-path` runs unpinned. */
export const NOT_ASKED_TO_PIN =
  'not asked to pin (no --bpf.pin-path): the programs detach when the exporter exits'

/** What becomes of the kernel state when the exporter exits, in words for the log and /readyz. */
export function onExit(state: KernelState): string {
  return state.origin === 'unpinned'
    ? 'detach: the programs and counters go with this process'
    : `keep counting: the programs stay attached in ${state.path} for the next start (tcptracer-exporter unpin removes them)`
}

/**
 * Whether `dir` holds an exporter's pinned state (a state directory `v<N>-<id>`): a service pinned
 * there, so its programs may be attached and counting beside an unpinned run's.
 */
export function hasPinnedState(dir: string): boolean {
  try {
    return readdirSync(dir).some((e) => /^v\d+-[0-9a-f]+$/.test(e))
  } catch {
    return false
  }
}
const BPFFS_MAGIC = 0xcafe4a11

/** What the maps' layout and meaning depend on: two daemons share state only when these agree. */
interface StateShape {
  maxConnections: number
  maxKernelLabelSets: number
  bucketsSeconds: readonly number[]
}

/**
 * The records a state is made of, in the form the state id has digested since pinned states were first
 * written (the addon's layout object of then: struct event's offsets at the top, the other structs
 * after), so that a build whose records are unchanged takes over the state of an earlier one however
 * the addon happens to present them.
 */
function statedLayout(L: RecordLayout): unknown {
  const e = L.event
  const k = L.aggKey
  const v = L.aggValue
  const t = L.tupleKey
  const s = L.seedValue
  return {
    size: e.size,
    saddr: e.saddr,
    daddr: e.daddr,
    ts_ns: e.ts_ns,
    duration_ns: e.duration_ns,
    bytes_sent: e.bytes_sent,
    bytes_received: e.bytes_received,
    cgroup_id: e.cgroup_id,
    pid: e.pid,
    netns: e.netns,
    sport: e.sport,
    dport: e.dport,
    type: e.type,
    ip: e.ip,
    reason: e.reason,
    direction: e.direction,
    comm: e.comm,
    commLen: L.commLen,
    listenerKeySize: L.listenerKey.size,
    ownerSize: L.owner.size,
    listenerValueSize: L.listenerValue.size,
    aggKey: {
      size: k.size,
      cgroup_id: k.cgroup_id,
      netns: k.netns,
      pid: k.pid,
      port: k.port,
      ip: k.ip,
      direction: k.direction,
      flags: k.flags,
      comm: k.comm,
    },
    aggValue: {
      size: v.size,
      opened: v.opened,
      closed: v.closed,
      failed: v.failed,
      sent_bytes: v.sent_bytes,
      received_bytes: v.received_bytes,
      duration_sum_ns: v.duration_sum_ns,
      seeded_closed: v.seeded_closed,
      last_ns: v.last_ns,
      buckets: v.buckets,
      maxBuckets: v.maxBuckets,
      failReasons: v.failReasons,
    },
    tupleKey: {
      size: t.size,
      saddr: t.saddr,
      daddr: t.daddr,
      netns: t.netns,
      sport: t.sport,
      dport: t.dport,
      family: t.family,
    },
    seedValue: { size: s.size, owner: s.owner, port: s.port, direction: s.direction },
  }
}

/** `v1-3f2a...`: the state version and a digest of the layout and the sizing settings. */
export function stateId(binding: Pick<Binding, 'layout' | 'constants'>, shape: StateShape): string {
  const digest = createHash('sha256')
    .update(
      JSON.stringify({
        layout: statedLayout(binding.layout),
        stats: binding.constants.STAT_MAX,
        maxConnections: shape.maxConnections,
        maxKernelLabelSets: shape.maxKernelLabelSets,
        buckets: shape.bucketsSeconds,
      }),
    )
    .digest('hex')
  return `v${binding.constants.STATE_VERSION}-${digest.slice(0, 16)}`
}

/** Where this run keeps its state, and what it found there. */
export interface PinPlan {
  root: string
  /** ROOT/STATE_ID */
  dir: string
  mapsDir: string
  /** this run's copy of the programs */
  generation: bigint
  /** a previous run left state with this id: take it over */
  adopting: boolean
  /** state directories of other ids (other settings or versions), replaced once this run counts */
  stale: string[]
}

function isBpffs(p: string): boolean {
  try {
    return statfsSync(p).type === BPFFS_MAGIC
  } catch {
    return false
  }
}

/** p, or its closest ancestor that exists. */
function nearestExisting(p: string): string {
  let probe = p
  while (!existsSync(probe) && probe !== path.dirname(probe)) probe = path.dirname(probe)
  return probe
}

function listDir(p: string): string[] {
  try {
    return readdirSync(p)
  } catch {
    return []
  }
}

/** A random, non-zero generation (0 is the unpinned tracer's). */
export function newGeneration(): bigint {
  let g = 0n
  while (g === 0n) g = randomBytes(8).readBigUInt64LE(0)
  return g
}

/**
 * Decide where the state goes and whether there is state to take over. Returns a reason string
 * when pinning is not possible here (no bpffs at root, no permission): the caller runs unpinned.
 */
export function planPinnedState(root: string, id: string): PinPlan | { unavailable: string } {
  const resolved = path.resolve(root)
  if (!isBpffs(nearestExisting(resolved))) {
    return {
      unavailable: `${resolved} is not on a BPF filesystem (mount one: mount -t bpf bpf /sys/fs/bpf, or set --bpf.pin-path)`,
    }
  }
  try {
    mkdirSync(resolved, { recursive: true, mode: 0o700 })
  } catch (e) {
    return { unavailable: `cannot create ${resolved}: ${(e as Error).message}` }
  }
  const dir = path.join(resolved, id)
  const stale = listDir(resolved)
    .filter((name) => name !== id)
    .map((name) => path.join(resolved, name))
  const adopting = listDir(path.join(dir, 'links')).some(
    (g) => listDir(path.join(dir, 'links', g)).length > 0,
  )
  if (!adopting) rmSync(dir, { recursive: true, force: true })
  const mapsDir = path.join(dir, 'maps')
  try {
    mkdirSync(mapsDir, { recursive: true, mode: 0o700 })
  } catch (e) {
    return { unavailable: `cannot create ${mapsDir}: ${(e as Error).message}` }
  }
  return { root: resolved, dir, mapsDir, generation: newGeneration(), adopting, stale }
}

/** The link directory of a generation. */
export function linksDir(plan: Pick<PinPlan, 'dir'>, generation: bigint): string {
  return path.join(plan.dir, 'links', generation.toString(16).padStart(16, '0'))
}

/** Whether the links of this generation are pinned: its programs have been counting all along. */
export function linksPinned(plan: Pick<PinPlan, 'dir'>, generation: bigint): boolean {
  return listDir(linksDir(plan, generation)).length > 0
}

/** Forget a state directory: its programs detach once no process holds them. */
export function discardState(dir: string): void {
  rmSync(dir, { recursive: true, force: true })
}

/**
 * The tracer's programs are attached (inactive): pin their links, make them the copy that
 * counts, then remove every other copy's links and the stale state directories.
 */
export function commitPinnedState(
  plan: PinPlan,
  tracer: { generation: bigint; pinLinks(dir: string): void; activate(): void },
): void {
  const mine = linksDir(plan, tracer.generation)
  mkdirSync(mine, { recursive: true, mode: 0o700 })
  tracer.pinLinks(mine)
  tracer.activate()
  for (const g of listDir(path.join(plan.dir, 'links'))) {
    const d = path.join(plan.dir, 'links', g)
    if (d !== mine) rmSync(d, { recursive: true, force: true })
  }
  for (const d of plan.stale) discardState(d)
}

/** What `unpinAll` did. */
export interface Unpinned {
  /** the state directories removed */
  removed: string[]
  /**
   * Set when the pin directory itself stays, empty: it is a mount point (the host's directory
   * mounted into a container) or its parent is not writable here. It holds nothing then.
   */
  kept?: string
}

/**
 * `tcptracer-exporter unpin`: remove all pinned state under root, then root itself where it can be
 * removed. Refuses a path outside bpffs, so a mistyped flag cannot delete ordinary files.
 */
export function unpinAll(root: string): Unpinned {
  const resolved = path.resolve(root)
  if (!existsSync(resolved)) return { removed: [] }
  if (!isBpffs(resolved)) throw new Error(`${resolved} is not on a BPF filesystem: refusing to remove it`)
  const found = readdirSync(resolved).map((name) => path.join(resolved, name))
  for (const d of found) rmSync(d, { recursive: true, force: true })
  try {
    rmdirSync(resolved)
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    if (code !== 'EBUSY' && code !== 'EACCES' && code !== 'EPERM') throw e
    const why = code === 'EBUSY' ? 'a mount point' : 'in a directory this user cannot write'
    return { removed: found, kept: `${resolved} stays, empty (${why}): it holds nothing` }
  }
  return { removed: found }
}
