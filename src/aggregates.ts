// Scrape-time reading of the kernel's aggregation map: decode its entries,
// project them onto the configured labels, enforce the cardinality cap and
// expire idle label sets. No per-event work happens here: the kernel counted
// every event; this runs once per scrape over at most `aggs`' max_entries.
import type { Direction } from './events.js'
import type { EventLayout, NativeConstants } from './native.js'

export const LABEL_NAMES = ['comm', 'netns', 'family', 'pid', 'cgroup', 'port'] as const
export type LabelName = (typeof LABEL_NAMES)[number]

/** The label value every configured label takes on the overflow series. */
export const OVERFLOW = '__overflow__'
/** comm of connections whose owner is unknown (an accept on a listener never seen). */
export const UNATTRIBUTED = '__unattributed__'

export const FAIL_REASON_NAMES = ['refused', 'timeout', 'unreachable', 'other'] as const

/** One entry of the kernel map, decoded. Counts are Numbers: exact up to 2^53. */
export interface KernelEntry extends Owner {
  key: Buffer
  overflow: boolean
  unattributed: boolean
  opened: number
  closed: number
  failed: number[]
  sentBytes: number
  receivedBytes: number
  durationSumNs: number
  seededClosed: number
  lastNs: bigint
  /** non-cumulative, nbuckets + 1 entries, the last is +Inf */
  buckets: number[]
}

function u64(b: Buffer, off: number): number {
  return Number(b.readBigUInt64LE(off))
}

export function decodeAggEntry(
  key: Buffer,
  value: Buffer,
  L: EventLayout,
  C: NativeConstants,
  nbuckets: number,
): KernelEntry {
  const K = L.aggKey
  const V = L.aggValue
  if (key.length !== K.size || value.length !== V.size) {
    throw new RangeError(
      `aggs entry is ${key.length}/${value.length} bytes, the header says ${K.size}/${V.size}`,
    )
  }
  const flags = key.readUInt8(K.flags)
  const commEnd = key.indexOf(0, K.comm)
  const buckets: number[] = []
  for (let i = 0; i < nbuckets; i++) buckets.push(u64(value, V.buckets + 8 * i))
  buckets.push(u64(value, V.buckets + 8 * V.maxBuckets))
  const failed: number[] = []
  for (let i = 0; i < V.failReasons; i++) failed.push(u64(value, V.failed + 8 * i))
  return {
    key,
    comm: key.toString(
      'utf8',
      K.comm,
      commEnd < 0 || commEnd > K.comm + L.commLen ? K.comm + L.commLen : commEnd,
    ),
    netns: key.readUInt32LE(K.netns),
    pid: key.readUInt32LE(K.pid),
    cgroupId: key.readBigUInt64LE(K.cgroup_id),
    port: key.readUInt16LE(K.port),
    ip: key.readUInt8(K.ip) === 6 ? 6 : 4,
    direction: key.readUInt8(K.direction) === 2 ? 'inbound' : 'outbound',
    overflow: (flags & C.AGG_OVERFLOW) !== 0,
    unattributed: (flags & C.AGG_UNATTRIBUTED) !== 0,
    opened: u64(value, V.opened),
    closed: u64(value, V.closed),
    failed,
    sentBytes: u64(value, V.sent_bytes),
    receivedBytes: u64(value, V.received_bytes),
    durationSumNs: u64(value, V.duration_sum_ns),
    seededClosed: u64(value, V.seeded_closed),
    lastNs: value.readBigUInt64LE(V.last_ns),
    buckets,
  }
}

/** Who owns a connection, as far as labels go: a kernel entry or a seeded connection. */
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

/** One label set's values for one direction. */
export interface Series {
  /** configured labels in configured order */
  labels: Array<[LabelName, string]>
  direction: Direction
  opened: number
  closed: number
  failed: number[]
  sentBytes: number
  receivedBytes: number
  durationSumNs: number
  buckets: number[]
  active: number
}

export interface AggregatorOptions {
  labels: readonly LabelName[]
  maxLabelSets: number
  /** 0 disables expiry */
  idleExpiryMs: number
  commInclude: readonly RegExp[]
  commExclude: readonly RegExp[]
  nbuckets: number
  resolveCgroup: (id: bigint) => string
  /** CLOCK_MONOTONIC now, in ns: the kernel's last_ns uses the same clock */
  nowNs?: () => bigint
}

export interface Snapshot {
  series: Series[]
  /** kernel keys of label sets that expired: the caller deletes them from the map */
  expiredKeys: Buffer[]
  /** label sets admitted, and folded into the overflow series, at this moment */
  admitted: number
  folded: number
}

function emptySeries(labels: Array<[LabelName, string]>, direction: Direction, nbuckets: number): Series {
  return {
    labels,
    direction,
    opened: 0,
    closed: 0,
    failed: [0, 0, 0, 0],
    sentBytes: 0,
    receivedBytes: 0,
    durationSumNs: 0,
    buckets: new Array<number>(nbuckets + 1).fill(0),
    active: 0,
  }
}

function addInto(dst: Series, src: Series): void {
  dst.opened += src.opened
  dst.closed += src.closed
  for (let i = 0; i < dst.failed.length; i++) dst.failed[i] = (dst.failed[i] ?? 0) + (src.failed[i] ?? 0)
  dst.sentBytes += src.sentBytes
  dst.receivedBytes += src.receivedBytes
  dst.durationSumNs += src.durationSumNs
  for (let i = 0; i < dst.buckets.length; i++) dst.buckets[i] = (dst.buckets[i] ?? 0) + (src.buckets[i] ?? 0)
  dst.active += src.active
}

/** A label set across both directions, and what the aggregator remembers of it. */
interface LabelSet {
  labels: Array<[LabelName, string]>
  byDirection: Map<Direction, Series>
  keys: Buffer[]
  lastNs: bigint
}

export class Aggregator {
  private opts: Required<AggregatorOptions>
  /** label sets with their own series, in admission order */
  private readonly admitted = new Set<string>()
  /** label sets that arrived past the cap: counted in the overflow series */
  private readonly folded = new Set<string>()
  /** what folded label sets had when they expired, so the overflow series never goes down */
  private retired = new Map<Direction, Series>()
  /** label sets ever folded: the "series dropped by the cardinality limit" counter */
  foldedTotal = 0
  /** label sets removed after idling */
  expiredTotal = 0
  /** connections open before the daemon started, counted in the active gauge until they close */
  private seeded: Array<[Owner, number]> = []

  constructor(opts: AggregatorOptions) {
    this.opts = { nowNs: () => process.hrtime.bigint(), ...opts }
  }

  /**
   * Apply new options (config reload). A change of labels or filters starts the
   * projection afresh: label sets are re-admitted under the new shape.
   */
  reconfigure(opts: AggregatorOptions): void {
    const shapeChanged =
      opts.labels.join() !== this.opts.labels.join() ||
      opts.commInclude.map(String).join() !== this.opts.commInclude.map(String).join() ||
      opts.commExclude.map(String).join() !== this.opts.commExclude.map(String).join()
    this.opts = { nowNs: this.opts.nowNs, ...opts }
    if (shapeChanged) {
      this.admitted.clear()
      this.folded.clear()
      this.retired.clear()
    }
  }

  private overflowLabels(): Array<[LabelName, string]> {
    return this.opts.labels.map((l) => [l, OVERFLOW])
  }

  /** The configured labels of an owner; undefined when a comm filter drops it. */
  project(o: Owner): Array<[LabelName, string]> | undefined {
    if (o.overflow) return this.overflowLabels()
    if (!o.unattributed) {
      const { commInclude, commExclude } = this.opts
      if (commInclude.length > 0 && !commInclude.some((r) => r.test(o.comm))) return undefined
      if (commExclude.some((r) => r.test(o.comm))) return undefined
    }
    return this.opts.labels.map((l): [LabelName, string] => {
      switch (l) {
        case 'comm':
          return [l, o.unattributed ? UNATTRIBUTED : o.comm]
        case 'netns':
          return [l, String(o.netns)]
        case 'family':
          return [l, o.ip === 6 ? 'ipv6' : 'ipv4']
        case 'pid':
          return [l, String(o.pid)]
        case 'cgroup':
          return [l, o.cgroupId === 0n ? '' : this.opts.resolveCgroup(o.cgroupId)]
        case 'port':
          return [l, String(o.port)]
        default:
          throw new Error(`unknown label ${String(l)}`)
      }
    })
  }

  /**
   * Connections that were open when the daemon started (owner -> count). The kernel
   * counts their closes in seeded_closed, so active = opened - closed - seeded_closed + these.
   */
  setSeeded(seeded: ReadonlyArray<[Owner, number]>): void {
    this.seeded = seeded.map(([o, n]) => [o, n])
  }

  /** Keep only the seeded connections that pass `keep` (a reload narrowed the filters). */
  filterSeeded(keep: (o: Owner) => boolean): void {
    this.seeded = this.seeded.filter(([o]) => keep(o))
  }

  /** Build this scrape's series from the kernel entries, and decide which label sets expire. */
  snapshot(entries: readonly KernelEntry[]): Snapshot {
    const { nbuckets, maxLabelSets, idleExpiryMs } = this.opts
    const sets = new Map<string, LabelSet>()
    const setOf = (labels: Array<[LabelName, string]>): LabelSet => {
      const id = JSON.stringify(labels)
      let s = sets.get(id)
      if (!s) {
        s = { labels, byDirection: new Map(), keys: [], lastNs: 0n }
        sets.set(id, s)
      }
      return s
    }
    const seriesOf = (s: LabelSet, d: Direction): Series => {
      let x = s.byDirection.get(d)
      if (!x) {
        x = emptySeries(s.labels, d, nbuckets)
        s.byDirection.set(d, x)
      }
      return x
    }

    for (const e of entries) {
      // the kernel's overflow entries exist from the start; they only matter once used
      if (e.overflow && e.opened + e.closed + e.seededClosed + e.failed.reduce((a, b) => a + b, 0) === 0) {
        continue
      }
      const labels = this.project(e)
      if (!labels) continue
      const s = setOf(labels)
      s.keys.push(e.key)
      if (e.lastNs > s.lastNs) s.lastNs = e.lastNs
      const x = seriesOf(s, e.direction)
      x.opened += e.opened
      x.closed += e.closed
      for (let i = 0; i < x.failed.length; i++) x.failed[i] = (x.failed[i] ?? 0) + (e.failed[i] ?? 0)
      x.sentBytes += e.sentBytes
      x.receivedBytes += e.receivedBytes
      x.durationSumNs += e.durationSumNs
      for (let i = 0; i < x.buckets.length; i++) x.buckets[i] = (x.buckets[i] ?? 0) + (e.buckets[i] ?? 0)
      x.active += e.opened - e.closed - e.seededClosed
    }
    for (const [o, n] of this.seeded) {
      const labels = this.project(o)
      if (!labels) continue
      seriesOf(setOf(labels), o.direction).active += n
    }
    const expiredIds = new Set<string>()

    const overflowId = JSON.stringify(this.overflowLabels())
    const now = this.opts.nowNs()
    const idleNs = BigInt(idleExpiryMs) * 1_000_000n
    const expiredKeys: Buffer[] = []
    const out = new Map<string, LabelSet>()
    const overflow = (): LabelSet => {
      let o = out.get(overflowId)
      if (!o) {
        o = { labels: this.overflowLabels(), byDirection: new Map(), keys: [], lastNs: 0n }
        out.set(overflowId, o)
      }
      return o
    }

    for (const [id, s] of sets) {
      const active = [...s.byDirection.values()].reduce((a, x) => a + x.active, 0)
      const idle = idleNs > 0n && active === 0 && s.lastNs > 0n && now - s.lastNs > idleNs
      if (id === overflowId) {
        // the kernel's own overflow entry, or label sets that project onto it
        for (const x of s.byDirection.values()) addInto(seriesOf(overflow(), x.direction), x)
        continue
      }
      if (!this.admitted.has(id) && !this.folded.has(id)) {
        if (this.admitted.size < maxLabelSets) {
          this.admitted.add(id)
        } else {
          this.folded.add(id)
          this.foldedTotal++
        }
      }
      if (this.folded.has(id)) {
        if (!idle) for (const x of s.byDirection.values()) addInto(seriesOf(overflow(), x.direction), x)
        if (idle) {
          // keep its counts in the overflow series: a counter never goes down
          for (const x of s.byDirection.values()) {
            let r = this.retired.get(x.direction)
            if (!r) {
              r = emptySeries(this.overflowLabels(), x.direction, nbuckets)
              this.retired.set(x.direction, r)
            }
            addInto(r, { ...x, active: 0 })
          }
          this.folded.delete(id)
          expiredKeys.push(...s.keys)
          expiredIds.add(id)
          this.expiredTotal++
        }
        continue
      }
      if (idle) {
        this.admitted.delete(id)
        expiredKeys.push(...s.keys)
        expiredIds.add(id)
        this.expiredTotal++
        continue
      }
      out.set(id, s)
    }
    // label sets the aggregator knew that have no kernel entries left (deleted elsewhere)
    for (const id of this.admitted) if (!sets.has(id)) this.admitted.delete(id)
    for (const id of this.folded) if (!sets.has(id)) this.folded.delete(id)

    for (const r of this.retired.values()) addInto(seriesOf(overflow(), r.direction), r)
    if (expiredIds.size > 0) {
      // their seeded connections all closed (active was 0): forget them with the label set
      this.seeded = this.seeded.filter(([o]) => {
        const labels = this.project(o)
        return !labels || !expiredIds.has(JSON.stringify(labels))
      })
    }

    const series: Series[] = []
    for (const s of out.values()) {
      // a stable order for the exposition: outbound first
      for (const d of ['outbound', 'inbound'] as const) {
        const x = s.byDirection.get(d)
        if (x) series.push(x)
      }
    }
    return { series, expiredKeys, admitted: this.admitted.size, folded: this.folded.size }
  }
}
