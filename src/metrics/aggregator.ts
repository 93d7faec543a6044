// Scrape-time reading of the kernel's aggregation map: decode its entries,
// project them onto the configured labels, enforce the cardinality cap and
// expire idle label sets. No per-event work happens here: the kernel counted
// every event; this runs once per scrape over at most `aggs`' max_entries.
import type { AggCounts, AggregateDump, Direction, Owner } from '../kernel/abi.js'
import type { Label } from '../config/config.js'

/** A label of the configured set (config's `labels`). */
export type LabelName = Label

/** The label value every configured label takes on the overflow series. */
export const OVERFLOW = '__overflow__'
/** comm of connections whose owner is unknown (an accept on a listener never seen). */
export const UNATTRIBUTED = '__unattributed__'

/** One label set's values for one direction: the sum of its kernel entries' counts. */
export interface Series extends AggCounts {
  /** configured labels in configured order */
  labels: Array<[LabelName, string]>
  direction: Direction
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

/** One label set's series at one scrape. Never changed once made: a label set whose values change gets a new one. */
export interface LabelSetSeries {
  /** the label set's identity: its labels as JSON */
  readonly id: string
  readonly labels: Array<[LabelName, string]>
  readonly outbound: Series | undefined
  readonly inbound: Series | undefined
}

export interface Snapshot {
  /** every series: label set by label set (`sets`), outbound before inbound */
  series: Series[]
  /** admitted label sets in admission order, then the overflow label set if it has series */
  sets: LabelSetSeries[]
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

const OUT = 0
const IN = 1
const NO_LABELS: Array<[LabelName, string]> = []
const dirIndex = (d: Direction): 0 | 1 => (d === 'inbound' ? IN : OUT)

/** What the aggregator remembers of one kernel entry between scrapes. */
interface EntryRecord {
  readonly id: string
  /** its index in the latest table */
  index: number
  /** the snapshot that last saw it */
  gen: number
  /** its label set; undefined when the comm filters drop it */
  set: LabelSet | undefined
  readonly direction: Direction
  /** one of the kernel's own overflow entries: skipped while it has counted nothing */
  readonly kernelOverflow: boolean
  /** its cgroup had no name yet: projected again at every scrape until it has one */
  unresolved: boolean
  /** still known: false once it expired or left the map */
  alive: boolean
}

/**
 * A label set: admitted (its own series), folded (counted in the overflow series) or the overflow label set
 * itself (the kernel's overflow entries and anything projecting onto __overflow__ labels).
 */
interface LabelSet {
  readonly id: string
  readonly labels: Array<[LabelName, string]>
  readonly kind: 'admitted' | 'folded' | 'overflow'
  /** its kernel entries; records that left it are dropped at its next recount */
  entries: EntryRecord[]
  /** connections open before the daemon started, [outbound, inbound] */
  seeded: [number, number]
  /** its entries or seeded connections changed since its last recount */
  dirty: boolean
  /** the newest last_ns of its entries, and its open connections, as of its last recount */
  lastNs: bigint
  active: number
  /** admitted label sets: their series as of the last recount */
  view: LabelSetSeries | undefined
}

export class Aggregator {
  private opts: Required<AggregatorOptions>
  /** kernel entries seen, by id */
  private entries = new Map<string, EntryRecord>()
  /** every label set with kernel entries or seeded connections, by id */
  private sets = new Map<string, LabelSet>()
  /** admitted label sets, in admission order */
  private readonly admitted = new Map<string, LabelSet>()
  private foldedNow = 0
  /** label sets to recount at this snapshot */
  private dirty: LabelSet[] = []
  /** what folded label sets had when they expired, so the overflow series never goes down */
  private retired: [Series | undefined, Series | undefined] = [undefined, undefined]
  private overflowLabelsNow: Array<[LabelName, string]> = []
  private overflowId = ''
  private overflowView: LabelSetSeries | undefined
  /** whether the overflow series must be summed again */
  private overflowDirty = true
  /** whether the seeded connections must be projected again */
  private seededDirty = true
  /** the previous snapshot's table, to tell which entries changed; undefined: treat all as changed */
  private prev: AggregateDump | undefined
  /** the records of the previous table's entries, by index */
  private byIndex: Array<EntryRecord | undefined> = []
  private gen = 0
  /** label sets ever folded: the "series dropped by the cardinality limit" counter */
  foldedTotal = 0
  /** label sets removed after idling */
  expiredTotal = 0
  /** connections open before the daemon started, counted in the active gauge until they close */
  private seeded: Array<[Owner, number]> = []

  constructor(opts: AggregatorOptions) {
    this.opts = { nowNs: () => process.hrtime.bigint(), ...opts }
    this.forget()
  }

  /** Forget every label set and entry: the next snapshot projects and admits afresh. */
  private forget(): void {
    this.entries = new Map()
    this.sets = new Map()
    this.admitted.clear()
    this.foldedNow = 0
    this.dirty = []
    this.retired = [undefined, undefined]
    this.overflowLabelsNow = this.opts.labels.map((l) => [l, OVERFLOW])
    this.overflowId = JSON.stringify(this.overflowLabelsNow)
    this.overflowView = undefined
    this.overflowDirty = true
    this.seededDirty = true
    this.prev = undefined
    this.byIndex = []
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
    if (shapeChanged) this.forget()
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

  /** Whether projected labels carry an empty cgroup for an owner that has one: a name not known yet. */
  private unresolved(o: Owner, labels: ReadonlyArray<[LabelName, string]>): boolean {
    return o.cgroupId !== 0n && labels.some(([k, v]) => k === 'cgroup' && v === '')
  }

  /**
   * Connections that were open when the daemon started (owner -> count). The kernel
   * counts their closes in seeded_closed, so active = opened - closed - seeded_closed + these.
   */
  setSeeded(seeded: ReadonlyArray<[Owner, number]>): void {
    this.seeded = seeded.map(([o, n]) => [o, n])
    this.seededDirty = true
  }

  /** Keep only the seeded connections that pass `keep` (a reload narrowed the filters). */
  filterSeeded(keep: (o: Owner) => boolean): void {
    this.seeded = this.seeded.filter(([o]) => keep(o))
    this.seededDirty = true
  }

  private markDirty(s: LabelSet): void {
    if (s.dirty) return
    s.dirty = true
    this.dirty.push(s)
  }

  /** The label set of these labels, made (and admitted or folded) if it is new. */
  private setOf(labels: Array<[LabelName, string]>): LabelSet {
    const id = JSON.stringify(labels)
    let s = this.sets.get(id)
    if (s === undefined) {
      const kind =
        id === this.overflowId
          ? 'overflow'
          : this.admitted.size < this.opts.maxLabelSets
            ? 'admitted'
            : 'folded'
      s = {
        id,
        // a folded label set's labels are never shown: its id is enough to know it again
        labels: kind === 'folded' ? NO_LABELS : labels,
        kind,
        entries: [],
        seeded: [0, 0],
        dirty: false,
        lastNs: 0n,
        active: 0,
        view: undefined,
      }
      this.sets.set(id, s)
      if (kind === 'admitted') {
        this.admitted.set(id, s)
      } else if (kind === 'folded') {
        this.foldedNow++
        this.foldedTotal++
      }
    }
    return s
  }

  private dropSet(s: LabelSet): void {
    this.sets.delete(s.id)
    if (s.kind === 'admitted') this.admitted.delete(s.id)
    else if (s.kind === 'folded') this.foldedNow--
    if (s.kind !== 'admitted') this.overflowDirty = true
  }

  /** Project a kernel entry onto its label set. */
  private place(rec: EntryRecord, o: Owner): void {
    const labels = this.project(o)
    const s = labels === undefined ? undefined : this.setOf(labels)
    rec.unresolved = labels !== undefined && this.unresolved(o, labels)
    if (s === rec.set) return
    if (rec.set !== undefined) this.markDirty(rec.set) // its next recount drops the record
    rec.set = s
    if (s !== undefined) {
      s.entries.push(rec)
      this.markDirty(s)
    }
  }

  /** Count a label set's entries and seeded connections again. */
  private recount(s: LabelSet, t: AggregateDump): void {
    s.dirty = false
    s.entries = s.entries.filter((r) => r.set === s)
    if (s.entries.length === 0 && s.seeded[OUT] === 0 && s.seeded[IN] === 0) {
      // no kernel entries left (deleted elsewhere) and nothing seeded: forgotten
      this.dropSet(s)
      return
    }
    let lastNs = 0n
    for (const r of s.entries) {
      const ns = t.lastNs(r.index)
      if (ns > lastNs) lastNs = ns
    }
    s.lastNs = lastNs
    if (s.kind !== 'admitted') {
      let active = s.seeded[OUT] + s.seeded[IN]
      for (const r of s.entries) {
        if (!(r.kernelOverflow && t.empty(r.index))) active += t.active(r.index)
      }
      s.active = active
      this.overflowDirty = true
      return
    }
    const nb = this.opts.nbuckets
    const by: [Series | undefined, Series | undefined] = [undefined, undefined]
    for (const r of s.entries) {
      const d = dirIndex(r.direction)
      const x = (by[d] ??= emptySeries(s.labels, r.direction, nb))
      t.addInto(r.index, x)
    }
    if (s.seeded[OUT] > 0) (by[OUT] ??= emptySeries(s.labels, 'outbound', nb)).active += s.seeded[OUT]
    if (s.seeded[IN] > 0) (by[IN] ??= emptySeries(s.labels, 'inbound', nb)).active += s.seeded[IN]
    s.active = (by[OUT]?.active ?? 0) + (by[IN]?.active ?? 0)
    s.view = { id: s.id, labels: s.labels, outbound: by[OUT], inbound: by[IN] }
  }

  /** Sum the overflow series: the overflow label set, the folded label sets and the retired counts. */
  private sumOverflow(t: AggregateDump): void {
    const nb = this.opts.nbuckets
    const labels = this.overflowLabelsNow
    // the counts of expired folded label sets first: the overflow series keeps them
    const by = this.retired.map(
      (r) => r && { ...r, labels, failed: [...r.failed], buckets: [...r.buckets] },
    ) as [Series | undefined, Series | undefined]
    this.sets.forEach((s) => {
      if (s.kind === 'admitted') return
      for (const r of s.entries) {
        if (r.kernelOverflow && t.empty(r.index)) continue
        t.addInto(r.index, (by[dirIndex(r.direction)] ??= emptySeries(labels, r.direction, nb)))
      }
      if (s.seeded[OUT] > 0) (by[OUT] ??= emptySeries(labels, 'outbound', nb)).active += s.seeded[OUT]
      if (s.seeded[IN] > 0) (by[IN] ??= emptySeries(labels, 'inbound', nb)).active += s.seeded[IN]
    })
    this.overflowView =
      by[OUT] === undefined && by[IN] === undefined
        ? undefined
        : { id: this.overflowId, labels, outbound: by[OUT], inbound: by[IN] }
    this.overflowDirty = false
  }

  /**
   * Build this scrape's series from the kernel entries, and decide which label sets expire. Only what
   * changed since the previous snapshot is counted again: entries whose values changed, new entries,
   * entries gone, seeded connections.
   */
  snapshot(t: AggregateDump): Snapshot {
    try {
      const snap = this.update(t)
      this.prev = t
      return snap
    } catch (e) {
      // a half-applied update: count everything again next time
      this.prev = undefined
      this.byIndex = []
      this.dirty = []
      for (const s of this.sets.values()) {
        s.dirty = false
        this.markDirty(s)
      }
      this.overflowDirty = true
      throw e
    }
  }

  private update(t: AggregateDump): Snapshot {
    const gen = ++this.gen
    const prev = this.prev
    const byIndex = this.byIndex
    let seen = 0
    for (let i = 0; i < t.length; i++) {
      // most entries are where they were in the previous read: compare keys there before any lookup
      let rec = prev === undefined ? undefined : byIndex[i]
      byIndex[i] = undefined
      if (rec !== undefined && (!rec.alive || rec.gen === gen || !t.sameKey(i, prev, i))) rec = undefined
      const id = rec === undefined ? t.id(i) : rec.id
      rec ??= this.entries.get(id)
      if (rec === undefined) {
        const o = t.owner(i)
        rec = {
          id,
          index: i,
          gen,
          set: undefined,
          direction: o.direction,
          kernelOverflow: o.overflow,
          unresolved: false,
          alive: true,
        }
        this.entries.set(id, rec)
        this.place(rec, o)
      } else {
        if (rec.gen === gen) continue // the kernel never repeats a key; a table that did is counted once
        if (rec.set !== undefined && t.changed(i, prev, rec.index)) this.markDirty(rec.set)
        rec.index = i
        rec.gen = gen
        if (rec.unresolved) this.place(rec, t.owner(i))
      }
      byIndex[i] = rec
      seen++
    }
    byIndex.length = t.length
    if (seen !== this.entries.size) {
      // entries gone from the map (deleted by an earlier expiry, or elsewhere)
      this.entries.forEach((rec, id) => {
        if (rec.gen === gen) return
        this.entries.delete(id)
        rec.alive = false
        if (rec.set !== undefined) this.markDirty(rec.set)
        rec.set = undefined
      })
    }
    if (this.seededDirty) {
      for (const s of this.sets.values()) {
        if (s.seeded[OUT] === 0 && s.seeded[IN] === 0) continue
        s.seeded = [0, 0]
        this.markDirty(s)
      }
      for (const [o, n] of this.seeded) {
        const labels = this.project(o)
        if (labels === undefined) continue
        const s = this.setOf(labels)
        s.seeded[dirIndex(o.direction)] += n
        this.markDirty(s)
      }
      this.seededDirty = false
    }
    const dirty = this.dirty
    this.dirty = []
    for (const s of dirty) this.recount(s, t)

    const expiredKeys: Buffer[] = []
    const { idleExpiryMs, nbuckets } = this.opts
    if (idleExpiryMs > 0) {
      const before = this.opts.nowNs() - BigInt(idleExpiryMs) * 1_000_000n
      const expiredIds = new Set<string>()
      // forEach: an iterator's result objects would be 65,536 allocations per scrape at the kernel's cap
      this.sets.forEach((s) => {
        if (s.kind === 'overflow' || s.active !== 0 || s.lastNs === 0n || s.lastNs >= before) return
        for (const r of s.entries) {
          expiredKeys.push(t.key(r.index))
          this.entries.delete(r.id)
          r.alive = false
          r.set = undefined
          if (s.kind === 'folded') {
            // keep its counts in the overflow series: a counter never goes down
            const d = dirIndex(r.direction)
            t.addInto(
              r.index,
              (this.retired[d] ??= emptySeries(this.overflowLabelsNow, r.direction, nbuckets)),
              'counters',
            )
          }
        }
        this.dropSet(s)
        this.expiredTotal++
        if (s.seeded[OUT] + s.seeded[IN] > 0) expiredIds.add(s.id)
      })
      if (expiredIds.size > 0) {
        // their seeded connections all closed (active was 0): forget them with the label set
        this.seeded = this.seeded.filter(([o]) => {
          const labels = this.project(o)
          return !labels || !expiredIds.has(JSON.stringify(labels))
        })
      }
    }
    if (this.overflowDirty) this.sumOverflow(t)

    const sets: LabelSetSeries[] = []
    const series: Series[] = []
    for (const s of this.admitted.values()) {
      const v = s.view
      if (v === undefined) continue
      sets.push(v)
    }
    if (this.overflowView !== undefined) sets.push(this.overflowView)
    for (const v of sets) {
      if (v.outbound !== undefined) series.push(v.outbound)
      if (v.inbound !== undefined) series.push(v.inbound)
    }
    return { series, sets, expiredKeys, admitted: this.admitted.size, folded: this.foldedNow }
  }
}
