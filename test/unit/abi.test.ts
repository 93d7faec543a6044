// The kernel ABI as the addon reports it (sizeof, offsetof and the enums of bpf/tcptracer.h), and the
// codecs of the records the daemon writes: each record built here byte by byte from the reported
// layout, compared with what the encoder writes, and decoded back. The ring buffer's struct event is
// in events.test.ts, struct agg_key and struct agg_value in aggregates.test.ts.
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import {
  AF_INET,
  AF_INET6,
  decodeSeed,
  encodeListener,
  encodeSeed,
  FAIL_REASONS,
  type SeedConnection,
} from '../../src/kernel/abi.js'
import { loadBinding, type RecordLayout } from '../../src/kernel/binding.js'

const ABI = loadBinding()
const L = ABI.layout
const C = ABI.constants

/** Little-endian, one byte at a time, so the codecs' own readers and writers do not build their input. */
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

/** Each record's fields in declaration order, with their sizes in bytes (bpf/tcptracer.h). */
const FIELDS: { [R in Exclude<keyof RecordLayout, 'commLen'>]: Array<[keyof RecordLayout[R], number]> } = {
  event: [
    ['saddr', 16],
    ['daddr', 16],
    ['ts_ns', 8],
    ['duration_ns', 8],
    ['bytes_sent', 8],
    ['bytes_received', 8],
    ['cgroup_id', 8],
    ['pid', 4],
    ['netns', 4],
    ['sport', 2],
    ['dport', 2],
    ['type', 1],
    ['ip', 1],
    ['reason', 1],
    ['direction', 1],
    ['comm', 16],
  ],
  aggKey: [
    ['cgroup_id', 8],
    ['netns', 4],
    ['pid', 4],
    ['port', 2],
    ['ip', 1],
    ['direction', 1],
    ['flags', 1],
    ['comm', 16],
  ],
  aggValue: [
    ['opened', 8],
    ['closed', 8],
    ['failed', 8 * 4],
    ['sent_bytes', 8],
    ['received_bytes', 8],
    ['duration_sum_ns', 8],
    ['seeded_closed', 8],
    ['last_ns', 8],
    ['buckets', 8 * 33],
  ],
  tupleKey: [
    ['saddr', 16],
    ['daddr', 16],
    ['netns', 4],
    ['sport', 2],
    ['dport', 2],
    ['family', 2],
  ],
  listenerKey: [
    ['netns', 4],
    ['port', 2],
    ['family', 2],
  ],
  owner: [
    ['cgroup_id', 8],
    ['pid', 4],
    ['comm', 16],
  ],
  listenerValue: [
    ['owner', 32],
    ['sk', 8],
  ],
  seedValue: [
    ['owner', 32],
    ['port', 2],
    ['direction', 1],
  ],
}

describe('the layouts the addon reports', () => {
  test('every record: its fields in order, none overlapping, all inside the record', () => {
    for (const [record, fields] of Object.entries(FIELDS)) {
      const layout = L[record as keyof typeof FIELDS] as unknown as Record<string, number>
      let end = 0
      for (const [field, width] of fields) {
        const off = layout[field as string]
        assert.ok(off !== undefined && Number.isInteger(off), `${record}.${String(field)}`)
        assert.ok(
          off >= end,
          `${record}.${String(field)} at ${off} overlaps the field before, which ends at ${end}`,
        )
        end = off + width
      }
      const size = layout['size'] ?? 0
      assert.ok(end <= size, `${record}: fields end at ${end}, the record is ${size} bytes`)
    }
  })

  test('the sizes the header gives', () => {
    assert.equal(L.commLen, 16)
    assert.equal(L.aggValue.maxBuckets, 32)
    assert.equal(L.aggValue.failReasons, FAIL_REASONS.length)
    assert.equal(L.owner.size, FIELDS.listenerValue[0]?.[1])
  })
})

describe('the enums the addon reports', () => {
  test('every member, by its C name', () => {
    const want: Array<[keyof typeof C, number]> = [
      ['TCP_EVENT_TYPE_CONNECT', 1],
      ['TCP_EVENT_TYPE_ACCEPT', 2],
      ['TCP_EVENT_TYPE_CLOSE', 3],
      ['TCP_EVENT_TYPE_CONNECT_FAILED', 4],
      ['TCP_EVENT_TYPE_SEEDED_CLOSE', 5],
      ['TCP_EVENT_TYPE_CLOSE_UNSEEN', 6],
      ['FAIL_REASON_NONE', 0],
      ['FAIL_REASON_REFUSED', 1],
      ['FAIL_REASON_TIMEOUT', 2],
      ['FAIL_REASON_UNREACHABLE', 3],
      ['FAIL_REASON_OTHER', 4],
      ['DIRECTION_OUTBOUND', 1],
      ['DIRECTION_INBOUND', 2],
      ['ACCEPT_MODE_LISTENER', 0],
      ['ACCEPT_MODE_SYSCALL', 1],
      ['ACCEPT_MODE_KERNEL', 2],
      ['STAT_EVENTS_LOST', 0],
      ['STAT_MAP_UPDATE_FAILED', 1],
      ['STAT_ACCEPT_UNATTRIBUTED', 2],
      ['STAT_CONNECT_UNATTRIBUTED', 3],
      ['STAT_AGG_FULL', 4],
      ['STAT_CLOSE_UNSEEN', 5],
      ['STAT_CONNECT_UNSEEN', 6],
      ['STAT_MAX', 7],
      ['LABEL_PID', 1],
      ['LABEL_CGROUP', 2],
      ['LABEL_PORT', 4],
      ['AGG_OVERFLOW', 1],
      ['AGG_UNATTRIBUTED', 2],
    ]
    for (const [name, value] of want) assert.equal(C[name], value, name)
  })

  test('the failure reasons in the order of struct agg_value failed[]', () => {
    assert.deepEqual(FAIL_REASONS, ['refused', 'timeout', 'unreachable', 'other'])
  })
})

describe('struct listener_key and struct listener_value', () => {
  const cases: Array<[string, Parameters<typeof encodeListener>[0]]> = [
    [
      'IPv4 listener',
      { netns: 4026531840, port: 22, family: AF_INET, pid: 812, comm: 'sshd', cgroupId: 0x1122334455667788n },
    ],
    [
      'IPv6, extremes',
      { netns: 0xffffffff, port: 65535, family: AF_INET6, pid: 0xffffffff, comm: '', cgroupId: 0n },
    ],
    [
      'a 15-byte comm',
      { netns: 1, port: 8080, family: AF_INET, pid: 1, comm: 'abcdefghijklmno', cgroupId: 2n ** 64n - 1n },
    ],
  ]
  for (const [name, o] of cases) {
    test(name, () => {
      const key = Buffer.alloc(L.listenerKey.size)
      putLE(key, L.listenerKey.netns, 4, o.netns)
      putLE(key, L.listenerKey.port, 2, o.port)
      putLE(key, L.listenerKey.family, 2, o.family)
      const value = Buffer.alloc(L.listenerValue.size)
      const owner = L.listenerValue.owner
      putLE(value, owner + L.owner.cgroup_id, 8, o.cgroupId)
      putLE(value, owner + L.owner.pid, 4, o.pid)
      putBytes(value, owner + L.owner.comm, Buffer.from(o.comm))
      // sk stays 0: the listener was seeded from /proc, not recorded at listen()
      assert.deepEqual(encodeListener(o, ABI), { key, value })
    })
  }

  test('a comm longer than the kernel keeps is cut to 15 bytes, a NUL after them', () => {
    const o = {
      netns: 1,
      port: 1,
      family: AF_INET,
      pid: 1,
      comm: 'abcdefghijklmnopqrst',
      cgroupId: 0n,
    } as const
    const { value } = encodeListener(o, ABI)
    const comm = value.subarray(
      L.listenerValue.owner + L.owner.comm,
      L.listenerValue.owner + L.owner.comm + 16,
    )
    assert.deepEqual(comm, Buffer.from('abcdefghijklmno\0'))
    assert.deepEqual(value.subarray(L.listenerValue.sk, L.listenerValue.sk + 8), Buffer.alloc(8))
  })
})

describe('struct tuple_key and struct seed_value', () => {
  const v4 = (a: number, b: number, c: number, d: number): Buffer => {
    const b16 = Buffer.alloc(16)
    putBytes(b16, 0, [a, b, c, d])
    return b16
  }
  const mapped = (a: number, b: number, c: number, d: number): Buffer =>
    Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d])
  const v6 = Buffer.from('20010db8000000000000000000000001', 'hex')

  const cases: Array<[string, SeedConnection, number, 4 | 6]> = [
    [
      'outbound IPv4',
      {
        netns: 4026531840,
        family: AF_INET,
        saddr: v4(10, 0, 0, 1),
        daddr: v4(93, 184, 216, 34),
        sport: 51234,
        dport: 443,
        pid: 4321,
        comm: 'curl',
        cgroupId: 77n,
        port: 443,
        direction: 'outbound',
      },
      C.DIRECTION_OUTBOUND,
      4,
    ],
    [
      'inbound IPv6',
      {
        netns: 1,
        family: AF_INET6,
        saddr: v6,
        daddr: v6,
        sport: 22,
        dport: 40000,
        pid: 1,
        comm: 'sshd',
        cgroupId: 0n,
        port: 22,
        direction: 'inbound',
      },
      C.DIRECTION_INBOUND,
      6,
    ],
    [
      'IPv4-mapped on an IPv6 socket counts as IPv4',
      {
        netns: 0xffffffff,
        family: AF_INET6,
        saddr: mapped(127, 0, 0, 1),
        daddr: mapped(127, 0, 0, 1),
        sport: 65535,
        dport: 1,
        pid: 0xffffffff,
        comm: 'abcdefghijklmno',
        cgroupId: 2n ** 64n - 1n,
        port: 1,
        direction: 'outbound',
      },
      C.DIRECTION_OUTBOUND,
      4,
    ],
  ]
  for (const [name, c, direction, ip] of cases) {
    test(name, () => {
      const T = L.tupleKey
      const key = Buffer.alloc(T.size)
      putBytes(key, T.saddr, c.saddr)
      putBytes(key, T.daddr, c.daddr)
      putLE(key, T.netns, 4, c.netns)
      putLE(key, T.sport, 2, c.sport)
      putLE(key, T.dport, 2, c.dport)
      putLE(key, T.family, 2, c.family)
      const S = L.seedValue
      const value = Buffer.alloc(S.size)
      putLE(value, S.owner + L.owner.cgroup_id, 8, c.cgroupId)
      putLE(value, S.owner + L.owner.pid, 4, c.pid)
      putBytes(value, S.owner + L.owner.comm, Buffer.from(c.comm))
      putLE(value, S.port, 2, c.port)
      putLE(value, S.direction, 1, direction)
      assert.deepEqual(encodeSeed(c, ABI), { key, value })
      assert.deepEqual(decodeSeed(key, value, ABI), {
        comm: c.comm,
        netns: c.netns,
        pid: c.pid,
        cgroupId: c.cgroupId,
        port: c.port,
        ip,
        direction: c.direction,
      })
    })
  }
})
