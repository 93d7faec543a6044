// The connection metric families (tcptracer_connects_total and the rest, one series per label set and
// direction): their names and help, the families as plain samples (connectionFamilies()), and how one
// label set's lines are rendered into bytes (renderSet(), into an Arena per family). Which lines are
// kept between scrapes, copied or rendered anew is connection-exposition.ts.
//
// connectionFamilies() is what the rendering ahead must match byte for byte (exposition.ts renders
// those samples; test/unit/connection-metrics.test.ts compares).
import { FAIL_REASONS } from '../kernel/abi.js'
import type { LabelSetSeries, Series } from './aggregator.js'
import { formatValue, type MetricFamily, type MetricType, type Sample } from './exposition.js'

const CONNECTS = 0
const FAILURES = 1
const ACCEPTS = 2
const CLOSES = 3
const DURATION = 4
const SENT = 5
const RECEIVED = 6
const ACTIVE = 7

/** The families in exposition order; the index is the family's slot in a rendered label set. */
export const FAMILIES: ReadonlyArray<{ name: string; help: string; type: MetricType }> = [
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
export interface Shapes {
  connects: LineShape
  failures: LineShape[]
  accepts: LineShape
  outbound: DirectionShapes
  inbound: DirectionShapes
  /** the most fixed bytes of any line */
  longest: number
}

export function shapes(le: readonly string[]): Shapes {
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
export class Arena {
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
export function renderSet(
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
