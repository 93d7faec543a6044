// The kernel's records and enums (bpf/tcptracer.h) as TypeScript sees them: the ring buffer's
// `struct event` decoded into typed events, and the values and owner shapes the maps hold. Offsets
// come from the addon's layout, never from this file.
import type { EventLayout } from './binding.js'

/** Address families, as the kernel numbers them (struct tuple_key's family, /proc/net/tcp vs tcp6). */
export const AF_INET = 2
export const AF_INET6 = 10

/** Whether 16 address bytes are an IPv4-mapped IPv6 address (::ffff:a.b.c.d). */
export function isV4Mapped(b: Buffer): boolean {
  return b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff
}

/**
 * How accepted connections are attributed to a process; see docs/tracer.md.
 * `auto` takes the first of fexit, kprobe and listener that this kernel attaches.
 */
export const ACCEPT_MODES = ['auto', 'fexit', 'kprobe', 'syscall', 'listener'] as const
export type AcceptMode = (typeof ACCEPT_MODES)[number]
/** An accept hook actually in use. */
export type AcceptHook = Exclude<AcceptMode, 'auto'>

export const EVENT_TYPES = { 1: 'connect', 2: 'accept', 3: 'close', 4: 'connect_failed' } as const
export type EventType = (typeof EVENT_TYPES)[keyof typeof EVENT_TYPES]

export const FAIL_REASONS = { 1: 'refused', 2: 'timeout', 3: 'unreachable', 4: 'other' } as const
export type FailReason = (typeof FAIL_REASONS)[keyof typeof FAIL_REASONS]

export const DIRECTIONS = { 1: 'outbound', 2: 'inbound' } as const
export type Direction = (typeof DIRECTIONS)[keyof typeof DIRECTIONS]

/** Who a kernel aggregation entry or a seeded connection is counted against. */
export interface Owner {
  comm: string
  netns: number
  pid: number
  cgroupId: bigint
  port: number
  ip: 4 | 6
  direction: Direction
  overflow?: boolean
  unattributed?: boolean
}

/** The owner of a listening socket, as the `listeners` map holds it (struct listener_key and listener_value). */
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

export interface TcpEvent {
  type: EventType
  /** CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) */
  tsNs: bigint
  /** owner's tgid: the process that connected or accepted; 0 when unknown */
  pid: number
  comm: string
  ip: 4 | 6
  /** local address and port */
  saddr: string
  sport: number
  /** remote address and port */
  daddr: string
  dport: number
  netns: number
  cgroupId: bigint
  direction: Direction
  /** close only: established -> closed */
  durationNs: bigint
  /** close only */
  bytesSent: bigint
  bytesReceived: bigint
  /** connect_failed only */
  reason?: FailReason
}

export function formatIPv4(b: Uint8Array, off = 0): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`
}

/** RFC 5952 text form: lower-case, leading zeros dropped, the longest run of two or more zero groups as "::". */
export function formatIPv6(b: Uint8Array, off = 0): string {
  const groups: number[] = []
  for (let i = 0; i < 8; i++) groups.push(((b[off + 2 * i] ?? 0) << 8) | (b[off + 2 * i + 1] ?? 0))
  let bestStart = -1
  let bestLen = 0
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++
      continue
    }
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i
      bestLen = j - i
    }
    i = j
  }
  const hex = (gs: number[]): string => gs.map((g) => g.toString(16)).join(':')
  if (bestStart < 0) return hex(groups)
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLen))}`
}

/**
 * A NUL-terminated kernel char array of `len` bytes at `off` (a comm in an event, an aggregation key or a
 * seeded owner), decoded as UTF-8 with U+FFFD for invalid bytes.
 */
export function decodeComm(b: Uint8Array, off: number, len: number): string {
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength)
  const nul = buf.indexOf(0, off)
  return buf.toString('utf8', off, nul < 0 || nul > off + len ? off + len : nul)
}

function lookup<T>(table: Record<number, T>, v: number, what: string): T {
  const r = table[v]
  if (r === undefined) throw new RangeError(`unknown ${what} ${v} in event record`)
  return r
}

/** Decode one record at `off` of `buf`. */
export function decodeEvent(buf: Buffer, off: number, L: EventLayout): TcpEvent {
  const ip = buf.readUInt8(off + L.ip)
  if (ip !== 4 && ip !== 6) throw new RangeError(`unknown IP version ${ip} in event record`)
  const addr = (o: number): string => (ip === 4 ? formatIPv4(buf, off + o) : formatIPv6(buf, off + o))
  const type = lookup(EVENT_TYPES, buf.readUInt8(off + L.type), 'event type')
  const ev: TcpEvent = {
    type,
    tsNs: buf.readBigUInt64LE(off + L.ts_ns),
    pid: buf.readUInt32LE(off + L.pid),
    comm: decodeComm(buf, off + L.comm, L.commLen),
    ip,
    saddr: addr(L.saddr),
    sport: buf.readUInt16LE(off + L.sport),
    daddr: addr(L.daddr),
    dport: buf.readUInt16LE(off + L.dport),
    netns: buf.readUInt32LE(off + L.netns),
    cgroupId: buf.readBigUInt64LE(off + L.cgroup_id),
    direction: lookup(DIRECTIONS, buf.readUInt8(off + L.direction), 'direction'),
    durationNs: buf.readBigUInt64LE(off + L.duration_ns),
    bytesSent: buf.readBigUInt64LE(off + L.bytes_sent),
    bytesReceived: buf.readBigUInt64LE(off + L.bytes_received),
  }
  if (type === 'connect_failed') ev.reason = lookup(FAIL_REASONS, buf.readUInt8(off + L.reason), 'reason')
  return ev
}

/** Decode a batch of `count` back-to-back records. */
export function decodeBatch(buf: Buffer, count: number, L: EventLayout): TcpEvent[] {
  if (buf.length !== count * L.size) {
    throw new RangeError(`batch of ${buf.length} bytes does not hold ${count} records of ${L.size} bytes`)
  }
  const out: TcpEvent[] = new Array<TcpEvent>(count)
  for (let i = 0; i < count; i++) out[i] = decodeEvent(buf, i * L.size, L)
  return out
}
