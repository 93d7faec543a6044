import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, openSync, closeSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import {
  CONTENT_TYPES,
  escapeLabelValue,
  formatLe,
  formatValue,
  negotiate,
  render,
  renderChunks,
} from '../../src/metrics/exposition.js'
import type { Format, MetricFamily } from '../../src/metrics/exposition.js'
import { checkExposition, parseExposition, type ParsedSample } from '../exposition-parser.js'

const COUNTER: MetricFamily = {
  name: 'tcptracer_connects_total',
  help: 'Outgoing connections seen.',
  type: 'counter',
  samples: [
    {
      labels: [
        ['comm', 'curl'],
        ['family', 'ipv4'],
      ],
      value: 3,
    },
    { labels: [], value: 0 },
  ],
}

const GAUGE: MetricFamily = {
  name: 'tcptracer_open_connections',
  help: 'Connections open now.',
  type: 'gauge',
  samples: [
    { labels: [['netns', '4026531840']], value: 12 },
    { labels: [['netns', '4026532000']], value: 0.5 },
  ],
}

const INFO: MetricFamily = {
  name: 'tcptracer_build_info',
  help: 'Build information.',
  type: 'info',
  samples: [
    {
      labels: [
        ['version', '0.1.0'],
        ['node', 'v20.20.2'],
      ],
      value: 1,
    },
  ],
}

const HISTOGRAM: MetricFamily = {
  name: 'tcptracer_connect_latency_seconds',
  help: 'Time from connect() to established.',
  type: 'histogram',
  histograms: [
    { labels: [['comm', 'curl']], bounds: [0.0001, 0.005, 1, 2.5], counts: [1, 2, 0, 3, 4], sum: 42.25 },
    { labels: [], bounds: [0.0001, 0.005, 1, 2.5], counts: [0, 0, 0, 0, 0], sum: 0 },
  ],
}

test('content types', () => {
  assert.equal(CONTENT_TYPES.prometheus, 'text/plain; version=0.0.4; charset=utf-8')
  assert.equal(CONTENT_TYPES.openmetrics, 'application/openmetrics-text; version=1.0.0; charset=utf-8')
})

test('counter', () => {
  assert.equal(
    render([COUNTER], 'prometheus'),
    '# HELP tcptracer_connects_total Outgoing connections seen.\n' +
      '# TYPE tcptracer_connects_total counter\n' +
      'tcptracer_connects_total{comm="curl",family="ipv4"} 3\n' +
      'tcptracer_connects_total 0\n',
  )
  assert.equal(
    render([COUNTER], 'openmetrics'),
    '# TYPE tcptracer_connects counter\n' +
      '# HELP tcptracer_connects Outgoing connections seen.\n' +
      'tcptracer_connects_total{comm="curl",family="ipv4"} 3\n' +
      'tcptracer_connects_total 0\n' +
      '# EOF\n',
  )
})

test('gauge', () => {
  const body =
    'tcptracer_open_connections{netns="4026531840"} 12\ntcptracer_open_connections{netns="4026532000"} 0.5\n'
  assert.equal(
    render([GAUGE], 'prometheus'),
    '# HELP tcptracer_open_connections Connections open now.\n# TYPE tcptracer_open_connections gauge\n' +
      body,
  )
  assert.equal(
    render([GAUGE], 'openmetrics'),
    '# TYPE tcptracer_open_connections gauge\n# HELP tcptracer_open_connections Connections open now.\n' +
      body +
      '# EOF\n',
  )
})

test('info: a gauge in the text format, an info family in OpenMetrics, always 1', () => {
  const odd: MetricFamily = { ...INFO, samples: [{ labels: [['version', '0.1.0']], value: 7 }] }
  assert.equal(
    render([INFO, { ...odd, name: 'other_info', help: 'x' }], 'prometheus'),
    '# HELP tcptracer_build_info Build information.\n' +
      '# TYPE tcptracer_build_info gauge\n' +
      'tcptracer_build_info{version="0.1.0",node="v20.20.2"} 1\n' +
      '# HELP other_info x\n' +
      '# TYPE other_info gauge\n' +
      'other_info{version="0.1.0"} 1\n',
  )
  assert.equal(
    render([INFO], 'openmetrics'),
    '# TYPE tcptracer_build info\n' +
      '# HELP tcptracer_build Build information.\n' +
      'tcptracer_build_info{version="0.1.0",node="v20.20.2"} 1\n' +
      '# EOF\n',
  )
})

test('histogram: cumulative buckets, +Inf, sum and count', () => {
  const buckets =
    'tcptracer_connect_latency_seconds_bucket{comm="curl",le="0.0001"} 1\n' +
    'tcptracer_connect_latency_seconds_bucket{comm="curl",le="0.005"} 3\n' +
    'tcptracer_connect_latency_seconds_bucket{comm="curl",le="1.0"} 3\n' +
    'tcptracer_connect_latency_seconds_bucket{comm="curl",le="2.5"} 6\n' +
    'tcptracer_connect_latency_seconds_bucket{comm="curl",le="+Inf"} 10\n'
  const empty =
    'tcptracer_connect_latency_seconds_bucket{le="0.0001"} 0\n' +
    'tcptracer_connect_latency_seconds_bucket{le="0.005"} 0\n' +
    'tcptracer_connect_latency_seconds_bucket{le="1.0"} 0\n' +
    'tcptracer_connect_latency_seconds_bucket{le="2.5"} 0\n' +
    'tcptracer_connect_latency_seconds_bucket{le="+Inf"} 0\n'
  assert.equal(
    render([HISTOGRAM], 'prometheus'),
    '# HELP tcptracer_connect_latency_seconds Time from connect() to established.\n' +
      '# TYPE tcptracer_connect_latency_seconds histogram\n' +
      buckets +
      'tcptracer_connect_latency_seconds_sum{comm="curl"} 42.25\n' +
      'tcptracer_connect_latency_seconds_count{comm="curl"} 10\n' +
      empty +
      'tcptracer_connect_latency_seconds_sum 0\n' +
      'tcptracer_connect_latency_seconds_count 0\n',
  )
  assert.equal(
    render([HISTOGRAM], 'openmetrics'),
    '# TYPE tcptracer_connect_latency_seconds histogram\n' +
      '# HELP tcptracer_connect_latency_seconds Time from connect() to established.\n' +
      buckets +
      'tcptracer_connect_latency_seconds_count{comm="curl"} 10\n' +
      'tcptracer_connect_latency_seconds_sum{comm="curl"} 42.25\n' +
      empty +
      'tcptracer_connect_latency_seconds_count 0\n' +
      'tcptracer_connect_latency_seconds_sum 0\n' +
      '# EOF\n',
  )
})

test('histogram with no bounds has only the +Inf bucket', () => {
  const h: MetricFamily = {
    name: 'h',
    help: 'h',
    type: 'histogram',
    histograms: [{ labels: [], bounds: [], counts: [5], sum: 1.5 }],
  }
  assert.equal(
    render([h], 'prometheus'),
    '# HELP h h\n# TYPE h histogram\nh_bucket{le="+Inf"} 5\nh_sum 1.5\nh_count 5\n',
  )
})

test('histograms with different bounds in one family', () => {
  const h: MetricFamily = {
    name: 'h',
    help: 'h',
    type: 'histogram',
    histograms: [
      { labels: [['a', '1']], bounds: [1], counts: [1, 1], sum: 3 },
      { labels: [['a', '2']], bounds: [0.5, 2], counts: [1, 1, 1], sum: 4 },
    ],
  }
  assert.equal(
    render([h], 'openmetrics', { eof: false }),
    '# TYPE h histogram\n# HELP h h\n' +
      'h_bucket{a="1",le="1.0"} 1\nh_bucket{a="1",le="+Inf"} 2\nh_count{a="1"} 2\nh_sum{a="1"} 3\n' +
      'h_bucket{a="2",le="0.5"} 1\nh_bucket{a="2",le="2.0"} 2\nh_bucket{a="2",le="+Inf"} 3\n' +
      'h_count{a="2"} 3\nh_sum{a="2"} 4\n',
  )
})

test('families without samples keep their HELP and TYPE lines', () => {
  const fams: MetricFamily[] = [
    { name: 'a_total', help: 'A.', type: 'counter', samples: [] },
    { name: 'b', help: 'B.', type: 'gauge' },
    { name: 'c_seconds', help: 'C.', type: 'histogram', histograms: [] },
    { name: 'd_info', help: 'D.', type: 'info' },
  ]
  assert.equal(
    render(fams, 'prometheus'),
    '# HELP a_total A.\n# TYPE a_total counter\n# HELP b B.\n# TYPE b gauge\n' +
      '# HELP c_seconds C.\n# TYPE c_seconds histogram\n# HELP d_info D.\n# TYPE d_info gauge\n',
  )
  assert.equal(
    render(fams, 'openmetrics'),
    '# TYPE a counter\n# HELP a A.\n# TYPE b gauge\n# HELP b B.\n' +
      '# TYPE c_seconds histogram\n# HELP c_seconds C.\n# TYPE d info\n# HELP d D.\n# EOF\n',
  )
})

test('an empty help leaves out the HELP line (no trailing space)', () => {
  const g: MetricFamily = { name: 'g', help: '', type: 'gauge', samples: [{ labels: [], value: 1 }] }
  assert.equal(render([g], 'prometheus'), '# TYPE g gauge\ng 1\n')
  assert.equal(render([g], 'openmetrics'), '# TYPE g gauge\ng 1\n# EOF\n')
})

test('eof option', () => {
  assert.equal(render([], 'openmetrics'), '# EOF\n')
  assert.equal(render([], 'openmetrics', { eof: true }), '# EOF\n')
  assert.equal(render([], 'openmetrics', { eof: false }), '')
  assert.equal(render([GAUGE], 'openmetrics', { eof: false }).includes('# EOF'), false)
  assert.equal(render([], 'prometheus'), '')
  assert.equal(render([GAUGE], 'prometheus', { eof: true }).includes('# EOF'), false)
})

test('HELP escaping: the text format escapes \\ and newline only, OpenMetrics also "', () => {
  const g: MetricFamily = { name: 'g', help: 'a "quoted" \\path\\\nnext\ud800', type: 'gauge' }
  assert.equal(render([g], 'prometheus'), '# HELP g a "quoted" \\\\path\\\\\\nnext\ufffd\n# TYPE g gauge\n')
  assert.equal(
    render([g], 'openmetrics'),
    '# TYPE g gauge\n# HELP g a \\"quoted\\" \\\\path\\\\\\nnext\ufffd\n# EOF\n',
  )
})

test('label value escaping: quotes, backslashes, newlines; } , = # left alone', () => {
  const cases: Array<[string, string]> = [
    ['plain', 'plain'],
    ['', ''],
    ['say "hi"', 'say \\"hi\\"'],
    ['C:\\dir\\', 'C:\\\\dir\\\\'],
    ['two\nlines\n', 'two\\nlines\\n'],
    ['\\n', '\\\\n'],
    ['\\"', '\\\\\\"'],
    ['a}b,c="d"#e', 'a}b,c=\\"d\\"#e'],
    ['tab\tcr\rnul\u0000', 'tab\tcr\rnul\u0000'],
    ['héllo 😀 €', 'héllo 😀 €'],
  ]
  for (const [input, want] of cases) {
    assert.equal(escapeLabelValue(input), want, JSON.stringify(input))
    const g: MetricFamily = {
      name: 'g',
      help: 'g',
      type: 'gauge',
      samples: [{ labels: [['v', input]], value: 1 }],
    }
    assert.equal(render([g], 'prometheus'), `# HELP g g\n# TYPE g gauge\ng{v="${want}"} 1\n`)
    assert.equal(render([g], 'openmetrics'), `# TYPE g gauge\n# HELP g g\ng{v="${want}"} 1\n# EOF\n`)
  }
})

test('lone surrogates become U+FFFD, pairs are kept, so the output is valid UTF-8', () => {
  const cases: Array<[string, string]> = [
    ['\ud800', '\ufffd'],
    ['\udc00', '\ufffd'],
    ['x\ud83d', 'x\ufffd'],
    ['\ude00\ud83d', '\ufffd\ufffd'], // a pair in the wrong order
    ['\ud83d\ude00', '\ud83d\ude00'], // 😀
    ['\ud83d\ud83d\ude00', '\ufffd\ud83d\ude00'],
    ['a"\ud800\n', 'a\\"\ufffd\\n'],
  ]
  for (const [input, want] of cases) {
    assert.equal(escapeLabelValue(input), want, JSON.stringify(input))
    const out = render(
      [{ name: 'g', help: 'g', type: 'gauge', samples: [{ labels: [['v', input]], value: 1 }] }],
      'prometheus',
    )
    const bytes = Buffer.from(out, 'utf8')
    assert.equal(new TextDecoder('utf-8', { fatal: true }).decode(bytes), out)
  }
})

test('sample values', () => {
  const cases: Array<[number, string]> = [
    [0, '0'],
    [-0, '0'],
    [1, '1'],
    [-3, '-3'],
    [1234567890123, '1234567890123'],
    [Number.MAX_SAFE_INTEGER, '9007199254740991'],
    [0.5, '0.5'],
    [0.1 + 0.2, '0.30000000000000004'],
    [1e-7, '1e-7'],
    [123e-20, '1.23e-18'],
    [1e21, '1e+21'],
    [Number.MAX_VALUE, '1.7976931348623157e+308'],
    [5e-324, '5e-324'],
    [NaN, 'NaN'],
    [Infinity, '+Inf'],
    [-Infinity, '-Inf'],
  ]
  for (const [v, want] of cases) {
    assert.equal(formatValue(v), want, String(v))
    const out = render(
      [{ name: 'g', help: 'g', type: 'gauge', samples: [{ labels: [], value: v }] }],
      'openmetrics',
    )
    assert.equal(out, `# TYPE g gauge\n# HELP g g\ng ${want}\n# EOF\n`)
  }
  const h: MetricFamily = {
    name: 'h',
    help: 'h',
    type: 'histogram',
    histograms: [{ labels: [], bounds: [], counts: [0], sum: NaN }],
  }
  assert.match(render([h], 'prometheus'), /\nh_sum NaN\n/)
})

test('le values are OpenMetrics canonical numbers (Go %g, with .0 added)', () => {
  // The examples the OpenMetrics 1.0 spec gives under "Canonical Numbers", and a few more.
  const canonical =
    '0.0 0.001 0.002 0.01 0.1 0.9 0.95 0.99 0.999 1.0 1.7 10.0 ' +
    '1e-10 1e-09 1e-05 0.0001 0.1 1.0 100000.0 1e+06 1e+10'
  for (const s of canonical.split(' ')) assert.equal(formatLe(Number(s)), s)
  const cases: Array<[number, string]> = [
    [0.005, '0.005'],
    [0.025, '0.025'],
    [2.5, '2.5'],
    [0.00012, '0.00012'],
    [0.000012, '1.2e-05'],
    [123456, '123456.0'],
    [999999, '999999.0'],
    [1234567, '1.234567e+06'],
    [1e100, '1e+100'],
    [1.5e-300, '1.5e-300'],
    [5e-324, '5e-324'],
    [-1, '-1.0'],
    [-0.25, '-0.25'],
    [-2e-7, '-2e-07'],
    [-0, '-0.0'],
    [0.1 + 0.2, '0.30000000000000004'],
    [Infinity, '+Inf'],
    [-Infinity, '-Inf'],
  ]
  for (const [v, want] of cases) assert.equal(formatLe(v), want, String(v))
  // every canonical le parses back to the same number
  for (const [v, s] of cases) if (Number.isFinite(v)) assert.equal(Number(s), v)
})

test('programming errors throw', () => {
  const gauge = (labels: ReadonlyArray<readonly [string, string]>): MetricFamily => ({
    name: 'g',
    help: 'g',
    type: 'gauge',
    samples: [{ labels, value: 1 }],
  })
  assert.throws(
    () =>
      render(
        [
          gauge([
            ['a', '1'],
            ['b', '2'],
            ['a', '3'],
          ]),
        ],
        'prometheus',
      ),
    /label a repeated/,
  )
  assert.throws(
    () =>
      render(
        [
          {
            name: 'h',
            help: 'h',
            type: 'histogram',
            histograms: [{ labels: [['le', '1']], bounds: [], counts: [0], sum: 0 }],
          },
        ],
        'openmetrics',
      ),
    /le label/,
  )
  const hist = (bounds: number[], counts: number[]): MetricFamily => ({
    name: 'h',
    help: 'h',
    type: 'histogram',
    histograms: [{ labels: [], bounds, counts, sum: 0 }],
  })
  assert.throws(() => render([hist([1, 2], [0, 0])], 'prometheus'), /2 counts for 2 bounds/)
  assert.throws(() => render([hist([1, 2], [0, 0, 0, 0])], 'prometheus'), /4 counts for 2 bounds/)
  assert.throws(() => render([hist([2, 1], [0, 0, 0])], 'prometheus'), /finite and increasing/)
  assert.throws(() => render([hist([1, 1], [0, 0, 0])], 'prometheus'), /finite and increasing/)
  assert.throws(() => render([hist([1, Infinity], [0, 0, 0])], 'prometheus'), /finite and increasing/)
  assert.throws(() => render([hist([NaN], [0, 0])], 'prometheus'), /finite and increasing/)
  assert.throws(() => render([hist([1], [0, -1])], 'prometheus'), /negative or NaN/)
  assert.throws(() => render([hist([1], [NaN, 0])], 'prometheus'), /negative or NaN/)
  assert.throws(
    () => render([{ ...COUNTER, name: 'tcptracer_connects' }], 'prometheus'),
    /must end with _total/,
  )
  assert.throws(() => render([{ ...COUNTER, name: '_total' }], 'openmetrics'), /must end with _total/)
  assert.throws(() => render([{ ...INFO, name: 'tcptracer_build' }], 'openmetrics'), /must end with _info/)
  assert.throws(() => render([{ ...GAUGE, name: 'bad-name' }], 'prometheus'), /invalid metric name/)
  assert.throws(() => render([{ ...GAUGE, name: '' }], 'prometheus'), /invalid metric name/)
  assert.throws(() => render([GAUGE, GAUGE], 'prometheus'), /rendered twice/)
  // foo_total (counter) and foo (gauge) are the same family in OpenMetrics
  const clash: MetricFamily = { name: 'tcptracer_connects', help: 'x', type: 'gauge' }
  assert.doesNotThrow(() => render([COUNTER, clash], 'prometheus'))
  assert.throws(() => render([COUNTER, clash], 'openmetrics'), /rendered twice/)
  assert.throws(
    () => render([{ ...HISTOGRAM, samples: [{ labels: [], value: 1 }] }], 'prometheus'),
    /not samples/,
  )
  assert.throws(
    () => render([{ ...GAUGE, histograms: HISTOGRAM.histograms ?? [] }], 'prometheus'),
    /not histograms/,
  )
  assert.throws(() => render([{ ...GAUGE, type: 'summary' as 'gauge' }], 'prometheus'), /unknown metric type/)
  assert.throws(() => render([], 'json' as Format), /unknown format/)
})

test('negotiate', () => {
  const prometheusAccept =
    'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,' +
    'text/plain;version=0.0.4;q=0.5,*/*;q=0.1'
  const cases: Array<[string | undefined, Format]> = [
    [undefined, 'prometheus'],
    ['', 'prometheus'],
    ['*/*', 'prometheus'],
    ['text/plain', 'prometheus'],
    ['text/plain; version=0.0.4', 'prometheus'],
    ['application/openmetrics-text', 'openmetrics'],
    ['application/openmetrics-text; version=1.0.0', 'openmetrics'],
    ['application/openmetrics-text; version=1.0.0; charset=utf-8', 'openmetrics'],
    ['Application/OpenMetrics-Text; Version="1.0.0"', 'openmetrics'],
    [prometheusAccept, 'openmetrics'],
    ['application/openmetrics-text;version=0.0.1', 'prometheus'],
    ['application/openmetrics-text;version=2.0.0', 'prometheus'],
    ['application/openmetrics-text;version=0.0.1,text/plain;q=0.1', 'prometheus'],
    ['application/openmetrics-text;q=0', 'prometheus'],
    ['application/openmetrics-text;version=1.0.0;q=0.000', 'prometheus'],
    ['application/openmetrics-text;q=0,text/plain;q=0', 'prometheus'],
    ['application/openmetrics-text;q=0.5,text/plain', 'prometheus'],
    ['text/plain,application/openmetrics-text', 'openmetrics'], // a tie goes to OpenMetrics
    ['text/plain;q=0.5,application/openmetrics-text;q=0.5', 'openmetrics'],
    ['text/plain;q=0.5,application/openmetrics-text;q=0.499', 'prometheus'],
    ['application/openmetrics-text;q=0.5,*/*', 'prometheus'],
    ['application/openmetrics-text;q=0.5,text/*', 'prometheus'],
    ['application/openmetrics-text;q=0.5,text/plain;q=0.2,*/*', 'openmetrics'], // text/plain is more specific
    ['application/openmetrics-text;q=0.5,text/*;q=0.2,*/*', 'openmetrics'],
    ['application/openmetrics-text;q=0.1,application/json', 'openmetrics'],
    ['application/openmetrics-text;q=2', 'prometheus'], // invalid q: the range is ignored
    ['application/openmetrics-text;q=abc', 'prometheus'],
    ['application/openmetrics-text;q=-1', 'prometheus'],
    ['application/openmetrics-text;q=0.5;q', 'openmetrics'],
    ['application/openmetrics-text;q=1.0,text/plain;q=nope', 'openmetrics'],
    ['garbage', 'prometheus'],
    [';;;,,,==', 'prometheus'],
    ['application/openmetrics-text/extra', 'prometheus'],
    ['\u0000\ud800 application/openmetrics-text;;=;version=', 'prometheus'],
    [',application/openmetrics-text,', 'openmetrics'],
    ['application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;q=0.5', 'openmetrics'],
    ['x'.repeat(100_000), 'prometheus'],
  ]
  for (const [accept, want] of cases) assert.equal(negotiate(accept), want, JSON.stringify(accept))
  // not a string at all, from a careless caller
  assert.equal(negotiate(['application/openmetrics-text'] as unknown as string), 'prometheus')
  assert.equal(negotiate(null as unknown as undefined), 'prometheus')
})

// ---------------------------------------------------------------------------------------------------------------
// Whole expositions: a rich fixture, checked by promtool (text format) and by a small parser (both formats).

const HOSTILE = [
  'a"b',
  'back\\slash\\',
  'multi\nline\n',
  '}{,=#',
  'lone \ud800 high',
  'lone \udfff low',
  '😀 ok',
  '\r\t',
]

function richFixture(): MetricFamily[] {
  const bounds = [0.0001, 0.001, 0.01, 0.1, 1, 10]
  return [
    { ...INFO },
    {
      name: 'tcptracer_connects_total',
      help: 'Connects, "quoted" help with a \\ backslash\nand a second line.',
      type: 'counter',
      samples: HOSTILE.map((v, i) => ({
        labels: [
          ['comm', v],
          ['family', i % 2 ? 'ipv6' : 'ipv4'],
        ] as const,
        value: i * 7,
      })),
    },
    { name: 'tcptracer_accepts_total', help: 'Accepts (none yet).', type: 'counter', samples: [] },
    {
      name: 'tcptracer_open_connections',
      help: 'Open connections.',
      type: 'gauge',
      samples: [
        { labels: [], value: 3 },
        { labels: [['netns', 'nan']], value: NaN },
        { labels: [['netns', 'inf']], value: Infinity },
        { labels: [['netns', 'ninf']], value: -Infinity },
        { labels: [['netns', 'tiny']], value: 1e-9 },
        { labels: [['netns', 'huge']], value: 2 ** 70 },
      ],
    },
    {
      name: 'tcptracer_connect_latency_seconds',
      help: 'Connect latency.',
      type: 'histogram',
      histograms: [
        ...HOSTILE.map((v, i) => ({
          labels: [['comm', v]] as const,
          bounds,
          counts: [i, 0, 1, 2, 3, 0, 1],
          sum: i + 0.5,
        })),
        { labels: [], bounds: [1e-6, 1e6], counts: [1, 2, 3], sum: 1e6 },
      ],
    },
    { name: 'tcptracer_close_latency_seconds', help: 'No histograms yet.', type: 'histogram' },
  ]
}

test('rich fixture: both formats parse, and expose the same samples', () => {
  const text = checkExposition(render(richFixture(), 'prometheus'), 'prometheus')
  const om = checkExposition(render(richFixture(), 'openmetrics'), 'openmetrics')
  // the same series and values; only the order of _sum and _count differs
  const byKey = (samples: ParsedSample[]): Map<string, string> =>
    new Map(samples.map((s) => [JSON.stringify([s.name, s.labels]), s.value]))
  assert.equal(om.length, text.length)
  assert.deepEqual(byKey(om), byKey(text))
  // label values round-trip (lone surrogates as U+FFFD)
  const comms = text.filter((s) => s.name === 'tcptracer_connects_total').map((s) => s.labels[0]?.[1])
  assert.deepEqual(
    comms,
    HOSTILE.map((v) =>
      v.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd'),
    ),
  )
  // histograms: cumulative, +Inf is the total, count equals +Inf
  const inf = text.filter((s) => s.labels.some(([k, v]) => k === 'le' && v === '+Inf')).map((s) => s.value)
  const counts = text.filter((s) => s.name === 'tcptracer_connect_latency_seconds_count').map((s) => s.value)
  assert.deepEqual(inf, counts)
  assert.deepEqual(counts, [...HOSTILE.map((_, i) => String(i + 7)), '6'])
})

test('rich fixture: the scrape parser of the tests and bench reads the same samples as the checking parser', () => {
  for (const format of ['prometheus', 'openmetrics'] as const) {
    const text = render(richFixture(), format)
    assert.deepEqual(
      parseExposition(text),
      checkExposition(text, format).map((s) => ({
        name: s.name,
        labels: Object.fromEntries(s.labels),
        value: s.value === '+Inf' ? Infinity : s.value === '-Inf' ? -Infinity : Number(s.value),
      })),
    )
  }
})

function promtoolAvailable(): boolean {
  const r = spawnSync('promtool', ['--version'], { encoding: 'utf8' })
  return r.error === undefined && r.status === 0
}

test("renderChunks: the chunks joined are render()'s output; small families share a chunk", () => {
  const families = richFixture()
  const samples = (f: MetricFamily): number => Math.max(1, (f.samples ?? f.histograms ?? []).length)
  for (const format of ['prometheus', 'openmetrics'] as const) {
    const whole = render(families, format, { eof: false })
    for (const perChunk of [1, 2, 3, 5, 100, 2000]) {
      const chunks = [...renderChunks(families, format, perChunk)]
      assert.equal(chunks.join(''), whole, `${format}, ${perChunk} per chunk`)
      for (const c of chunks) assert.equal(typeof c, 'string')
      // no fewer chunks than the samples need at perChunk each (a family without samples counts as one)
      const total = families.reduce((a, f) => a + samples(f), 0)
      assert.ok(
        chunks.length >= Math.ceil(total / perChunk),
        `${format}, ${perChunk}: ${chunks.length} chunks`,
      )
    }
    // all of it in one chunk when it fits
    assert.equal([...renderChunks(families, format, 2000)].length, 1)
  }
  // rendered lines pass through as they are, after their family's metadata
  const lines: MetricFamily = {
    name: 'tcptracer_closes_total',
    help: 'Closes.',
    type: 'counter',
    lines: {
      chunks: () => [
        Buffer.from('tcptracer_closes_total{a="1"} 2\n'),
        Buffer.from('tcptracer_closes_total 3\n'),
      ],
    },
  }
  const out = [...renderChunks([{ ...INFO }, lines, { ...GAUGE }], 'prometheus', 100)]
  assert.deepEqual(
    out.map((c) => (typeof c === 'string' ? 'text' : 'bytes')),
    ['text', 'bytes', 'bytes', 'text'],
  )
  const joined = out.map((c) => c.toString()).join('')
  assert.equal(
    joined,
    render([{ ...INFO }], 'prometheus') +
      '# HELP tcptracer_closes_total Closes.\n# TYPE tcptracer_closes_total counter\n' +
      'tcptracer_closes_total{a="1"} 2\ntcptracer_closes_total 3\n' +
      render([{ ...GAUGE }], 'prometheus'),
  )
  assert.equal(render([{ ...INFO }, lines, { ...GAUGE }], 'prometheus'), joined)
  assert.throws(() => render([{ ...lines, samples: [{ labels: [], value: 1 }] }], 'prometheus'), /not both/)
})

test('promtool check metrics accepts the text format', (t) => {
  if (!promtoolAvailable()) {
    if (process.env['CI'] === 'true') assert.fail('promtool is not on PATH (install the prometheus package)')
    console.warn(
      '\n*** WARNING: promtool is not on PATH: the exposition format is NOT validated by promtool ***\n',
    )
    t.skip('promtool not installed')
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'exposition-'))
  try {
    const file = join(dir, 'metrics.prom')
    writeFileSync(file, render(richFixture(), 'prometheus'))
    const fd = openSync(file, 'r')
    let r
    try {
      r = spawnSync('promtool', ['check', 'metrics'], { stdio: [fd, 'pipe', 'pipe'], encoding: 'utf8' })
    } finally {
      closeSync(fd)
    }
    const output = (r.stdout + r.stderr).trim()
    if (output !== '') console.log(`promtool check metrics says:\n${output}`)
    // Exit status 3 is lint problems only, 1 a parse error; the fixture is meant to be lint-clean.
    assert.equal(r.status, 0, output)
    assert.equal(output, '')
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

// promtool check metrics (Prometheus 2.x) reads only the text format 0.0.4: on OpenMetrics it trips over
// `\"` in HELP and `# TYPE … info`. So OpenMetrics is checked by checkExposition()
// (test/exposition-parser.ts), not by promtool.
