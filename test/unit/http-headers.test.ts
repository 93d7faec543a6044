// The web config's headers (src/http/headers.ts): the plugin alone on a bare app, then in the whole app.
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { HttpState } from '../../src/http/app.js'
import { webHeaders } from '../../src/http/headers.js'
import { appWith, bare, HASH, SlowSource, web } from './http-helpers.js'

describe('the headers plugin', () => {
  test('on every answer, a 404 included; read at each request', async (t) => {
    let headers: Record<string, string> = { 'X-Frame-Options': 'deny' }
    const app = bare((a) => a.register(webHeaders, { headers: () => headers }))
    t.after(async () => await app.close())
    for (const url of ['/x', '/healthz', '/nope']) {
      assert.equal((await app.inject({ url })).headers['x-frame-options'], 'deny', url)
    }
    headers = { 'Cache-Control': 'no-store' }
    const res = await app.inject({ url: '/x' })
    assert.equal(res.headers['x-frame-options'], undefined)
    assert.equal(res.headers['cache-control'], 'no-store')
  })
})

describe('headers from the web config', () => {
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

  test('on a 503 and a 429 as well, and a reload changes them at once', async (t) => {
    const state = new HttpState(
      web({ headers: { 'X-Frame-Options': 'deny' }, rateLimit: { intervalMs: 60_000, burst: 2 } }),
      { maxRequests: 1 },
    )
    const app = appWith(new SlowSource(50), state)
    t.after(() => app.close())
    const res = await Promise.all([1, 2, 3].map(async () => await app.inject({ url: '/metrics' })))
    assert.deepEqual(res.map((r) => r.statusCode).sort(), [200, 429, 503])
    for (const r of res) assert.equal(r.headers['x-frame-options'], 'deny', String(r.statusCode))
    state.reload(web({ headers: { 'X-Frame-Options': 'sameorigin' } }))
    assert.equal((await app.inject({ url: '/readyz' })).headers['x-frame-options'], 'sameorigin')
  })
})
