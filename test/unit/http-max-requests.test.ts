// --web.max-requests (src/http/max-requests.ts): the plugin alone on a bare app with a route that answers
// when told to, and its response deadline on a real socket. In the whole app: http-scrape-sharing.test.ts
// and http-overload.test.ts.
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'

import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import pino from 'pino'

import { maxRequests, RequestSlots } from '../../src/http/max-requests.js'
import { newRejections, type Rejections } from '../../src/http/rejections.js'

interface Gated {
  app: FastifyInstance
  slots: RequestSlots
  rejected: Rejections
  /** answer every /slow request waiting so far */
  open: () => void
  logs: Array<Record<string, unknown>>
}

/** /slow is limited and answers once open() is called; /x is not limited. */
function gated(limit: number, deadlineMs = 60_000): Gated {
  const logs: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>)
      done()
    },
  })
  const logger: FastifyBaseLogger = pino({ level: 'warn' }, sink)
  const app = Fastify({ loggerInstance: logger })
  const slots = new RequestSlots(limit, deadlineMs)
  const rejected = newRejections()
  let waiting: Array<() => void> = []
  app.register(maxRequests, { slots, rejected, path: '/slow' })
  app.register(async (routes) => {
    routes.get('/slow', async () => {
      await new Promise<void>((resolve) => waiting.push(resolve))
      return 'done\n'
    })
    routes.get('/x', async () => 'ok\n')
  })
  const open = (): void => {
    for (const resolve of waiting) resolve()
    waiting = []
  }
  return { app, slots, rejected, open, logs }
}

async function until(what: string, done: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000
  while (!done()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`)
    await sleep(5)
  }
}

describe('the max-requests plugin', () => {
  test('beyond the limit: 503 with Retry-After and the reason, counted; the slots come back', async (t) => {
    const g = gated(2)
    t.after(async () => await g.app.close())
    const admitted = [g.app.inject({ url: '/slow' }), g.app.inject({ url: '/slow' })]
    await until('two requests in flight', () => g.slots.inFlight === 2)
    const refused = await g.app.inject({ url: '/slow' })
    assert.equal(refused.statusCode, 503)
    assert.equal(refused.headers['retry-after'], '1')
    assert.equal(refused.headers['content-type'], 'text/plain; charset=utf-8')
    assert.equal(
      refused.body,
      'too many concurrent scrapes: 2 are in progress (the limit is --web.max-requests=2); try again later\n',
    )
    // other routes are not limited
    assert.equal((await g.app.inject({ url: '/x' })).statusCode, 200)
    g.open()
    for (const r of await Promise.all(admitted)) assert.equal(r.statusCode, 200)
    assert.equal(g.slots.inFlight, 0)
    assert.equal(g.rejected.max_requests, 1)
    assert.equal((await g.app.inject({ url: '/x' })).statusCode, 200)
  })

  test('0 means no limit', async (t) => {
    const g = gated(0)
    t.after(async () => await g.app.close())
    const all = Array.from({ length: 50 }, async () => await g.app.inject({ url: '/slow' }))
    await until('fifty requests in flight', () => g.slots.inFlight === 50)
    g.open()
    assert.deepEqual(new Set((await Promise.all(all)).map((r) => r.statusCode)), new Set([200]))
    assert.equal(g.rejected.max_requests, 0)
  })

  test('a response not sent within the deadline: its connection is closed, logged, the slot freed', async (t) => {
    const g = gated(5, 100)
    t.after(async () => {
      g.open()
      await g.app.close()
    })
    await g.app.listen({ host: '127.0.0.1', port: 0 })
    const { port } = g.app.server.address() as AddressInfo
    await assert.rejects(fetch(`http://127.0.0.1:${port}/slow`))
    await until('the slot to be freed', () => g.slots.inFlight === 0)
    const warn = g.logs.find(
      (l) =>
        l['msg'] ===
        'metrics response not sent in time (the scraper reads too slowly); closing its connection',
    )
    assert.ok(warn, JSON.stringify(g.logs))
    assert.equal(warn['ms'], 100)
    assert.equal(warn['level'], 40)
  })
})
