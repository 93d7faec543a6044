// The one parser of the exposition formats (Prometheus text 0.0.4 and OpenMetrics) for the tests and the
// benchmarks: checkExposition() checks everything about render()'s output (test/unit/exposition.test.ts),
// parseExposition() reads the samples of a real scrape (test/privileged, test/soak, bench). Both read a
// sample line the same way, so a label value means the same thing to every caller.
import assert from 'node:assert/strict'
import { formatLe, type Format } from '../src/metrics/exposition.js'

/** A sample as written: labels in order, the value as text. */
export interface ParsedSample {
  name: string
  labels: Array<[string, string]>
  value: string
}

/** A sample for assertions: metric name, labels and value. */
export interface ScrapedSample {
  name: string
  labels: Record<string, string>
  value: number
}

const NUMBER = /^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?|[+-]?inf(?:inity)?|nan)$/i
const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/
const SUFFIXES: Record<string, string[]> = {
  counter: ['_total'],
  gauge: [''],
  info: ['_info'],
  histogram: ['_bucket', '_count', '_sum'],
}

/**
 * Reads an escaped string: a label value up to its closing quote (returned with the quote's index), or
 * HELP text to the end of the line. Escapes: \\ and \n, and \" except in text-format HELP, where a raw
 * " is allowed instead.
 */
function unescape(line: string, from: number, kind: 'label' | 'text-help' | 'om-help'): [string, number] {
  let s = ''
  let i = from
  for (; i < line.length; i++) {
    const c = line[i]!
    if (c === '"' && kind !== 'text-help') {
      if (kind === 'label') return [s, i]
      throw new Error(`raw " in OpenMetrics HELP ${JSON.stringify(line)}`)
    }
    if (c === '\\') {
      const d = line[++i]
      if (d === 'n') s += '\n'
      else if (d === '\\' || (d === '"' && kind !== 'text-help')) s += d
      else throw new Error(`bad escape \\${d} in ${JSON.stringify(line)}`)
    } else s += c
  }
  if (kind === 'label') throw new Error(`unterminated label value in ${JSON.stringify(line)}`)
  return [s, i]
}

/**
 * One sample line: the name, then `onName(name)` (the caller's checks of the name), then the labels (label
 * syntax and escapes, unique label names), one space and a numeric value. Throws on anything else. Read
 * character by character: a label value may hold `}`, a carriage return or U+2028 (hostile process names).
 */
function sampleLine(line: string, onName: (name: string) => void = () => {}): ParsedSample {
  const name = NAME.exec(line)?.[0]
  assert.ok(name !== undefined, `sample name in ${JSON.stringify(line)}`)
  onName(name)
  let i = name.length
  const labels: Array<[string, string]> = []
  if (line[i] === '{') {
    i++
    while (line[i] !== '}') {
      const ln = LABEL_NAME.exec(line.slice(i))?.[0]
      assert.ok(ln !== undefined, `label name at ${i} in ${JSON.stringify(line)}`)
      i += ln.length
      assert.equal(line.slice(i, i + 2), '="')
      const [value, end] = unescape(line, i + 2, 'label')
      assert.ok(!labels.some(([k]) => k === ln), `label ${ln} once`)
      labels.push([ln, value])
      i = end + 1
      if (line[i] === ',') i++
      else assert.equal(line[i], '}', `} or , after a label in ${JSON.stringify(line)}`)
    }
    i++
  }
  assert.equal(line[i], ' ')
  const value = line.slice(i + 1)
  assert.match(value, NUMBER)
  return { name, labels, value }
}

/**
 * A minimal checking parser for the output of render(): exact structure of metadata lines, one
 * declared family per sample (with the suffixes its type allows), label syntax and escapes, unique
 * label names, numeric values, canonical le, no blank lines or trailing spaces, and # EOF at the
 * end for OpenMetrics. Returns the samples.
 */
export function checkExposition(text: string, format: Format): ParsedSample[] {
  const om = format === 'openmetrics'
  assert.ok(text.endsWith('\n'), 'output ends with a line feed')
  const lines = text.slice(0, -1).split('\n')
  if (om) assert.equal(lines.pop(), '# EOF', 'OpenMetrics output ends with # EOF')
  const samples: ParsedSample[] = []
  const declared = new Set<string>()
  let family: { name: string; type: string } | undefined
  for (const line of lines) {
    assert.ok(line !== '', 'no blank lines')
    assert.ok(!/[ \t]$/.test(line), `no trailing whitespace: ${JSON.stringify(line)}`)
    const meta = /^# (TYPE|HELP) ([^ ]+) (.*)$/.exec(line)
    if (meta !== null) {
      const [, kind, name, rest] = meta as unknown as [string, string, string, string]
      assert.match(name, /^[a-zA-Z_:][a-zA-Z0-9_:]*$/)
      if (kind === 'TYPE') {
        assert.ok(!declared.has(name), `family ${name} declared once`)
        declared.add(name)
        const types = om ? ['counter', 'gauge', 'histogram', 'info'] : ['counter', 'gauge', 'histogram']
        assert.ok(types.includes(rest), `type ${rest}`)
        family = { name, type: rest }
      } else {
        assert.ok(rest !== '', 'no empty HELP')
        unescape(rest, 0, om ? 'om-help' : 'text-help')
        if (om) assert.equal(name, family?.name, 'OpenMetrics: TYPE comes before HELP')
      }
      continue
    }
    assert.ok(!line.startsWith('#'), `unexpected comment ${JSON.stringify(line)}`)
    let type = ''
    const sample = sampleLine(line, (name) => {
      assert.ok(family !== undefined, `sample before any TYPE: ${line}`)
      // In the text format only histograms add suffixes: a counter's or info's samples are named as the family.
      const suffixes = om || family.type === 'histogram' ? (SUFFIXES[family.type] ?? []) : ['']
      const familyName = family.name
      const allowed = suffixes.map((suffix) => familyName + suffix)
      assert.ok(allowed.includes(name), `${name} belongs to the family ${family.name} (${family.type})`)
      type = family.type
    })
    if (sample.name.endsWith('_bucket') && type === 'histogram') {
      const le = sample.labels.find(([k]) => k === 'le')?.[1]
      assert.ok(le !== undefined, 'bucket has le')
      assert.ok(le === '+Inf' || formatLe(Number(le)) === le, `canonical le ${le}`)
    }
    samples.push(sample)
  }
  return samples
}

/**
 * The samples of a scrape in either format, for assertions: comments (HELP, TYPE, # EOF) and blank lines
 * are skipped, every other line must be a sample (sampleLine above), or this throws.
 */
export function parseExposition(text: string): ScrapedSample[] {
  const out: ScrapedSample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const s = sampleLine(line)
    const v = s.value
    out.push({
      name: s.name,
      labels: Object.fromEntries(s.labels),
      value: v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v),
    })
  }
  return out
}
