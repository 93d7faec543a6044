import { test } from 'node:test'
import assert from 'node:assert/strict'

import { decodeBatch, decodeComm, decodeEvent, formatIPv4, formatIPv6 } from '../../src/kernel/abi.js'
import type { TcpEvent } from '../../src/kernel/abi.js'
import { loadBinding } from '../../src/kernel/binding.js'

const B = loadBinding()
const L = B.layout.event

/** 16 bytes from 8 groups, network byte order. */
function v6(...groups: number[]): Uint8Array {
  assert.equal(groups.length, 8)
  const b = new Uint8Array(16)
  groups.forEach((g, i) => {
    b[2 * i] = g >> 8
    b[2 * i + 1] = g & 0xff
  })
  return b
}

/** Little-endian, one byte at a time, so the decoder's readers are not used to build their own input. */
function putLE(buf: Buffer, off: number, width: number, value: number | bigint): void {
  let v = BigInt(value)
  for (let i = 0; i < width; i++) {
    buf[off + i] = Number(v & 0xffn)
    v >>= 8n
  }
  assert.equal(v, 0n, `value ${value} does not fit in ${width} bytes`)
}

function putBytes(buf: Buffer, off: number, bytes: ArrayLike<number>): void {
  for (let i = 0; i < bytes.length; i++) buf[off + i] = bytes[i] ?? 0
}

interface RawEvent {
  type: number
  ip: number
  saddr: ArrayLike<number>
  daddr: ArrayLike<number>
  sport: number
  dport: number
  tsNs: bigint
  durationNs: bigint
  bytesSent: bigint
  bytesReceived: bigint
  cgroupId: bigint
  pid: number
  netns: number
  reason: number
  direction: number
  comm: ArrayLike<number>
}

const BASE: RawEvent = {
  type: 1,
  ip: 4,
  saddr: [10, 0, 0, 1],
  daddr: [93, 184, 216, 34],
  sport: 51234,
  dport: 443,
  tsNs: 123456789n,
  durationNs: 0n,
  bytesSent: 0n,
  bytesReceived: 0n,
  cgroupId: 4242n,
  pid: 1234,
  netns: 4026531840,
  reason: 0,
  direction: 1,
  comm: Buffer.from('curl\0'),
}

function record(over: Partial<RawEvent> = {}): Buffer {
  const r: RawEvent = { ...BASE, ...over }
  const buf = Buffer.alloc(L.size, 0xee) // garbage everywhere first: every field must be written or ignored
  buf.fill(0, L.saddr, L.saddr + 16)
  buf.fill(0, L.daddr, L.daddr + 16)
  buf.fill(0, L.comm, L.comm + B.layout.commLen)
  putBytes(buf, L.saddr, r.saddr)
  putBytes(buf, L.daddr, r.daddr)
  putLE(buf, L.ts_ns, 8, r.tsNs)
  putLE(buf, L.duration_ns, 8, r.durationNs)
  putLE(buf, L.bytes_sent, 8, r.bytesSent)
  putLE(buf, L.bytes_received, 8, r.bytesReceived)
  putLE(buf, L.cgroup_id, 8, r.cgroupId)
  putLE(buf, L.pid, 4, r.pid)
  putLE(buf, L.netns, 4, r.netns)
  putLE(buf, L.sport, 2, r.sport)
  putLE(buf, L.dport, 2, r.dport)
  putLE(buf, L.type, 1, r.type)
  putLE(buf, L.ip, 1, r.ip)
  putLE(buf, L.reason, 1, r.reason)
  putLE(buf, L.direction, 1, r.direction)
  putBytes(buf, L.comm, r.comm)
  return buf
}

test('layout: struct event as compiled into the addon', () => {
  assert.equal(L.size, 112)
  const order = [
    'saddr',
    'daddr',
    'ts_ns',
    'duration_ns',
    'bytes_sent',
    'bytes_received',
    'cgroup_id',
    'pid',
    'netns',
    'sport',
    'dport',
    'type',
    'ip',
    'reason',
    'direction',
    'comm',
  ] as const
  for (const f of order) assert.ok(Number.isInteger(L[f]) && L[f] >= 0, `${f} offset ${L[f]}`)
  for (let i = 1; i < order.length; i++) {
    const prev = order[i - 1]
    const cur = order[i]
    assert.ok(prev !== undefined && cur !== undefined)
    assert.ok(L[prev] < L[cur], `${prev} (${L[prev]}) before ${cur} (${L[cur]})`)
  }
  assert.equal(B.layout.commLen, 16)
  assert.ok(L.comm + B.layout.commLen <= L.size)
})

test('formatIPv4', () => {
  const cases: Array<[number[], number, string]> = [
    [[127, 0, 0, 1], 0, '127.0.0.1'],
    [[0, 0, 0, 0], 0, '0.0.0.0'],
    [[255, 255, 255, 255], 0, '255.255.255.255'],
    [[10, 1, 2, 3], 0, '10.1.2.3'],
    [[9, 9, 192, 168, 1, 20, 9], 2, '192.168.1.20'],
  ]
  for (const [bytes, off, want] of cases) assert.equal(formatIPv4(Uint8Array.from(bytes), off), want)
})

test('formatIPv6: RFC 5952 text form', () => {
  const cases: Array<[Uint8Array, string]> = [
    [v6(0, 0, 0, 0, 0, 0, 0, 1), '::1'],
    [v6(0, 0, 0, 0, 0, 0, 0, 0), '::'],
    [v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), '2001:db8::1'],
    [v6(1, 0, 0, 0, 0, 0, 0, 0), '1::'],
    [v6(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1), '2001:db8::1:0:0:1'],
    // longest run wins over an earlier shorter one
    [v6(0xfe80, 0, 0, 0, 1, 0, 0, 1), 'fe80::1:0:0:1'],
    [v6(1, 0, 0, 1, 0, 0, 0, 1), '1:0:0:1::1'],
    // equal runs: the first is compressed
    [v6(1, 0, 0, 1, 0, 0, 1, 1), '1::1:0:0:1:1'],
    // a single zero group is not compressed
    [v6(1, 0, 1, 1, 1, 1, 1, 1), '1:0:1:1:1:1:1:1'],
    [v6(0, 1, 1, 1, 1, 1, 1, 1), '0:1:1:1:1:1:1:1'],
    [v6(1, 1, 1, 1, 1, 1, 1, 0), '1:1:1:1:1:1:1:0'],
    [v6(0x2001, 0xdb8, 0, 1, 1, 1, 1, 1), '2001:db8:0:1:1:1:1:1'],
    [v6(0, 0, 1, 1, 1, 1, 1, 1), '::1:1:1:1:1:1'],
    [
      v6(0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff),
      'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff',
    ],
    // leading zeros dropped, lower-case hex
    [v6(0x2001, 0x0db8, 0x00ab, 0x000c, 0xabcd, 0x0ef0, 0x0001, 0x1000), '2001:db8:ab:c:abcd:ef0:1:1000'],
    [v6(0xfe80, 0, 0, 0, 0x0202, 0xb3ff, 0xfe1e, 0x8329), 'fe80::202:b3ff:fe1e:8329'],
  ]
  for (const [bytes, want] of cases) assert.equal(formatIPv6(bytes), want)
})

test('formatIPv6 at an offset', () => {
  const b = new Uint8Array(20).fill(0xab)
  b.set(v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 3)
  assert.equal(formatIPv6(b, 3), '2001:db8::1')
})

test('decodeComm', () => {
  const cases: Array<[string, Uint8Array, number, number, string]> = [
    ['NUL-terminated', Buffer.from('curl\0garbage\0\0\0\0'), 0, 16, 'curl'],
    ['empty', new Uint8Array(16), 0, 16, ''],
    ['full 16 bytes without NUL', Buffer.from('abcdefghijklmnop'), 0, 16, 'abcdefghijklmnop'],
    ['does not read past len', Buffer.from('abcdefghijklmnopqrst'), 0, 16, 'abcdefghijklmnop'],
    ['at an offset', Buffer.from('xxxxnginx\0yyyyyyyyyyyy'), 4, 16, 'nginx'],
    ['invalid UTF-8', Uint8Array.from([0x61, 0xff, 0x62, 0xc3, 0]), 0, 16, 'a\ufffdb\ufffd'],
    [
      'truncated multi-byte at the end',
      Buffer.concat([Buffer.from('abcdefghijklmn'), Buffer.from([0xe2, 0x82])]),
      0,
      16,
      'abcdefghijklmn\ufffd',
    ],
    ['valid UTF-8', Buffer.from('né€\0'), 0, 16, 'né€'],
    ['quotes, newline, backslash', Buffer.from('a"b\'c\nd\\e\te\0'), 0, 16, 'a"b\'c\nd\\e\te'],
  ]
  for (const [name, bytes, off, len, want] of cases) assert.equal(decodeComm(bytes, off, len), want, name)
})

test('decodeComm of a Uint8Array view into a larger buffer', () => {
  const backing = Buffer.from('0123456789zsh\0\0\0\0\0\0\0\0\0\0\0\0\0')
  const view = new Uint8Array(backing.buffer, backing.byteOffset + 10, 16)
  assert.equal(decodeComm(view, 0, 16), 'zsh')
})

const OK: Array<[string, Partial<RawEvent>, Partial<TcpEvent>]> = [
  [
    'IPv4 connect',
    {},
    {
      type: 'connect',
      ip: 4,
      saddr: '10.0.0.1',
      daddr: '93.184.216.34',
      sport: 51234,
      dport: 443,
      direction: 'outbound',
      pid: 1234,
      comm: 'curl',
      netns: 4026531840,
      cgroupId: 4242n,
      tsNs: 123456789n,
    },
  ],
  [
    'IPv4 accept, inbound',
    { type: 2, direction: 2, sport: 80, dport: 40000, comm: Buffer.from('nginx\0') },
    { type: 'accept', direction: 'inbound', sport: 80, dport: 40000, comm: 'nginx' },
  ],
  [
    'IPv6 connect',
    { ip: 6, saddr: v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), daddr: v6(0, 0, 0, 0, 0, 0, 0, 1) },
    { type: 'connect', ip: 6, saddr: '2001:db8::1', daddr: '::1' },
  ],
  [
    'IPv6 accept',
    {
      type: 2,
      direction: 2,
      ip: 6,
      saddr: v6(0xfe80, 0, 0, 0, 1, 0, 0, 1),
      daddr: v6(1, 0, 0, 1, 0, 0, 1, 1),
    },
    { type: 'accept', ip: 6, direction: 'inbound', saddr: 'fe80::1:0:0:1', daddr: '1::1:0:0:1:1' },
  ],
  [
    'close carries duration and byte counts',
    { type: 3, durationNs: 1_500_000_000n, bytesSent: 1024n, bytesReceived: 65536n },
    { type: 'close', durationNs: 1_500_000_000n, bytesSent: 1024n, bytesReceived: 65536n },
  ],
  [
    'u64 values above 2^53 are exact',
    {
      type: 3,
      tsNs: 2n ** 63n + 5n,
      durationNs: 2n ** 53n + 1n,
      bytesSent: 2n ** 64n - 1n,
      bytesReceived: 9007199254740993n,
      cgroupId: 2n ** 60n + 3n,
    },
    {
      tsNs: 9223372036854775813n,
      durationNs: 9007199254740993n,
      bytesSent: 18446744073709551615n,
      bytesReceived: 9007199254740993n,
      cgroupId: 1152921504606846979n,
    },
  ],
  [
    'u32 and u16 extremes',
    { pid: 0xffffffff, netns: 0xffffffff, sport: 65535, dport: 1 },
    { pid: 4294967295, netns: 4294967295, sport: 65535, dport: 1 },
  ],
  ['16-byte comm without NUL', { comm: Buffer.from('0123456789abcdef') }, { comm: '0123456789abcdef' }],
]

for (const [n, reason] of [
  [1, 'refused'],
  [2, 'timeout'],
  [3, 'unreachable'],
  [4, 'other'],
] as const) {
  OK.push([`connect_failed reason ${n}`, { type: 4, reason: n }, { type: 'connect_failed', reason }])
}

test('decodeEvent', async (t) => {
  for (const [name, raw, want] of OK) {
    await t.test(name, () => {
      const ev = decodeEvent(record(raw), 0, B)
      for (const [k, v] of Object.entries(want)) {
        assert.equal(ev[k as keyof TcpEvent], v, `${name}: ${k}`)
      }
      if (ev.type !== 'connect_failed') assert.ok(!('reason' in ev), `${name}: no reason key`)
    })
  }
})

test('decodeEvent: a full event deep-equals', () => {
  assert.deepEqual(decodeEvent(record({ type: 4, reason: 1 }), 0, B), {
    type: 'connect_failed',
    tsNs: 123456789n,
    pid: 1234,
    comm: 'curl',
    ip: 4,
    saddr: '10.0.0.1',
    sport: 51234,
    daddr: '93.184.216.34',
    dport: 443,
    netns: 4026531840,
    cgroupId: 4242n,
    direction: 'outbound',
    durationNs: 0n,
    bytesSent: 0n,
    bytesReceived: 0n,
    reason: 'refused',
  })
})

test('decodeEvent at an offset', () => {
  const buf = Buffer.concat([Buffer.alloc(L.size, 0xff), record({ pid: 77 })])
  assert.equal(decodeEvent(buf, L.size, B).pid, 77)
})

test('decodeEvent rejects unknown enum values', async (t) => {
  const bad: Array<[string, Partial<RawEvent>, RegExp]> = [
    ['type 0', { type: 0 }, /type/],
    ['type 5', { type: 5 }, /type/],
    ['type 255', { type: 255 }, /type/],
    ['ip 0', { ip: 0 }, /IP/],
    ['ip 5', { ip: 5 }, /IP/],
    ['ip 255', { ip: 255 }, /IP/],
    ['direction 0', { direction: 0 }, /direction/],
    ['direction 3', { direction: 3 }, /direction/],
    ['connect_failed reason 0', { type: 4, reason: 0 }, /reason/],
    ['connect_failed reason 5', { type: 4, reason: 5 }, /reason/],
  ]
  for (const [name, raw, msg] of bad) {
    await t.test(name, () => {
      assert.throws(
        () => decodeEvent(record(raw), 0, B),
        (e) => e instanceof RangeError && msg.test(e.message),
      )
    })
  }
})

test('decodeEvent ignores reason on non-failure events', () => {
  for (const type of [1, 2, 3]) {
    const ev = decodeEvent(record({ type, reason: 99 }), 0, B)
    assert.equal(ev.reason, undefined)
  }
})

test('decodeBatch: several records back to back', () => {
  const raws: Array<Partial<RawEvent>> = [
    { type: 1, pid: 1, tsNs: 10n },
    {
      type: 2,
      pid: 2,
      tsNs: 20n,
      direction: 2,
      ip: 6,
      saddr: v6(0, 0, 0, 0, 0, 0, 0, 1),
      daddr: v6(0, 0, 0, 0, 0, 0, 0, 1),
    },
    { type: 3, pid: 3, tsNs: 2n ** 64n - 1n, bytesSent: 7n },
    { type: 4, pid: 4, tsNs: 40n, reason: 2 },
  ]
  const evs = decodeBatch(Buffer.concat(raws.map((r) => record(r))), raws.length, B)
  assert.deepEqual(
    evs.map((e) => [e.type, e.pid, e.tsNs, e.ip, e.saddr, e.direction, e.bytesSent, e.reason]),
    [
      ['connect', 1, 10n, 4, '10.0.0.1', 'outbound', 0n, undefined],
      ['accept', 2, 20n, 6, '::1', 'inbound', 0n, undefined],
      ['close', 3, 18446744073709551615n, 4, '10.0.0.1', 'outbound', 7n, undefined],
      ['connect_failed', 4, 40n, 4, '10.0.0.1', 'outbound', 0n, 'timeout'],
    ],
  )
})

test('decodeBatch: empty batch', () => {
  assert.deepEqual(decodeBatch(Buffer.alloc(0), 0, B), [])
})

test('decodeBatch: length must be count * size', () => {
  const two = Buffer.concat([record(), record()])
  const cases: Array<[string, Buffer, number]> = [
    ['count too high', two, 3],
    ['count too low', two, 1],
    ['one byte short', two.subarray(0, 2 * L.size - 1), 2],
    ['one byte extra', Buffer.concat([two, Buffer.alloc(1)]), 2],
    ['empty with count 1', Buffer.alloc(0), 1],
    ['data with count 0', record(), 0],
  ]
  for (const [name, buf, count] of cases) {
    assert.throws(() => decodeBatch(buf, count, B), RangeError, name)
  }
})

test('decodeBatch: one bad record fails the batch', () => {
  const buf = Buffer.concat([record(), record({ type: 9 })])
  assert.throws(() => decodeBatch(buf, 2, B), RangeError)
})
