// Basic auth (src/http/auth.ts): the plugin alone on a bare app, then in the whole app with its reloads
// and its counts. The bcrypt checks themselves are in http-webauth.test.ts.
import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { AuthGuard, basicAuth } from '../../src/http/auth.js'
import { HttpState } from '../../src/http/app.js'
import { newRejections } from '../../src/http/rejections.js'
import { AuthBusyError } from '../../src/http/webauth.js'
import { appWith, bare, basic, HASH, sample, SlowSource, web } from './http-helpers.js'

const USERS = new Map([['prometheus', HASH]])

/** A guard whose password checks are all pending: every check is refused as busy. */
class BusyGuard extends AuthGuard {
  override async authenticate(): Promise<never> {
    throw new AuthBusyError('33 password checks are already running or waiting')
  }
}

describe('the auth plugin', () => {
  test('401 with WWW-Authenticate without valid credentials, 200 with them; /healthz is open', async (t) => {
    const rejected = newRejections()
    const app = bare((a) => a.register(basicAuth, { guard: new AuthGuard(USERS), rejected }))
    t.after(async () => await app.close())
    for (const authorization of [undefined, basic('prometheus', 'nope'), basic('nobody', 'pw')]) {
      const res = await app.inject({ url: '/x', headers: authorization ? { authorization } : {} })
      assert.equal(res.statusCode, 401, authorization)
      assert.equal(res.headers['www-authenticate'], 'Basic realm="tcptracer-exporter", charset="UTF-8"')
      assert.equal(res.headers['content-type'], 'text/plain; charset=utf-8')
      assert.equal(res.body, 'unauthorized\n')
    }
    const ok = await app.inject({ url: '/x', headers: { authorization: basic('prometheus', 'pw') } })
    assert.equal(ok.statusCode, 200)
    assert.equal((await app.inject({ url: '/healthz' })).statusCode, 200)
    assert.deepEqual(rejected, { unauthorized: 3, auth_overload: 0, rate_limit: 0, max_requests: 0 })
  })

  test('without users every request passes', async (t) => {
    const guard = new AuthGuard(new Map())
    const app = bare((a) => a.register(basicAuth, { guard, rejected: newRejections() }))
    t.after(async () => await app.close())
    assert.equal(guard.enabled, false)
    assert.equal((await app.inject({ url: '/x' })).statusCode, 200)
  })

  test('too many password checks pending: 503 with Retry-After, counted as auth_overload', async (t) => {
    const rejected = newRejections()
    const app = bare((a) => a.register(basicAuth, { guard: new BusyGuard(USERS), rejected }))
    t.after(async () => await app.close())
    const res = await app.inject({ url: '/x', headers: { authorization: basic('prometheus', 'pw') } })
    assert.equal(res.statusCode, 503)
    assert.equal(res.headers['retry-after'], '1')
    assert.equal(
      res.body,
      'too many password checks in progress: 33 password checks are already running or waiting; try again later\n',
    )
    assert.equal(rejected.auth_overload, 1)
    assert.equal(rejected.unauthorized, 0)
  })

  test('closing the app closes the password checker', async () => {
    const guard = new AuthGuard(USERS)
    const app = bare((a) => a.register(basicAuth, { guard, rejected: newRejections() }))
    assert.equal(
      (await app.inject({ url: '/x', headers: { authorization: basic('prometheus', 'pw') } })).statusCode,
      200,
    )
    await app.close()
    assert.equal(guard.enabled, false)
  })
})

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
