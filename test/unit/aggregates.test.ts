import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { Aggregator, OVERFLOW, UNATTRIBUTED } from '../../src/metrics/aggregator.js'
import type { AggregatorOptions, LabelName, Series, Snapshot } from '../../src/metrics/aggregator.js'
import {
  AggregateDump,
  decodeAggKey,
  encodeAggKey,
  type AggKey,
  type Direction,
  type Owner,
} from '../../src/kernel/abi.js'
import { loadBinding } from '../../src/kernel/binding.js'

const ABI = loadBinding()
const K = ABI.layout.aggKey
const V = ABI.layout.aggValue

const NETNS = 4026531840
/** a CLOCK_MONOTONIC "now" for entries that are fresh */
const T0 = 5_000_000_000_000n
const SECOND = 1_000_000_000n
const NBUCKETS = 2

/** A kernel entry: its key, and its value's counts as Numbers. */
interface KernelEntry extends AggKey {
  key: Buffer
  opened: number
  closed: number
  failed: number[]
  sentBytes: number
  receivedBytes: number
  durationSumNs: number
  seededClosed: number
  lastNs: bigint
  /** non-cumulative, NBUCKETS + 1 entries, the last is +Inf */
  buckets: number[]
}

let seq = 0
/**
 * A kernel entry with defaults, its key encoded from its owner. Every entry gets a unique key: entries
 * of the same owner are told apart by a tag in the key's padding, between flags and comm, which the
 * kernel leaves 0 and no decoder reads.
 */
function entry(o: Partial<Omit<KernelEntry, 'key'>> = {}): KernelEntry {
  const e = {
    comm: 'curl',
    netns: NETNS,
    pid: 100,
    cgroupId: 0n,
    port: 443,
    ip: 4 as const,
    direction: 'outbound' as const,
    overflow: false,
    unattributed: false,
    opened: 0,
    closed: 0,
    failed: [0, 0, 0, 0],
    sentBytes: 0,
    receivedBytes: 0,
    durationSumNs: 0,
    seededClosed: 0,
    lastNs: T0,
    buckets: new Array<number>(NBUCKETS + 1).fill(0),
    ...o,
  }
  const key = encodeAggKey(e, ABI)
  key.writeUIntLE(++seq, K.flags + 1, K.comm - K.flags - 1)
  return { ...e, key }
}

/** struct agg_value of an entry, written byte by byte through the layout: the last bucket is +Inf. */
function value(e: KernelEntry): Buffer {
  const v = Buffer.alloc(V.size)
  const u64 = (off: number, n: number | bigint): void => {
    v.writeBigUInt64LE(BigInt(n), off)
  }
  u64(V.opened, e.opened)
  u64(V.closed, e.closed)
  e.failed.forEach((n, i) => u64(V.failed + 8 * i, n))
  u64(V.sent_bytes, e.sentBytes)
  u64(V.received_bytes, e.receivedBytes)
  u64(V.duration_sum_ns, e.durationSumNs)
  u64(V.seeded_closed, e.seededClosed)
  u64(V.last_ns, e.lastNs)
  e.buckets.forEach((n, i) => u64(V.buckets + 8 * (i === e.buckets.length - 1 ? V.maxBuckets : i), n))
  return v
}

/** The aggregation map holding these entries, in this order, as the exporter reads it. */
function dump(entries: readonly KernelEntry[], nbuckets = NBUCKETS): AggregateDump {
  return new AggregateDump(
    Buffer.concat(entries.map((e) => e.key)),
    Buffer.concat(entries.map(value)),
    entries.length,
    ABI,
    nbuckets,
  )
}

function owner(o: Partial<Owner> = {}): Owner {
  return {
    comm: 'curl',
    netns: NETNS,
    pid: 100,
    cgroupId: 0n,
    port: 443,
    ip: 4,
    direction: 'outbound',
    ...o,
  }
}

/** A mutable clock for idle expiry. */
class Clock {
  now = T0
  readonly nowNs = (): bigint => this.now
}

function options(o: Partial<AggregatorOptions> = {}): AggregatorOptions {
  return {
    labels: ['comm', 'netns', 'family'],
    maxLabelSets: 100,
    idleExpiryMs: 0,
    commInclude: [],
    commExclude: [],
    nbuckets: NBUCKETS,
    resolveCgroup: (id) => `cgroup-${id}`,
    ...o,
  }
}

/** Series as "name=value,..." strings with their direction, in output order. */
function ids(snap: Snapshot): string[] {
  return snap.series.map((s) => `${labelText(s.labels)} ${s.direction}`)
}

function labelText(labels: ReadonlyArray<readonly [string, string]>): string {
  return labels.map(([k, v]) => `${k}=${v}`).join(',')
}

/** The one series with these labels (as "name=value,...") and direction. */
function get(snap: Snapshot, labels: string, direction: Direction = 'outbound'): Series {
  const found = snap.series.filter((s) => labelText(s.labels) === labels && s.direction === direction)
  assert.equal(found.length, 1, `one ${labels} ${direction} series in ${JSON.stringify(ids(snap))}`)
  return found[0]!
}

const comm = (re: string): RegExp => new RegExp(`^(?:${re})$`, 'u')

describe('projection', () => {
  test('default labels sum entries that differ only in pid, port and cgroup', () => {
    const agg = new Aggregator(options())
    const snap = agg.snapshot(
      dump([
        entry({
          pid: 1,
          port: 80,
          cgroupId: 11n,
          opened: 2,
          closed: 1,
          failed: [1, 0, 2, 0],
          sentBytes: 10,
          receivedBytes: 100,
          durationSumNs: 1000,
          buckets: [1, 0, 0],
        }),
        entry({
          pid: 2,
          port: 443,
          cgroupId: 12n,
          opened: 3,
          closed: 2,
          failed: [0, 3, 0, 1],
          sentBytes: 5,
          receivedBytes: 50,
          durationSumNs: 2000,
          buckets: [0, 1, 1],
        }),
      ]),
    )
    assert.deepEqual(snap.series, [
      {
        labels: [
          ['comm', 'curl'],
          ['netns', String(NETNS)],
          ['family', 'ipv4'],
        ],
        direction: 'outbound',
        opened: 5,
        closed: 3,
        failed: [1, 3, 2, 1],
        sentBytes: 15,
        receivedBytes: 150,
        durationSumNs: 3000,
        buckets: [1, 1, 1],
        active: 2,
      },
    ])
    assert.deepEqual(snap.expiredKeys, [])
    assert.equal(snap.admitted, 1)
    assert.equal(snap.folded, 0)
  })

  test('family ipv4 and ipv6 are separate series; outbound before inbound', () => {
    const agg = new Aggregator(options({ labels: ['comm', 'family'] }))
    const snap = agg.snapshot(
      dump([
        entry({ ip: 6, opened: 1, direction: 'inbound' }),
        entry({ ip: 4, opened: 2 }),
        entry({ ip: 6, opened: 4 }),
        entry({ ip: 4, opened: 8, direction: 'inbound' }),
      ]),
    )
    assert.deepEqual(ids(snap), [
      'comm=curl,family=ipv6 outbound',
      'comm=curl,family=ipv6 inbound',
      'comm=curl,family=ipv4 outbound',
      'comm=curl,family=ipv4 inbound',
    ])
    assert.deepEqual(
      snap.series.map((s) => s.opened),
      [4, 1, 2, 8],
    )
  })

  test('labels follow the configured order', () => {
    const agg = new Aggregator(options({ labels: ['family', 'netns', 'comm'] }))
    const snap = agg.snapshot(dump([entry({ opened: 1, ip: 6, netns: 7 })]))
    assert.deepEqual(snap.series[0]?.labels, [
      ['family', 'ipv6'],
      ['netns', '7'],
      ['comm', 'curl'],
    ])
  })

  test('no labels: one series per direction', () => {
    const agg = new Aggregator(options({ labels: [] }))
    const snap = agg.snapshot(
      dump([
        entry({ comm: 'a', opened: 1 }),
        entry({ comm: 'b', opened: 2 }),
        entry({ comm: 'c', opened: 4, direction: 'inbound' }),
      ]),
    )
    assert.deepEqual(ids(snap), [' outbound', ' inbound'])
    assert.deepEqual(
      snap.series.map((s) => s.opened),
      [3, 4],
    )
  })

  test('unattributed entries get comm __unattributed__', () => {
    const agg = new Aggregator(options())
    const snap = agg.snapshot(
      dump([
        entry({ comm: 'nginx', unattributed: true, direction: 'inbound', opened: 3 }),
        entry({ comm: '', unattributed: true, direction: 'inbound', opened: 4 }),
        entry({ comm: 'nginx', direction: 'inbound', opened: 1 }),
      ]),
    )
    assert.equal(get(snap, `comm=${UNATTRIBUTED},netns=${NETNS},family=ipv4`, 'inbound').opened, 7)
    assert.equal(get(snap, `comm=nginx,netns=${NETNS},family=ipv4`, 'inbound').opened, 1)
    assert.equal(snap.series.length, 2)
  })

  test('kernel overflow entries map every label to __overflow__; all-zero ones are skipped', () => {
    const agg = new Aggregator(options())
    const all = `comm=${OVERFLOW},netns=${OVERFLOW},family=${OVERFLOW}`
    // the kernel creates its overflow entries up front, empty
    let snap = agg.snapshot(
      dump([
        entry({ overflow: true, comm: '', netns: 0 }),
        entry({ overflow: true, comm: '', netns: 0, direction: 'inbound' }),
        entry({ opened: 1 }),
      ]),
    )
    assert.deepEqual(ids(snap), [`comm=curl,netns=${NETNS},family=ipv4 outbound`])

    snap = agg.snapshot(
      dump([
        entry({ overflow: true, comm: '', netns: 0, opened: 5, closed: 2, sentBytes: 9 }),
        entry({ overflow: true, comm: '', netns: 0, direction: 'inbound', failed: [0, 0, 0, 1] }),
        entry({ opened: 1 }),
      ]),
    )
    // admitted label sets in admission order, the overflow series last
    assert.deepEqual(ids(snap), [
      `comm=curl,netns=${NETNS},family=ipv4 outbound`,
      `${all} outbound`,
      `${all} inbound`,
    ])
    const o = get(snap, all)
    assert.equal(o.opened, 5)
    assert.equal(o.closed, 2)
    assert.equal(o.sentBytes, 9)
    assert.equal(o.active, 3)
    assert.deepEqual(get(snap, all, 'inbound').failed, [0, 0, 0, 1])
    // the kernel's overflow entry is not a label set of its own
    assert.equal(snap.admitted, 1)
    assert.equal(agg.foldedTotal, 0)
  })

  test('kernel overflow entries bypass the comm filters', () => {
    const agg = new Aggregator(options({ labels: ['comm'], commInclude: [comm('curl')] }))
    const snap = agg.snapshot(dump([entry({ overflow: true, comm: 'sshd', opened: 2 })]))
    assert.equal(get(snap, `comm=${OVERFLOW}`).opened, 2)
  })

  test('pid, port and cgroup labels', () => {
    const resolved: bigint[] = []
    const agg = new Aggregator(
      options({
        labels: ['comm', 'pid', 'port', 'cgroup'],
        resolveCgroup: (id) => {
          resolved.push(id)
          return `/system.slice/u${id}.service`
        },
      }),
    )
    const snap = agg.snapshot(
      dump([
        entry({ pid: 1, port: 80, cgroupId: 42n, opened: 1 }),
        entry({ pid: 1, port: 80, cgroupId: 42n, opened: 2, netns: 99, ip: 6 }),
        entry({ pid: 2, port: 80, cgroupId: 42n, opened: 4 }),
        entry({ pid: 1, port: 8080, cgroupId: 42n, opened: 8 }),
        entry({ pid: 1, port: 80, cgroupId: 43n, opened: 16 }),
        entry({ pid: 1, port: 80, cgroupId: 0n, opened: 32 }),
      ]),
    )
    assert.deepEqual(ids(snap), [
      'comm=curl,pid=1,port=80,cgroup=/system.slice/u42.service outbound',
      'comm=curl,pid=2,port=80,cgroup=/system.slice/u42.service outbound',
      'comm=curl,pid=1,port=8080,cgroup=/system.slice/u42.service outbound',
      'comm=curl,pid=1,port=80,cgroup=/system.slice/u43.service outbound',
      'comm=curl,pid=1,port=80,cgroup= outbound',
    ])
    assert.deepEqual(
      snap.series.map((s) => s.opened),
      [3, 4, 8, 16, 32],
    )
    // cgroup id 0 (not collected) is never resolved
    assert.ok(!resolved.includes(0n))
    assert.deepEqual([...new Set(resolved)].sort(), [42n, 43n])
  })
})

describe('comm filters', () => {
  const entries = (): KernelEntry[] => [
    entry({ comm: 'curl', opened: 1 }),
    entry({ comm: 'curlx', opened: 2 }),
    entry({ comm: 'xcurl', opened: 4 }),
    entry({ comm: 'sshd', opened: 8 }),
    entry({ comm: 'cron', opened: 16 }),
    entry({ comm: 'curl', unattributed: true, direction: 'inbound', opened: 32 }),
  ]

  test('include is anchored; unattributed entries are always kept', () => {
    const agg = new Aggregator(options({ labels: ['comm'], commInclude: [comm('curl')] }))
    const snap = agg.snapshot(dump(entries()))
    assert.deepEqual(ids(snap), ['comm=curl outbound', `comm=${UNATTRIBUTED} inbound`])
    assert.equal(get(snap, 'comm=curl').opened, 1)
    assert.equal(get(snap, `comm=${UNATTRIBUTED}`, 'inbound').opened, 32)
  })

  test('several includes: any one matches', () => {
    const agg = new Aggregator(options({ labels: ['comm'], commInclude: [comm('curl'), comm('ss.*')] }))
    assert.deepEqual(ids(agg.snapshot(dump(entries()))), [
      'comm=curl outbound',
      'comm=sshd outbound',
      `comm=${UNATTRIBUTED} inbound`,
    ])
  })

  test('exclude drops matches; unattributed entries are always kept', () => {
    const agg = new Aggregator(
      options({ labels: ['comm'], commExclude: [comm('curl.*'), comm(UNATTRIBUTED)] }),
    )
    assert.deepEqual(ids(agg.snapshot(dump(entries()))), [
      'comm=xcurl outbound',
      'comm=sshd outbound',
      'comm=cron outbound',
      `comm=${UNATTRIBUTED} inbound`,
    ])
  })

  test('exclude applies after include', () => {
    const agg = new Aggregator(
      options({ labels: ['comm'], commInclude: [comm('c.*')], commExclude: [comm('cron')] }),
    )
    assert.deepEqual(ids(agg.snapshot(dump(entries()))), [
      'comm=curl outbound',
      'comm=curlx outbound',
      `comm=${UNATTRIBUTED} inbound`,
    ])
  })

  test('seeded connections are filtered too', () => {
    const agg = new Aggregator(options({ labels: ['comm'], commExclude: [comm('sshd')] }))
    agg.setSeeded([
      [owner({ comm: 'sshd' }), 3],
      [owner({ comm: 'curl' }), 2],
    ])
    const snap = agg.snapshot(dump([]))
    assert.deepEqual(ids(snap), ['comm=curl outbound'])
    assert.equal(get(snap, 'comm=curl').active, 2)
  })
})

describe('active', () => {
  test('opened - closed - seededClosed + seeded counts', () => {
    const agg = new Aggregator(options({ labels: ['comm'] }))
    const entries = [
      entry({ opened: 10, closed: 4, seededClosed: 3 }),
      entry({ pid: 7, opened: 1, closed: 0, seededClosed: 2 }),
      entry({ direction: 'inbound', opened: 6, closed: 6, seededClosed: 1 }),
    ]
    let snap = agg.snapshot(dump(entries))
    // before seeding, closes of seeded connections make the sum negative: 10-4-3 + 1-0-2
    assert.equal(get(snap, 'comm=curl').active, 2)
    assert.equal(get(snap, 'comm=curl', 'inbound').active, -1)

    agg.setSeeded([
      [owner({ pid: 1 }), 5],
      [owner({ pid: 2 }), 1],
      [owner({ direction: 'inbound' }), 4],
      [owner({ comm: 'sshd', direction: 'inbound' }), 2],
    ])
    snap = agg.snapshot(dump(entries))
    assert.equal(get(snap, 'comm=curl').active, 2 + 5 + 1)
    assert.equal(get(snap, 'comm=curl', 'inbound').active, -1 + 4)
    // a seeded owner without kernel entries still shows its open connections
    const sshd = get(snap, 'comm=sshd', 'inbound')
    assert.equal(sshd.active, 2)
    assert.equal(sshd.opened, 0)
    assert.equal(sshd.closed, 0)
    // counters are untouched by seeding
    assert.equal(get(snap, 'comm=curl').opened, 11)
    assert.equal(get(snap, 'comm=curl').closed, 4)
  })

  test('setSeeded replaces the previous seed and copies its input', () => {
    const agg = new Aggregator(options({ labels: ['comm'] }))
    const seeds: Array<[Owner, number]> = [[owner(), 5]]
    agg.setSeeded(seeds)
    seeds.push([owner(), 100])
    assert.equal(get(agg.snapshot(dump([])), 'comm=curl').active, 5)
    agg.setSeeded([[owner(), 2]])
    assert.equal(get(agg.snapshot(dump([])), 'comm=curl').active, 2)
  })
})

describe('cardinality cap', () => {
  const all = `comm=${OVERFLOW}`
  /** five label sets, a..e, first seen in that order */
  const five = (grow = 0): KernelEntry[] => [
    entry({ comm: 'a', opened: 1, closed: 1 }),
    entry({ comm: 'b', opened: 2, sentBytes: 20 }),
    entry({ comm: 'c', opened: 4, closed: 3, sentBytes: 40, buckets: [1, 0, 2] }),
    entry({ comm: 'd', opened: 8 + grow, closed: 8, failed: [1, 2, 3, 4], buckets: [0, 5, 0] }),
    entry({ comm: 'e', opened: 16, closed: 1, sentBytes: 160, durationSumNs: 7 }),
  ]

  test('admits the first label sets seen and folds the rest into the overflow series', () => {
    const agg = new Aggregator(options({ labels: ['comm'], maxLabelSets: 2 }))
    const snap = agg.snapshot(dump(five()))
    assert.deepEqual(ids(snap), ['comm=a outbound', 'comm=b outbound', `${all} outbound`])
    assert.deepEqual(get(snap, all), {
      labels: [['comm', OVERFLOW]],
      direction: 'outbound',
      opened: 4 + 8 + 16,
      closed: 3 + 8 + 1,
      failed: [1, 2, 3, 4],
      sentBytes: 40 + 160,
      receivedBytes: 0,
      durationSumNs: 7,
      buckets: [1, 5, 2],
      active: 1 + 0 + 15,
    })
    assert.equal(get(snap, 'comm=a').opened, 1)
    assert.equal(get(snap, 'comm=b').sentBytes, 20)
    assert.equal(snap.admitted, 2)
    assert.equal(snap.folded, 3)
    assert.equal(agg.foldedTotal, 3)
  })

  test('stable across scrapes: nothing is counted twice, admission is remembered', () => {
    const agg = new Aggregator(options({ labels: ['comm'], maxLabelSets: 2 }))
    const first = agg.snapshot(dump(five()))
    for (let i = 0; i < 3; i++) {
      const again = agg.snapshot(dump(five()))
      assert.deepEqual(again.series, first.series)
      assert.equal(again.admitted, 2)
      assert.equal(again.folded, 3)
    }
    // the kernel's iteration order changes: a and b keep their own series
    const reversed = agg.snapshot(dump(five().reverse()))
    assert.deepEqual(ids(reversed).sort(), ids(first).sort())
    assert.equal(get(reversed, all).opened, 28)
    assert.equal(agg.foldedTotal, 3)
  })

  test('a folded label set that grows keeps growing the overflow series', () => {
    const agg = new Aggregator(options({ labels: ['comm'], maxLabelSets: 2 }))
    assert.equal(get(agg.snapshot(dump(five())), all).opened, 28)
    assert.equal(get(agg.snapshot(dump(five(2))), all).opened, 30)
    const snap = agg.snapshot(dump(five(7)))
    assert.equal(get(snap, all).opened, 35)
    assert.equal(get(snap, all).active, 1 + 7 + 15)
    assert.equal(agg.foldedTotal, 3)
  })

  test('the kernel overflow entry and folded label sets share the overflow series', () => {
    const agg = new Aggregator(options({ labels: ['comm'], maxLabelSets: 2 }))
    const snap = agg.snapshot(dump([...five(), entry({ overflow: true, comm: '', opened: 100, closed: 50 })]))
    assert.equal(get(snap, all).opened, 128)
    assert.equal(get(snap, all).closed, 62)
    assert.equal(agg.foldedTotal, 3)
  })

  test('the cap counts label sets, not directions', () => {
    const agg = new Aggregator(options({ labels: ['comm'], maxLabelSets: 1 }))
    const snap = agg.snapshot(
      dump([
        entry({ comm: 'a', opened: 1 }),
        entry({ comm: 'a', opened: 2, direction: 'inbound' }),
        entry({ comm: 'b', opened: 4, direction: 'inbound' }),
      ]),
    )
    assert.deepEqual(ids(snap), ['comm=a outbound', 'comm=a inbound', `${all} inbound`])
    assert.equal(get(snap, all, 'inbound').opened, 4)
    assert.equal(agg.foldedTotal, 1)
  })
})

describe('idle expiry', () => {
  const IDLE = 1000 // ms
  const stale = (clock: Clock): bigint => clock.now - 2n * SECOND

  test('an idle label set with no open connections expires', () => {
    const clock = new Clock()
    const agg = new Aggregator(options({ labels: ['comm'], idleExpiryMs: IDLE, nowNs: clock.nowNs }))
    const idle1 = entry({ comm: 'idle', opened: 3, closed: 3, lastNs: T0 - 5n * SECOND })
    const idle2 = entry({ comm: 'idle', opened: 1, closed: 0, seededClosed: 1, lastNs: T0 - 2n * SECOND })
    const fresh = entry({ comm: 'fresh', opened: 1, closed: 1, lastNs: T0 - SECOND / 2n })
    const snap = agg.snapshot(dump([idle1, fresh, idle2]))
    assert.deepEqual(ids(snap), ['comm=fresh outbound'])
    assert.deepEqual(snap.expiredKeys, [idle1.key, idle2.key])
    assert.equal(agg.expiredTotal, 1)
    assert.equal(snap.admitted, 1)
  })

  test('the newest entry of a label set decides its idleness', () => {
    const clock = new Clock()
    const agg = new Aggregator(options({ labels: ['comm'], idleExpiryMs: IDLE, nowNs: clock.nowNs }))
    const snap = agg.snapshot(
      dump([
        entry({ opened: 1, closed: 1, lastNs: T0 - 10n * SECOND }),
        entry({ pid: 2, opened: 1, closed: 1, lastNs: T0 - SECOND / 2n }),
      ]),
    )
    assert.deepEqual(ids(snap), ['comm=curl outbound'])
    assert.deepEqual(snap.expiredKeys, [])
    assert.equal(agg.expiredTotal, 0)
  })

  test('not while connections are open, counting seeded ones', () => {
    const clock = new Clock()
    const agg = new Aggregator(options({ labels: ['comm'], idleExpiryMs: IDLE, nowNs: clock.nowNs }))
    const open = entry({ comm: 'open', opened: 2, closed: 1, lastNs: stale(clock) })
    const seededOpen = entry({ comm: 'seeded', opened: 1, closed: 1, lastNs: stale(clock) })
    agg.setSeeded([[owner({ comm: 'seeded' }), 1]])
    const snap = agg.snapshot(dump([open, seededOpen]))
    assert.deepEqual(ids(snap), ['comm=open outbound', 'comm=seeded outbound'])
    assert.equal(get(snap, 'comm=open').active, 1)
    assert.equal(get(snap, 'comm=seeded').active, 1)
    assert.deepEqual(snap.expiredKeys, [])
    assert.equal(agg.expiredTotal, 0)

    // once the seeded connection closes, the label set expires and its seed is forgotten
    const closed = entry({ comm: 'seeded', opened: 1, closed: 1, seededClosed: 1, lastNs: stale(clock) })
    const after = agg.snapshot(dump([open, closed]))
    assert.deepEqual(ids(after), ['comm=open outbound'])
    assert.deepEqual(after.expiredKeys, [closed.key])
    assert.equal(agg.expiredTotal, 1)
    assert.deepEqual(ids(agg.snapshot(dump([open]))), ['comm=open outbound'])
  })

  test('never when idleExpiryMs is 0', () => {
    const clock = new Clock()
    const agg = new Aggregator(options({ labels: ['comm'], idleExpiryMs: 0, nowNs: clock.nowNs }))
    const e = entry({ opened: 1, closed: 1, lastNs: 1n })
    clock.now = T0 + 1_000_000n * SECOND
    const snap = agg.snapshot(dump([e]))
    assert.deepEqual(ids(snap), ['comm=curl outbound'])
    assert.deepEqual(snap.expiredKeys, [])
    assert.equal(agg.expiredTotal, 0)
  })

  test('the injected clock decides: a label set expires once it has idled long enough', () => {
    const clock = new Clock()
    const agg = new Aggregator(options({ labels: ['comm'], idleExpiryMs: IDLE, nowNs: clock.nowNs }))
    const e = entry({ opened: 1, closed: 1, lastNs: T0 })
    assert.deepEqual(agg.snapshot(dump([e])).expiredKeys, [])
    clock.now = T0 + SECOND / 2n
    assert.deepEqual(agg.snapshot(dump([e])).expiredKeys, [])
    clock.now = T0 + 2n * SECOND
    const snap = agg.snapshot(dump([e]))
    assert.deepEqual(snap.expiredKeys, [e.key])
    assert.deepEqual(snap.series, [])
    assert.equal(agg.expiredTotal, 1)
  })

  test('after an admitted label set expires, a new one is admitted in its place', () => {
    const clock = new Clock()
    const agg = new Aggregator(
      options({ labels: ['comm'], maxLabelSets: 1, idleExpiryMs: IDLE, nowNs: clock.nowNs }),
    )
    const a = entry({ comm: 'a', opened: 1, closed: 1, lastNs: T0 })
    assert.deepEqual(ids(agg.snapshot(dump([a]))), ['comm=a outbound'])

    clock.now = T0 + 2n * SECOND
    const expiring = agg.snapshot(dump([a]))
    assert.deepEqual(expiring.expiredKeys, [a.key])
    assert.equal(expiring.admitted, 0)

    // the caller deleted a's key; b is new
    const b = entry({ comm: 'b', opened: 5, lastNs: clock.now })
    const snap = agg.snapshot(dump([b]))
    assert.deepEqual(ids(snap), ['comm=b outbound'])
    assert.equal(get(snap, 'comm=b').opened, 5)
    assert.equal(snap.admitted, 1)
    assert.equal(snap.folded, 0)
    assert.equal(agg.foldedTotal, 0)
    assert.equal(agg.expiredTotal, 1)
  })

  test('an expired folded label set stays counted in the overflow series', () => {
    const clock = new Clock()
    const agg = new Aggregator(
      options({ labels: ['comm'], maxLabelSets: 1, idleExpiryMs: IDLE, nowNs: clock.nowNs }),
    )
    const all = `comm=${OVERFLOW}`
    const a = (): KernelEntry => entry({ comm: 'a', opened: 1, lastNs: clock.now })
    const f = entry({ comm: 'f', opened: 5, closed: 5, sentBytes: 50, buckets: [2, 3, 0], lastNs: T0 })
    assert.equal(get(agg.snapshot(dump([a(), f])), all).opened, 5)
    assert.equal(agg.foldedTotal, 1)

    clock.now = T0 + 2n * SECOND
    const expiring = agg.snapshot(dump([a(), f]))
    assert.deepEqual(expiring.expiredKeys, [f.key])
    assert.equal(agg.expiredTotal, 1)
    assert.equal(expiring.folded, 0)

    // the caller deleted f's key: its counts stay in the overflow series
    const after = agg.snapshot(dump([a()]))
    assert.deepEqual(ids(after), ['comm=a outbound', `${all} outbound`])
    assert.equal(get(after, all).opened, 5)
    assert.equal(get(after, all).closed, 5)
    assert.equal(get(after, all).sentBytes, 50)
    assert.deepEqual(get(after, all).buckets, [2, 3, 0])
    assert.equal(get(after, all).active, 0)

    // a new folded label set adds to them
    const g = entry({ comm: 'g', opened: 1, lastNs: clock.now })
    const later = agg.snapshot(dump([a(), g]))
    assert.equal(get(later, all).opened, 6)
    assert.equal(get(later, all).active, 1)
    assert.equal(agg.foldedTotal, 2)
  })

  test('the overflow series never decreases, the scrape that expires a folded label set included', () => {
    const clock = new Clock()
    const agg = new Aggregator(
      options({ labels: ['comm'], maxLabelSets: 1, idleExpiryMs: IDLE, nowNs: clock.nowNs }),
    )
    const all = `comm=${OVERFLOW}`
    const a = (): KernelEntry => entry({ comm: 'a', opened: 1, lastNs: clock.now })
    const f = entry({ comm: 'f', opened: 5, closed: 5, sentBytes: 50, lastNs: T0 })
    const opened: number[] = []
    const sent: number[] = []
    const scrape = (entries: KernelEntry[]): void => {
      const s = get(agg.snapshot(dump(entries)), all)
      opened.push(s.opened)
      sent.push(s.sentBytes)
    }
    scrape([a(), f])
    clock.now = T0 + 2n * SECOND
    scrape([a(), f]) // f expires here
    scrape([a()]) // and its key is gone
    scrape([a(), entry({ comm: 'g', opened: 1, lastNs: clock.now })])
    assert.deepEqual(opened, [5, 5, 5, 6])
    assert.deepEqual(sent, [50, 50, 50, 50])
  })
})

describe('reconfigure', () => {
  test('changing the labels re-projects and re-admits', () => {
    const agg = new Aggregator(options({ maxLabelSets: 1 }))
    const entries = [
      entry({ netns: 1, opened: 1 }),
      entry({ netns: 2, opened: 2 }),
      entry({ netns: 3, opened: 4, ip: 6 }),
    ]
    const before = agg.snapshot(dump(entries))
    assert.deepEqual(ids(before), [
      'comm=curl,netns=1,family=ipv4 outbound',
      `comm=${OVERFLOW},netns=${OVERFLOW},family=${OVERFLOW} outbound`,
    ])
    assert.equal(agg.foldedTotal, 2)

    agg.reconfigure(options({ labels: ['comm'], maxLabelSets: 1 }))
    const after = agg.snapshot(dump(entries))
    assert.deepEqual(ids(after), ['comm=curl outbound'])
    assert.equal(get(after, 'comm=curl').opened, 7)
    assert.equal(after.admitted, 1)
    assert.equal(after.folded, 0)
    // a counter: label sets folded before the reload stay counted
    assert.equal(agg.foldedTotal, 2)

    agg.reconfigure(options({ labels: ['family', 'comm'], maxLabelSets: 1 }))
    assert.deepEqual(ids(agg.snapshot(dump(entries))), [
      'family=ipv4,comm=curl outbound',
      `family=${OVERFLOW},comm=${OVERFLOW} outbound`,
    ])
    assert.equal(agg.foldedTotal, 3)
  })

  test('changing the comm filters applies them', () => {
    const agg = new Aggregator(options({ labels: ['comm'] }))
    const entries = [entry({ comm: 'curl', opened: 1 }), entry({ comm: 'sshd', opened: 2 })]
    assert.deepEqual(ids(agg.snapshot(dump(entries))), ['comm=curl outbound', 'comm=sshd outbound'])
    agg.reconfigure(options({ labels: ['comm'], commExclude: [comm('curl')] }))
    assert.deepEqual(ids(agg.snapshot(dump(entries))), ['comm=sshd outbound'])
  })

  test('keeps the injected clock when the new options have none', () => {
    const clock = new Clock()
    const agg = new Aggregator(options({ labels: ['comm'], nowNs: clock.nowNs }))
    agg.reconfigure(options({ labels: ['comm'], idleExpiryMs: 1000 }))
    const e = entry({ opened: 1, closed: 1, lastNs: T0 })
    assert.deepEqual(agg.snapshot(dump([e])).expiredKeys, [])
    clock.now = T0 + 2n * SECOND
    assert.deepEqual(agg.snapshot(dump([e])).expiredKeys, [e.key])
  })
})

describe('struct agg_key and struct agg_value, read as the exporter reads them', () => {
  const { layout: L, constants: C } = ABI

  /** One entry written byte by byte through the layout, every field set, and the dump that holds it. */
  function encode(o: {
    comm: string | Buffer
    flags: number
    direction: number
    ip: number
    buckets: ReadonlyArray<[index: number, count: bigint]>
    nbuckets: number
  }): { key: Buffer; value: Buffer; dump: AggregateDump } {
    const key = Buffer.alloc(K.size)
    key.writeBigUInt64LE(0x1122334455667788n, K.cgroup_id)
    key.writeUInt32LE(4026532001, K.netns)
    key.writeUInt32LE(123456, K.pid)
    key.writeUInt16LE(8443, K.port)
    key.writeUInt8(o.ip, K.ip)
    key.writeUInt8(o.direction, K.direction)
    key.writeUInt8(o.flags, K.flags)
    if (typeof o.comm === 'string') key.write(o.comm, K.comm, L.commLen, 'utf8')
    else o.comm.copy(key, K.comm, 0, L.commLen)
    const value = Buffer.alloc(V.size)
    value.writeBigUInt64LE(11n, V.opened)
    value.writeBigUInt64LE(7n, V.closed)
    for (let i = 0; i < V.failReasons; i++) value.writeBigUInt64LE(BigInt(100 + i), V.failed + 8 * i)
    value.writeBigUInt64LE(2n ** 40n, V.sent_bytes)
    value.writeBigUInt64LE(2n ** 52n + 1n, V.received_bytes)
    value.writeBigUInt64LE(987654321n, V.duration_sum_ns)
    value.writeBigUInt64LE(3n, V.seeded_closed)
    value.writeBigUInt64LE(0xfedcba9876543210n, V.last_ns)
    // every slot that should not be read holds a marker
    for (let i = 0; i <= V.maxBuckets; i++) value.writeBigUInt64LE(999n, V.buckets + 8 * i)
    for (const [i, n] of o.buckets) value.writeBigUInt64LE(n, V.buckets + 8 * i)
    return { key, value, dump: new AggregateDump(key, value, 1, ABI, o.nbuckets) }
  }

  /** Entry 0's counts, summed into an empty series of nbuckets. */
  function counts(dump: AggregateDump, nbuckets: number): Omit<Series, 'labels' | 'direction'> {
    const x = {
      opened: 0,
      closed: 0,
      failed: [0, 0, 0, 0],
      sentBytes: 0,
      receivedBytes: 0,
      durationSumNs: 0,
      buckets: new Array<number>(nbuckets + 1).fill(0),
      active: 0,
    }
    dump.addInto(0, x)
    return x
  }

  test('the layout is the one this file assumes', () => {
    assert.equal(V.failReasons, 4)
    assert.equal(L.commLen, 16)
    assert.ok(V.maxBuckets >= 4)
    assert.equal(V.size, V.buckets + 8 * (V.maxBuckets + 1))
  })

  test('round trip of every field, with fewer buckets than the maximum', () => {
    const { key, dump } = encode({
      comm: 'curl',
      flags: 0,
      direction: C.DIRECTION_OUTBOUND,
      ip: 4,
      buckets: [
        [0, 1n],
        [1, 0n],
        [2, 5n],
        [V.maxBuckets, 42n],
      ],
      nbuckets: 3,
    })
    const owner = dump.owner(0)
    assert.deepEqual(
      {
        key: dump.key(0),
        ...owner,
        ...counts(dump, 3),
        seededClosed: dump.seededClosed(0),
        lastNs: dump.lastNs(0),
      },
      {
        key,
        comm: 'curl',
        netns: 4026532001,
        pid: 123456,
        cgroupId: 0x1122334455667788n,
        port: 8443,
        ip: 4,
        direction: 'outbound',
        overflow: false,
        unattributed: false,
        opened: 11,
        closed: 7,
        failed: [100, 101, 102, 103],
        sentBytes: 2 ** 40,
        receivedBytes: 2 ** 52 + 1,
        durationSumNs: 987654321,
        seededClosed: 3,
        lastNs: 0xfedcba9876543210n,
        buckets: [1, 0, 5, 42],
        active: 11 - 7 - 3,
      },
    )
    assert.deepEqual(decodeAggKey(key, 0, ABI), owner)
    assert.deepEqual(encodeAggKey(owner, ABI), key, 'encoding the decoded key gives its bytes back')
    assert.equal(dump.cgroupId(0), 0x1122334455667788n)
    assert.equal(dump.active(0), 1)
    assert.equal(dump.empty(0), false)
  })

  test('inbound, ipv6, flags, a comm filling all 16 bytes, every bucket', () => {
    const buckets: Array<[number, bigint]> = []
    for (let i = 0; i <= V.maxBuckets; i++) buckets.push([i, BigInt(i + 1)])
    const { key, dump } = encode({
      comm: 'abcdefghijklmnop',
      flags: C.AGG_OVERFLOW | C.AGG_UNATTRIBUTED,
      direction: C.DIRECTION_INBOUND,
      ip: 6,
      buckets,
      nbuckets: V.maxBuckets,
    })
    const e = { ...dump.owner(0), ...counts(dump, V.maxBuckets) }
    assert.equal(e.comm, 'abcdefghijklmnop')
    assert.equal(e.direction, 'inbound')
    assert.equal(e.ip, 6)
    assert.equal(e.overflow, true)
    assert.equal(e.unattributed, true)
    assert.equal(e.buckets.length, V.maxBuckets + 1)
    assert.deepEqual(
      e.buckets,
      buckets.map(([i]) => i + 1),
    )
    // the kernel's comm has no room for a 16th byte and a NUL: encoding keeps 15
    const back = encodeAggKey(dump.owner(0), ABI)
    assert.deepEqual(back.subarray(0, K.comm + 15), key.subarray(0, K.comm + 15))
    assert.equal(back[K.comm + 15], 0)

    const unattributed = encode({
      comm: '',
      flags: C.AGG_UNATTRIBUTED,
      direction: C.DIRECTION_INBOUND,
      ip: 4,
      buckets: [],
      nbuckets: 1,
    })
    const u = { ...unattributed.dump.owner(0), ...counts(unattributed.dump, 1) }
    assert.equal(u.comm, '')
    assert.equal(u.overflow, false)
    assert.equal(u.unattributed, true)
    assert.deepEqual(u.buckets, [999, 999])
    assert.deepEqual(encodeAggKey(unattributed.dump.owner(0), ABI), unattributed.key)
  })

  test("the overflow entries' keys: only the flag and the direction", () => {
    for (const direction of ['outbound', 'inbound'] as const) {
      const want = Buffer.alloc(K.size)
      want[K.flags] = C.AGG_OVERFLOW
      want[K.direction] = direction === 'inbound' ? C.DIRECTION_INBOUND : C.DIRECTION_OUTBOUND
      assert.deepEqual(encodeAggKey({ direction, overflow: true }, ABI), want)
      assert.deepEqual(decodeAggKey(want, 0, ABI), {
        comm: '',
        netns: 0,
        pid: 0,
        cgroupId: 0n,
        port: 0,
        ip: 4,
        direction,
        overflow: true,
        unattributed: false,
      })
    }
  })

  test('a decoded entry feeds the aggregator', () => {
    const { dump } = encode({
      comm: 'curl',
      flags: 0,
      direction: C.DIRECTION_INBOUND,
      ip: 6,
      buckets: [],
      nbuckets: 1,
    })
    const agg = new Aggregator(options({ labels: ['comm', 'family', 'port'], nbuckets: 1 }))
    const snap = agg.snapshot(dump)
    assert.deepEqual(ids(snap), ['comm=curl,family=ipv6,port=8443 inbound'])
    assert.equal(get(snap, 'comm=curl,family=ipv6,port=8443', 'inbound').active, 11 - 7 - 3)
  })

  test('hostile comms: invalid UTF-8 becomes U+FFFD, names that decode alike merge, nothing is lost', () => {
    // a comm is any 15 bytes but NUL (prctl PR_SET_NAME); the kernel may cut a UTF-8 sequence in half
    const raw = (...b: number[]): Buffer => Buffer.from(b)
    const comms: Array<[Buffer, string]> = [
      [raw(0x61, 0xff), 'a\ufffd'], // a byte that is never UTF-8
      [raw(0x61, 0xfe), 'a\ufffd'], // another: the same label value
      [raw(0x61, 0xc3), 'a\ufffd'], // a sequence cut short
      [raw(0x80, 0x62), '\ufffdb'], // a lone continuation byte
      [Buffer.concat([Buffer.from('ééééééé'), raw(0xc3)]), 'ééééééé\ufffd'], // 15 bytes: é cut in half
      [Buffer.from('a",x="y'), 'a",x="y'],
      [Buffer.from('} 1\n'), '} 1\n'],
      [Buffer.from('back\\slash'), 'back\\slash'],
    ]
    const agg = new Aggregator(options({ labels: ['comm'], nbuckets: 1 }))
    const entries = comms.map(([comm]) =>
      encode({ comm, flags: 0, direction: C.DIRECTION_OUTBOUND, ip: 4, buckets: [], nbuckets: 1 }),
    )
    const all = new AggregateDump(
      Buffer.concat(entries.map((e) => e.key)),
      Buffer.concat(entries.map((e) => e.value)),
      entries.length,
      ABI,
      1,
    )
    assert.deepEqual(
      entries.map((_, i) => all.owner(i).comm),
      comms.map(([, want]) => want),
    )
    const snap = agg.snapshot(all)
    const opened = new Map(snap.series.map((x) => [x.labels[0]?.[1], x.opened]))
    // each entry counts 11; the three that decode to a\ufffd are one series of 33
    assert.deepEqual(
      [...opened].sort(),
      [
        ['a\ufffd', 33],
        ['\ufffdb', 11],
        ['ééééééé\ufffd', 11],
        ['a",x="y', 11],
        ['} 1\n', 11],
        ['back\\slash', 11],
      ].sort(),
    )
    assert.equal(snap.admitted, 6)
  })

  test('Buffers too small for the entries throw RangeError', () => {
    const { key, value } = encode({
      comm: 'x',
      flags: 0,
      direction: C.DIRECTION_OUTBOUND,
      ip: 4,
      buckets: [],
      nbuckets: 3,
    })
    assert.throws(() => new AggregateDump(key.subarray(1), value, 1, ABI, 3), RangeError)
    assert.throws(() => new AggregateDump(key, value, 2, ABI, 3), RangeError)
    assert.throws(() => new AggregateDump(key, value.subarray(0, V.size - 8), 1, ABI, 3), {
      name: 'RangeError',
      message: new RegExp(`1 entries do not fit ${K.size}/${V.size - 8} bytes`),
    })
  })
})

// keep the label-name type honest: every label name is handled by the projection
test('every label name projects', () => {
  const labels: LabelName[] = ['comm', 'netns', 'family', 'pid', 'cgroup', 'port']
  const agg = new Aggregator(options({ labels }))
  const snap = agg.snapshot(dump([entry({ opened: 1, cgroupId: 5n, pid: 9, port: 22, netns: 3, ip: 6 })]))
  assert.deepEqual(snap.series[0]?.labels, [
    ['comm', 'curl'],
    ['netns', '3'],
    ['family', 'ipv6'],
    ['pid', '9'],
    ['cgroup', 'cgroup-5'],
    ['port', '22'],
  ])
})
