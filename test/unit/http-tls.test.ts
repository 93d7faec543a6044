// TLS and basic auth with real clients (Node's https and tls, and curl) against the server listening on
// loopback, with certificates made by the openssl CLI for this run.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import https from 'node:https'
import path from 'node:path'
import tls from 'node:tls'

import bcrypt from 'bcryptjs'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'

import type { MetricFamily } from '../../src/metrics/exposition.js'
import { build, HttpState, type MetricsSource } from '../../src/http/app.js'
import { parseWebConfig, type WebConfig } from '../../src/config/webconfig.js'
import { makePki, type Pki } from './certs.js'

const HASH = bcrypt.hashSync('scrape-pw', 10).replace(/^\$2b\$/, '$2y$')

const source: MetricsSource = {
  programs: [],
  hooks: [],
  notReadyReason: () => undefined,
  collect: async (): Promise<MetricFamily[]> => [
    { name: 'test_up', help: 'Test.', type: 'gauge', samples: [{ labels: [], value: 1 }] },
  ],
}

interface Served {
  app: FastifyInstance
  state: HttpState
  port: number
}

let pki: Pki

async function webConfig(text: string): Promise<WebConfig> {
  const file = path.join(pki.dir, 'web.yml')
  writeFileSync(file, text)
  return await parseWebConfig(text, file)
}

async function serve(text: string): Promise<Served> {
  const state = new HttpState(await webConfig(text))
  const app = build({
    source,
    telemetryPath: '/metrics',
    version: 't',
    logger: pino({ level: 'silent' }),
    processMetrics: false,
    http: state,
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const addr = app.server.address()
  assert.ok(addr && typeof addr === 'object')
  return { app, state, port: addr.port }
}

interface Answer {
  status?: number
  body?: string
  error?: string
  peerCN?: string
}

/** One HTTPS GET on a fresh connection; a failed handshake or reset is returned as error, not thrown. */
async function get(port: number, opts: https.RequestOptions & { urlPath?: string } = {}): Promise<Answer> {
  return await new Promise((resolve) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        port,
        path: opts.urlPath ?? '/metrics',
        ca: readFileSync(pki.caCert),
        agent: false,
        ...opts,
      },
      (res) => {
        const cert = (res.socket as tls.TLSSocket).getPeerCertificate()
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (d: string) => (body += d))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, peerCN: String(cert.subject?.CN) }))
      },
    )
    req.on('error', (err: NodeJS.ErrnoException) => resolve({ error: err.code ?? err.message }))
    req.setTimeout(5000, () => req.destroy(new Error('timeout')))
    req.end()
  })
}

const clientCert = (): https.RequestOptions => ({
  cert: readFileSync(pki.clientCert),
  key: readFileSync(pki.clientKey),
})
const otherClientCert = (): https.RequestOptions => ({
  cert: readFileSync(pki.otherClientCert),
  key: readFileSync(pki.otherClientKey),
})

/** curl's HTTP status (%{http_code}: 000 when no HTTP answer came) and exit code. */
async function curl(args: string[]): Promise<{ code: number; http: string; stderr: string }> {
  return await new Promise((resolve) => {
    execFile(
      'curl',
      ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5', ...args],
      (err, stdout, stderr) => {
        const code = err ? Number((err as { code?: number }).code ?? 1) : 0
        resolve({ code, http: stdout, stderr })
      },
    )
  })
}

const TLS = (): string => `tls_server_config:\n  cert_file: ${pki.serverCert}\n  key_file: ${pki.serverKey}\n`

before(() => {
  pki = makePki()
})
after(() => pki.cleanup())

describe('TLS', () => {
  let s: Served
  before(async () => {
    s = await serve(TLS())
  })
  after(async () => await s.app.close())

  test('a Node https client that trusts the CA gets the metrics; the server certificate is ours', async () => {
    const a = await get(s.port)
    assert.equal(a.status, 200)
    assert.match(a.body ?? '', /^test_up 1$/m)
    assert.equal(a.peerCN, 'localhost')
  })

  test('a client that does not trust the CA refuses the server', async () => {
    const a = await get(s.port, { ca: readFileSync(pki.otherCaCert) })
    assert.equal(a.error, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE')
  })

  test('curl with --cacert: 200 on /metrics and /healthz; plain HTTP on the TLS port gets no metrics', async () => {
    for (const p of ['/metrics', '/healthz']) {
      const r = await curl(['--cacert', pki.caCert, `https://127.0.0.1:${s.port}${p}`])
      assert.equal(r.code, 0, r.stderr)
      assert.equal(r.http, '200')
    }
    const plain = await curl([`http://127.0.0.1:${s.port}/metrics`])
    assert.notEqual(plain.http, '200')
  })

  test('the default min_version is TLS 1.2: a TLS 1.1 client is refused, 1.2 and 1.3 work', async () => {
    assert.ok(
      (await get(s.port, { maxVersion: 'TLSv1.1', minVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }))
        .error,
    )
    assert.equal((await get(s.port, { maxVersion: 'TLSv1.2' })).status, 200)
    assert.equal((await get(s.port, { minVersion: 'TLSv1.3' })).status, 200)
  })
})

describe('min_version and max_version', () => {
  const tls11 = { maxVersion: 'TLSv1.1', minVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' } as const

  test("min_version TLS10 admits a TLS 1.1 client (so the default's refusal is the server's)", async (t) => {
    const s = await serve(`${TLS()}  min_version: TLS10\n`)
    t.after(() => s.app.close())
    assert.equal((await get(s.port, tls11)).status, 200)
    assert.equal((await get(s.port)).status, 200)
  })

  test('min_version TLS13 refuses a TLS 1.2 client (Node and curl)', async (t) => {
    const s = await serve(`${TLS()}  min_version: TLS13\n`)
    t.after(() => s.app.close())
    const old = await get(s.port, { maxVersion: 'TLSv1.2' })
    assert.ok(old.error, JSON.stringify(old))
    assert.match(old.error ?? '', /ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION|EPROTO|ECONNRESET/)
    assert.equal((await get(s.port)).status, 200)
    const c12 = await curl([
      '--cacert',
      pki.caCert,
      '--tls-max',
      '1.2',
      `https://127.0.0.1:${s.port}/metrics`,
    ])
    assert.equal(c12.http, '000')
    assert.equal(c12.code, 35, c12.stderr) // CURLE_SSL_CONNECT_ERROR
    const c13 = await curl(['--cacert', pki.caCert, '--tlsv1.3', `https://127.0.0.1:${s.port}/metrics`])
    assert.equal(c13.http, '200', c13.stderr)
  })

  test('max_version TLS12 refuses a client that insists on TLS 1.3', async (t) => {
    const s = await serve(`${TLS()}  max_version: TLS12\n`)
    t.after(() => s.app.close())
    assert.ok((await get(s.port, { minVersion: 'TLSv1.3' })).error)
    const ok = await new Promise<string>((resolve, reject) => {
      const sock = tls.connect({ host: '127.0.0.1', port: s.port, ca: readFileSync(pki.caCert) }, () => {
        resolve(String(sock.getProtocol()))
        sock.end()
      })
      sock.on('error', reject)
    })
    assert.equal(ok, 'TLSv1.2')
  })
})

describe('client certificates', () => {
  const withCa = (type: string): string =>
    `${TLS()}  client_ca_file: ${pki.caCert}\n  client_auth_type: ${type}\n`

  test('RequireAndVerifyClientCert: our client cert 200; none, or one from another CA, refused', async (t) => {
    const s = await serve(withCa('RequireAndVerifyClientCert'))
    t.after(() => s.app.close())
    assert.equal((await get(s.port, clientCert())).status, 200)
    const none = await get(s.port)
    assert.ok(none.error, JSON.stringify(none))
    const wrong = await get(s.port, otherClientCert())
    assert.ok(wrong.error, JSON.stringify(wrong))
    // curl: the same three
    const base = ['--cacert', pki.caCert, `https://127.0.0.1:${s.port}/metrics`]
    assert.equal((await curl(['--cert', pki.clientCert, '--key', pki.clientKey, ...base])).http, '200')
    assert.equal((await curl(base)).http, '000')
    assert.equal(
      (await curl(['--cert', pki.otherClientCert, '--key', pki.otherClientKey, ...base])).http,
      '000',
    )
    // /healthz too: the handshake comes before any path
    assert.ok((await get(s.port, { urlPath: '/healthz' })).error)
  })

  test('RequireAnyClientCert: any certificate, even unverified; none is refused', async (t) => {
    const s = await serve(`${TLS()}  client_auth_type: RequireAnyClientCert\n`)
    t.after(() => s.app.close())
    assert.equal((await get(s.port, clientCert())).status, 200)
    assert.equal((await get(s.port, otherClientCert())).status, 200)
    const none = await get(s.port)
    assert.ok(none.error, JSON.stringify(none))
  })

  test('VerifyClientCertIfGiven: none is fine, a verified one is fine, an unverifiable one is refused', async (t) => {
    const s = await serve(withCa('VerifyClientCertIfGiven'))
    t.after(() => s.app.close())
    assert.equal((await get(s.port)).status, 200)
    assert.equal((await get(s.port, clientCert())).status, 200)
    const wrong = await get(s.port, otherClientCert())
    assert.ok(wrong.error, JSON.stringify(wrong))
  })

  test('RequestClientCert: asked for, never required nor verified', async (t) => {
    const s = await serve(`${TLS()}  client_auth_type: RequestClientCert\n`)
    t.after(() => s.app.close())
    assert.equal((await get(s.port)).status, 200)
    assert.equal((await get(s.port, otherClientCert())).status, 200)
  })

  test('NoClientCert: a client certificate is not asked for and does not matter', async (t) => {
    const s = await serve(TLS())
    t.after(() => s.app.close())
    assert.equal((await get(s.port, otherClientCert())).status, 200)
  })
})

describe('basic auth over TLS', () => {
  let s: Served
  before(async () => {
    s = await serve(`${TLS()}basic_auth_users:\n  prometheus: "${HASH}"\n`)
  })
  after(async () => await s.app.close())

  test('curl: right password 200, wrong password 401, unknown user 401, none 401; /healthz open', async () => {
    const url = `https://127.0.0.1:${s.port}/metrics`
    const c = (extra: string[]): Promise<{ code: number; http: string }> =>
      curl(['--cacert', pki.caCert, ...extra, url])
    assert.equal((await c(['-u', 'prometheus:scrape-pw'])).http, '200')
    assert.equal((await c(['-u', 'prometheus:wrong'])).http, '401')
    assert.equal((await c(['-u', 'nobody:scrape-pw'])).http, '401')
    assert.equal((await c([])).http, '401')
    const h = await curl(['--cacert', pki.caCert, `https://127.0.0.1:${s.port}/healthz`])
    assert.equal(h.http, '200')
  })

  test('Node: the 401 carries WWW-Authenticate: Basic', async () => {
    const a = await get(s.port, { auth: 'prometheus:nope' })
    assert.equal(a.status, 401)
    const raw = await new Promise<string | undefined>((resolve) => {
      https.get(
        { host: '127.0.0.1', port: s.port, path: '/metrics', ca: readFileSync(pki.caCert), agent: false },
        (res) => {
          res.resume()
          resolve(res.headers['www-authenticate'])
        },
      )
    })
    assert.match(String(raw), /^Basic /)
    assert.equal((await get(s.port, { auth: 'prometheus:scrape-pw' })).status, 200)
  })
})

describe('reload', () => {
  test('a new certificate applies to new connections without a restart (setSecureContext)', async (t) => {
    const s = await serve(TLS())
    t.after(() => s.app.close())
    assert.equal((await get(s.port)).peerCN, 'localhost')
    s.state.reload(
      await webConfig(`tls_server_config:\n  cert_file: ${pki.server2Cert}\n  key_file: ${pki.server2Key}\n`),
    )
    const a = await get(s.port)
    assert.equal(a.status, 200)
    assert.equal(a.peerCN, 'rotated.test')
  })

  test('client_auth_type and the client CA change for new connections', async (t) => {
    const s = await serve(TLS())
    t.after(() => s.app.close())
    assert.equal((await get(s.port)).status, 200)
    s.state.reload(
      await webConfig(
        `${TLS()}  client_ca_file: ${pki.caCert}\n  client_auth_type: RequireAndVerifyClientCert\n`,
      ),
    )
    assert.ok((await get(s.port)).error)
    assert.equal((await get(s.port, clientCert())).status, 200)
    // trust the other CA instead: our client is now the stranger
    s.state.reload(
      await webConfig(
        `${TLS()}  client_ca_file: ${pki.otherCaCert}\n  client_auth_type: RequireAndVerifyClientCert\n`,
      ),
    )
    assert.ok((await get(s.port, clientCert())).error)
    assert.equal((await get(s.port, otherClientCert())).status, 200)
    // and back to none
    s.state.reload(await webConfig(TLS()))
    assert.equal((await get(s.port)).status, 200)
  })

  test('TLS to plain HTTP needs a restart: still TLS afterwards', async (t) => {
    const s = await serve(TLS())
    t.after(() => s.app.close())
    const { restartNeeded } = s.state.reload(await webConfig(''))
    assert.match(restartNeeded.join(), /switching from TLS to plain HTTP needs a restart/)
    assert.equal((await get(s.port)).status, 200)
  })
})
