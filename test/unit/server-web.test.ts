// The HTTP side's guards through the fastify app (inject, no socket): basic auth, headers, the rate limit,
// --web.max-requests, shared collections, reloads and the metrics that count them.
import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

import bcrypt from 'bcryptjs'
import pino from 'pino'

import type { MetricFamily } from '../../src/metrics/exposition.js'
import { build, HttpState, type MetricsSource } from '../../src/http/app.js'
import { EMPTY_WEB_CONFIG, type WebConfig } from '../../src/config/webconfig.js'

const basic = (user: string, password: string): string =>
  `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`

const HASH = bcrypt.hashSync('pw', 4)

/** A source whose collect() takes `delayMs` and returns a family with a counter of collections. */
class SlowSource implements MetricsSource {
  collects = 0
  constructor(public delayMs = 0) {}
  readonly programs = []
  readonly hooks = []
  notReadyReason(): string | undefined {
    return undefined
  }

  async collect(): Promise<MetricFamily[]> {
    const n = ++this.collects
    if (this.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.delayMs))
    return [
      {
        name: 'test_collection',
        help: 'Which collection this is.',
        type: 'gauge',
        samples: [{ labels: [], value: n }],
      },
    ]
  }
}

function web(over: Partial<WebConfig>): WebConfig {
  return { ...EMPTY_WEB_CONFIG, ...over }
}

function appWith(source: MetricsSource, state: HttpState) {
  return build({
    source,
    telemetryPath: '/metrics',
    version: 't',
    logger: pino({ level: 'silent' }),
    processMetrics: false,
    http: state,
  })
}

/** The value of an unlabelled or labelled sample in a text exposition. */
function sample(body: string, series: string): number | undefined {
  const line = body.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

describe('basic auth', () => {
  const state = new HttpState(web({ users: new Map([['prometheus', HASH]]) }))
  const app = appWith(new SlowSource(), state)
  after(async () => await app.close())

  test('/metrics, /readyz, / and unknown paths need credentials; /healthz does not', async () => {
    for (const url of ['/metrics', '/readyz', '/', '/nope']) {
      const res = await app.inject({ url })
      assert.equal(res.statusCode, 401, url)
      assert.equal(res.headers['www-authenticate'], 'Basic realm="tcptracer-exporter", charset="UTF-8"')
      assert.equal(res.body, 'unauthorized\n')
    }
    const h = await app.inject({ url: '/healthz' })
    assert.equal(h.statusCode, 200)
    assert.equal(h.body, 'ok\n')
    assert.equal((await app.inject({ method: 'HEAD', url: '/healthz' })).statusCode, 200)
  })

  test('right password: 200; wrong password, unknown user, malformed header: 401', async () => {
    const ok = await app.inject({ url: '/metrics', headers: { authorization: basic('prometheus', 'pw') } })
    assert.equal(ok.statusCode, 200)
    assert.match(ok.body, /^test_collection 1$/m)
    for (const authorization of [basic('prometheus', 'PW'), basic('root', 'pw'), 'Basic', 'Bearer pw']) {
      const res = await app.inject({ url: '/metrics', headers: { authorization } })
      assert.equal(res.statusCode, 401, authorization)
    }
    const readyz = await app.inject({ url: '/readyz', headers: { authorization: basic('prometheus', 'pw') } })
    assert.equal(readyz.statusCode, 200)
    const landing = await app.inject({ url: '/', headers: { authorization: basic('prometheus', 'pw') } })
    assert.equal(landing.statusCode, 200)
  })

  test('refusals are counted: 4 + 4 so far', async () => {
    const res = await app.inject({ url: '/metrics', headers: { authorization: basic('prometheus', 'pw') } })
    assert.equal(sample(res.body, 'tcptracer_http_requests_rejected_total{reason="unauthorized"}'), 8)
    assert.equal(sample(res.body, 'tcptracer_http_requests_rejected_total{reason="rate_limit"}'), 0)
  })

  test('a reload that removes the users turns auth off; one that adds them turns it on', async () => {
    state.reload(web({}))
    assert.equal((await app.inject({ url: '/metrics' })).statusCode, 200)
    state.reload(web({ users: new Map([['other', HASH]]) }))
    assert.equal(
      (await app.inject({ url: '/metrics', headers: { authorization: basic('prometheus', 'pw') } }))
        .statusCode,
      401,
    )
    assert.equal(
      (await app.inject({ url: '/metrics', headers: { authorization: basic('other', 'pw') } })).statusCode,
      200,
    )
  })
})

describe('headers and rate limit from the web config', () => {
  test('headers on every answer, 401 and /healthz included', async (t) => {
    const state = new HttpState(
      web({
        users: new Map([['u', HASH]]),
        headers: { 'X-Frame-Options': 'deny', 'X-Content-Type-Options': 'nosniff' },
      }),
    )
    const app = appWith(new SlowSource(), state)
    t.after(() => app.close())
    for (const url of ['/metrics', '/healthz']) {
      const res = await app.inject({ url })
      assert.equal(res.headers['x-frame-options'], 'deny', url)
      assert.equal(res.headers['x-content-type-options'], 'nosniff', url)
    }
  })

  test('a token bucket: burst 3, then 429 until a token comes back; /healthz is exempt', async (t) => {
    const state = new HttpState(web({ rateLimit: { intervalMs: 1000, burst: 3 } }))
    const app = appWith(new SlowSource(), state)
    t.after(() => app.close())
    const codes: number[] = []
    for (let i = 0; i < 5; i++) codes.push((await app.inject({ url: '/readyz' })).statusCode)
    assert.deepEqual(codes, [200, 200, 200, 429, 429])
    for (let i = 0; i < 5; i++) assert.equal((await app.inject({ url: '/healthz' })).statusCode, 200)
    await new Promise((resolve) => setTimeout(resolve, 1100))
    assert.equal((await app.inject({ url: '/readyz' })).statusCode, 200)
    assert.equal((await app.inject({ url: '/readyz' })).statusCode, 429)
    assert.equal(state.rejected.rate_limit, 3)
  })
})

describe('--web.max-requests and shared collections', () => {
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

describe('web config reload counters', () => {
  test('success and failure are counted; last_reload_successful follows', async (t) => {
    const state = new HttpState()
    const app = appWith(new SlowSource(), state)
    t.after(() => app.close())
    state.recordReload(true)
    state.recordReload(false)
    const body = (await app.inject({ url: '/metrics' })).body
    assert.equal(sample(body, 'tcptracer_web_config_reloads_total{result="success"}'), 1)
    assert.equal(sample(body, 'tcptracer_web_config_reloads_total{result="failure"}'), 1)
    assert.equal(sample(body, 'tcptracer_web_config_last_reload_successful'), 0)
  })

  test('plain HTTP to TLS is refused on reload (needs a restart), the rest applies', () => {
    const state = new HttpState()
    const fakeTls = {
      context: {},
      clientAuth: 'NoClientCert' as const,
      requestCert: false,
      rejectUnauthorized: false,
      certSource: 'x',
    }
    const { restartNeeded } = state.reload(web({ tls: fakeTls, users: new Map([['u', HASH]]) }))
    assert.equal(restartNeeded.length, 1)
    assert.match(
      restartNeeded[0]!,
      /switching from plain HTTP to TLS needs a restart; still serving plain HTTP/,
    )
    assert.equal(state.tls, undefined)
    assert.equal(state.authEnabled, true)
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
