// A small, dependency-free formatter for metric families computed at scrape time, in the Prometheus
// text exposition format 0.0.4 and the OpenMetrics 1.0 text format.
//
// Rendering rules, in brief:
// - Both formats: one line per sample, each ending in '\n', no blank lines, no trailing spaces. The
//   sample name is always `family.name` as given (counters carry `_total`, info families `_info`);
//   histograms add `_bucket`, `_sum` and `_count`. A family without samples still gets its metadata
//   lines, so series declared ahead of time are discoverable. An empty help string leaves out the
//   HELP line (an empty HELP is "no HELP" in OpenMetrics, and would need a trailing space).
// - Text 0.0.4: `# HELP name …` then `# TYPE name …`; info families are typed `gauge` (0.0.4 has no
//   info type); histograms print `_bucket…`, `_sum`, `_count`.
// - OpenMetrics: `# TYPE family …` then `# HELP family …` (the order the spec recommends); the family
//   name of a counter drops `_total` and that of an info family drops `_info`; histograms print
//   `_bucket…`, `_count`, `_sum` (no `_created`); the exposition ends with `# EOF` unless eof: false.
// - Escaping: label values escape backslash, double quote and line feed in both formats. HELP text
//   escapes backslash and line feed in 0.0.4 (its parser rejects any other escape, `\"` included) and
//   backslash, double quote and line feed in OpenMetrics. Lone UTF-16 surrogates, which have no UTF-8
//   encoding, become U+FFFD, so the output is always well-formed UTF-8 whatever Buffer or socket
//   encodes it. Other characters, control characters included, are printed as they are.
// - Sample values (formatValue): NaN, +Inf and -Inf by name; otherwise JavaScript's shortest
//   round-trip repr (String(v)), which prints integers below 1e21 (every safe integer, so every
//   count) as plain digits and other numbers as e.g. 0.25, 1e-7 or 1.5e+300; -0 prints as 0.
// - `le` values (formatLe) are OpenMetrics canonical numbers in both formats: the shortest repr in
//   the style of Go's %g (fixed notation for decimal exponents -4 to 5, otherwise d.ddde±XX with at
//   least two exponent digits), with '.0' appended when that has neither '.' nor 'e':
//   0.0001, 0.005, 1.0, 2.5, 100000.0, 1e-05, 1e+06, +Inf. That is what client_golang writes in
//   OpenMetrics and what Prometheus 3 normalises `le` to when it ingests either format, so the
//   series are the same whichever format was negotiated.
// - Programming errors throw an Error: invalid metric names, a counter without `_total`, an info
//   family without `_info`, a repeated family name, a sample repeating a label name (or using `le`
//   in a histogram), histogram bounds that are not finite and increasing, a counts array whose length
//   is not bounds.length + 1, or a count that is negative or NaN.

export type MetricType = 'counter' | 'gauge' | 'histogram' | 'info'

export interface Sample {
  /** label name/value pairs, in output order; names already valid */
  labels: ReadonlyArray<readonly [string, string]>
  /** ignored for info families, whose value is always 1 */
  value: number
}

interface HistogramSample {
  labels: ReadonlyArray<readonly [string, string]>
  /** upper bounds, increasing, finite; the +Inf bucket is implied */
  bounds: readonly number[]
  /** NON-cumulative counts per bucket: bounds.length + 1 entries, the last is the +Inf overflow bucket */
  counts: readonly number[]
  sum: number
}

export interface MetricFamily {
  /** counters: the name with the _total suffix (foo_total); info: with the _info suffix (foo_info) */
  name: string
  help: string
  type: MetricType
  /** counter, gauge, info (info values are always 1) */
  samples?: readonly Sample[]
  /** histogram */
  histograms?: readonly HistogramSample[]
  /** instead of samples or histograms: sample lines rendered ahead (see SampleLines) */
  lines?: SampleLines
}

/**
 * A family's sample lines, rendered ahead of time by the producer of the family (src/metrics/connection-exposition.ts
 * keeps them between scrapes). They must be exactly what render() would print for the family's samples.
 */
export interface SampleLines {
  /** the sample lines in `format`, as UTF-8 chunks of about `bytes` bytes each (or fewer) */
  chunks(format: Format, bytes: number): Iterable<Buffer>
  /**
   * Optional: every chunk taken from this family, by every reader, has been written out or dropped, and
   * no more will be taken: their memory may be reused. Callers that cannot tell never call it.
   */
  release?(): void
}

export type Format = 'prometheus' | 'openmetrics'

export const CONTENT_TYPES: Record<Format, string> = {
  prometheus: 'text/plain; version=0.0.4; charset=utf-8',
  openmetrics: 'application/openmetrics-text; version=1.0.0; charset=utf-8',
}

interface RenderOptions {
  /** end an OpenMetrics exposition with `# EOF` (default true); ignored for the text format */
  eof?: boolean
  /** print the # HELP and # TYPE lines (default true); false continues a family begun by an earlier call */
  headers?: boolean
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
// Anything a label value or HELP text may need rewritten; a string without any is printed as it is.
// Measured on short ASCII values, one test of this class is a little faster than three includes().
const NEEDS_ESCAPE = /[\\"\n\ud800-\udfff]/

function escapeSlow(s: string, quote: boolean): string {
  let out = ''
  let from = 0
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    let rep: string
    if (c === 0x5c) rep = '\\\\'
    else if (c === 0x0a) rep = '\\n'
    else if (c === 0x22 && quote) rep = '\\"'
    else if (c >= 0xd800 && c <= 0xdbff) {
      const d = s.charCodeAt(i + 1) // NaN past the end
      if (d >= 0xdc00 && d <= 0xdfff) {
        i++ // a well-formed pair
        continue
      }
      rep = '\ufffd'
    } else if (c >= 0xdc00 && c <= 0xdfff) rep = '\ufffd'
    else continue
    out += s.slice(from, i) + rep
    from = i + 1
  }
  return from === 0 ? s : out + s.slice(from)
}

/** A label value (either format), or OpenMetrics HELP text: backslash, double quote, line feed. */
export function escapeLabelValue(s: string): string {
  return NEEDS_ESCAPE.test(s) ? escapeSlow(s, true) : s
}

/** HELP text of the 0.0.4 text format: backslash and line feed only. */
function escapeTextHelp(s: string): string {
  return NEEDS_ESCAPE.test(s) ? escapeSlow(s, false) : s
}

/** A sample value: see the rules at the top of this file. */
export function formatValue(v: number): string {
  if (Number.isFinite(v)) return '' + v
  return v > 0 ? '+Inf' : v < 0 ? '-Inf' : 'NaN'
}

/** A canonical OpenMetrics number, as for `le`: see the rules at the top of this file. */
export function formatLe(v: number): string {
  if (!Number.isFinite(v)) return v > 0 ? '+Inf' : v < 0 ? '-Inf' : 'NaN'
  if (v === 0) return Object.is(v, -0) ? '-0.0' : '0.0'
  // toExponential() without an argument gives the shortest round-trip digits, as String() does.
  const e = v.toExponential()
  const at = e.indexOf('e')
  const exp = Number(e.slice(at + 1))
  if (exp < -4 || exp >= 6) {
    const sign = e.charCodeAt(at + 1) === 0x2d ? '-' : '+'
    const digits = exp < 0 ? -exp : exp
    return e.slice(0, at) + 'e' + sign + (digits < 10 ? '0' : '') + digits
  }
  const s = '' + v // fixed notation for these exponents, with the same shortest digits
  return s.includes('.') ? s : s + '.0'
}

/** The label pairs of one sample as `a="x",b="y"`, checking that no name repeats. */
export function labelPairs(
  labels: ReadonlyArray<readonly [string, string]>,
  name: string,
  noLe: boolean,
): string {
  let s = ''
  for (let i = 0; i < labels.length; i++) {
    const pair = labels[i]!
    const k = pair[0]
    const v = pair[1]
    for (let j = 0; j < i; j++) {
      if (labels[j]![0] === k) throw new Error(`${name}: label ${k} repeated in one sample`)
    }
    if (noLe && k === 'le') throw new Error(`${name}: a histogram sample cannot have its own le label`)
    s += (i === 0 ? '' : ',') + k + '="' + (NEEDS_ESCAPE.test(v) ? escapeSlow(v, true) : v) + '"'
  }
  return s
}

function renderHistograms(
  out: string[],
  name: string,
  histograms: readonly HistogramSample[],
  om: boolean,
  leCache: Map<number, string>,
): void {
  let lastBounds: readonly number[] | undefined
  let le: string[] = []
  for (const h of histograms) {
    const { bounds, counts } = h
    if (bounds !== lastBounds) {
      le = new Array<string>(bounds.length)
      let prev = -Infinity
      for (let i = 0; i < bounds.length; i++) {
        const b = bounds[i]!
        if (!Number.isFinite(b) || !(b > prev)) {
          throw new Error(`${name}: histogram bounds must be finite and increasing, got ${String(bounds)}`)
        }
        prev = b
        let s = leCache.get(b)
        if (s === undefined) leCache.set(b, (s = formatLe(b)))
        le[i] = s
      }
      lastBounds = bounds
    }
    const n = bounds.length
    if (counts.length !== n + 1) {
      throw new Error(`${name}: ${counts.length} counts for ${n} bounds (want bounds.length + 1)`)
    }
    const pairs = labelPairs(h.labels, name, true)
    const prefix = name + (pairs === '' ? '_bucket{le="' : '_bucket{' + pairs + ',le="')
    let total = 0
    for (let i = 0; i <= n; i++) {
      const c = counts[i]!
      if (!(c >= 0)) throw new Error(`${name}: bucket counts must not be negative or NaN, got ${c}`)
      total += c
      out.push(prefix + (i === n ? '+Inf' : le[i]) + '"} ' + formatValue(total) + '\n')
    }
    const braced = pairs === '' ? ' ' : '{' + pairs + '} '
    const sum = name + '_sum' + braced + formatValue(h.sum) + '\n'
    const count = name + '_count' + braced + formatValue(total) + '\n'
    if (om) out.push(count, sum)
    else out.push(sum, count)
  }
}

/**
 * Renders metric families in the Prometheus text format 0.0.4 or in OpenMetrics 1.0 text. Callers that
 * append another registry's OpenMetrics output pass eof: false, leaving `# EOF` to that output.
 */
export function render(families: readonly MetricFamily[], format: Format, opts: RenderOptions = {}): string {
  if (format !== 'prometheus' && format !== 'openmetrics') throw new Error(`unknown format ${String(format)}`)
  const om = format === 'openmetrics'
  const out: string[] = []
  const seen = new Set<string>()
  const leCache = new Map<number, string>()
  for (const f of families) {
    const { name, type, help } = f
    if (!METRIC_NAME.test(name)) throw new Error(`invalid metric name ${JSON.stringify(name)}`)
    let family = name
    let typeWord: string = type
    if (type === 'counter') {
      if (name.length <= 6 || !name.endsWith('_total')) {
        throw new Error(`counter ${name} must end with _total`)
      }
      if (om) family = name.slice(0, -6)
    } else if (type === 'info') {
      if (name.length <= 5 || !name.endsWith('_info')) {
        throw new Error(`info family ${name} must end with _info`)
      }
      if (om) family = name.slice(0, -5)
      else typeWord = 'gauge'
    } else if (type !== 'gauge' && type !== 'histogram') {
      throw new Error(`${name}: unknown metric type ${String(type)}`)
    }
    if (seen.has(family)) throw new Error(`metric family ${family} rendered twice`)
    seen.add(family)

    if (opts.headers === false) {
      // a continuation: the caller printed this family's header with its first part
    } else if (om) {
      out.push('# TYPE ' + family + ' ' + typeWord + '\n')
      if (help !== '') out.push('# HELP ' + family + ' ' + escapeLabelValue(help) + '\n')
    } else {
      if (help !== '') out.push('# HELP ' + family + ' ' + escapeTextHelp(help) + '\n')
      out.push('# TYPE ' + family + ' ' + typeWord + '\n')
    }

    if (f.lines !== undefined) {
      if ((f.samples?.length ?? 0) > 0 || (f.histograms?.length ?? 0) > 0) {
        throw new Error(`${name}: a family takes rendered lines or samples, not both`)
      }
      for (const chunk of f.lines.chunks(format, 1 << 16)) out.push(chunk.toString('utf8'))
      continue
    }
    if (type === 'histogram') {
      if (f.samples !== undefined && f.samples.length > 0) {
        throw new Error(`${name}: a histogram takes histograms, not samples`)
      }
      if (f.histograms !== undefined) renderHistograms(out, name, f.histograms, om, leCache)
      continue
    }
    if (f.histograms !== undefined && f.histograms.length > 0) {
      throw new Error(`${name}: a ${type} takes samples, not histograms`)
    }
    if (f.samples === undefined) continue
    const info = type === 'info'
    for (const s of f.samples) {
      const pairs = labelPairs(s.labels, name, false)
      out.push(name + (pairs === '' ? ' ' : '{' + pairs + '} ') + (info ? '1' : formatValue(s.value)) + '\n')
    }
  }
  if (om && (opts.eof ?? true)) out.push('# EOF\n')
  return out.join('')
}

interface MediaRange {
  type: string
  version: string | undefined
  q: number
}

function parseAccept(accept: string): MediaRange[] {
  const ranges: MediaRange[] = []
  for (const part of accept.split(',')) {
    const params = part.split(';')
    const type = params[0]!.trim().toLowerCase()
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+\/[!#$%&'*+.^_`|~0-9a-z-]+$/.test(type)) continue
    let version: string | undefined
    let q = 1
    for (let i = 1; i < params.length; i++) {
      const p = params[i]!
      const eq = p.indexOf('=')
      if (eq < 0) continue
      const key = p.slice(0, eq).trim().toLowerCase()
      let value = p.slice(eq + 1).trim()
      if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1)
      if (key === 'q') {
        // RFC 9110 qvalue: 0 to 1 with at most three decimals; anything else makes the range unusable.
        q = /^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$/.test(value) ? Number(value) : -1
      } else if (key === 'version') {
        version = value
      }
    }
    if (q >= 0) ranges.push({ type, version, q })
  }
  return ranges
}

/**
 * The exposition format for a request's Accept header: OpenMetrics only when the header names
 * application/openmetrics-text (version 1.0.0, or no version) with q > 0, and that q is at least the
 * one text/plain gets (from a text/plain range, else text/*, else *\/*). Anything else, an absent or
 * unparsable header included, gives the text format. Never throws.
 */
export function negotiate(accept: string | undefined): Format {
  if (typeof accept !== 'string' || accept === '') return 'prometheus'
  try {
    let omQ = 0
    let textQ = -1
    let textSpecificity = -1
    for (const r of parseAccept(accept)) {
      if (r.type === 'application/openmetrics-text') {
        if ((r.version === undefined || r.version === '1.0.0') && r.q > omQ) omQ = r.q
        continue
      }
      const specificity = r.type === 'text/plain' ? 2 : r.type === 'text/*' ? 1 : r.type === '*/*' ? 0 : -1
      if (specificity < 0 || specificity < textSpecificity) continue
      if (specificity > textSpecificity || r.q > textQ) textQ = r.q
      textSpecificity = specificity
    }
    return omQ > 0 && omQ >= textQ ? 'openmetrics' : 'prometheus'
  } catch {
    return 'prometheus'
  }
}

/**
 * The exposition as a sequence of chunks of at most about `perChunk` samples, or `bytesPerChunk` bytes of
 * rendered lines, so a large scrape is streamed instead of held as one string (and its UTF-8 copy) in
 * memory. Small families share a chunk, up to `perChunk` samples in all.
 */
export function* renderChunks(
  families: readonly MetricFamily[],
  format: Format,
  perChunk = 2000,
  bytesPerChunk = 1 << 16,
): Generator<string | Buffer> {
  let group: MetricFamily[] = []
  let grouped = 0
  for (const f of families) {
    if (f.lines !== undefined) {
      // the metadata lines (and the checks) as render() does them, then the lines as they are
      group.push({ name: f.name, help: f.help, type: f.type })
      yield render(group, format, { eof: false })
      group = []
      grouped = 0
      yield* f.lines.chunks(format, bytesPerChunk)
      continue
    }
    const items: readonly unknown[] = (f.type === 'histogram' ? f.histograms : f.samples) ?? []
    const n = Math.max(1, items.length)
    if (group.length > 0 && grouped + n > perChunk) {
      yield render(group, format, { eof: false })
      group = []
      grouped = 0
    }
    if (n <= perChunk) {
      group.push(f)
      grouped += n
      continue
    }
    for (let i = 0; i < items.length; i += perChunk) {
      const part: MetricFamily =
        f.type === 'histogram'
          ? { ...f, histograms: f.histograms?.slice(i, i + perChunk) ?? [] }
          : { ...f, samples: f.samples?.slice(i, i + perChunk) ?? [] }
      yield render([part], format, { eof: false, headers: i === 0 })
    }
  }
  if (group.length > 0) yield render(group, format, { eof: false })
}
