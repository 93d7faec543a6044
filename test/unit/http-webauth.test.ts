import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { monitorEventLoopDelay } from 'node:perf_hooks'

import bcrypt from 'bcryptjs'

import { AuthBusyError, BasicAuth, PasswordChecker, parseBasicAuth } from '../../src/http/webauth.js'

const basic = (user: string, password: string): string =>
  `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`

// cost 10, the toolkit's documented example cost: about 70-90 ms per check in JavaScript
const ALICE = bcrypt.hashSync('alice-pw', 10).replace(/^\$2b\$/, '$2y$')
const BOB = bcrypt.hashSync('bob-pw', 10)

describe('parseBasicAuth', () => {
  test('user and password, split at the first colon', () => {
    assert.deepEqual(parseBasicAuth(basic('alice', 'a:b:c')), { user: 'alice', password: 'a:b:c' })
    assert.deepEqual(parseBasicAuth(basic('', '')), { user: '', password: '' })
    assert.deepEqual(parseBasicAuth(`basic ${Buffer.from('ü:ß').toString('base64')}`), {
      user: 'ü',
      password: 'ß',
    })
  })
  test('absent or malformed', () => {
    for (const h of [
      undefined,
      '',
      'Basic',
      'Basic !!!',
      'Bearer abc',
      `Basic ${Buffer.from('nocolon').toString('base64')}`,
    ]) {
      assert.equal(parseBasicAuth(h), undefined, String(h))
    }
  })
})

describe('PasswordChecker', () => {
  const checker = new PasswordChecker({ workers: 1, maxQueued: 2 })
  after(async () => await checker.close())

  test('right and wrong passwords, $2y$ and $2b$ hashes', async () => {
    assert.equal(await checker.check('alice-pw', ALICE), true)
    assert.equal(await checker.check('alice-PW', ALICE), false)
    assert.equal(await checker.check('bob-pw', BOB), true)
    assert.equal(await checker.check('', BOB), false)
  })

  test('bounded: one running, two waiting, the rest refused at once', async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 6 }, async () => await checker.check('x', ALICE)),
    )
    const refused = results.filter((r) => r.status === 'rejected')
    assert.equal(refused.length, 3)
    for (const r of refused) assert.ok((r as PromiseRejectedResult).reason instanceof AuthBusyError)
    assert.deepEqual(
      results
        .filter((r) => r.status === 'fulfilled')
        .map((r) => (r as PromiseFulfilledResult<boolean>).value),
      [false, false, false],
    )
    assert.equal(checker.running, 0)
    assert.equal(checker.queued, 0)
  })

  test('the event loop keeps turning while checks run', async () => {
    // cost 12: about 300 ms per check, so a check on the event loop would stall it that long
    const slow = bcrypt.hashSync('slow-pw', 12)
    const h = monitorEventLoopDelay({ resolution: 5 })
    h.enable()
    const t0 = performance.now()
    for (let i = 0; i < 2; i++) assert.equal(await checker.check('wrong', slow), false)
    const ms = performance.now() - t0
    h.disable()
    const maxMs = h.max / 1e6
    assert.ok(ms > 300, `2 checks took ${ms} ms`)
    // generous for a loaded 2-core machine, and still well under one check
    assert.ok(maxMs < 150, `event loop delay reached ${maxMs} ms while checks took ${ms} ms`)
  })
})

describe('BasicAuth', () => {
  const checker = new PasswordChecker({ workers: 1, maxQueued: 8 })
  after(async () => await checker.close())

  test('ok, invalid, missing; a success is cached, a failure is not', async () => {
    const auth = new BasicAuth(checker, new Map([['alice', ALICE]]))
    assert.equal(auth.enabled, true)
    const before = checker.completed
    assert.equal(await auth.authenticate(basic('alice', 'alice-pw')), 'ok')
    assert.equal(checker.completed, before + 1)
    assert.equal(await auth.authenticate(basic('alice', 'alice-pw')), 'ok')
    assert.equal(checker.completed, before + 1, 'the second success came from the cache')
    assert.equal(await auth.authenticate(basic('alice', 'nope')), 'invalid')
    assert.equal(await auth.authenticate(basic('alice', 'nope')), 'invalid')
    assert.equal(checker.completed, before + 3, 'failures are checked every time')
    assert.equal(await auth.authenticate(undefined), 'missing')
    assert.equal(await auth.authenticate('Basic zzz'), 'missing')
    assert.equal(checker.completed, before + 3)
  })

  test('a changed hash is checked afresh: the old password stops working', async () => {
    const auth = new BasicAuth(checker, new Map([['alice', ALICE]]))
    assert.equal(await auth.authenticate(basic('alice', 'alice-pw')), 'ok')
    const next = bcrypt.hashSync('new-pw', 4)
    auth.setUsers(new Map([['alice', next]]))
    assert.equal(await auth.authenticate(basic('alice', 'alice-pw')), 'invalid')
    assert.equal(await auth.authenticate(basic('alice', 'new-pw')), 'ok')
    auth.setUsers(new Map([['bob', BOB]]))
    assert.equal(await auth.authenticate(basic('alice', 'new-pw')), 'invalid')
  })

  test('an unknown user takes as long as a wrong password, and a password of another user does not help', async () => {
    const auth = new BasicAuth(
      checker,
      new Map([
        ['alice', ALICE],
        ['bob', BOB],
      ]),
    )
    const time = async (h: string): Promise<number> => {
      const t = performance.now()
      assert.equal(await auth.authenticate(h), 'invalid')
      return performance.now() - t
    }
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
    const unknown: number[] = []
    const wrong: number[] = []
    for (let i = 0; i < 5; i++) {
      unknown.push(await time(basic('mallory', 'alice-pw')))
      wrong.push(await time(basic('alice', 'guess')))
    }
    const u = median(unknown)
    const w = median(wrong)
    // both are one bcrypt check at cost 10; a skipped check would take well under 1 ms
    assert.ok(u > 20 && w > 20, `unknown ${u} ms, wrong ${w} ms`)
    assert.ok(u / w > 0.6 && u / w < 1.6, `unknown user ${u} ms vs wrong password ${w} ms`)
  })
})
