// Scrape sharing (src/http/scrape-sharing.ts): ScrapeSharing and Collection, the plugin alone on a bare
// app, then in the whole app with --web.max-requests, failures and the release of what was sent.
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

import Fastify from 'fastify'

import type { MetricFamily } from '../../src/metrics/exposition.js'
import { HttpState } from '../../src/http/app.js'
import { Collection, ScrapeSharing, scrapeSharing } from '../../src/http/scrape-sharing.js'
import { EMPTY_WEB_CONFIG } from '../../src/config/webconfig.js'
import { appWith, sample, SlowSource, web } from './http-helpers.js'

describe('ScrapeSharing', () => {
  test('reads asked for in the same turn share one read; a later one reads again', async () => {
    const source = new SlowSource()
    const sharing = new ScrapeSharing()
    const [a, b, c] = await Promise.all([1, 2, 3].map(async () => await sharing.collect(source)))
    assert.equal(source.collects, 1)
    assert.ok(a === b && b === c)
    assert.deepEqual([sharing.own, sharing.shared], [1, 2])
    const d = await sharing.collect(source)
    assert.notEqual(d, a)
    assert.deepEqual([sharing.own, sharing.shared, source.collects], [2, 2, 2])
  })

  test('a failed read fails every sharer, and the next read starts afresh', async () => {
    const sharing = new ScrapeSharing()
    const failing = new SlowSource()
    failing.collect = async () => {
      throw new Error('map unreadable')
    }
    const all = await Promise.allSettled([1, 2].map(async () => await sharing.collect(failing)))
    assert.deepEqual(
      all.map((r) => r.status),
      ['rejected', 'rejected'],
    )
    const source = new SlowSource()
    assert.equal((await sharing.collect(source)).families[0]?.name, 'test_collection')
  })
})

describe('Collection', () => {
  test('the lines are released once, when the last response that retained them is done', () => {
    let releases = 0
    const family: MetricFamily = {
      name: 'test_lines',
      help: 'Rendered ahead.',
      type: 'gauge',
      lines: {
        *chunks() {},
        release() {
          releases++
        },
      },
    }
    const c = new Collection([family])
    c.retain()
    c.retain()
    c.release()
    assert.equal(releases, 0)
    c.release()
    assert.equal(releases, 1)
    c.release()
    assert.equal(releases, 1, 'a release without a retain does nothing')
    assert.throws(() => c.retain(), /retained after its release/)
  })
})

describe('the scrape-sharing plugin', () => {
  test('app.scrape() shares one read between concurrent requests and holds it until each is sent', async (t) => {
    const source = new LinesSource(20)
    const sharing = new ScrapeSharing()
    const app = Fastify({ logger: false })
    app.register(scrapeSharing, { sharing, source })
    app.register(async (routes) => {
      routes.get('/scrape', async (_req, reply) => {
        const got = await routes.scrape(reply)
        return `${got.families.length}\n`
      })
    })
    t.after(async () => await app.close())
    const res = await Promise.all([1, 2, 3, 4].map(async () => await app.inject({ url: '/scrape' })))
    assert.deepEqual(
      res.map((r) => r.body),
      ['1\n', '1\n', '1\n', '1\n'],
    )
    assert.deepEqual([sharing.own, sharing.shared], [1, 3])
    await sleep(10)
    assert.deepEqual(source.released, [1])
  })
})

/** A source of one family of rendered lines per collection, which counts each collection's releases. */
class LinesSource extends SlowSource {
  readonly released: number[] = []
  /** when set, every read waits for it */
  gate: Promise<void> | undefined

  override async collect(): Promise<MetricFamily[]> {
    const n = this.released.push(0) - 1
    if (this.delayMs > 0) await sleep(this.delayMs)
    await this.gate
    const released = this.released
    return [
      {
        name: 'test_lines',
        help: 'Rendered ahead.',
        type: 'gauge',
        lines: {
          *chunks() {
            yield Buffer.from(`test_lines ${n}\n`)
          },
          release() {
            released[n]!++
          },
        },
      },
    ]
  }
}

describe('shared collections and --web.max-requests', () => {
  test('concurrent scrapes share one collection; beyond the limit: 503 with a reason, counted', async (t) => {
    const source = new SlowSource(100)
    const state = new HttpState(EMPTY_WEB_CONFIG, { maxRequests: 5 })
    const app = appWith(source, state)
    t.after(() => app.close())
    const res = await Promise.all(
      Array.from({ length: 12 }, async () => await app.inject({ url: '/metrics' })),
    )
    const ok = res.filter((r) => r.statusCode === 200)
    const refused = res.filter((r) => r.statusCode === 503)
    assert.equal(ok.length, 5)
    assert.equal(refused.length, 7)
    for (const r of refused) {
      assert.equal(
        r.body,
        'too many concurrent scrapes: 5 are in progress (the limit is --web.max-requests=5); try again later\n',
      )
      assert.equal(r.headers['retry-after'], '1')
    }
    // the five admitted shared one read of the source, and all saw the same data
    assert.equal(source.collects, 1)
    for (const r of ok) assert.equal(sample(r.body, 'test_collection'), 1)
    assert.equal(state.scrapes.own, 1)
    assert.equal(state.scrapes.shared, 4)
    assert.equal(state.inFlight, 0)
    const after = await app.inject({ url: '/metrics' })
    assert.equal(after.statusCode, 200)
    assert.equal(sample(after.body, 'test_collection'), 2)
    assert.equal(sample(after.body, 'tcptracer_http_requests_rejected_total{reason="max_requests"}'), 7)
    assert.equal(sample(after.body, 'tcptracer_scrapes_total{collection="own"}'), 2)
    assert.equal(sample(after.body, 'tcptracer_scrapes_total{collection="shared"}'), 4)
    assert.equal(sample(after.body, 'tcptracer_scrapes_in_flight'), 1)
  })

  test('0 means no limit', async (t) => {
    const source = new SlowSource(50)
    const app = appWith(source, new HttpState(EMPTY_WEB_CONFIG, { maxRequests: 0 }))
    t.after(() => app.close())
    const res = await Promise.all(
      Array.from({ length: 100 }, async () => await app.inject({ url: '/metrics' })),
    )
    assert.deepEqual(new Set(res.map((r) => r.statusCode)), new Set([200]))
    assert.equal(source.collects, 1)
  })

  test('a failed collection fails every scrape that shared it, and frees the slots', async (t) => {
    const source = new SlowSource(30)
    let fail = true
    const orig = source.collect.bind(source)
    source.collect = async () => {
      const r = await orig()
      if (fail) throw new Error('map unreadable')
      return r
    }
    const state = new HttpState(EMPTY_WEB_CONFIG, { maxRequests: 10 })
    const app = appWith(source, state)
    t.after(() => app.close())
    const res = await Promise.all(
      Array.from({ length: 4 }, async () => await app.inject({ url: '/metrics' })),
    )
    assert.deepEqual(
      res.map((r) => r.statusCode),
      [500, 500, 500, 500],
    )
    assert.equal(state.inFlight, 0)
    fail = false
    assert.equal((await app.inject({ url: '/metrics' })).statusCode, 200)
  })
})

describe('a collection is released once every scrape that shared it is done', () => {
  test('GET, HEAD and concurrent scrapes: each collection released exactly once', async (t) => {
    const source = new LinesSource()
    const app = appWith(source, new HttpState(web({})))
    t.after(async () => await app.close())
    const get = await app.inject({ url: '/metrics' })
    assert.equal(sample(get.body, 'test_lines'), 0)
    const head = await app.inject({ method: 'HEAD', url: '/metrics' })
    assert.equal(head.statusCode, 200)
    assert.equal(head.body, '')
    const shared = await Promise.all([1, 2, 3].map(async () => await app.inject({ url: '/metrics' })))
    assert.deepEqual(
      shared.map((r) => sample(r.body, 'test_lines')),
      [2, 2, 2],
    )
    await sleep(10)
    assert.deepEqual(source.released, [1, 1, 1])
  })

  test('a client gone while the maps are read: released, and a scrape sharing it still gets its answer', async (t) => {
    const source = new LinesSource()
    let open = (): void => {}
    source.gate = new Promise<void>((resolve) => (open = resolve))
    const state = new HttpState(web({}))
    const app = appWith(source, state)
    t.after(async () => await app.close())
    await app.listen({ host: '127.0.0.1', port: 0 })
    const { port } = app.server.address() as net.AddressInfo
    const until = async (what: string, done: () => boolean): Promise<void> => {
      const deadline = Date.now() + 10_000
      while (!done()) {
        assert.ok(Date.now() < deadline, `timed out waiting for ${what}`)
        await sleep(5)
      }
    }
    // one scrape starts the read, a second joins it, the first client leaves, then the read completes
    const gone = net.connect(port, '127.0.0.1', () => gone.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'))
    gone.on('error', () => {})
    await until('the first scrape', () => state.scrapes.own === 1)
    const stays = fetch(`http://127.0.0.1:${port}/metrics`)
    await until('the second scrape to join the read', () => state.scrapes.shared === 1)
    gone.destroy()
    await until('the server to see the first client leave', () => state.inFlight === 1)
    open()
    const res = await stays
    assert.equal(sample(await res.text(), 'test_lines'), 0)
    await until('the release', () => source.released[0] === 1)
    await sleep(20)
    assert.deepEqual(source.released, [1], 'released once, and only one read')
  })
})
