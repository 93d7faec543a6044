// Discovery of TCP listeners that existed before the daemon started.
//
// The eBPF program learns listener owners when listen() runs; sockets that were already listening when
// we attached are found here by walking procfs, and the result is written into the kernel map keyed by
// {netns inode, local port, address family}. Everything takes the proc root (and cgroup root) as a
// parameter so it can be exercised against fixture trees in unit tests.

import { access, readdir, readFile, readlink, stat } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { AF_INET, AF_INET6, type ListenerOwner } from '../kernel/abi.js'
import { cgroup2Root } from './cgroups.js'

export interface DiscoverOptions {
  /** default '/proc' */
  procRoot?: string
  /** mount point of the cgroup v2 hierarchy, default '/sys/fs/cgroup' */
  cgroupRoot?: string
}

interface ProcNetTcpRow {
  localPort: number
  state: number
  inode: number
  /** addresses as the kernel holds them (network byte order): 4 bytes for tcp, 16 for tcp6 */
  localAddr: Buffer
  remoteAddr: Buffer
  remotePort: number
}

/** A TCP connection open when we looked, and the process holding its socket. */
export interface ConnectionOwner {
  netns: number
  family: typeof AF_INET | typeof AF_INET6
  /** 16 bytes, network byte order; IPv4 in the first 4 */
  saddr: Buffer
  daddr: Buffer
  sport: number
  dport: number
  /** inbound when its local port is a listening port of the same netns and family */
  direction: 'outbound' | 'inbound'
  pid: number
  comm: string
  cgroupId: bigint
}

export interface DiscoveredSockets {
  listeners: ListenerOwner[]
  connections: ConnectionOwner[]
}

const TCP_LISTEN = 0x0a
/** ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING: open, and will pass through CLOSE */
const OPEN_STATES = new Set([0x01, 0x04, 0x05, 0x08, 0x09, 0x0b])
/** How many processes are inspected concurrently. */
const PID_CONCURRENCY = 64
/** How many fd links of one process are resolved concurrently. */
const FD_CONCURRENCY = 256

const NS_LINK_RE = /^net:\[(\d+)\]$/
const SOCKET_LINK_RE = /^socket:\[(\d+)\]$/
const SL_RE = /^\d+:$/
const ADDR_PORT_RE = /^([0-9A-Fa-f]{8}|[0-9A-Fa-f]{32}):([0-9A-Fa-f]{1,4})$/
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
 * The kernel prints each 32-bit word of an address with %08X of its in-memory value, so on a
 * little-endian host each word's bytes come out reversed.
 */
function hexAddr(hex: string): Buffer {
  const out = Buffer.alloc(hex.length / 2)
  for (let w = 0; w < hex.length / 8; w++) {
    const word = parseInt(hex.slice(w * 8, w * 8 + 8), 16)
    if (os.endianness() === 'LE') out.writeUInt32LE(word, w * 4)
    else out.writeUInt32BE(word, w * 4)
  }
  return out
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
    const [sl, local, remote, st] = cols
    if (sl === undefined || !SL_RE.test(sl)) continue
    const l = local === undefined ? null : ADDR_PORT_RE.exec(local)
    const r = remote === undefined ? null : ADDR_PORT_RE.exec(remote)
    if (!l?.[1] || !l[2] || !r?.[1] || !r[2] || st === undefined || !HEX_RE.test(st)) continue
    const inode = parseDecimal(cols[9])
    if (inode === undefined) continue
    rows.push({
      localPort: parseInt(l[2], 16),
      state: parseInt(st, 16),
      inode,
      localAddr: hexAddr(l[1]),
      remoteAddr: hexAddr(r[1]),
      remotePort: parseInt(r[2], 16),
    })
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

/** The promise's value, or undefined when it failed for one process or file (see tolerate). */
export async function optional<T>(promise: Promise<T>): Promise<T | undefined> {
  try {
    return await promise
  } catch (err) {
    return tolerate(err)
  }
}

/** fn over items, `size` at a time. */
export async function mapChunked<T, R>(
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

interface OpenSocket {
  inode: number
  netns: number
  family: typeof AF_INET | typeof AF_INET6
  row: ProcNetTcpRow
}

interface NetnsSockets {
  listeners: ListenSocket[]
  open: OpenSocket[]
}

/**
 * Reads tcp and tcp6 of one network namespace through the first of its processes that still answers.
 * tcp6 is legitimately absent when IPv6 is disabled; that is told apart from the process exiting between
 * the two reads by checking that its tcp file is still there.
 */
async function readNetnsSockets(
  procRoot: string,
  netns: number,
  pids: readonly number[],
): Promise<NetnsSockets> {
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
    const out: NetnsSockets = { listeners: [], open: [] }
    const tables = [
      [AF_INET, v4],
      [AF_INET6, v6],
    ] as const
    for (const [family, text] of tables) {
      for (const row of parseProcNetTcp(text)) {
        // inode 0: a socket no process holds any more (orphaned on its way to CLOSE)
        if (row.inode === 0) continue
        if (row.state === TCP_LISTEN) {
          out.listeners.push({ inode: row.inode, netns, family, port: row.localPort })
        } else if (OPEN_STATES.has(row.state)) out.open.push({ inode: row.inode, netns, family, row })
      }
    }
    return out
  }
  return { listeners: [], open: [] }
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
  return (await discoverSockets(opts)).listeners
}

/**
 * One walk of procRoot that finds both the listeners (as discoverListeners) and the connections open
 * now, each with the lowest-pid process holding its socket. Connections whose local port is a
 * listening port of the same netns and family are inbound; the rest outbound.
 */
export async function discoverSockets(opts: DiscoverOptions = {}): Promise<DiscoveredSockets> {
  const procRoot = opts.procRoot ?? '/proc'
  const cgroupRoot = opts.cgroupRoot ?? cgroup2Root()

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
    readNetnsSockets(procRoot, netns, nsPids),
  )

  // Group listening sockets by map key; collect every pid holding any socket of that key.
  const byKey = new Map<string, { sock: ListenSocket; pids: Set<number> }>()
  for (const sock of perNetns.flatMap((n) => n.listeners)) {
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

  const listeners = owners.filter((o): o is ListenerOwner => o !== undefined).sort(compareOwners)

  const listening = new Set(
    perNetns.flatMap((n) => n.listeners).map((l) => `${l.netns}/${l.family}/${l.port}`),
  )
  const wide = (b: Buffer): Buffer => (b.length === 16 ? b : Buffer.concat([b, Buffer.alloc(12)]))
  const conns = await mapChunked(
    perNetns.flatMap((n) => n.open),
    PID_CONCURRENCY,
    async ({ inode, netns, family, row }) => {
      for (const pid of holders.get(inode) ?? []) {
        const m = await meta(pid)
        if (m === undefined) continue
        const c: ConnectionOwner = {
          netns,
          family,
          saddr: wide(row.localAddr),
          daddr: wide(row.remoteAddr),
          sport: row.localPort,
          dport: row.remotePort,
          direction: listening.has(`${netns}/${family}/${row.localPort}`) ? 'inbound' : 'outbound',
          pid,
          comm: m.comm,
          cgroupId: m.cgroupId,
        }
        return c
      }
      return undefined
    },
  )
  return { listeners, connections: conns.filter((c): c is ConnectionOwner => c !== undefined) }
}
