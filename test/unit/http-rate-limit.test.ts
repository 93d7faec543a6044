// The rate limit (src/http/rate-limit.ts): the token bucket, the plugin alone on a bare app, then in the
// whole app.
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { HttpState } from '../../src/http/app.js'
import { rateLimit, TokenBucket } from '../../src/http/rate-limit.js'
import { newRejections } from '../../src/http/rejections.js'
import { appWith, bare, SlowSource, web } from './http-helpers.js'

/** Take `n` tokens; how many were given. */
const takeN = (bucket: TokenBucket, n: number): number =>
  Array.from({ length: n }, () => bucket.take()).filter(Boolean).length

describe('TokenBucket', () => {
  test('no rate limit: every take succeeds', () => {
    assert.equal(takeN(new TokenBucket(undefined), 1000), 1000)
  })

  test('full at start with `burst` tokens', () => {
    assert.equal(takeN(new TokenBucket({ intervalMs: 60_000, burst: 3 }), 5), 3)
  })

  test('a token comes back per interval, never more than `burst`', async () => {
    const bucket = new TokenBucket({ intervalMs: 30, burst: 1 })
    assert.equal(takeN(bucket, 5), 1)
    assert.equal(takeN(bucket, 5), 0)
    await new Promise((resolve) => setTimeout(resolve, 50))
    assert.equal(takeN(bucket, 5), 1)
  })

  test('a reload with the same limit keeps the bucket; a changed one fills it again', () => {
    const bucket = new TokenBucket({ intervalMs: 60_000, burst: 2 })
    assert.equal(takeN(bucket, 2), 2)
    bucket.configure({ intervalMs: 60_000, burst: 2 })
    assert.equal(takeN(bucket, 1), 0)
    bucket.configure({ intervalMs: 60_000, burst: 3 })
    assert.equal(takeN(bucket, 5), 3)
    bucket.configure(undefined)
    assert.equal(takeN(bucket, 5), 5)
  })
})

describe('the rate-limit plugin', () => {
  test('over the limit: 429 with a reason and no Retry-After, counted; /healthz is exempt', async (t) => {
    const rejected = newRejections()
    const bucket = new TokenBucket({ intervalMs: 60_000, burst: 1 })
    const app = bare((a) => a.register(rateLimit, { bucket, rejected }))
    t.after(async () => await app.close())
    assert.equal((await app.inject({ url: '/x' })).statusCode, 200)
    const res = await app.inject({ url: '/x' })
    assert.equal(res.statusCode, 429)
    assert.equal(res.headers['content-type'], 'text/plain; charset=utf-8')
    assert.equal(res.headers['retry-after'], undefined)
    assert.equal(res.body, 'too many requests: over the rate_limit of the web config; try again later\n')
    assert.equal((await app.inject({ url: '/nope' })).statusCode, 429)
    assert.equal((await app.inject({ url: '/healthz' })).statusCode, 200)
    assert.deepEqual(rejected, { unauthorized: 0, auth_overload: 0, rate_limit: 2, max_requests: 0 })
  })
})

describe('rate limit from the web config', () => {
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

  test('the rate limit comes before basic auth: a flood without credentials costs no password check', async (t) => {
    const state = new HttpState(
      web({ rateLimit: { intervalMs: 60_000, burst: 1 }, users: new Map([['u', 'x']]) }),
    )
    const app = appWith(new SlowSource(), state)
    t.after(() => app.close())
    assert.equal((await app.inject({ url: '/metrics' })).statusCode, 401)
    assert.equal((await app.inject({ url: '/metrics' })).statusCode, 429)
    assert.deepEqual(state.rejected, { unauthorized: 1, auth_overload: 0, rate_limit: 1, max_requests: 0 })
  })
})
