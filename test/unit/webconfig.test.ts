import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'

import bcrypt from 'bcryptjs'

import { ConfigError, type ConfigProblem } from '../../src/config/config.js'
import {
  describeWebChanges,
  EMPTY_WEB_CONFIG,
  loadWebConfig,
  parseGoDuration,
  parseWebConfig,
  parseWebConfigText,
} from '../../src/config/webconfig.js'
import { makePki, type Pki } from './certs.js'

// cost 4: fast to make; the format and the checks do not depend on the cost
const HASH = bcrypt.hashSync('s3cret', 4).replace(/^\$2b\$/, '$2y$')

/** The problems parseWebConfigText reports; fails if it parses. */
function problems(text: string): ConfigProblem[] {
  try {
    parseWebConfigText(text, 'web.yml')
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`)
    assert.equal(err.file, 'web.yml')
    return err.problems
  }
  assert.fail(`expected ${JSON.stringify(text)} to be rejected`)
}

function assertProblem(text: string, at: string, message: string | RegExp): void {
  const ps = problems(text)
  const found = ps.find(
    (p) =>
      p.path === at && (typeof message === 'string' ? p.message.includes(message) : message.test(p.message)),
  )
  assert.ok(
    found,
    `${JSON.stringify(text)}: no problem at ${at} matching ${String(message)}; got ${JSON.stringify(ps)}`,
  )
}

const TLS_FILES = 'tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n'

describe('web config schema', () => {
  test('an empty file: no TLS, no users, no headers, no rate limit', () => {
    for (const text of ['', '{}', '# nothing\n', '~']) {
      const raw = parseWebConfigText(text, 'web.yml')
      assert.deepEqual(raw, {}, JSON.stringify(text))
    }
  })

  test('every supported key parses', () => {
    const raw = parseWebConfigText(
      [
        'tls_server_config:',
        '  cert_file: server.crt',
        '  key_file: server.key',
        '  client_ca_file: ca.crt',
        '  client_auth_type: RequireAndVerifyClientCert',
        '  min_version: TLS12',
        '  max_version: TLS13',
        '  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]',
        '  prefer_server_cipher_suites: false',
        '  curve_preferences: [X25519, CurveP256]',
        'http_server_config:',
        '  http2: false',
        '  headers:',
        '    X-Frame-Options: deny',
        '    X-Content-Type-Options: nosniff',
        '    Strict-Transport-Security: max-age=31536000',
        `basic_auth_users:\n  prometheus: "${HASH}"`,
        'rate_limit:',
        '  interval: 100ms',
        '  burst: 20',
      ].join('\n'),
      'web.yml',
    )
    assert.equal(raw.tls_server_config?.client_auth_type, 'RequireAndVerifyClientCert')
    assert.equal(raw.rate_limit?.interval, 100)
    assert.deepEqual(raw.basic_auth_users, { prometheus: HASH })
  })

  test('each client_auth_type of the toolkit is accepted, and its old alias RequireClientCert', () => {
    for (const t of [
      'NoClientCert',
      'RequestClientCert',
      'RequireAnyClientCert',
      'VerifyClientCertIfGiven',
      'RequireAndVerifyClientCert',
      'RequireClientCert',
    ]) {
      const ca = t.includes('Verify') ? '  client_ca_file: ca.crt\n' : ''
      parseWebConfigText(`${TLS_FILES}${ca}  client_auth_type: ${t}\n`, 'web.yml')
    }
    assertProblem(
      `${TLS_FILES}  client_auth_type: Mutual\n`,
      'tls_server_config.client_auth_type',
      /one of NoClientCert/,
    )
  })

  test('keys of the toolkit format that are not implemented are refused by name, with what to do', () => {
    assertProblem(
      `${TLS_FILES}  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: [a.example]\n`,
      'tls_server_config.client_allowed_sans',
      'not supported by tcptracer-exporter',
    )
    assertProblem('http_server_config:\n  http2: true\n', 'http_server_config.http2', 'HTTP/1.1 only')
  })

  test('unknown keys are refused naming the known ones', () => {
    assertProblem(
      'tls_config:\n  cert_file: x\n',
      'tls_config',
      /unknown key; known keys are tls_server_config, /,
    )
    assertProblem(
      `${TLS_FILES}  certfile: x\n`,
      'tls_server_config.certfile',
      /unknown key; known keys are cert, key/,
    )
    // the unsupported key is not offered as a known one
    const p = problems(`${TLS_FILES}  bogus: 1\n`).find((x) => x.path === 'tls_server_config.bogus')
    assert.ok(p && !p.message.includes('client_allowed_sans'), JSON.stringify(p))
    assertProblem('rate_limit:\n  every: 1s\n', 'rate_limit.every', /known keys are interval, burst/)
  })

  test('TLS versions', () => {
    for (const v of ['TLS10', 'TLS11', 'TLS12', 'TLS13']) {
      parseWebConfigText(`${TLS_FILES}  min_version: ${v}\n`, 'web.yml')
    }
    assertProblem(
      `${TLS_FILES}  min_version: TLSv1.2\n`,
      'tls_server_config.min_version',
      /one of TLS10, TLS11, TLS12, TLS13/,
    )
    assertProblem(
      `${TLS_FILES}  min_version: TLS13\n  max_version: TLS12\n`,
      'tls_server_config.min_version',
      'above max_version',
    )
  })

  test('certificate and key: both needed, inline or file, not both', () => {
    assertProblem(
      'tls_server_config:\n  key_file: k\n',
      'tls_server_config.cert_file',
      'a certificate is needed',
    )
    assertProblem(
      'tls_server_config:\n  cert_file: c\n',
      'tls_server_config.key_file',
      'a private key is needed',
    )
    assertProblem(`${TLS_FILES}  cert: "x"\n`, 'tls_server_config.cert', 'not both')
    assertProblem(`${TLS_FILES}  cert_file: ""\n`, '(yaml)', /Map keys must be unique/)
    assertProblem(
      'tls_server_config:\n  cert_file: ""\n  key_file: k\n',
      'tls_server_config.cert_file',
      'must not be empty',
    )
  })

  test('client CA and client_auth_type must agree', () => {
    assertProblem(
      `${TLS_FILES}  client_ca_file: ca.crt\n`,
      'tls_server_config.client_auth_type',
      'NoClientCert',
    )
    assertProblem(
      `${TLS_FILES}  client_auth_type: RequireAndVerifyClientCert\n`,
      'tls_server_config.client_ca_file',
      'needs the CA',
    )
    assertProblem(
      `${TLS_FILES}  client_auth_type: VerifyClientCertIfGiven\n`,
      'tls_server_config.client_ca_file',
      'needs the CA',
    )
  })

  test('cipher suites and curves by their Go names', () => {
    assertProblem(
      `${TLS_FILES}  cipher_suites: [ECDHE-RSA-AES128-GCM-SHA256]\n`,
      'tls_server_config.cipher_suites[0]',
      /expected one of TLS_ECDHE/,
    )
    assertProblem(
      `${TLS_FILES}  curve_preferences: [P-256]\n`,
      'tls_server_config.curve_preferences[0]',
      /CurveP256/,
    )
  })

  test('headers: only the toolkit five, with their allowed values', () => {
    assertProblem(
      'http_server_config:\n  headers:\n    Server: x\n',
      'http_server_config.headers.Server',
      'cannot be set',
    )
    assertProblem(
      'http_server_config:\n  headers:\n    X-Frame-Options: allow\n',
      'http_server_config.headers.X-Frame-Options',
      'expected one of deny, sameorigin',
    )
    assertProblem(
      'http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n',
      'http_server_config.headers.X-Content-Type-Options',
      'nosniff',
    )
  })

  test('basic_auth_users: bcrypt hashes only, user names without ":"', () => {
    assertProblem('basic_auth_users:\n  alice: hunter2\n', 'basic_auth_users.alice', /plain-text password/)
    assertProblem('basic_auth_users:\n  alice: "$2y$10$short"\n', 'basic_auth_users.alice', /malformed hash/)
    assertProblem(
      `basic_auth_users:\n  alice: "${HASH.replace('$04$', '$03$')}"\n`,
      'basic_auth_users.alice',
      /cost 04 to 31/,
    )
    assertProblem(
      `basic_auth_users:\n  "a:b": "${HASH}"\n`,
      'basic_auth_users["a:b"]',
      'must not be empty or contain ":"',
    )
    assertProblem('basic_auth_users: [alice]\n', 'basic_auth_users', /mapping of user names/)
    // an empty mapping: no authentication
    parseWebConfigText('basic_auth_users: {}\n', 'web.yml')
    parseWebConfigText('basic_auth_users:\n', 'web.yml')
  })

  test('rate_limit: Go durations, a burst of at least 1', () => {
    assertProblem(
      'rate_limit:\n  interval: 1 second\n  burst: 1\n',
      'rate_limit.interval',
      /expected a duration/,
    )
    assertProblem('rate_limit:\n  interval: 1s\n  burst: 0\n', 'rate_limit.burst', 'at least 1')
    assertProblem('rate_limit:\n  interval: 1s\n  burst: -1\n', 'rate_limit.burst', /integer from 0/)
    parseWebConfigText('rate_limit:\n  interval: 0\n  burst: 0\n', 'web.yml')
  })

  test('Go durations', () => {
    assert.equal(parseGoDuration('1s'), 1000)
    assert.equal(parseGoDuration('1.5s'), 1500)
    assert.equal(parseGoDuration('1m30s'), 90_000)
    assert.equal(parseGoDuration('250ms'), 250)
    assert.equal(parseGoDuration('1h'), 3_600_000)
    assert.equal(parseGoDuration('500us'), 0.5)
    assert.equal(parseGoDuration('0'), 0)
    for (const bad of ['', '1', 's', '1d', '1 s', '-1s', '1s ']) {
      assert.equal(parseGoDuration(bad), undefined, bad)
    }
  })

  test('YAML errors and wrong shapes', () => {
    assertProblem('tls_server_config: [\n', '(yaml)', /line/)
    assertProblem('a: 1\na: 2\n', '(yaml)', /unique/)
    assertProblem('tls_server_config: yes\n', 'tls_server_config', /expected a mapping/)
    assertProblem('- 1\n', '(root)', /expected a mapping/)
  })

  test("the config file's YAML checks: nesting depth, duplicate keys named, YAML 1.1 tags, a cap on problems", () => {
    const deep = `basic_auth_users: ${'['.repeat(20_000)}${']'.repeat(20_000)}\n`
    assertProblem(deep, '(yaml)', 'line 1, column 82: collections are nested more than 64 levels deep')
    assertProblem(
      'tls_server_config:\n  cert_file: a\n  cert_file: b\n',
      '(yaml)',
      'line 3, column 3: Map keys must be unique: cert_file appears more than once',
    )
    assertProblem('basic_auth_users: !!set {alice}\n', 'basic_auth_users', 'a set (!!set) is not supported')
    const users = Array.from({ length: 30 }, (_, i) => `  u${i}: plain${i}`).join('\n')
    const ps = problems(`basic_auth_users:\n${users}\n`)
    assert.equal(ps.length, 20)
    assert.deepEqual(ps.at(-1), { path: '(more)', message: '11 more problems not shown' })
  })
})

describe('web config files', () => {
  let pki: Pki
  before(() => {
    pki = makePki()
  })
  after(() => pki.cleanup())

  test('paths are relative to the web config file; the loaded config has what the server needs', async () => {
    const dir = path.join(pki.dir, 'conf')
    mkdirSync(dir, { recursive: true })
    copyFileSync(pki.serverCert, path.join(dir, 'server.crt'))
    copyFileSync(pki.serverKey, path.join(dir, 'server.key'))
    const file = path.join(dir, 'web.yml')
    writeFileSync(
      file,
      `${TLS_FILES}  client_ca_file: ../ca.crt\n  client_auth_type: VerifyClientCertIfGiven\n  min_version: TLS13\n` +
        `  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n  curve_preferences: [X25519]\n` +
        `basic_auth_users:\n  prom: "${HASH}"\nrate_limit:\n  interval: 1s\n  burst: 5\n` +
        'http_server_config:\n  headers:\n    X-Frame-Options: deny\n',
    )
    const c = await loadWebConfig(file)
    assert.equal(c.file, file)
    assert.ok(c.tls)
    assert.equal(c.tls.clientAuth, 'VerifyClientCertIfGiven')
    assert.equal(c.tls.requestCert, true)
    assert.equal(c.tls.rejectUnauthorized, false)
    assert.equal(c.tls.context.cert, readFileSync(pki.serverCert, 'utf8'))
    assert.equal(c.tls.context.ca, readFileSync(pki.caCert, 'utf8'))
    assert.equal(c.tls.context.minVersion, 'TLSv1.3')
    assert.equal(c.tls.context.maxVersion, 'TLSv1.3')
    assert.equal(c.tls.context.honorCipherOrder, true)
    assert.equal(c.tls.context.ecdhCurve, 'X25519')
    assert.match(String(c.tls.context.ciphers), /:ECDHE-ECDSA-AES128-GCM-SHA256$/)
    assert.equal(c.tls.certSource, path.join(dir, 'server.crt'))
    assert.deepEqual([...c.users], [['prom', HASH]])
    assert.deepEqual(c.rateLimit, { intervalMs: 1000, burst: 5 })
    assert.deepEqual(c.headers, { 'X-Frame-Options': 'deny' })
  })

  test('client_auth_type maps onto Node TLS options', async () => {
    const want: Record<string, [boolean, boolean]> = {
      NoClientCert: [false, false],
      RequestClientCert: [true, false],
      RequireAnyClientCert: [true, false],
      VerifyClientCertIfGiven: [true, false],
      RequireAndVerifyClientCert: [true, true],
    }
    for (const [t, [requestCert, rejectUnauthorized]] of Object.entries(want)) {
      const ca = t === 'NoClientCert' ? '' : `  client_ca_file: ${pki.caCert}\n`
      const c = await parseWebConfig(
        `tls_server_config:\n  cert_file: ${pki.serverCert}\n  key_file: ${pki.serverKey}\n${ca}  client_auth_type: ${t}\n`,
        path.join(pki.dir, 'w.yml'),
      )
      assert.equal(c.tls?.requestCert, requestCert, t)
      assert.equal(c.tls?.rejectUnauthorized, rejectUnauthorized, t)
    }
  })

  test('inline PEM works like files', async () => {
    const cert = readFileSync(pki.serverCert, 'utf8')
    const key = readFileSync(pki.serverKey, 'utf8')
    const c = await parseWebConfig(
      `tls_server_config:\n  cert: ${JSON.stringify(cert)}\n  key: ${JSON.stringify(key)}\n`,
      'w.yml',
    )
    assert.equal(c.tls?.context.cert, cert)
    assert.equal(c.tls?.certSource, '(inline cert)')
  })

  async function fileProblems(text: string): Promise<ConfigProblem[]> {
    try {
      await parseWebConfig(text, path.join(pki.dir, 'w.yml'))
    } catch (err) {
      assert.ok(err instanceof ConfigError)
      assert.match(err.message, /w\.yml: /)
      return err.problems
    }
    assert.fail('expected a ConfigError')
  }

  test('missing files, a key that does not match, a CA file without certificates', async () => {
    let ps = await fileProblems('tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n')
    assert.deepEqual(ps, [
      {
        path: 'tls_server_config.cert_file',
        message: `cannot read ${path.join(pki.dir, 'nope.crt')}: ENOENT`,
      },
    ])
    ps = await fileProblems('tls_server_config:\n  cert_file: server.crt\n  key_file: client.key\n')
    assert.equal(ps.length, 1)
    assert.equal(ps[0]?.path, 'tls_server_config.cert_file')
    assert.match(ps[0]?.message ?? '', /certificate and key cannot be used: .*key values mismatch/)
    ps = await fileProblems('tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n')
    assert.match(ps[0]?.message ?? '', /holds no PEM certificate/)
    ps = await fileProblems(
      `${TLS_FILES}  client_ca_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n`,
    )
    assert.deepEqual(ps, [
      {
        path: 'tls_server_config.client_ca_file',
        message: 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)',
      },
    ])
  })

  test('a missing web config file', async () => {
    await assert.rejects(loadWebConfig(path.join(pki.dir, 'absent.yml')), (e: unknown) => {
      assert.ok(e instanceof ConfigError)
      assert.equal(e.problems[0]?.path, '(file)')
      assert.match(e.message, /absent\.yml: \(file\): ENOENT/)
      return true
    })
    assert.equal(await loadWebConfig(undefined), EMPTY_WEB_CONFIG)
  })

  test('describeWebChanges names what changed, never a secret', async () => {
    const base = `tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  a: "${HASH}"\n`
    const a = await parseWebConfig(base, path.join(pki.dir, 'w.yml'))
    const other = bcrypt.hashSync('other', 4)
    const b = await parseWebConfig(
      `tls_server_config:\n  cert_file: server2.crt\n  key_file: server2.key\n  min_version: TLS13\nbasic_auth_users:\n  a: "${other}"\n  b: "${HASH}"\n`,
      path.join(pki.dir, 'w.yml'),
    )
    const changes = describeWebChanges(a, b)
    assert.deepEqual(changes, [
      'tls: certificate or key changed',
      'tls versions: TLSv1.2..TLSv1.3 -> TLSv1.3..TLSv1.3',
      'basic_auth_users added: b',
      'basic_auth_users with a new password: a',
    ])
    assert.ok(!changes.join('\n').includes('$2'))
    assert.deepEqual(describeWebChanges(a, EMPTY_WEB_CONFIG), [
      'transport: https -> http',
      'basic_auth_users removed: a',
    ])
    assert.deepEqual(describeWebChanges(a, a), [])
  })
})
