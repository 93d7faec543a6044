import { test } from 'node:test'
import assert from 'node:assert/strict'

import type { TcpEvent } from '../../src/kernel/abi.js'
import { jsonLine, printable, textHeader, textLine } from '../../src/cli/trace-format.js'
import type { TextOptions } from '../../src/cli/trace-format.js'

/**
 * The subset of Python's %-formatting that tcptracer uses: %[-][width][.prec](s|d|f).
 * Width counts code points, as Python 3 str does.
 */
function py(fmt: string, ...args: Array<string | number | bigint>): string {
  let i = 0
  return fmt.replace(
    /%(-?)(\d*)(?:\.(\d+))?([sdf])/g,
    (_m: string, minus: string, width: string, prec: string | undefined, conv: string) => {
      const a = args[i++]
      assert.ok(a !== undefined, `missing argument for ${fmt}`)
      let s: string
      if (conv === 'd') s = BigInt(a).toString()
      else if (conv === 'f') s = Number(a).toFixed(prec === undefined ? 6 : Number(prec))
      else s = String(a)
      const pad = ' '.repeat(Math.max(0, Number(width || 0) - [...s].length))
      return minus === '-' ? s + pad : pad + s
    },
  )
}

test('py helper reproduces Python %-formatting', () => {
  assert.equal(py('%-6d|', 42), '42    |')
  assert.equal(py('%-2s |', 'C'), 'C  |')
  assert.equal(py('%-9.3f|', 1.2345678), '1.235    |')
  assert.equal(py('%-14d|', 10n ** 15n), '1000000000000000|')
  assert.equal(py('%-4s|', 'né€'), 'né€ |')
})

const BASE: TcpEvent = {
  type: 'connect',
  tsNs: 1_000_000_000_000n,
  pid: 4242,
  comm: 'curl',
  ip: 4,
  saddr: '10.0.0.1',
  sport: 51234,
  daddr: '93.184.216.34',
  dport: 443,
  netns: 4026531840,
  cgroupId: 7777n,
  direction: 'outbound',
  durationNs: 0n,
  bytesSent: 0n,
  bytesReceived: 0n,
}

function ev(over: Partial<TcpEvent> = {}): TcpEvent {
  return { ...BASE, ...over }
}

const START = 1_000_000_000_000n

const MODES: Array<[string, TextOptions]> = [
  ['plain', { timestamp: false, verbose: false, netnsFiltered: false }],
  ['plain, netns filter', { timestamp: false, verbose: false, netnsFiltered: true }],
  ['-t', { timestamp: true, verbose: false, netnsFiltered: false }],
  ['-v', { timestamp: false, verbose: true, netnsFiltered: false }],
  ['-v with netns filter', { timestamp: false, verbose: true, netnsFiltered: true }],
  ['-t -v', { timestamp: true, verbose: true, netnsFiltered: false }],
  ['-t -v with netns filter', { timestamp: true, verbose: true, netnsFiltered: true }],
]

/** The header as tcptracer.py prints it. */
function pyHeader(o: TextOptions): string {
  if (o.verbose) {
    let h = o.timestamp ? py('%-14s', 'TIME(ns)') : ''
    h += py(
      '%-12s %-6s %-16s %-2s %-16s %-16s %-6s %-7s',
      'TYPE',
      'PID',
      'COMM',
      'IP',
      'SADDR',
      'DADDR',
      'SPORT',
      'DPORT',
    )
    if (!o.netnsFiltered) h += py('%-8s', 'NETNS')
    return h
  }
  const h = o.timestamp ? py('%-9s', 'TIME(s)') : ''
  return (
    h +
    py(
      '%-2s %-6s %-16s %-2s %-16s %-16s %-6s %-6s',
      'T',
      'PID',
      'COMM',
      'IP',
      'SADDR',
      'DADDR',
      'SPORT',
      'DPORT',
    )
  )
}

const LETTER = { connect: 'C', accept: 'A', close: 'X', connect_failed: 'F' } as const
const WORD = { connect: 'connect', accept: 'accept', close: 'close', connect_failed: 'connfail' } as const

/** A row as tcptracer.py prints it, right-trimmed, with the failure reason appended. */
function pyRow(e: TcpEvent, o: TextOptions, startNs: bigint, comm = e.comm): string {
  let s = ''
  if (o.timestamp) {
    s += o.verbose ? py('%-14d', e.tsNs - startNs) : py('%-9.3f', Number(e.tsNs - startNs) / 1000000000.0)
  }
  s += o.verbose ? py('%-12s ', WORD[e.type]) : py('%-2s ', LETTER[e.type])
  const a = (x: string): string => (e.ip === 6 ? `[${x}]` : x)
  s += py(
    '%-6d %-16s %-2d %-16s %-16s %-6d %-6d',
    e.pid,
    comm,
    e.ip,
    a(e.saddr),
    a(e.daddr),
    e.sport,
    e.dport,
  )
  if (o.verbose && !o.netnsFiltered) s += py(' %-8d', e.netns)
  if (e.type === 'connect_failed' && e.reason !== undefined) s += ` ${e.reason}`
  return s.trimEnd()
}

test('textHeader: literal anchors', () => {
  assert.equal(
    textHeader({ timestamp: false, verbose: false, netnsFiltered: false }),
    'T  PID    COMM             IP SADDR            DADDR            SPORT  DPORT ',
  )
  assert.equal(
    textHeader({ timestamp: true, verbose: true, netnsFiltered: false }),
    'TIME(ns)      TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT  NETNS   ',
  )
})

test('textHeader matches tcptracer.py', () => {
  for (const [name, o] of MODES) assert.equal(textHeader(o), pyHeader(o), name)
})

const EVENTS: Array<[string, TcpEvent]> = [
  ['IPv4 connect', ev()],
  ['IPv4 accept', ev({ type: 'accept', direction: 'inbound', sport: 80, dport: 40000, comm: 'nginx' })],
  ['IPv4 close', ev({ type: 'close', durationNs: 5n, bytesSent: 10n, bytesReceived: 20n })],
  ['IPv4 connect_failed', ev({ type: 'connect_failed', reason: 'refused' })],
  [
    'IPv6 connect',
    ev({ ip: 6, saddr: '2001:db8::1', daddr: '2001:db8:85a3::8a2e:370:7334', tsNs: START + 1_234_567_890n }),
  ],
  ['IPv6 accept', ev({ ip: 6, type: 'accept', direction: 'inbound', saddr: '::1', daddr: '::1' })],
  ['IPv6 close', ev({ ip: 6, type: 'close', saddr: 'fe80::1', daddr: 'fe80::2', tsNs: START + 999_999n })],
  [
    'IPv6 connect_failed',
    ev({ ip: 6, type: 'connect_failed', reason: 'unreachable', saddr: '::1', daddr: '2001:db8::dead' }),
  ],
  ['full 16-char comm', ev({ comm: '0123456789abcdef', pid: 4194304 })],
  ['non-ASCII comm', ev({ comm: 'né€日本', tsNs: START + 61_000_500_000n })],
  ['empty comm, pid 0', ev({ comm: '', pid: 0, sport: 1, dport: 65535 })],
  ['big timestamps', ev({ tsNs: START + 3_600_000_000_001n, netns: 4294967295 })],
]

test('textLine matches tcptracer.py', async (t) => {
  for (const [mode, o] of MODES) {
    for (const [name, e] of EVENTS) {
      await t.test(`${mode}: ${name}`, () => {
        assert.equal(textLine(e, o, START), pyRow(e, o, START))
      })
    }
  }
})

test('textLine: literal anchors', () => {
  const plain = { timestamp: false, verbose: false, netnsFiltered: false }
  const tv = { timestamp: true, verbose: true, netnsFiltered: false }
  assert.equal(
    textLine(ev(), plain, START),
    'C  4242   curl             4  10.0.0.1         93.184.216.34    51234  443',
  )
  assert.equal(
    textLine(
      ev({ ip: 6, saddr: '::1', daddr: '::1', tsNs: START + 1_500_000_000n }),
      { ...plain, timestamp: true },
      START,
    ),
    '1.500    C  4242   curl             6  [::1]            [::1]            51234  443',
  )
  assert.equal(
    textLine(ev({ tsNs: START + 42n }), tv, START),
    '42            connect      4242   curl             4  10.0.0.1         93.184.216.34    51234  443    4026531840',
  )
  assert.equal(
    textLine(ev({ type: 'connect_failed', reason: 'timeout' }), plain, START),
    'F  4242   curl             4  10.0.0.1         93.184.216.34    51234  443    timeout',
  )
  assert.equal(
    textLine(ev({ type: 'connect_failed', reason: 'other' }), { ...tv, netnsFiltered: true }, START),
    '0             connfail     4242   curl             4  10.0.0.1         93.184.216.34    51234  443    other',
  )
})

test('textLine: timestamps are relative to startNs', () => {
  const o = { timestamp: true, verbose: false, netnsFiltered: false }
  const ov = { ...o, verbose: true }
  const cases: Array<[bigint, bigint, string, string]> = [
    [START, START, '0.000', '0'],
    [START, START + 1n, '0.000', '1'],
    [START, START + 1_000_000n, '0.001', '1000000'],
    [START, START + 12_345_678_901n, '12.346', '12345678901'],
    // beyond 2^53 ns of uptime, the difference is still exact
    [2n ** 60n, 2n ** 60n + 7n, '0.000', '7'],
    [2n ** 63n, 2n ** 63n + 123_456_789_012_345n, '123456.789', '123456789012345'],
  ]
  for (const [start, ts, secs, ns] of cases) {
    const line = textLine(ev({ tsNs: ts }), o, start)
    assert.ok(line.startsWith(`${py('%-9s', secs)}C  4242 `), `seconds for ${ts - start}: ${line}`)
    const vline = textLine(ev({ tsNs: ts }), ov, start)
    assert.ok(vline.startsWith(`${py('%-14s', ns)}connect      4242 `), `ns for ${ts - start}: ${vline}`)
  }
})

test('textLine: comm is shown through printable()', () => {
  const o = { timestamp: false, verbose: false, netnsFiltered: false }
  const e = ev({ comm: 'a\nb\\c"d' })
  assert.equal(textLine(e, o, START), pyRow(e, o, START, 'a\\x0ab\\\\c"d'))
  assert.ok(!textLine(e, o, START).includes('\n'))
})

test('printable', () => {
  const cases: Array<[string, string]> = [
    ['', ''],
    ['curl', 'curl'],
    ['say "hi" \'there\'', 'say "hi" \'there\''],
    ['a\\b', 'a\\\\b'],
    ['\\x41', '\\\\x41'],
    ['a\nb', 'a\\x0ab'],
    ['\r\t\0', '\\x0d\\x09\\x00'],
    ['\x1b[31mred', '\\x1b[31mred'],
    ['\x1f', '\\x1f'],
    [' ~', ' ~'],
    ['\x7f', '\\x7f'],
    ['\x80\x85\x9b\x9f', '\\x80\\x85\\x9b\\x9f'],
    ['\xa0é', '\xa0é'],
    ['né€日本😀', 'né€日本😀'],
    ['a\ufffdb', 'a\ufffdb'],
    // invisible format characters and line separators: a comm can be any 15 bytes
    ['evil\u202eluc', 'evil\\u202eluc'],
    ['a\u2028b\u2029c', 'a\\u2028b\\u2029c'],
    ['zero\u200bwidth\u2066', 'zero\\u200bwidth\\u2066'],
    ['\ufeffbom', '\\ufeffbom'],
    ['soft\xadhyphen', 'soft\\xadhyphen'],
    ['tag\u{e0001}', 'tag\\u{e0001}'],
    ['\\u202e', '\\\\u202e'],
  ]
  for (const [input, want] of cases) assert.equal(printable(input), want, JSON.stringify(input))
})

const COMMON_KEYS = [
  'type',
  'ts_ns',
  'pid',
  'comm',
  'ip',
  'saddr',
  'daddr',
  'sport',
  'dport',
  'netns',
  'cgroup_id',
  'direction',
]

test('jsonLine: keys per event type', () => {
  const cases: Array<[TcpEvent, string[]]> = [
    [ev(), COMMON_KEYS],
    [ev({ type: 'accept', direction: 'inbound' }), COMMON_KEYS],
    [ev({ type: 'close' }), [...COMMON_KEYS, 'duration_ns', 'bytes_sent', 'bytes_received']],
    [ev({ type: 'connect_failed', reason: 'timeout' }), [...COMMON_KEYS, 'reason']],
  ]
  for (const [e, keys] of cases) {
    const line = jsonLine(e)
    assert.ok(!line.includes('\n'), 'one line')
    const obj = JSON.parse(line) as Record<string, unknown>
    assert.deepEqual(Object.keys(obj).sort(), [...keys].sort(), e.type)
  }
})

test('jsonLine: values', () => {
  assert.deepEqual(JSON.parse(jsonLine(ev())), {
    type: 'connect',
    ts_ns: 1000000000000,
    pid: 4242,
    comm: 'curl',
    ip: 4,
    saddr: '10.0.0.1',
    daddr: '93.184.216.34',
    sport: 51234,
    dport: 443,
    netns: 4026531840,
    cgroup_id: 7777,
    direction: 'outbound',
  })
  const close = JSON.parse(
    jsonLine(
      ev({
        type: 'close',
        ip: 6,
        saddr: '::1',
        daddr: '2001:db8::1',
        durationNs: 1500n,
        bytesSent: 10n,
        bytesReceived: 20n,
      }),
    ),
  ) as Record<string, unknown>
  assert.equal(close['ip'], 6)
  assert.equal(close['saddr'], '::1')
  assert.equal(close['daddr'], '2001:db8::1')
  assert.equal(close['duration_ns'], 1500)
  assert.equal(close['bytes_sent'], 10)
  assert.equal(close['bytes_received'], 20)
  for (const reason of ['refused', 'timeout', 'unreachable', 'other'] as const) {
    const o = JSON.parse(jsonLine(ev({ type: 'connect_failed', reason }))) as Record<string, unknown>
    assert.equal(o['reason'], reason)
  }
})

test('jsonLine: 64-bit integers are written exactly', () => {
  const line = jsonLine(
    ev({
      type: 'close',
      tsNs: 2n ** 63n + 5n,
      cgroupId: 2n ** 64n - 1n,
      durationNs: 2n ** 53n + 1n,
      bytesSent: 9007199254740993n,
      bytesReceived: 18446744073709551614n,
    }),
  )
  assert.ok(line.includes('"ts_ns":9223372036854775813,'), line)
  assert.ok(line.includes('"cgroup_id":18446744073709551615,'), line)
  assert.ok(line.includes('"duration_ns":9007199254740993,'), line)
  assert.ok(line.includes('"bytes_sent":9007199254740993,'), line)
  assert.ok(line.includes('"bytes_received":18446744073709551614}'), line)
  assert.doesNotThrow(() => JSON.parse(line))
})

test('jsonLine: comm round-trips through JSON.parse', () => {
  const comms = [
    'a"b',
    'line\nbreak',
    'back\\slash',
    'bad\ufffdutf8',
    '\x00\x1b\x7f\x9b',
    'né€😀',
    '</script>',
    '',
  ]
  for (const comm of comms) {
    const o = JSON.parse(jsonLine(ev({ comm }))) as Record<string, unknown>
    assert.equal(o['comm'], comm)
  }
})
