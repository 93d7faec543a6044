// Discovery of TCP listeners that existed before the daemon started.
//
// The eBPF program learns listener owners when listen() runs; sockets that were already listening when
// we attached are found here by walking procfs, and the result is written into the kernel map keyed by
// {netns inode, local port, address family}. Everything takes the proc root (and cgroup root) as a
// parameter so it can be exercised against fixture trees in unit tests.

import { access, readdir, readFile, readlink, stat } from 'node:fs/promises'
import path from 'node:path'

export const AF_INET = 2
export const AF_INET6 = 10

export interface ListenerOwner {
  /** network namespace inode (from readlink /proc/<pid>/ns/net => "net:[4026531840]") */
  netns: number
  /** local port, host order */
  port: number
  /** AF_INET for /proc/<pid>/net/tcp, AF_INET6 for tcp6 */
  family: typeof AF_INET | typeof AF_INET6
  /** tgid of an owning process */
  pid: number
  /** /proc/<pid>/comm without trailing newline */
  comm: string
  /** inode number of the process's cgroup v2 directory; 0n when it cannot be resolved */
  cgroupId: bigint
}

export interface DiscoverOptions {
  /** default '/proc' */
  procRoot?: string
  /** mount point of the cgroup v2 hierarchy, default '/sys/fs/cgroup' */
  cgroupRoot?: string
}

export interface ProcNetTcpRow {
  localPort: number
  state: number
  inode: number
}

const TCP_LISTEN = 0x0a
/** How many processes are inspected concurrently. */
const PID_CONCURRENCY = 64
/** How many fd links of one process are resolved concurrently. */
const FD_CONCURRENCY = 256

const NS_LINK_RE = /^net:\[(\d+)\]$/
const SOCKET_LINK_RE = /^socket:\[(\d+)\]$/
const SL_RE = /^\d+:$/
const ADDR_PORT_RE = /^[0-9A-Fa-f]+:([0-9A-Fa-f]{1,4})$/
const HEX_RE = /^[0-9A-Fa-f]{1,2}$/
const DEC_RE = /^\d+$/

function parseDecimal(text: string | undefined): number | undefined {
  if (text === undefined || !DEC_RE.test(text)) return undefined
  const n = Number(text)
  return Number.isSafeInteger(n) ? n : undefined
}

/** "net:[4026531840]" -> 4026531840 */
export function parseNsLink(link: string): number | undefined {
  return parseDecimal(NS_LINK_RE.exec(link.trim())?.[1])
}

/** "socket:[12345]" -> 12345 */
export function parseSocketLink(link: string): number | undefined {
  return parseDecimal(SOCKET_LINK_RE.exec(link.trim())?.[1])
}

/**
 * Parses the content of /proc/net/tcp or /proc/net/tcp6. The header and any line that does not look like
 * a socket row are skipped. Columns: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout
 * inode ...; the port after ':' and st are hex, inode is decimal.
 */
export function parseProcNetTcp(text: string): ProcNetTcpRow[] {
  const rows: ProcNetTcpRow[] = []
  for (const line of text.split('\n')) {
    const cols = line.trim().split(/\s+/)
    if (cols.length < 10) continue
    const [sl, local, , st] = cols
    if (sl === undefined || !SL_RE.test(sl)) continue
    const portHex = local === undefined ? undefined : ADDR_PORT_RE.exec(local)?.[1]
    if (portHex === undefined || st === undefined || !HEX_RE.test(st)) continue
    const inode = parseDecimal(cols[9])
    if (inode === undefined) continue
    rows.push({ localPort: parseInt(portHex, 16), state: parseInt(st, 16), inode })
  }
  return rows
}

/**
 * Errors that mean "the machine is in trouble", not "this process is gone or not ours": these propagate,
 * because silently returning an incomplete listener set would be worse than failing loudly.
 */
const SYSTEMIC_ERRORS = new Set(['EMFILE', 'ENFILE', 'ENOMEM'])

/**
 * Per-process reads race with processes exiting (ENOENT, ESRCH, ENXIO, EINVAL on zombies) and with
 * permission checks (EACCES, EPERM for other users' processes when unprivileged). Any such failure means
 * "skip this process / this fd"; it never aborts discovery.
 */
function tolerate(err: unknown): undefined {
  const code = (err as NodeJS.ErrnoException | null)?.code
  if (code !== undefined && SYSTEMIC_ERRORS.has(code)) throw err
  return undefined
}

async function optional<T>(promise: Promise<T>): Promise<T | undefined> {
  try {
    return await promise
  } catch (err) {
    return tolerate(err)
  }
}

async function mapChunked<T, R>(
  items: readonly T[],
  size: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out: R[] = []
  for (let i = 0; i < items.length; i += size) {
    for (const r of await Promise.all(items.slice(i, i + size).map(fn))) out.push(r)
  }
  return out
}

interface ProcSockets {
  pid: number
  netns: number
  sockets: number[]
}

async function readProcSockets(procRoot: string, pid: number): Promise<ProcSockets | undefined> {
  const dir = path.join(procRoot, String(pid))
  const fdDir = path.join(dir, 'fd')
  const [nsLink, fds] = await Promise.all([
    optional(readlink(path.join(dir, 'ns', 'net'))),
    optional(readdir(fdDir)),
  ])
  if (nsLink === undefined || fds === undefined) return undefined
  const netns = parseNsLink(nsLink)
  if (netns === undefined) return undefined
  // An individual fd may be closed between readdir and readlink; that only drops that fd.
  const links = await mapChunked(fds, FD_CONCURRENCY, (fd) => optional(readlink(path.join(fdDir, fd))))
  const sockets: number[] = []
  for (const link of links) {
    const inode = link === undefined ? undefined : parseSocketLink(link)
    if (inode !== undefined) sockets.push(inode)
  }
  return { pid, netns, sockets }
}

interface ListenSocket {
  inode: number
  netns: number
  family: typeof AF_INET | typeof AF_INET6
  port: number
}

/**
 * Reads tcp and tcp6 of one network namespace through the first of its processes that still answers.
 * tcp6 is legitimately absent when IPv6 is disabled; that is told apart from the process exiting between
 * the two reads by checking that its tcp file is still there.
 */
async function readNetnsListeners(
  procRoot: string,
  netns: number,
  pids: readonly number[],
): Promise<ListenSocket[]> {
  for (const pid of pids) {
    const netDir = path.join(procRoot, String(pid), 'net')
    const v4 = await optional(readFile(path.join(netDir, 'tcp'), 'utf8'))
    if (v4 === undefined) continue
    let v6 = await optional(readFile(path.join(netDir, 'tcp6'), 'utf8'))
    if (v6 === undefined) {
      const stillThere = await optional(access(path.join(netDir, 'tcp')).then(() => true))
      if (stillThere !== true) continue
      v6 = ''
    }
    const out: ListenSocket[] = []
    const tables = [
      [AF_INET, v4],
      [AF_INET6, v6],
    ] as const
    for (const [family, text] of tables) {
      for (const row of parseProcNetTcp(text)) {
        if (row.state !== TCP_LISTEN || row.inode === 0) continue
        out.push({ inode: row.inode, netns, family, port: row.localPort })
      }
    }
    return out
  }
  return []
}

interface ProcMeta {
  comm: string
  cgroupId: bigint
}

async function resolveCgroupId(cgroupRoot: string, cgroupText: string): Promise<bigint> {
  const line = cgroupText.split('\n').find((l) => l.startsWith('0::'))
  if (line === undefined) return 0n
  const rel = line.slice(3)
  // A path outside our cgroup namespace shows up as "/../.."; it cannot be resolved under our mount.
  if (!rel.startsWith('/') || rel.split('/').includes('..')) return 0n
  const st = await optional(stat(path.join(cgroupRoot, rel), { bigint: true }))
  return st?.ino ?? 0n
}

async function readProcMeta(
  procRoot: string,
  cgroupRoot: string,
  pid: number,
): Promise<ProcMeta | undefined> {
  const dir = path.join(procRoot, String(pid))
  const [comm, cgroup] = await Promise.all([
    optional(readFile(path.join(dir, 'comm'), 'utf8')),
    optional(readFile(path.join(dir, 'cgroup'), 'utf8')),
  ])
  if (comm === undefined || cgroup === undefined) return undefined
  return { comm: comm.replace(/\n$/, ''), cgroupId: await resolveCgroupId(cgroupRoot, cgroup) }
}

function compareOwners(a: ListenerOwner, b: ListenerOwner): number {
  return a.netns - b.netns || a.family - b.family || a.port - b.port
}

/**
 * Finds every TCP socket in LISTEN state visible through procRoot and attributes it to a process.
 *
 * - Each distinct network namespace's tcp/tcp6 tables are read once, through any one of its processes.
 *   A listening socket belongs to the namespace whose table lists it, whatever the namespace of the
 *   processes holding it.
 * - When several processes hold the same socket (fork after listen, e.g. pre-fork servers) the lowest pid
 *   is chosen: that is normally the parent that created it, and the choice is deterministic.
 * - One owner is emitted per (netns, port, family). When several distinct sockets share that key
 *   (SO_REUSEPORT groups, or the same port bound on different local addresses) the one whose holder has the
 *   lowest pid wins, matching the single entry the kernel map can hold for the key.
 * - Processes that vanish or cannot be read are skipped; a socket whose only holders were skipped is
 *   omitted.
 *
 * Output is sorted by netns, family, port.
 */
export async function discoverListeners(opts: DiscoverOptions = {}): Promise<ListenerOwner[]> {
  const procRoot = opts.procRoot ?? '/proc'
  const cgroupRoot = opts.cgroupRoot ?? '/sys/fs/cgroup'

  const pids = (await readdir(procRoot))
    .filter((name) => DEC_RE.test(name))
    .map(Number)
    .sort((a, b) => a - b)

  const procs = await mapChunked(pids, PID_CONCURRENCY, (pid) => readProcSockets(procRoot, pid))

  // Pids are visited in ascending order, so every list below stays sorted ascending.
  const pidsByNetns = new Map<number, number[]>()
  const holders = new Map<number, number[]>()
  for (const proc of procs) {
    if (proc === undefined) continue
    const inNs = pidsByNetns.get(proc.netns)
    if (inNs === undefined) pidsByNetns.set(proc.netns, [proc.pid])
    else inNs.push(proc.pid)
    for (const inode of proc.sockets) {
      const list = holders.get(inode)
      if (list === undefined) holders.set(inode, [proc.pid])
      else if (list[list.length - 1] !== proc.pid) list.push(proc.pid)
    }
  }

  const perNetns = await mapChunked([...pidsByNetns], PID_CONCURRENCY, ([netns, nsPids]) =>
    readNetnsListeners(procRoot, netns, nsPids),
  )

  // Group listening sockets by map key; collect every pid holding any socket of that key.
  const byKey = new Map<string, { sock: ListenSocket; pids: Set<number> }>()
  for (const sock of perNetns.flat()) {
    const sockHolders = holders.get(sock.inode)
    if (sockHolders === undefined) continue
    const key = `${sock.netns}/${sock.family}/${sock.port}`
    let entry = byKey.get(key)
    if (entry === undefined) {
      entry = { sock, pids: new Set() }
      byKey.set(key, entry)
    }
    for (const pid of sockHolders) entry.pids.add(pid)
  }

  const metaCache = new Map<number, Promise<ProcMeta | undefined>>()
  const meta = (pid: number): Promise<ProcMeta | undefined> => {
    let p = metaCache.get(pid)
    if (p === undefined) {
      p = readProcMeta(procRoot, cgroupRoot, pid)
      metaCache.set(pid, p)
    }
    return p
  }

  const owners = await mapChunked([...byKey.values()], PID_CONCURRENCY, async ({ sock, pids: keyPids }) => {
    // Lowest pid first; fall through to the next holder if that process vanished meanwhile.
    for (const pid of [...keyPids].sort((a, b) => a - b)) {
      const m = await meta(pid)
      if (m === undefined) continue
      const owner: ListenerOwner = {
        netns: sock.netns,
        port: sock.port,
        family: sock.family,
        pid,
        comm: m.comm,
        cgroupId: m.cgroupId,
      }
      return owner
    }
    return undefined
  })

  return owners.filter((o): o is ListenerOwner => o !== undefined).sort(compareOwners)
}
