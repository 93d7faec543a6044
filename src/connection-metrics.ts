// The connection metric families (tcptracer_connects_total and the rest, one series per label set and
// direction), and their exposition kept between scrapes.
//
// A scrape with many label sets is mostly text: 64 sample lines per label set with both directions. Most
// label sets do not change between two scrapes, so each label set's lines are rendered once, into one
// Buffer per format, and kept until its series change (the aggregator then gives it a new
// LabelSetSeries object). A scrape copies those bytes into the chunks it sends. connectionFamilies() is
// the same families as plain samples: what the rendering ahead must match byte for byte (exposition.ts
// renders them; test/unit/connection-metrics.test.ts compares).
import { FAIL_REASON_NAMES, type LabelSetSeries, type Series } from './aggregates.js'
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
        FAIL_REASON_NAMES.map((r, i) => sample([...s.labels, ['reason', r]], s.failed[i] ?? 0)),
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

/** One label set's lines in one format: family f's lines are bytes offsets[f] to offsets[f + 1]. */
interface Rendered {
  bytes: Buffer
  offsets: number[]
}

/** What is kept of a label set between scrapes. */
interface Kept {
  /** the series the rendered lines are of */
  of: LabelSetSeries
  /** its label pairs, escaped, in UTF-8: `comm="x",netns="1"` */
  pairs: Uint8Array
  prometheus: Rendered | undefined
  openmetrics: Rendered | undefined
  /** the last collection that had this label set */
  gen: number
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
    failures: FAIL_REASON_NAMES.map((r) => shape(family(FAILURES).name, 'reason="' + r + '"')),
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

/** Writes lines into one growing scratch Buffer; a label set's lines are then copied out at their size. */
class LineWriter {
  buf = Buffer.allocUnsafeSlow(1 << 16)
  at = 0

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return
    const bigger = Buffer.allocUnsafeSlow(Math.max(2 * this.buf.length, this.at + n))
    this.buf.copy(bigger, 0, 0, this.at)
    this.buf = bigger
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
 */
function renderSet(
  s: LabelSetSeries,
  pairs: Uint8Array,
  sh: Shapes,
  nbounds: number,
  om: boolean,
  w: LineWriter,
): Rendered {
  const L = sh.longest
  const o = s.outbound
  const n = s.inbound
  const offsets = [0]
  w.at = 0
  if (o !== undefined) w.line(sh.connects, pairs, o.opened, L)
  offsets.push(w.at)
  if (o !== undefined) {
    for (let i = 0; i < sh.failures.length; i++) w.line(sh.failures[i]!, pairs, o.failed[i] ?? 0, L)
  }
  offsets.push(w.at)
  if (n !== undefined) w.line(sh.accepts, pairs, n.opened, L)
  offsets.push(w.at)
  const both = [o, n]
  const by = [sh.outbound, sh.inbound]
  for (let d = 0; d < 2; d++) if (both[d] !== undefined) w.line(by[d]!.closes, pairs, both[d]!.closed, L)
  offsets.push(w.at)
  for (let d = 0; d < 2; d++) {
    const x = both[d]
    if (x === undefined) continue
    const shp = by[d]!
    const counts = x.buckets
    if (counts.length !== nbounds + 1) {
      throw new Error(
        `${family(DURATION).name}: ${counts.length} counts for ${nbounds} bounds (want bounds.length + 1)`,
      )
    }
    let total = 0
    for (let i = 0; i <= nbounds; i++) {
      const c = counts[i]!
      if (!(c >= 0)) {
        throw new Error(`${family(DURATION).name}: bucket counts must not be negative or NaN, got ${c}`)
      }
      total += c
      w.line(shp.buckets[i]!, pairs, total, L)
    }
    if (om) {
      w.line(shp.count, pairs, total, L)
      w.line(shp.sum, pairs, x.durationSumNs / 1e9, L)
    } else {
      w.line(shp.sum, pairs, x.durationSumNs / 1e9, L)
      w.line(shp.count, pairs, total, L)
    }
  }
  offsets.push(w.at)
  for (let d = 0; d < 2; d++) if (both[d] !== undefined) w.line(by[d]!.sent, pairs, both[d]!.sentBytes, L)
  offsets.push(w.at)
  for (let d = 0; d < 2; d++) {
    if (both[d] !== undefined) w.line(by[d]!.received, pairs, both[d]!.receivedBytes, L)
  }
  offsets.push(w.at)
  for (let d = 0; d < 2; d++) if (both[d] !== undefined) w.line(by[d]!.active, pairs, both[d]!.active, L)
  offsets.push(w.at)
  const bytes = Buffer.allocUnsafeSlow(w.at)
  w.buf.copy(bytes, 0, 0, w.at)
  return { bytes, offsets }
}

/** At most this many label sets are rendered anew for one chunk, so that one chunk is quick to make. */
const MAX_RENDERED_PER_CHUNK = 64

/** One collection's label sets: the lines each family's chunks are copied from. */
class CollectionLines {
  private readonly rendered: Record<Format, Array<Rendered | undefined>> = { prometheus: [], openmetrics: [] }

  constructor(
    private readonly sets: readonly LabelSetSeries[],
    private readonly kept: readonly Kept[],
    private readonly shapes: Shapes,
    private readonly nbounds: number,
    private readonly writer: LineWriter,
    private readonly counter: { rendered: number },
  ) {}

  /** label sets rendered anew by this collection, so far */
  private renderedNow = 0

  /** Label set i's lines: kept from an earlier scrape, or rendered now (and kept, unless outdated). */
  private linesOf(i: number, format: Format): Rendered {
    const mine = this.rendered[format]
    const had = mine[i]
    if (had !== undefined) return had
    const s = this.sets[i]!
    const k = this.kept[i]!
    let r = k.of === s ? k[format] : undefined
    if (r === undefined) {
      r = renderSet(s, k.pairs, this.shapes, this.nbounds, format === 'openmetrics', this.writer)
      this.renderedNow++
      this.counter.rendered++
      // a later collection may have moved on to newer series of this label set: keep only current lines
      if (k.of === s) k[format] = r
    }
    mine[i] = r
    return r
  }

  *chunks(f: number, format: Format, bytes: number): Generator<Buffer> {
    const n = this.sets.length
    let i = 0
    while (i < n) {
      let size = 0
      const renderedBefore = this.renderedNow
      let j = i
      while (
        j < n &&
        (j === i || (size < bytes && this.renderedNow - renderedBefore < MAX_RENDERED_PER_CHUNK))
      ) {
        const r = this.linesOf(j++, format)
        size += r.offsets[f + 1]! - r.offsets[f]!
      }
      if (size > 0) {
        const chunk = Buffer.allocUnsafe(size)
        let at = 0
        for (let k = i; k < j; k++) {
          const r = this.rendered[format][k]!
          at += r.bytes.copy(chunk, at, r.offsets[f]!, r.offsets[f + 1]!)
        }
        yield chunk
      }
      i = j
    }
  }
}

/**
 * The connection families of successive snapshots, each label set's lines rendered once and kept until
 * its series change. Label sets gone from a snapshot are forgotten.
 */
export class ConnectionExposition {
  /** label sets rendered so far, in either format (the rest of what was sent was kept) */
  rendered = 0
  private kept = new Map<string, Kept>()
  private gen = 0
  private bounds: readonly number[] | undefined
  private shapes: Shapes = shapes([])
  private readonly writer = new LineWriter()

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
      this.kept.clear()
    }
    const gen = ++this.gen
    const kept: Kept[] = new Array<Kept>(sets.length)
    for (let i = 0; i < sets.length; i++) {
      const s = sets[i]!
      let k = this.kept.get(s.id)
      if (k === undefined) {
        k = {
          of: s,
          pairs: new Uint8Array(Buffer.from(labelPairs(s.labels, 'label set', false), 'utf8')),
          prometheus: undefined,
          openmetrics: undefined,
          gen,
        }
        this.kept.set(s.id, k)
      } else if (k.of !== s) {
        k.of = s
        k.prometheus = undefined
        k.openmetrics = undefined
      }
      k.gen = gen
      kept[i] = k
    }
    if (this.kept.size > sets.length) {
      for (const [id, k] of this.kept) if (k.gen !== gen) this.kept.delete(id)
    }
    const lines = new CollectionLines(sets, kept, this.shapes, bounds.length, this.writer, this)
    return FAMILIES.map((f, i) => ({
      ...f,
      lines: { chunks: (format: Format, bytes: number) => lines.chunks(i, format, bytes) },
    }))
  }
}
