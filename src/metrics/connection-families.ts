// The connection metric families (tcptracer_connects_total and the rest, one series per label set and
// direction), and their exposition kept between scrapes.
//
// A scrape with many label sets is mostly text: 64 sample lines per label set with both directions. Most
// label sets do not change between two scrapes, so each label set's lines are rendered once, into one
// Buffer per format, and kept until its series change (the aggregator then gives it a new
// LabelSetSeries object). A scrape copies those bytes into the chunks it sends. connectionFamilies() is
// the same families as plain samples: what the rendering ahead must match byte for byte (exposition.ts
// renders them; test/unit/connection-metrics.test.ts compares).
import { FAIL_REASONS } from '../kernel/abi.js'
import type { LabelSetSeries, Series } from './aggregator.js'
import {
  formatLe,
  formatValue,
  labelPairs,
  type Format,
  type MetricFamily,
  type MetricType,
  type Sample,
} from './exposition.js'

const CONNECTS = 0
const FAILURES = 1
const ACCEPTS = 2
const CLOSES = 3
const DURATION = 4
const SENT = 5
const RECEIVED = 6
const ACTIVE = 7

/** The families in exposition order; the index is the family's slot in a rendered label set. */
const FAMILIES: ReadonlyArray<{ name: string; help: string; type: MetricType }> = [
  {
    name: 'tcptracer_connects_total',
    help: 'Outbound TCP connections established (reached ESTABLISHED), by the process that called connect().',
    type: 'counter',
  },
  {
    name: 'tcptracer_connect_failures_total',
    help: 'Outbound TCP connection attempts that never reached ESTABLISHED, by reason: refused, timeout, unreachable, other.',
    type: 'counter',
  },
  {
    name: 'tcptracer_accepts_total',
    help: 'Inbound TCP connections accepted, by the process that accepted them.',
    type: 'counter',
  },
  {
    name: 'tcptracer_closes_total',
    help: 'Established TCP connections closed, counted against the process that connected or accepted.',
    type: 'counter',
  },
  {
    name: 'tcptracer_connection_duration_seconds',
    help: 'Lifetime of closed TCP connections, from ESTABLISHED to CLOSE.',
    type: 'histogram',
  },
  {
    name: 'tcptracer_connection_sent_bytes_total',
    help: 'Payload bytes sent on TCP connections, summed when they close.',
    type: 'counter',
  },
  {
    name: 'tcptracer_connection_received_bytes_total',
    help: 'Payload bytes received on TCP connections, summed when they close.',
    type: 'counter',
  },
  {
    name: 'tcptracer_active_connections',
    help: 'Open TCP connections, including those already open when the exporter started.',
    type: 'gauge',
  },
]

const family = (i: number): { name: string; help: string; type: MetricType } => FAMILIES[i]!

/** The connection families of these series as plain samples, in exposition order. */
export function connectionFamilies(series: readonly Series[], bounds: readonly number[]): MetricFamily[] {
  const out = series.filter((s) => s.direction === 'outbound')
  const inb = series.filter((s) => s.direction === 'inbound')
  const withDir = (s: Series): Array<[string, string]> => [...s.labels, ['direction', s.direction]]
  const sample = (labels: Array<[string, string]>, value: number): Sample => ({ labels, value })
  return [
    { ...family(CONNECTS), samples: out.map((s) => sample(s.labels, s.opened)) },
    {
      ...family(FAILURES),
      samples: out.flatMap((s) =>
        FAIL_REASONS.map((r, i) => sample([...s.labels, ['reason', r]], s.failed[i] ?? 0)),
      ),
    },
    { ...family(ACCEPTS), samples: inb.map((s) => sample(s.labels, s.opened)) },
    { ...family(CLOSES), samples: series.map((s) => sample(withDir(s), s.closed)) },
    {
      ...family(DURATION),
      histograms: series.map((s) => ({
        labels: withDir(s),
        bounds,
        counts: s.buckets,
        sum: s.durationSumNs / 1e9,
      })),
    },
    { ...family(SENT), samples: series.map((s) => sample(withDir(s), s.sentBytes)) },
    { ...family(RECEIVED), samples: series.map((s) => sample(withDir(s), s.receivedBytes)) },
    { ...family(ACTIVE), samples: series.map((s) => sample(withDir(s), s.active)) },
  ]
}

/**
 * The fixed bytes of one kind of line, around the label set's own label pairs: `head` pairs `tail` value,
 * or, for a label set without labels, `bare` value. `extra` is what the line adds to the label set's
 * labels (direction, reason, le), already in exposition form.
 */
interface LineShape {
  head: Uint8Array
  tail: Uint8Array
  bare: Uint8Array
}

function shape(name: string, extra: string): LineShape {
  const bytes = (t: string): Uint8Array => new Uint8Array(Buffer.from(t, 'latin1'))
  return {
    head: bytes(name + '{'),
    tail: bytes((extra === '' ? '' : ',' + extra) + '} '),
    bare: bytes(extra === '' ? name + ' ' : name + '{' + extra + '} '),
  }
}

interface DirectionShapes {
  closes: LineShape
  buckets: LineShape[]
  sum: LineShape
  count: LineShape
  sent: LineShape
  received: LineShape
  active: LineShape
}

/** Every kind of line a label set has, for these histogram bounds (`le`, formatted). */
interface Shapes {
  connects: LineShape
  failures: LineShape[]
  accepts: LineShape
  outbound: DirectionShapes
  inbound: DirectionShapes
  /** the most fixed bytes of any line */
  longest: number
}

function shapes(le: readonly string[]): Shapes {
  const hist = family(DURATION).name
  const byDirection = (d: string): DirectionShapes => {
    const dir = 'direction="' + d + '"'
    return {
      closes: shape(family(CLOSES).name, dir),
      buckets: [...le, '+Inf'].map((b) => shape(hist + '_bucket', dir + ',le="' + b + '"')),
      sum: shape(hist + '_sum', dir),
      count: shape(hist + '_count', dir),
      sent: shape(family(SENT).name, dir),
      received: shape(family(RECEIVED).name, dir),
      active: shape(family(ACTIVE).name, dir),
    }
  }
  const all: Omit<Shapes, 'longest'> = {
    connects: shape(family(CONNECTS).name, ''),
    failures: FAIL_REASONS.map((r) => shape(family(FAILURES).name, 'reason="' + r + '"')),
    accepts: shape(family(ACCEPTS).name, ''),
    outbound: byDirection('outbound'),
    inbound: byDirection('inbound'),
  }
  let longest = 0
  const visit = (x: unknown): void => {
    if (Array.isArray(x)) for (const y of x) visit(y)
    else if (x !== null && typeof x === 'object' && 'head' in x) {
      const l = x as LineShape
      longest = Math.max(longest, l.head.length + l.tail.length, l.bare.length)
    } else if (x !== null && typeof x === 'object') for (const y of Object.values(x)) visit(y)
  }
  visit(all)
  return { ...all, longest }
}

/**
 * A Buffer that lines are written or copied into, grown as needed: one family's lines of one format.
 * Bytes once written never change: views of them stay valid when a bigger Buffer replaces this one.
 */
class Arena {
  buf: Buffer
  at = 0

  /**
   * `spare`: a recycled Buffer to fill, taken when it holds at least `need` bytes; otherwise a new one of
   * `capacity` (a little more than `need`: lines grow as their counts gain digits).
   */
  constructor(need: number, capacity: number, spare: Buffer | undefined) {
    this.buf =
      spare !== undefined && spare.length >= need ? spare : Buffer.allocUnsafeSlow(Math.max(4096, capacity))
  }

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return
    this.resize(Math.max(Math.ceil(1.25 * this.buf.length), this.at + n))
  }

  private resize(capacity: number): void {
    const bigger = Buffer.allocUnsafeSlow(capacity)
    this.buf.copy(bigger, 0, 0, this.at)
    this.buf = bigger
  }

  /** Make room for `capacity` bytes in all (the first label set's lines, times the label sets, say). */
  reserve(capacity: number): void {
    if (capacity > this.buf.length) this.resize(capacity)
  }

  /** Copy src[from .. to) to the end. */
  append(src: Buffer, from: number, to: number): void {
    const n = to - from
    if (n <= 0) return
    this.room(n)
    this.at += src.copy(this.buf, this.at, from, to)
  }

  private put(src: Uint8Array): void {
    this.buf.set(src, this.at)
    this.at += src.length
  }

  /** One sample line: the shape around `pairs`, then the value as formatValue() prints it. */
  line(s: LineShape, pairs: Uint8Array, value: number, longest: number): void {
    // a value is at most 24 characters (-1.2345678901234567e+123)
    this.room(longest + pairs.length + 32)
    if (pairs.length === 0) {
      this.put(s.bare)
    } else {
      this.put(s.head)
      this.put(pairs)
      this.put(s.tail)
    }
    const buf = this.buf
    let at = this.at
    if (Number.isSafeInteger(value)) {
      // formatValue() prints these as their plain digits, -0 as 0
      let v = value
      if (v < 0) {
        buf[at++] = 0x2d
        v = -v
      }
      let digits = 1
      for (let t = v; t >= 10; t = (t - (t % 10)) / 10) digits++
      at += digits
      for (let p = at - 1; digits > 0; p--, digits--) {
        const r = v % 10
        buf[p] = 0x30 + r
        v = (v - r) / 10
      }
    } else {
      const t = formatValue(value)
      for (let i = 0; i < t.length; i++) buf[at++] = t.charCodeAt(i)
    }
    buf[at++] = 0x0a
    this.at = at
  }
}

/**
 * The lines of one label set, byte for byte what render() prints for the samples connectionFamilies()
 * makes of its series: the same label pairs (escaped once, by exposition.ts), fixed parts and values.
 * Family f's lines are written at the end of `w[f]`.
 */
function renderSet(
  s: LabelSetSeries,
  pairs: Uint8Array,
  sh: Shapes,
  nbounds: number,
  om: boolean,
  w: readonly Arena[],
): void {
  const L = sh.longest
  const o = s.outbound
  const n = s.inbound
  if (o !== undefined) w[CONNECTS]!.line(sh.connects, pairs, o.opened, L)
  if (o !== undefined) {
    const f = w[FAILURES]!
    for (let i = 0; i < sh.failures.length; i++) f.line(sh.failures[i]!, pairs, o.failed[i] ?? 0, L)
  }
  if (n !== undefined) w[ACCEPTS]!.line(sh.accepts, pairs, n.opened, L)
  const both = [o, n]
  const by = [sh.outbound, sh.inbound]
  for (let d = 0; d < 2; d++) {
    const x = both[d]
    if (x === undefined) continue
    const shp = by[d]!
    w[CLOSES]!.line(shp.closes, pairs, x.closed, L)
    const counts = x.buckets
    if (counts.length !== nbounds + 1) {
      throw new Error(
        `${family(DURATION).name}: ${counts.length} counts for ${nbounds} bounds (want bounds.length + 1)`,
      )
    }
    const h = w[DURATION]!
    let total = 0
    for (let i = 0; i <= nbounds; i++) {
      const c = counts[i]!
      if (!(c >= 0)) {
        throw new Error(`${family(DURATION).name}: bucket counts must not be negative or NaN, got ${c}`)
      }
      total += c
      h.line(shp.buckets[i]!, pairs, total, L)
    }
    if (om) {
      h.line(shp.count, pairs, total, L)
      h.line(shp.sum, pairs, x.durationSumNs / 1e9, L)
    } else {
      h.line(shp.sum, pairs, x.durationSumNs / 1e9, L)
      h.line(shp.count, pairs, total, L)
    }
    w[SENT]!.line(shp.sent, pairs, x.sentBytes, L)
    w[RECEIVED]!.line(shp.received, pairs, x.receivedBytes, L)
    w[ACTIVE]!.line(shp.active, pairs, x.active, L)
  }
}

/** At most this many label sets are rendered anew for one chunk, so that one chunk is quick to make. */
const MAX_RENDERED_PER_CHUNK = 64

const NFAMILIES = FAMILIES.length

/** Retired Lines waited for before their Buffers can be reused; older ones are left to the GC. */
const MAX_RETIRED = 4

/** A format no scrape asked for in more than this many collections in a row has its lines dropped. */
const UNUSED_COLLECTIONS = 3

/**
 * One format's lines of one collection's label sets, family by family: family f's lines of label set i
 * are arenas[f] from starts[f][i] to starts[f][i + 1]. Filled label set by label set as the chunks ask
 * for them: copied from an earlier collection's Lines where the label set did not change, rendered
 * otherwise. A collection whose label sets are all unchanged shares the previous collection's Lines.
 */
class Lines {
  readonly arenas: Arena[]
  readonly starts: number[][]
  /** label sets appended so far */
  filled = 0
  /** collections using these lines that the server has not released yet */
  users = 0
  /** its arenas were given back for reuse: it must never be read again */
  recycled = false

  constructor(
    readonly sets: readonly LabelSetSeries[],
    sizes: readonly number[],
    spares: ReadonlyArray<Buffer | undefined>,
    /** whether `sizes` come from earlier lines; if not, the first label set's lines decide */
    readonly sized: boolean,
  ) {
    this.arenas = sizes.map((n, f) => new Arena(n, Math.ceil(1.05 * n), spares[f]))
    this.starts = sizes.map(() => [0])
  }

  get complete(): boolean {
    return this.filled === this.sets.length
  }
}

/** Where a label set's lines were last put, and of which of its series. */
interface Placed {
  of: LabelSetSeries
  lines: Lines
  index: number
}

/** What is kept of a label set between scrapes. */
interface Kept {
  /** its newest series */
  of: LabelSetSeries
  /** its label pairs, escaped, in UTF-8: `comm="x",netns="1"` */
  pairs: Uint8Array
  placed: Record<Format, Placed | undefined>
  /** the last collection that had this label set */
  gen: number
}

/** One collection's connection families: its label sets' lines, per format, made when first asked for. */
class CollectionLines {
  readonly lines: Record<Format, Lines | undefined>
  private released = false

  constructor(
    private readonly owner: ConnectionExposition,
    private readonly sets: readonly LabelSetSeries[],
    private readonly kept: readonly Kept[],
    /** the previous collection's, when it has the very same series: its Lines serve this one too */
    same: CollectionLines | undefined,
  ) {
    // the very same series: the previous collection's lines serve this one too (unless dropped)
    const carry = (format: Format): Lines | undefined => {
      const l = same?.lines[format]
      return l !== undefined && owner.isNewest(format, l) ? l : undefined
    }
    this.lines = { prometheus: carry('prometheus'), openmetrics: carry('openmetrics') }
    for (const l of Object.values(this.lines)) if (l !== undefined) l.users++
  }

  /** This collection's Lines in `format`. */
  linesFor(format: Format): Lines {
    this.owner.asked(format)
    let l = this.lines[format]
    if (l === undefined) {
      l = this.owner.newLines(format, this.sets)
      l.users++
      this.lines[format] = l
    }
    if (l.recycled) throw new Error('connection-metrics: lines read after they were recycled')
    return l
  }

  /** The server sent or dropped every chunk of this collection: its memory may be reused. */
  release(): void {
    if (this.released) return
    this.released = true
    for (const l of Object.values(this.lines)) if (l !== undefined) l.users--
    this.owner.recycle()
  }

  /**
   * Append label sets to `l` until `upTo` are in, or `maxRendered` had to be rendered. Label sets kept
   * unchanged are copied from where they were put last, runs of them with one copy per family.
   */
  private fill(l: Lines, format: Format, upTo: number, maxRendered: number): void {
    const sh = this.owner.shapes
    const nb = this.owner.nbounds
    const om = format === 'openmetrics'
    let rendered = 0
    // a run of label sets to copy: from `run` (a Lines), indexes runFrom .. runTo - 1
    let run: Lines | undefined
    let runFrom = 0
    let runTo = 0
    const flush = (): void => {
      if (run === undefined) return
      for (let f = 0; f < NFAMILIES; f++) {
        const src = run.starts[f]!
        const dst = l.starts[f]!
        const a = l.arenas[f]!
        const base = a.at - src[runFrom]!
        a.append(run.arenas[f]!.buf, src[runFrom]!, src[runTo]!)
        for (let j = runFrom + 1; j <= runTo; j++) dst.push(base + src[j]!)
      }
      run = undefined
    }
    while (l.filled < upTo && rendered < maxRendered) {
      const i = l.filled
      const s = l.sets[i]!
      const k = this.kept[i]!
      const at = k.placed[format]
      // (never from recycled Lines: their Buffers may be another's arenas now)
      if (
        at !== undefined &&
        at.of === s &&
        at.lines !== l &&
        !at.lines.recycled &&
        at.index < at.lines.filled
      ) {
        if (run === at.lines && runTo === at.index) {
          runTo++
        } else {
          flush()
          run = at.lines
          runFrom = at.index
          runTo = at.index + 1
        }
      } else {
        flush()
        renderSet(s, k.pairs, sh, nb, om, l.arenas)
        rendered++
        this.owner.rendered++
        for (let f = 0; f < NFAMILIES; f++) l.starts[f]!.push(l.arenas[f]!.at)
      }
      // the newest series of the label set are now here too (never point it at older series)
      if (k.of === s) k.placed[format] = { of: s, lines: l, index: i }
      l.filled++
      if (l.filled === 1 && !l.sized) {
        // the first lines of this format: as much room as the first label set's lines times all of them
        const n = l.sets.length
        for (const a of l.arenas) a.reserve(Math.ceil(1.1 * a.at * n) + 4096)
      }
    }
    flush()
    // the lines this one was copied from may be free now
    if (l.complete) this.owner.recycle()
  }

  *chunks(f: number, format: Format, bytes: number): Generator<Buffer> {
    // A response cut off between two chunks can resume its generator once more after the release: it
    // must then neither fill nor read Lines whose Buffers may already be reused
    if (this.released) return
    const l = this.linesFor(format)
    const n = l.sets.length
    let i = 0
    while (i < n) {
      if (this.released || l.recycled) return
      // what is not in yet: copied, or rendered (at most one batch of label sets for this chunk)
      if (l.filled < n) this.fill(l, format, n, MAX_RENDERED_PER_CHUNK)
      // as many label sets as make about `bytes` of this family, and at least one
      const starts = l.starts[f]!
      let j = i + 1
      while (j < l.filled && starts[j + 1]! - starts[i]! <= bytes) j++
      // a view of the arena, which may later be replaced by a bigger copy but never changes where filled
      if (starts[j]! > starts[i]!) yield l.arenas[f]!.buf.subarray(starts[i]!, starts[j]!)
      i = j
    }
  }
}

/**
 * The connection families of successive snapshots, each label set's lines rendered once and kept until
 * its series change. Label sets gone from a snapshot are forgotten.
 */
export class ConnectionExposition {
  /** label sets rendered so far, in either format (the rest of what was sent was copied or shared) */
  rendered = 0
  /** the newest Lines of each format: new ones are sized like it */
  private readonly newest: Record<Format, Lines | undefined> = {
    prometheus: undefined,
    openmetrics: undefined,
  }
  /** Lines no longer the newest of their format, to recycle once nothing uses them */
  private readonly retired: Lines[] = []
  /** one recycled Buffer per family, for the next Lines of either format */
  private readonly spares: Array<Buffer | undefined> = []
  /** Buffers of recycled Lines reused so far (a number for the tests) */
  reused = 0
  shapes: Shapes = shapes([])
  nbounds = 0
  private kept = new Map<string, Kept>()
  private gen = 0
  private bounds: readonly number[] | undefined
  private last: CollectionLines | undefined
  private lastSets: readonly LabelSetSeries[] = []

  /** the last collection in which each format was asked for */
  private readonly askedAt: Record<Format, number> = { prometheus: 0, openmetrics: 0 }
  /** the family sizes of a format's last lines, to size the next ones after its lines were dropped */
  private readonly sizesOf: Record<Format, number[] | undefined> = {
    prometheus: undefined,
    openmetrics: undefined,
  }

  isNewest(format: Format, l: Lines): boolean {
    return this.newest[format] === l
  }

  asked(format: Format): void {
    this.askedAt[format] = this.gen
  }

  /**
   * Drop the lines of a format no scrape asked for lately (a Prometheus that scraped OpenMetrics once,
   * say): nothing is copied from them any more, and they go once no collection uses them.
   */
  private dropUnused(): void {
    for (const format of ['prometheus', 'openmetrics'] as const) {
      const l = this.newest[format]
      // the collections since the last that asked for it, this one not counted (it has not asked yet)
      if (l === undefined || this.gen - this.askedAt[format] - 1 <= UNUSED_COLLECTIONS) continue
      this.sizesOf[format] = l.arenas.map((a) => a.at)
      this.newest[format] = undefined
      for (const k of this.kept.values()) k.placed[format] = undefined
    }
  }

  /** New Lines in `format` for these label sets, in recycled Buffers where there are big enough ones. */
  newLines(format: Format, sets: readonly LabelSetSeries[]): Lines {
    // sized like the newest Lines of this format, which most label sets are copied from (or of the
    // other format, whose lines are as long: only a histogram's _sum and _count swap places)
    const like = this.newest[format]
    const other = this.newest[format === 'openmetrics' ? 'prometheus' : 'openmetrics']
    const hint = (like ?? other)?.arenas.map((a) => a.at) ?? this.sizesOf[format]
    const spares = this.spares
    const sizes = FAMILIES.map((_, f) => (hint ? hint[f]! : 1 << 12))
    const l = new Lines(sets, sizes, spares, hint !== undefined)
    for (let f = 0; f < NFAMILIES; f++) {
      if (spares[f] !== undefined && l.arenas[f]!.buf === spares[f]) this.reused++
      spares[f] = undefined
    }
    if (like !== undefined) {
      this.retired.push(like)
      // Lines a collection never released (a scrape that failed midway, say) are left to the garbage
      // collector: only the last few are waited for
      if (this.retired.length > MAX_RETIRED) this.retired.shift()
    }
    this.newest[format] = l
    return l
  }

  /**
   * Give the Buffers of retired Lines back for reuse, once no collection the server has not released
   * uses them and no label set is to be copied from them. Lines never released are left to the
   * garbage collector.
   */
  recycle(): void {
    for (let r = 0; r < this.retired.length; r++) {
      const l = this.retired[r]!
      if (l.users > 0) continue
      let inUse = false
      for (const k of this.kept.values()) {
        if (k.placed.prometheus?.lines === l || k.placed.openmetrics?.lines === l) {
          inUse = true
          break
        }
      }
      if (inUse) continue
      this.retired.splice(r--, 1)
      l.recycled = true
      const spares = this.spares
      for (let f = 0; f < NFAMILIES; f++) {
        const b = l.arenas[f]!.buf
        if (spares[f] === undefined || spares[f]!.length < b.length) spares[f] = b
      }
    }
  }

  families(sets: readonly LabelSetSeries[], bounds: readonly number[]): MetricFamily[] {
    if (bounds !== this.bounds) {
      let prev = -Infinity
      for (const b of bounds) {
        if (!Number.isFinite(b) || !(b > prev)) {
          throw new Error(`histogram bounds must be finite and increasing, got ${String(bounds)}`)
        }
        prev = b
      }
      this.bounds = bounds
      this.shapes = shapes(bounds.map(formatLe))
      this.nbounds = bounds.length
      this.kept.clear()
      this.last = undefined
      this.lastSets = []
      this.newest.prometheus = undefined
      this.newest.openmetrics = undefined
      this.retired.length = 0
      this.spares.length = 0
      this.sizesOf.prometheus = undefined
      this.sizesOf.openmetrics = undefined
    }
    const gen = ++this.gen
    this.dropUnused()
    const kept: Kept[] = new Array<Kept>(sets.length)
    let same = sets.length === this.lastSets.length
    for (let i = 0; i < sets.length; i++) {
      const s = sets[i]!
      if (same && this.lastSets[i] !== s) same = false
      let k = this.kept.get(s.id)
      if (k === undefined) {
        k = {
          of: s,
          pairs: new Uint8Array(Buffer.from(labelPairs(s.labels, 'label set', false), 'utf8')),
          placed: { prometheus: undefined, openmetrics: undefined },
          gen,
        }
        this.kept.set(s.id, k)
      } else {
        k.of = s
      }
      k.gen = gen
      kept[i] = k
    }
    if (this.kept.size > sets.length) {
      this.kept.forEach((k, id) => {
        if (k.gen !== gen) this.kept.delete(id)
      })
    }
    const lines = new CollectionLines(this, sets, kept, same ? this.last : undefined)
    this.last = lines
    this.lastSets = sets
    return FAMILIES.map((f, i) => ({
      ...f,
      lines: {
        chunks: (format: Format, bytes: number) => lines.chunks(i, format, bytes),
        release: () => lines.release(),
      },
    }))
  }
}
