// HttpState (src/http/state.ts): a reloaded web config put in force in each plugin's state, the reload
// counts, and the HTTP self-metrics.
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { HttpState } from '../../src/http/app.js'
import { appWith, HASH, sample, SlowSource, web } from './http-helpers.js'

describe('the HTTP self-metrics', () => {
  test('names, types and labels, all at zero in a new state', () => {
    const families = new HttpState().families()
    assert.deepEqual(
      families.map((f) => [f.name, f.type]),
      [
        ['tcptracer_http_requests_rejected_total', 'counter'],
        ['tcptracer_http_connections_dropped_total', 'counter'],
        ['tcptracer_scrapes_in_flight', 'gauge'],
        ['tcptracer_scrapes_total', 'counter'],
        ['tcptracer_web_config_reloads_total', 'counter'],
        ['tcptracer_web_config_last_reload_successful', 'gauge'],
      ],
    )
    assert.deepEqual(
      families[0]!.samples!.map((s) => s.labels[0]?.[1]),
      ['unauthorized', 'auth_overload', 'rate_limit', 'max_requests'],
    )
    const values = families.flatMap((f) => f.samples!.map((s) => s.value))
    assert.deepEqual(values, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
  })
})

describe('reload', () => {
  test('an unchanged rate limit keeps the bucket; a changed one starts it full', async (t) => {
    const state = new HttpState(web({ rateLimit: { intervalMs: 60_000, burst: 1 } }))
    const app = appWith(new SlowSource(), state)
    t.after(() => app.close())
    assert.equal((await app.inject({ url: '/readyz' })).statusCode, 200)
    state.reload(web({ rateLimit: { intervalMs: 60_000, burst: 1 } }))
    assert.equal((await app.inject({ url: '/readyz' })).statusCode, 429)
    state.reload(web({ rateLimit: { intervalMs: 60_000, burst: 2 } }))
    assert.equal((await app.inject({ url: '/readyz' })).statusCode, 200)
    assert.equal((await app.inject({ url: '/readyz' })).statusCode, 200)
    assert.equal((await app.inject({ url: '/readyz' })).statusCode, 429)
  })

  test('TLS to plain HTTP is refused (needs a restart): the TLS settings stay, the users apply', () => {
    const fakeTls = {
      context: {},
      clientAuth: 'NoClientCert' as const,
      requestCert: false,
      rejectUnauthorized: false,
      certSource: 'x',
    }
    const state = new HttpState(web({ tls: fakeTls }))
    const { restartNeeded } = state.reload(web({ users: new Map([['u', HASH]]) }))
    assert.deepEqual(restartNeeded, [
      'tls_server_config: switching from TLS to plain HTTP needs a restart; still serving TLS with the previous certificate',
    ])
    assert.equal(state.tls, fakeTls)
    assert.equal(state.transport.tls, fakeTls)
    assert.equal(state.authEnabled, true)
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
