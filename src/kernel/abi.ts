// The kernel's records and enums (bpf/tcptracer.h) as TypeScript sees them, with one codec per record:
// the ring buffer's `struct event`, the aggregation map's `struct agg_key` and `struct agg_value`, the
// `listeners` map's `struct listener_key` and `struct listener_value`, the `seeded` map's
// `struct tuple_key` and `struct seed_value`, and the `struct owner` inside the last two. Sizes,
// offsets and enum values come from the addon (`sizeof`, `offsetof` and the enums, compiled from the
// header), never from this file; the names given to enum members here are checked against it.
import type { Binding, NativeConstants } from './binding.js'

/** What the codecs read of the addon: the records' layouts and the enums. */
type Abi = Pick<Binding, 'layout' | 'constants'>

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

/** The names of an enum's members that TypeScript uses, by the members' C names. */
type Members = Readonly<Record<string, keyof NativeConstants>>

/** enum event_type, the members a ring buffer record can carry */
const EVENT_TYPES = {
  connect: 'TCP_EVENT_TYPE_CONNECT',
  accept: 'TCP_EVENT_TYPE_ACCEPT',
  close: 'TCP_EVENT_TYPE_CLOSE',
  connect_failed: 'TCP_EVENT_TYPE_CONNECT_FAILED',
} as const satisfies Members
export type EventType = keyof typeof EVENT_TYPES

/** enum connect_fail_reason without NONE, in the order of struct agg_value's failed[] (value - 1) */
const FAIL_REASON_MEMBERS = {
  refused: 'FAIL_REASON_REFUSED',
  timeout: 'FAIL_REASON_TIMEOUT',
  unreachable: 'FAIL_REASON_UNREACHABLE',
  other: 'FAIL_REASON_OTHER',
} as const satisfies Members
type FailReason = keyof typeof FAIL_REASON_MEMBERS
/** The failure reasons by their slot in struct agg_value's failed[]; checked against the enum's values. */
export const FAIL_REASONS = Object.keys(FAIL_REASON_MEMBERS) as readonly FailReason[]

/** enum direction */
const DIRECTIONS = { outbound: 'DIRECTION_OUTBOUND', inbound: 'DIRECTION_INBOUND' } as const satisfies Members
export type Direction = keyof typeof DIRECTIONS

/** One enum's numbers both ways, from the addon's constants. */
interface Enum<N extends string> {
  name: ReadonlyMap<number, N>
  value: Readonly<Record<N, number>>
}

function enumOf<N extends string>(
  members: Readonly<Record<N, keyof NativeConstants>>,
  C: NativeConstants,
): Enum<N> {
  const name = new Map<number, N>()
  const value = {} as Record<N, number>
  for (const [n, member] of Object.entries(members) as Array<[N, keyof NativeConstants]>) {
    name.set(C[member], n)
    value[n] = C[member]
  }
  return { name, value }
}

interface Enums {
  eventType: Enum<EventType>
  failReason: Enum<FailReason>
  direction: Enum<Direction>
}

const enumsCache = new WeakMap<NativeConstants, Enums>()

/** The enums of an addon's constants, made once per addon. */
function enums(C: NativeConstants): Enums {
  let e = enumsCache.get(C)
  if (e === undefined) {
    e = {
      eventType: enumOf(EVENT_TYPES, C),
      failReason: enumOf(FAIL_REASON_MEMBERS, C),
      direction: enumOf(DIRECTIONS, C),
    }
    FAIL_REASONS.forEach((r, slot) => {
      if (e?.failReason.value[r] !== slot + 1) {
        throw new Error(
          `${FAIL_REASON_MEMBERS[r]} is not ${slot + 1}: struct agg_value's failed[] is read in that order`,
        )
      }
    })
    enumsCache.set(C, e)
  }
  return e
}

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

function lookup<N extends string>(e: Enum<N>, v: number, what: string): N {
  const r = e.name.get(v)
  if (r === undefined) throw new RangeError(`unknown ${what} ${v} in event record`)
  return r
}

/** Write a comm into a kernel char array at `off`: at most `len` - 1 bytes of UTF-8, the rest stays 0. */
function encodeComm(buf: Buffer, off: number, len: number, comm: string): void {
  buf.write(comm.slice(0, len - 1), off, len - 1, 'utf8')
}

/** struct event: decode one record at `off` of `buf`. The kernel alone writes this record. */
export function decodeEvent(buf: Buffer, off: number, abi: Abi): TcpEvent {
  const L = abi.layout.event
  const E = enums(abi.constants)
  const ip = buf.readUInt8(off + L.ip)
  if (ip !== 4 && ip !== 6) throw new RangeError(`unknown IP version ${ip} in event record`)
  const addr = (o: number): string => (ip === 4 ? formatIPv4(buf, off + o) : formatIPv6(buf, off + o))
  const type = lookup(E.eventType, buf.readUInt8(off + L.type), 'event type')
  const ev: TcpEvent = {
    type,
    tsNs: buf.readBigUInt64LE(off + L.ts_ns),
    pid: buf.readUInt32LE(off + L.pid),
    comm: decodeComm(buf, off + L.comm, abi.layout.commLen),
    ip,
    saddr: addr(L.saddr),
    sport: buf.readUInt16LE(off + L.sport),
    daddr: addr(L.daddr),
    dport: buf.readUInt16LE(off + L.dport),
    netns: buf.readUInt32LE(off + L.netns),
    cgroupId: buf.readBigUInt64LE(off + L.cgroup_id),
    direction: lookup(E.direction, buf.readUInt8(off + L.direction), 'direction'),
    durationNs: buf.readBigUInt64LE(off + L.duration_ns),
    bytesSent: buf.readBigUInt64LE(off + L.bytes_sent),
    bytesReceived: buf.readBigUInt64LE(off + L.bytes_received),
  }
  if (type === 'connect_failed') ev.reason = lookup(E.failReason, buf.readUInt8(off + L.reason), 'reason')
  return ev
}

/** Decode a batch of `count` back-to-back records. */
export function decodeBatch(buf: Buffer, count: number, abi: Abi): TcpEvent[] {
  const size = abi.layout.event.size
  if (buf.length !== count * size) {
    throw new RangeError(`batch of ${buf.length} bytes does not hold ${count} records of ${size} bytes`)
  }
  const out: TcpEvent[] = new Array<TcpEvent>(count)
  for (let i = 0; i < count; i++) out[i] = decodeEvent(buf, i * size, abi)
  return out
}

/** struct agg_key, decoded: who a kernel aggregation entry counts. */
export interface AggKey extends Owner {
  overflow: boolean
  unattributed: boolean
}

/** struct agg_key: decode the key at `off` of `buf`. An IP version other than 6 (the overflow keys' 0) reads as 4. */
export function decodeAggKey(buf: Buffer, off: number, abi: Abi): AggKey {
  const K = abi.layout.aggKey
  const C = abi.constants
  const flags = buf.readUInt8(off + K.flags)
  return {
    comm: decodeComm(buf, off + K.comm, abi.layout.commLen),
    netns: buf.readUInt32LE(off + K.netns),
    pid: buf.readUInt32LE(off + K.pid),
    cgroupId: buf.readBigUInt64LE(off + K.cgroup_id),
    port: buf.readUInt16LE(off + K.port),
    ip: buf.readUInt8(off + K.ip) === 6 ? 6 : 4,
    direction: buf.readUInt8(off + K.direction) === C.DIRECTION_INBOUND ? 'inbound' : 'outbound',
    overflow: (flags & C.AGG_OVERFLOW) !== 0,
    unattributed: (flags & C.AGG_UNATTRIBUTED) !== 0,
  }
}

/**
 * struct agg_key: encode a key; fields not given stay 0. The kernel's overflow entries have keys of
 * only their flag and direction.
 */
export function encodeAggKey(k: Partial<AggKey> & Pick<AggKey, 'direction'>, abi: Abi): Buffer {
  const K = abi.layout.aggKey
  const C = abi.constants
  const key = Buffer.alloc(K.size)
  key.writeBigUInt64LE(k.cgroupId ?? 0n, K.cgroup_id)
  key.writeUInt32LE(k.netns ?? 0, K.netns)
  key.writeUInt32LE(k.pid ?? 0, K.pid)
  key.writeUInt16LE(k.port ?? 0, K.port)
  key.writeUInt8(k.ip ?? 0, K.ip)
  key.writeUInt8(enums(C).direction.value[k.direction], K.direction)
  key.writeUInt8((k.overflow ? C.AGG_OVERFLOW : 0) | (k.unattributed ? C.AGG_UNATTRIBUTED : 0), K.flags)
  encodeComm(key, K.comm, abi.layout.commLen, k.comm ?? '')
  return key
}

/** The counts of struct agg_value that a series sums. Counts are Numbers: exact up to 2^53. */
export interface AggCounts {
  opened: number
  closed: number
  /** by FAIL_REASONS */
  failed: number[]
  sentBytes: number
  receivedBytes: number
  durationSumNs: number
  /** non-cumulative, nbuckets + 1 entries, the last is +Inf */
  buckets: number[]
  /** opened - closed - seeded_closed, plus what the caller adds */
  active: number
}

/** A u64 as a Number (exact up to 2^53, rounded once above), without a BigInt in between. */
function u64(b: Buffer, off: number): number {
  return b.readUInt32LE(off) + b.readUInt32LE(off + 4) * 0x1_0000_0000
}

/**
 * The aggregation map as read at one scrape, raw: `length` keys (struct agg_key) one after another in
 * `keys`, their values (struct agg_value) likewise in `values`, as the native mapRead leaves them. An
 * entry is decoded only as far as asked, its values in place; an entry's values changed when its bytes
 * differ from those it had in the previous dump.
 */
export class AggregateDump {
  private readonly ks: number
  private readonly vs: number
  private readonly V: Abi['layout']['aggValue']

  constructor(
    readonly keys: Buffer,
    readonly values: Buffer,
    readonly length: number,
    private readonly abi: Abi,
    /** the histogram buckets in use (config), without +Inf */
    private readonly nbuckets: number,
  ) {
    this.ks = abi.layout.aggKey.size
    this.vs = abi.layout.aggValue.size
    this.V = abi.layout.aggValue
    if (keys.length < length * this.ks || values.length < length * this.vs) {
      throw new RangeError(`${length} entries do not fit ${keys.length}/${values.length} bytes`)
    }
  }

  /** entry i's identity: equal ids are the same kernel entry, in this dump and the next */
  id(i: number): string {
    return this.keys.toString('latin1', i * this.ks, (i + 1) * this.ks)
  }

  /** whether entry i has the same key as entry `j` of `prev` (a quicker test than comparing ids) */
  sameKey(i: number, prev: AggregateDump | undefined, j: number): boolean {
    if (prev === undefined || prev.ks !== this.ks || j >= prev.length) return false
    const ks = this.ks
    return this.keys.compare(prev.keys, j * ks, (j + 1) * ks, i * ks, (i + 1) * ks) === 0
  }

  /** whether entry i may hold other values than entry `j` of `prev`, the previous dump */
  changed(i: number, prev: AggregateDump | undefined, j: number): boolean {
    if (prev === undefined || prev.vs !== this.vs || j >= prev.length) return true
    const vs = this.vs
    return this.values.compare(prev.values, j * vs, (j + 1) * vs, i * vs, (i + 1) * vs) !== 0
  }

  owner(i: number): AggKey {
    return decodeAggKey(this.keys, i * this.ks, this.abi)
  }

  /** a copy of entry i's key, to delete it from the map */
  key(i: number): Buffer {
    return Buffer.from(this.keys.subarray(i * this.ks, (i + 1) * this.ks))
  }

  cgroupId(i: number): bigint {
    return this.keys.readBigUInt64LE(i * this.ks + this.abi.layout.aggKey.cgroup_id)
  }

  lastNs(i: number): bigint {
    return this.values.readBigUInt64LE(i * this.vs + this.V.last_ns)
  }

  /** closes of connections open before the daemon started */
  seededClosed(i: number): number {
    return u64(this.values, i * this.vs + this.V.seeded_closed)
  }

  /** opened - closed - seeded_closed of entry i */
  active(i: number): number {
    const b = i * this.vs
    const v = this.values
    const V = this.V
    return u64(v, b + V.opened) - u64(v, b + V.closed) - u64(v, b + V.seeded_closed)
  }

  /** whether entry i has counted nothing (the kernel's overflow entries start that way) */
  empty(i: number): boolean {
    const b = i * this.vs
    const v = this.values
    const V = this.V
    let sum = u64(v, b + V.opened) + u64(v, b + V.closed) + u64(v, b + V.seeded_closed)
    for (let k = 0; k < V.failReasons; k++) sum += u64(v, b + V.failed + 8 * k)
    return sum === 0
  }

  /** add entry i's counts into x; its active count too unless `counts` is 'counters' */
  addInto(i: number, x: AggCounts, counts: 'all' | 'counters' = 'all'): void {
    const b = i * this.vs
    const v = this.values
    const V = this.V
    const opened = u64(v, b + V.opened)
    const closed = u64(v, b + V.closed)
    x.opened += opened
    x.closed += closed
    const failed = x.failed
    for (let k = 0; k < failed.length; k++) {
      failed[k] = (failed[k] ?? 0) + (k < V.failReasons ? u64(v, b + V.failed + 8 * k) : 0)
    }
    x.sentBytes += u64(v, b + V.sent_bytes)
    x.receivedBytes += u64(v, b + V.received_bytes)
    x.durationSumNs += u64(v, b + V.duration_sum_ns)
    const buckets = x.buckets
    const nb = this.nbuckets
    for (let k = 0; k < nb; k++) buckets[k] = (buckets[k] ?? 0) + u64(v, b + V.buckets + 8 * k)
    buckets[nb] = (buckets[nb] ?? 0) + u64(v, b + V.buckets + 8 * V.maxBuckets)
    if (counts === 'all') x.active += opened - closed - u64(v, b + V.seeded_closed)
  }
}

/** struct owner at `off`: the process a socket belongs to. */
function encodeOwner(buf: Buffer, off: number, o: Pick<Owner, 'cgroupId' | 'pid' | 'comm'>, abi: Abi): void {
  const O = abi.layout.owner
  buf.writeBigUInt64LE(o.cgroupId, off + O.cgroup_id)
  buf.writeUInt32LE(o.pid, off + O.pid)
  encodeComm(buf, off + O.comm, abi.layout.commLen, o.comm)
}

function decodeOwner(buf: Buffer, off: number, abi: Abi): Pick<Owner, 'cgroupId' | 'pid' | 'comm'> {
  const O = abi.layout.owner
  return {
    comm: decodeComm(buf, off + O.comm, abi.layout.commLen),
    pid: buf.readUInt32LE(off + O.pid),
    cgroupId: buf.readBigUInt64LE(off + O.cgroup_id),
  }
}

/**
 * struct listener_key and struct listener_value: a listener's owner as the daemon seeds it. The socket
 * (`sk`) stays 0: seeded from /proc, not recorded at listen().
 */
export function encodeListener(o: ListenerOwner, abi: Abi): { key: Buffer; value: Buffer } {
  const K = abi.layout.listenerKey
  const V = abi.layout.listenerValue
  const key = Buffer.alloc(K.size)
  key.writeUInt32LE(o.netns, K.netns)
  key.writeUInt16LE(o.port, K.port)
  key.writeUInt16LE(o.family, K.family)
  const value = Buffer.alloc(V.size)
  encodeOwner(value, V.owner, o, abi)
  return { key, value }
}

/** A connection that was open before the daemon started, and what to count it against. */
export interface SeedConnection {
  netns: number
  family: number
  saddr: Buffer
  daddr: Buffer
  sport: number
  dport: number
  pid: number
  comm: string
  cgroupId: bigint
  /** service port: local for inbound, remote for outbound */
  port: number
  direction: Direction
}

/** struct tuple_key and struct seed_value: a connection open before the daemon started. */
export function encodeSeed(c: SeedConnection, abi: Abi): { key: Buffer; value: Buffer } {
  const T = abi.layout.tupleKey
  const key = Buffer.alloc(T.size)
  c.saddr.copy(key, T.saddr, 0, 16)
  c.daddr.copy(key, T.daddr, 0, 16)
  key.writeUInt32LE(c.netns, T.netns)
  key.writeUInt16LE(c.sport, T.sport)
  key.writeUInt16LE(c.dport, T.dport)
  key.writeUInt16LE(c.family, T.family)
  const S = abi.layout.seedValue
  const value = Buffer.alloc(S.size)
  encodeOwner(value, S.owner, c, abi)
  value.writeUInt16LE(c.port, S.port)
  value.writeUInt8(enums(abi.constants).direction.value[c.direction], S.direction)
  return { key, value }
}

/**
 * struct tuple_key and struct seed_value, decoded: whom a seeded connection counts against. IPv4,
 * also as IPv4-mapped IPv6, is 4.
 */
export function decodeSeed(key: Buffer, value: Buffer, abi: Abi): Owner {
  const T = abi.layout.tupleKey
  const S = abi.layout.seedValue
  const daddr = key.subarray(T.daddr, T.daddr + 16)
  const v4 = key.readUInt16LE(T.family) === AF_INET || isV4Mapped(daddr)
  return {
    ...decodeOwner(value, S.owner, abi),
    netns: key.readUInt32LE(T.netns),
    port: value.readUInt16LE(S.port),
    ip: v4 ? 4 : 6,
    direction: value.readUInt8(S.direction) === abi.constants.DIRECTION_INBOUND ? 'inbound' : 'outbound',
  }
}
