// The scrape path kept between scrapes: the aggregator fed raw map reads (AggregateDump) into two pairs
// of Buffers used in turn, which counts again only the entries whose bytes changed, and
// ConnectionExposition, which keeps each label set's rendered lines. Both must give exactly what the
// plain path gives: an aggregator fed the same entries in Buffers of their own for each read, never
// written again, and render() of the plain families.
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { Aggregator, OVERFLOW, type AggregatorOptions, type Snapshot } from '../../src/metrics/aggregator.js'
import { AggregateDump } from '../../src/kernel/abi.js'
import { ConnectionExposition } from '../../src/metrics/connection-exposition.js'
import { connectionFamilies } from '../../src/metrics/connection-families.js'
import { render, renderChunks, type Format, type MetricFamily } from '../../src/metrics/exposition.js'
import { loadBinding } from '../../src/kernel/binding.js'
import { prng } from '../prng.js'

const ABI = loadBinding()
const { layout: L, constants: C } = ABI
const K = L.aggKey
const V = L.aggValue
const BOUNDS = [0.001, 0.01, 0.1, 1, 10]
const NB = BOUNDS.length
const SECOND = 1_000_000_000n
const T0 = 5_000n * SECOND
const FORMATS: Format[] = ['prometheus', 'openmetrics']

/** One entry of the kernel map, as the test's model of it. */
interface ModelEntry {
  comm: Buffer
  netns: number
  port: number
  ip: 4 | 6
  direction: 1 | 2
  flags: number
  cgroupId: bigint
  opened: bigint
  closed: bigint
  failed: bigint[]
  sent: bigint
  received: bigint
  durationNs: bigint
  seededClosed: bigint
  lastNs: bigint
  /** NB + 1 slots, the last is +Inf (stored in the kernel's last slot) */
  buckets: bigint[]
}

function modelEntry(o: Partial<Omit<ModelEntry, 'comm'>> & { comm: string | Buffer }): ModelEntry {
  return {
    netns: 4026531840,
    port: 0,
    ip: 4,
    direction: 1,
    flags: 0,
    cgroupId: 0n,
    opened: 0n,
    closed: 0n,
    failed: [0n, 0n, 0n, 0n],
    sent: 0n,
    received: 0n,
    durationNs: 0n,
    seededClosed: 0n,
    lastNs: T0,
    buckets: new Array<bigint>(NB + 1).fill(0n),
    ...o,
    comm: typeof o.comm === 'string' ? Buffer.from(o.comm) : o.comm,
  }
}

function encodeKey(e: ModelEntry, into: Buffer, at: number): void {
  into.fill(0, at, at + K.size)
  into.writeBigUInt64LE(e.cgroupId, at + K.cgroup_id)
  into.writeUInt32LE(e.netns, at + K.netns)
  into.writeUInt16LE(e.port, at + K.port)
  into.writeUInt8(e.ip, at + K.ip)
  into.writeUInt8(e.direction, at + K.direction)
  into.writeUInt8(e.flags, at + K.flags)
  e.comm.copy(into, at + K.comm, 0, Math.min(e.comm.length, L.commLen - 1))
}

function encodeValue(e: ModelEntry, into: Buffer, at: number): void {
  into.fill(0, at, at + V.size)
  into.writeBigUInt64LE(e.opened, at + V.opened)
  into.writeBigUInt64LE(e.closed, at + V.closed)
  for (let i = 0; i < V.failReasons; i++) into.writeBigUInt64LE(e.failed[i] ?? 0n, at + V.failed + 8 * i)
  into.writeBigUInt64LE(e.sent, at + V.sent_bytes)
  into.writeBigUInt64LE(e.received, at + V.received_bytes)
  into.writeBigUInt64LE(e.durationNs, at + V.duration_sum_ns)
  into.writeBigUInt64LE(e.seededClosed, at + V.seeded_closed)
  into.writeBigUInt64LE(e.lastNs, at + V.last_ns)
  for (let i = 0; i < NB; i++) into.writeBigUInt64LE(e.buckets[i] ?? 0n, at + V.buckets + 8 * i)
  into.writeBigUInt64LE(e.buckets[NB] ?? 0n, at + V.buckets + 8 * V.maxBuckets)
}

/**
 * The kernel map and what the exporter does with it at a scrape: read it into one of two pairs of
 * Buffers in turn (as Exporter does), snapshot it, delete the expired keys. A second aggregator gets
 * the same entries in fresh Buffers at every read: the two must agree.
 */
class Kernel {
  entries = new Map<string, ModelEntry>()
  private readonly pairs = [
    { keys: Buffer.alloc(0), values: Buffer.alloc(0) },
    { keys: Buffer.alloc(0), values: Buffer.alloc(0) },
  ]
  private next = 0

  /** Add an entry, unless one with its key exists: then that one. */
  put(e: ModelEntry): ModelEntry {
    const key = Buffer.alloc(K.size)
    encodeKey(e, key, 0)
    const id = key.toString('hex')
    const had = this.entries.get(id)
    if (had !== undefined) return had
    this.entries.set(id, e)
    return e
  }

  /** The map in some order (a hash map's order changes as entries come and go): rotated by `shift`. */
  private ordered(shift: number): ModelEntry[] {
    const all = [...this.entries.values()]
    const s = all.length === 0 ? 0 : shift % all.length
    return [...all.slice(s), ...all.slice(0, s)]
  }

  read(shift: number): { dump: AggregateDump; copy: AggregateDump; commit: () => void } {
    const order = this.ordered(shift)
    const pair = this.pairs[this.next]!
    if (pair.keys.length < order.length * K.size) {
      pair.keys = Buffer.alloc((order.length + 3) * K.size)
      pair.values = Buffer.alloc((order.length + 3) * V.size)
    }
    order.forEach((e, i) => {
      encodeKey(e, pair.keys, i * K.size)
      encodeValue(e, pair.values, i * V.size)
    })
    return {
      dump: new AggregateDump(pair.keys, pair.values, order.length, ABI, NB),
      copy: new AggregateDump(
        Buffer.from(pair.keys.subarray(0, order.length * K.size)),
        Buffer.from(pair.values.subarray(0, order.length * V.size)),
        order.length,
        ABI,
        NB,
      ),
      commit: () => {
        this.next ^= 1
      },
    }
  }

  delete(keys: readonly Buffer[]): void {
    for (const k of keys) assert.ok(this.entries.delete(k.toString('hex')), 'an expired key exists')
  }
}

/** What a scrape sends for the connection families: the chunks renderChunks makes, joined. */
function scrapeText(families: readonly MetricFamily[], format: Format, bytesPerChunk: number): string {
  const parts: Array<string | Buffer> = [...renderChunks(families, format, 100, bytesPerChunk)]
  for (const p of parts) {
    if (Buffer.isBuffer(p)) {
      assert.ok(p.length > 0, 'no empty chunk')
      // a chunk holds whole lines, and at least one label set's lines even when that is more than asked
      assert.equal(p[p.length - 1], 0x0a, 'a chunk ends with a whole line')
    }
  }
  return Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p)))).toString('utf8')
}

function options(clock: { now: bigint }, o: Partial<AggregatorOptions> = {}): AggregatorOptions {
  return {
    labels: ['comm', 'netns', 'family', 'port'],
    maxLabelSets: 12,
    idleExpiryMs: 1000,
    commInclude: [],
    commExclude: [],
    nbuckets: NB,
    resolveCgroup: (id) => `/c${id}`,
    nowNs: () => clock.now,
    ...o,
  }
}

/** The two aggregators agree on everything a snapshot says. */
function sameSnapshot(raw: Snapshot, plain: Snapshot, what: string): void {
  assert.deepEqual(raw.series, plain.series, `${what}: series`)
  assert.deepEqual(
    raw.sets.map((s) => s.id),
    plain.sets.map((s) => s.id),
    `${what}: label sets`,
  )
  assert.deepEqual(
    raw.expiredKeys.map((k) => k.toString('hex')),
    plain.expiredKeys.map((k) => k.toString('hex')),
    `${what}: expired keys`,
  )
  assert.equal(raw.admitted, plain.admitted, `${what}: admitted`)
  assert.equal(raw.folded, plain.folded, `${what}: folded`)
}

/** A kernel map, an aggregator and a kept exposition, collected as a scrape would, in the text format. */
function scene(o: Partial<AggregatorOptions> = {}): {
  kernel: Kernel
  kept: ConnectionExposition
  collect: () => { families: MetricFamily[]; want: string }
} {
  const kernel = new Kernel()
  const agg = new Aggregator(options({ now: T0 }, { idleExpiryMs: 0, ...o }))
  const kept = new ConnectionExposition()
  const collect = (): { families: MetricFamily[]; want: string } => {
    const { dump, commit } = kernel.read(0)
    const snap = agg.snapshot(dump)
    commit()
    return {
      families: kept.families(snap.sets, BOUNDS),
      want: render(connectionFamilies(snap.series, BOUNDS), 'prometheus', { eof: false }),
    }
  }
  return { kernel, kept, collect }
}

/** The server is done with a collection: every response that sent it finished. */
function release(c: { families: MetricFamily[] }): void {
  for (const f of c.families) f.lines?.release?.()
}

describe('kept between scrapes, exactly what a fresh render gives', () => {
  test('a random history: counts grow, label sets come, change, expire and fold into __overflow__', () => {
    const rnd = prng(20261201)
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!
    const clock = { now: T0 }
    const kernel = new Kernel()
    const raw = new Aggregator(options(clock))
    const plain = new Aggregator(options(clock))
    const kept = new ConnectionExposition()
    // the kernel's overflow entries, empty until the map is full
    const overflow = [1, 2].map((d) =>
      kernel.put(
        modelEntry({ comm: '', netns: 0, direction: d as 1 | 2, flags: C.AGG_OVERFLOW, lastNs: 0n }),
      ),
    )
    const comms = ['curl', 'nginx', 'a"b', 'back\\slash', 'new\nline', 'ééé', '日本', '__overflow__', 'x']
    let made = 0
    /** label sets sent, and those of them rendered anew rather than kept from an earlier scrape */
    let shown = 0
    let renders = 0
    for (let step = 0; step < 120; step++) {
      // the kernel counts: some entries change, a few new ones appear
      for (const e of kernel.entries.values()) {
        if (e.flags !== 0 || rnd() > 0.3) continue
        const n = BigInt(1 + Math.floor(rnd() * 3))
        e.opened += n
        e.closed += rnd() < 0.8 ? n : 0n
        e.sent += 1000n * n
        e.received += 10n * n
        e.durationNs += 1_234_567n * n
        const b = Math.floor(rnd() * (NB + 1))
        e.buckets[b] = (e.buckets[b] ?? 0n) + n
        if (e.direction === 1 && rnd() < 0.3) e.failed[Math.floor(rnd() * 4)]! += 1n
        e.lastNs = clock.now
      }
      for (let i = 0; i < (step < 10 ? 4 : rnd() < 0.5 ? 1 : 0); i++) {
        made++
        kernel.put(
          modelEntry({
            comm: pick(comms),
            port: 20_000 + (made % 40),
            ip: rnd() < 0.5 ? 4 : 6,
            direction: rnd() < 0.6 ? 1 : 2,
            opened: 1n,
            closed: rnd() < 0.7 ? 1n : 0n,
            lastNs: clock.now,
          }),
        )
      }
      if (step % 17 === 5) {
        const o = overflow[step % 2]!
        o.opened += 3n
        o.closed += 2n
        o.lastNs = clock.now
      }
      // another process's delete (a restart of a second exporter on pinned maps, say)
      if (step % 23 === 11) {
        const victim = [...kernel.entries.entries()].find(([, e]) => e.flags === 0)
        if (victim) kernel.entries.delete(victim[0])
      }
      clock.now += SECOND / 4n

      // mostly the same order (entries come and go in it), sometimes another
      const { dump, copy, commit } = kernel.read(step % 3 === 0 ? step * 7 : 0)
      const a = raw.snapshot(dump)
      commit()
      const b = plain.snapshot(copy)
      sameSnapshot(a, b, `step ${step}`)
      assert.equal(raw.foldedTotal, plain.foldedTotal)
      assert.equal(raw.expiredTotal, plain.expiredTotal)
      // the exporter deletes the expired keys; now and then a delete fails and the entry stays
      kernel.delete(step % 4 === 0 ? a.expiredKeys.slice(1) : a.expiredKeys)

      const families = kept.families(a.sets, BOUNDS)
      const reference = connectionFamilies(a.series, BOUNDS)
      for (const format of FORMATS) {
        const want = render(reference, format, { eof: false })
        const before = kept.rendered
        const first = scrapeText(families, format, pick([1, 200, 4096, 1 << 16]))
        assert.equal(first, want, `step ${step}, ${format}: kept lines equal a fresh render`)
        shown += a.sets.length
        renders += kept.rendered - before
        // the same collection scraped again renders nothing anew
        const again = kept.rendered
        assert.equal(render(families, format, { eof: false }), want, `step ${step}, ${format}: again`)
        assert.equal(kept.rendered, again, 'a collection renders each label set once per format')
        // and so does a fresh ConnectionExposition, which has nothing kept
        assert.equal(
          render(new ConnectionExposition().families(a.sets, BOUNDS), format, { eof: false }),
          want,
        )
      }
    }
    // the history did what it is meant to exercise
    assert.ok(raw.expiredTotal >= 5, `label sets expired: ${raw.expiredTotal}`)
    assert.ok(raw.foldedTotal >= 5, `label sets folded: ${raw.foldedTotal}`)
    assert.ok(raw.foldedTotal > raw.expiredTotal || raw.expiredTotal > 0)
    // many label sets did not change from one scrape to the next, and were sent as kept
    assert.equal(kept.rendered, renders)
    assert.ok(renders < shown / 2, `${renders} of ${shown} label sets rendered anew`)
  })

  test('a label set is rendered again only when its series change', () => {
    const clock = { now: T0 }
    const kernel = new Kernel()
    const agg = new Aggregator(options(clock, { idleExpiryMs: 0 }))
    const kept = new ConnectionExposition()
    const entries = Array.from({ length: 50 }, (_, i) =>
      kernel.put(modelEntry({ comm: `p${i}`, port: 80, opened: 1n, closed: 1n })),
    )
    const scrape = (): string => {
      const { dump, commit } = kernel.read(0)
      const snap = agg.snapshot(dump)
      commit()
      const text = scrapeText(kept.families(snap.sets, BOUNDS), 'prometheus', 4096)
      assert.equal(text, render(connectionFamilies(snap.series, BOUNDS), 'prometheus', { eof: false }))
      return text
    }
    scrape()
    assert.equal(kept.rendered, 13, 'the 12 admitted label sets and the overflow one')
    const text = scrape()
    assert.equal(kept.rendered, 13, 'nothing changed, nothing rendered')
    entries[3]!.opened += 1n
    entries[3]!.closed += 1n
    assert.notEqual(scrape(), text)
    assert.equal(kept.rendered, 14, 'one label set changed: one render')
    entries[40]!.sent += 5n // folded: only the overflow label set changes
    scrape()
    assert.equal(kept.rendered, 15)
    const before = kept.rendered
    scrape()
    scrape()
    assert.equal(kept.rendered, before)
    // the text format and OpenMetrics are kept apart
    const { dump, commit } = kernel.read(0)
    const snap = agg.snapshot(dump)
    commit()
    const families = kept.families(snap.sets, BOUNDS)
    assert.equal(
      scrapeText(families, 'openmetrics', 100),
      render(connectionFamilies(snap.series, BOUNDS), 'openmetrics', { eof: false }),
    )
    assert.equal(kept.rendered, before + 13)
  })

  test('a collection still being sent keeps its own lines when a later one has newer series', () => {
    const { kernel, collect } = scene()
    const e = kernel.put(modelEntry({ comm: 'curl', port: 443, opened: 1n }))
    const older = collect()
    e.opened += 5n
    const newer = collect()
    assert.notEqual(older.want, newer.want)
    // the newer one is sent first, then the older one (a slow scraper): each has its own numbers
    assert.equal(scrapeText(newer.families, 'prometheus', 64), newer.want)
    assert.equal(scrapeText(older.families, 'prometheus', 64), older.want)
    assert.equal(scrapeText(newer.families, 'prometheus', 64), newer.want)
    // what the older one rendered is not kept for the next collection, which has the newer series
    const next = collect()
    assert.equal(next.want, newer.want)
    assert.equal(scrapeText(next.families, 'prometheus', 64), newer.want)
  })

  test('released collections give their Buffers back; one still being sent keeps its bytes', () => {
    const { kernel, kept, collect } = scene({ maxLabelSets: 100 })
    const entries = Array.from({ length: 30 }, (_, i) =>
      kernel.put(modelEntry({ comm: `p${i}`, port: 80 + i, opened: 1n, closed: 1n })),
    )
    // a slow scraper: its collection is sent in part, and not released for a long time
    const slow = collect()
    const slowChunks = [...renderChunks(slow.families, 'prometheus', 100, 300)]
    let reused = 0
    for (let round = 0; round < 6; round++) {
      entries[round % entries.length]!.opened += 1n
      entries[(round * 7) % entries.length]!.sent += 10n
      const c = collect()
      assert.equal(scrapeText(c.families, 'prometheus', 512), c.want, `round ${round}`)
      release(c)
      reused = kept.reused
    }
    assert.ok(reused > 0, 'Buffers of released collections were reused')
    // what the slow scraper got, and what it gets now, is still its own collection's
    const joined = Buffer.concat(slowChunks.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p)))).toString()
    assert.equal(joined, slow.want)
    assert.equal(scrapeText(slow.families, 'prometheus', 300), slow.want)
    // a released collection is never read again
    release(slow)
    const latest = collect()
    assert.equal(scrapeText(latest.families, 'prometheus', 4096), latest.want)
    release(latest)
    entries[0]!.opened += 1n
    const after = collect()
    assert.equal(scrapeText(after.families, 'prometheus', 4096), after.want)
    // a released collection sends nothing more: its chunks may be asked for once more by a response
    // cut off between two of them, after the release
    assert.equal(
      scrapeText(slow.families, 'prometheus', 300),
      render(
        connectionFamilies([], BOUNDS).map((f) => ({ ...f, samples: [] })),
        'prometheus',
        { eof: false },
      ),
    )
  })

  test('a response cut off mid-fill and released writes nothing into reused Buffers', () => {
    const { kernel, collect } = scene({ maxLabelSets: 1000 })
    const entries = Array.from({ length: 300 }, (_, i) =>
      kernel.put(modelEntry({ comm: `p${i}`, port: 1000 + i, opened: 1n, closed: 1n })),
    )
    const a = collect()
    assert.equal(scrapeText(a.families, 'prometheus', 4096), a.want)
    release(a)
    // b: more label sets changed than one chunk renders, so its lines are filled while it is sent
    for (let i = 0; i < 200; i++) entries[i]!.opened += 1n
    const b = collect()
    const slow = renderChunks(b.families, 'prometheus', 100, 64)[Symbol.iterator]()
    slow.next() // the metadata
    slow.next() // the first chunk; the rest is not in b's lines yet
    // a faster scraper's collection takes over every label set's lines and is released
    entries[250]!.opened += 1n
    const c = collect()
    assert.equal(scrapeText(c.families, 'prometheus', 4096), c.want)
    release(c)
    // b's client is gone: released, its Buffers go to the spares; then its generator runs once more
    release(b)
    for (let r = slow.next(); !r.done; r = slow.next()) {
      assert.ok(!Buffer.isBuffer(r.value), 'a released collection yields no more sample lines')
    }
    // the next collections, in the reused Buffers, are still exactly what a fresh render gives
    for (let round = 0; round < 3; round++) {
      entries[round]!.opened += 1n
      const d = collect()
      assert.equal(scrapeText(d.families, 'prometheus', 4096), d.want, `round ${round}`)
      release(d)
    }
  })

  test('lines that label sets are still to be copied from are not given back', () => {
    const { kernel, collect } = scene({ maxLabelSets: 1000 })
    const entries = Array.from({ length: 200 }, (_, i) =>
      kernel.put(modelEntry({ comm: `p${i}`, port: 1000 + i, opened: 1n, closed: 1n })),
    )
    const a = collect()
    assert.equal(scrapeText(a.families, 'prometheus', 4096), a.want)
    release(a)
    // more label sets change than one chunk renders, and their lines get longer
    for (let i = 0; i < 100; i++) entries[i]!.opened += 1_000_000_000_000n
    const b = collect()
    const it = renderChunks(b.families, 'prometheus', 100, 64)[Symbol.iterator]()
    it.next() // the metadata
    it.next() // one chunk: the first label sets rendered, the rest not yet copied from a's lines
    release(b) // the scraper went away
    entries[0]!.opened += 1n
    const c = collect()
    assert.equal(scrapeText(c.families, 'prometheus', 4096), c.want)
  })

  test('the lines of a format no one asked for lately are dropped, and made again when asked for', () => {
    const clock = { now: T0 }
    const kernel = new Kernel()
    const agg = new Aggregator(options(clock, { idleExpiryMs: 0, maxLabelSets: 100 }))
    const kept = new ConnectionExposition()
    for (let i = 0; i < 20; i++) kernel.put(modelEntry({ comm: `p${i}`, opened: 1n }))
    const scrape = (format: Format): void => {
      const { dump, commit } = kernel.read(0)
      const snap = agg.snapshot(dump)
      commit()
      const text = scrapeText(kept.families(snap.sets, BOUNDS), format, 4096)
      assert.equal(text, render(connectionFamilies(snap.series, BOUNDS), format, { eof: false }))
    }
    scrape('prometheus')
    scrape('openmetrics')
    assert.equal(kept.rendered, 40)
    scrape('openmetrics')
    for (let i = 0; i < 3; i++) scrape('prometheus')
    assert.equal(kept.rendered, 40, 'OpenMetrics lines last asked for 3 collections ago are still kept')
    scrape('openmetrics')
    assert.equal(kept.rendered, 40)
    for (let i = 0; i < 4; i++) scrape('prometheus')
    assert.equal(kept.rendered, 40)
    scrape('openmetrics')
    assert.equal(kept.rendered, 60, 'not asked for in 4 collections: dropped, rendered again')
    scrape('prometheus')
    assert.equal(kept.rendered, 60)
  })

  test('the overflow label set comes last, admitted ones in admission order', () => {
    const clock = { now: T0 }
    const kernel = new Kernel()
    const agg = new Aggregator(options(clock, { maxLabelSets: 2, idleExpiryMs: 0 }))
    for (const comm of ['b', 'a', 'c', 'd']) kernel.put(modelEntry({ comm, opened: 1n }))
    const { dump, commit } = kernel.read(0)
    const snap = agg.snapshot(dump)
    commit()
    const comms = snap.sets.map((s) => s.labels[0]?.[1])
    assert.deepEqual(comms, ['b', 'a', OVERFLOW])
    // a different order from the kernel changes nothing
    const later = kernel.read(3)
    assert.deepEqual(
      agg.snapshot(later.dump).sets.map((s) => s.labels[0]?.[1]),
      comms,
    )
    later.commit()
  })
})

test("the addon fixes glibc's mmap threshold, so that freed large Buffers leave the resident set", () => {
  // Debian's C library is glibc: the call must take effect there
  assert.equal(loadBinding().mmapThreshold(128 * 1024), true)
  assert.equal(loadBinding().mmapThreshold(0), false)
  assert.throws(() => (loadBinding().mmapThreshold as (x: unknown) => boolean)('128k'), TypeError)
  // back to the value the exporter sets
  assert.equal(loadBinding().mmapThreshold(128 * 1024), true)
})
