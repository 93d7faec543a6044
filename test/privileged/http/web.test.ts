// The real daemon's HTTP side: a real Prometheus scraping it over TLS with a client certificate and
// basic auth, SIGHUP reloads of the web config (certificate rotation, users, a bad file), a bad web
// config at start, and overload: hundreds of concurrent scrapes and slowloris sockets.
import assert from 'node:assert/strict'
import { execFile, spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import https from 'node:https'
import path from 'node:path'
import type { TLSSocket } from 'node:tls'
import { after, before, describe, test } from 'node:test'

import bcrypt from 'bcryptjs'

import { Prometheus, until } from '../prometheus.js'
import {
  CLI,
  parseExposition,
  privileged,
  startDaemon,
  TIME_SCALE,
  valueOf,
  type Daemon,
} from '../harness.js'
import { makePki, type Pki } from '../../unit/certs.js'

const { skip } = privileged()
const LOAD_CLIENT = new URL('../../unit/load-client.mjs', import.meta.url).pathname

// htpasswd -B writes $2y$; bcryptjs writes $2b$: the daemon must take both
const PROM_PW = 'prom-secret'
const PROM_HASH = bcrypt.hashSync(PROM_PW, 10).replace(/^\$2b\$/, '$2y$')
const NEW_PW = 'rotated-secret'
const NEW_HASH = bcrypt.hashSync(NEW_PW, 10)

interface Answer {
  status?: number
  body?: string
  error?: string
  peerCN?: string
}

/** An HTTPS GET on a new connection. */
async function get(d: Daemon, pki: Pki, urlPath: string, opts: https.RequestOptions = {}): Promise<Answer> {
  return await new Promise((resolve) => {
    const req = https.request(
      { host: '127.0.0.1', port: d.port, path: urlPath, ca: readFileSync(pki.caCert), agent: false, ...opts },
      (res) => {
        const cn = String((res.socket as TLSSocket).getPeerCertificate().subject?.CN)
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => (body += c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, peerCN: cn }))
      },
    )
    req.on('error', (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }))
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')))
    req.end()
  })
}

async function load<T>(args: Record<string, unknown>): Promise<T> {
  return await new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [LOAD_CLIENT, JSON.stringify(args)],
      { timeout: 120_000 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`load client failed: ${err.message}\n${stdout}\n${stderr}`))
        else resolve(JSON.parse(stdout) as T)
      },
    )
  })
}

describe('the daemon behind TLS and basic auth', { skip }, () => {
  let pki: Pki
  let webFile: string
  const webConfig = (text: string): void => writeFileSync(webFile, text)
  const clientOpts = (): https.RequestOptions => ({
    cert: readFileSync(pki.clientCert),
    key: readFileSync(pki.clientKey),
  })

  before(() => {
    pki = makePki()
    webFile = path.join(pki.dir, 'web.yml')
  })
  after(() => pki.cleanup())

  test('a real Prometheus scrapes over TLS with a client certificate and basic auth: up == 1', async () => {
    // relative paths: resolved against the web config's directory
    webConfig(
      [
        'tls_server_config:',
        '  cert_file: server.crt',
        '  key_file: server.key',
        '  client_ca_file: ca.crt',
        '  client_auth_type: RequireAndVerifyClientCert',
        'basic_auth_users:',
        `  prometheus: "${PROM_HASH}"`,
        '',
      ].join('\n'),
    )
    const d = await startDaemon([`--web.config.file=${webFile}`])
    try {
      assert.ok(d.url.startsWith('https://'), d.url)
      const serving = d.logs().find((l) => l['msg'] === 'serving metrics')!
      assert.equal(serving['scheme'], 'https')
      assert.equal(serving['client_auth'], 'RequireAndVerifyClientCert')
      assert.equal(serving['basic_auth'], true)
      // without the client certificate there is no TLS session at all
      assert.ok((await get(d, pki, '/metrics')).error)
      assert.equal((await get(d, pki, '/metrics', clientOpts())).status, 401)

      const prom = await Prometheus.start(d, [], {
        tls: { ca_file: pki.caCert, cert_file: pki.clientCert, key_file: pki.clientKey },
        basicAuth: { username: 'prometheus', password: PROM_PW },
      })
      try {
        const up = await until('up == 1 over TLS with basic auth', 30_000, async () => {
          const v = await prom.value('up{job="tcptracer"}')
          return v === 1 ? v : undefined
        }).catch(async (err: Error) => {
          // say why Prometheus could not scrape: its view of the target
          throw new Error(`${err.message}\n${await prom.view()}`)
        })
        assert.equal(up, 1)
        // the data is there, and Prometheus never needed a second try
        assert.equal(await prom.value('tcptracer_build_info{job="tcptracer"}'), 1)
        assert.equal(
          await prom.value('tcptracer_http_requests_rejected_total{job="tcptracer",reason="unauthorized"}'),
          1,
        )
      } finally {
        await prom.stop()
      }
    } finally {
      assert.equal(await d.stop(), 0)
    }
  })

  test('SIGHUP: a new certificate and new users without a restart; a bad file keeps the running one', async () => {
    const tls = (cert: string, key: string): string =>
      `tls_server_config:\n  cert_file: ${cert}\n  key_file: ${key}\n`
    webConfig(`${tls(pki.serverCert, pki.serverKey)}basic_auth_users:\n  prometheus: "${PROM_HASH}"\n`)
    const d = await startDaemon([`--web.config.file=${webFile}`])
    const reloads = async (msg: string, n: number): Promise<void> => {
      d.proc.child.kill('SIGHUP')
      await d.proc.until(
        () => d.logs().filter((l) => String(l['msg']).startsWith(msg)).length === n,
        10_000,
        `log "${msg}" #${n}`,
      )
    }
    const auth = (user: string, pw: string): https.RequestOptions => ({ auth: `${user}:${pw}` })
    try {
      let a = await get(d, pki, '/metrics', auth('prometheus', PROM_PW))
      assert.equal(a.status, 200)
      assert.equal(a.peerCN, 'localhost')

      // rotate the certificate, replace the user
      webConfig(`${tls(pki.server2Cert, pki.server2Key)}basic_auth_users:\n  ops: "${NEW_HASH}"\n`)
      await reloads('web config reloaded', 1)
      const log = d.logs().find((l) => l['msg'] === 'web config reloaded')!
      assert.deepEqual(log['changes'], [
        'tls: certificate or key changed',
        'basic_auth_users added: ops',
        'basic_auth_users removed: prometheus',
      ])
      a = await get(d, pki, '/metrics', auth('ops', NEW_PW))
      assert.equal(a.status, 200)
      assert.equal(a.peerCN, 'rotated.test')
      assert.equal((await get(d, pki, '/metrics', auth('prometheus', PROM_PW))).status, 401)

      // a bad file: logged with the key, counted, and the running web config stays
      webConfig(`${tls(pki.server2Cert, pki.server2Key)}basic_auth_users:\n  ops: plaintext\n`)
      await reloads('web config reload failed', 1)
      const failed = d.logs().find((l) => String(l['msg']).startsWith('web config reload failed'))!
      assert.match(String(failed['msg']), /basic_auth_users\.ops: expected a bcrypt hash/)
      a = await get(d, pki, '/metrics', auth('ops', NEW_PW))
      assert.equal(a.status, 200)
      assert.equal(a.peerCN, 'rotated.test')
      const samples = parseExposition(a.body ?? '')
      assert.equal(valueOf(samples, 'tcptracer_web_config_reloads_total', { result: 'success' }), 1)
      assert.equal(valueOf(samples, 'tcptracer_web_config_reloads_total', { result: 'failure' }), 1)
      assert.equal(valueOf(samples, 'tcptracer_web_config_last_reload_successful', {}), 0)
      // the main config's reload counter is its own
      assert.equal(valueOf(samples, 'tcptracer_config_reloads_total', { result: 'failure' }), 0)

      // TLS -> plain HTTP: needs a restart, says so, keeps serving TLS
      webConfig(`basic_auth_users:\n  ops: "${NEW_HASH}"\n`)
      await reloads('web config reloaded', 2)
      await d.proc.until(
        () =>
          d.logs().some((l) => String(l['msg']).includes('switching from TLS to plain HTTP needs a restart')),
        5000,
        'the restart warning',
      )
      assert.equal((await get(d, pki, '/metrics', auth('ops', NEW_PW))).status, 200)
    } finally {
      assert.equal(await d.stop(), 0)
    }
  })

  test('a bad web config: run and check-config exit 2 naming the key; a good one passes check-config', () => {
    const cases: Array<[string, string]> = [
      ['tls_server_config:\n  cert_file: server.crt\n', 'tls_server_config.key_file'],
      [
        'tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n',
        'tls_server_config.cert_file: cannot read',
      ],
      [
        'tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_allowed_sans: [x]\n',
        'client_allowed_sans: not supported',
      ],
      ['basic_auth_users:\n  a: hunter2\n', 'basic_auth_users.a'],
      ['http_server_config:\n  http2: true\n', 'http_server_config.http2'],
    ]
    for (const [text, where] of cases) {
      webConfig(text)
      for (const cmd of [
        ['run', `--web.config.file=${webFile}`, '--web.listen-address=127.0.0.1:0'],
        ['check-config', `--web.config.file=${webFile}`],
      ]) {
        const r = spawnSync(process.execPath, [CLI, ...cmd], {
          encoding: 'utf8',
          timeout: 20_000 * TIME_SCALE,
        })
        assert.equal(r.status, 2, `${cmd[0]} on ${JSON.stringify(text)}: ${r.stderr}`)
        assert.ok(r.stderr.includes(where), `${cmd[0]} names ${where}: ${r.stderr}`)
      }
    }
    webConfig('tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n')
    const ok = spawnSync(
      process.execPath,
      [CLI, 'check-config', `--web.config.file=${webFile}`, '--config.file=config.example.yml'],
      { encoding: 'utf8' },
    )
    assert.equal(ok.status, 0, ok.stderr)
    assert.equal(ok.stdout, `config.example.yml: valid\n${webFile}: valid\n`)
  })
})

describe('the daemon under HTTP overload', { skip }, () => {
  let d: Daemon
  before(async () => {
    d = await startDaemon(['--web.max-requests=40'])
  })
  after(async () => {
    assert.equal(await d.stop(), 0)
  })

  async function self(): Promise<ReturnType<typeof parseExposition>> {
    const res = await fetch(`${d.url}/metrics`)
    assert.equal(res.status, 200)
    return parseExposition(await res.text())
  }

  test('300 concurrent scrapes: 200 or a prompt 503, answers that agree per collection, /healthz fast throughout', async (t) => {
    const before = await self()
    const own0 = valueOf(before, 'tcptracer_scrapes_total', { collection: 'own' })!
    const rejected0 = valueOf(before, 'tcptracer_http_requests_rejected_total', { reason: 'max_requests' })!
    const [r, h] = await Promise.all([
      load<{
        statuses: Record<string, number>
        distinctBodies: number
        refusals: string[]
        maxMs: number
        loopLagMaxSeconds: number
      }>({
        mode: 'scrapes',
        port: d.port,
        path: '/metrics',
        n: 300,
      }),
      load<{ checks: number; failures: number; maxMs?: number; medianMs?: number }>({
        mode: 'health',
        port: d.port,
        durationMs: 3000,
        everyMs: 20,
      }),
    ])
    const after = await self()
    // the daemon's own event-loop delay (prom-client, max since the previous scrape): the scrapes during
    // the load and this one after it cover the whole run
    const lagMs =
      Math.max(r.loopLagMaxSeconds, valueOf(after, 'nodejs_eventloop_lag_max_seconds', {})!) * 1000
    const own = valueOf(after, 'tcptracer_scrapes_total', { collection: 'own' })! - own0 - 1
    const rejected =
      valueOf(after, 'tcptracer_http_requests_rejected_total', { reason: 'max_requests' })! - rejected0
    t.diagnostic(
      `statuses ${JSON.stringify(r.statuses)}, kernel-map collections ${own}, distinct answers ${r.distinctBodies}, ` +
        `slowest scrape ${r.maxMs.toFixed(0)} ms; daemon event-loop delay max ${lagMs.toFixed(1)} ms; /healthz: ${h.checks} checks, median ${(h.medianMs ?? NaN).toFixed(1)} ms, max ${(h.maxMs ?? NaN).toFixed(1)} ms`,
    )
    const ok = r.statuses['200'] ?? 0
    const refused = r.statuses['503'] ?? 0
    assert.equal(ok + refused, 300, JSON.stringify(r.statuses))
    assert.equal(rejected, refused)
    assert.ok(ok >= 40)
    // scrapes that shared a collection got the same data: no more distinct answers than collections
    assert.ok(r.distinctBodies <= own, `${r.distinctBodies} distinct answers from ${own} collections`)
    assert.ok(own < ok, `${own} collections for ${ok} scrapes`)
    // the daemon's own loop: never stalled for long (generous: the two load processes and whatever else
    // runs on this 2-core machine share the CPU with it)
    assert.ok(lagMs < 1000, `daemon event-loop delay ${lagMs} ms`)
    // /healthz kept answering; its latency as the health client saw it is reported above (it includes that
    // client's own scheduling behind the load client, and reached 1.7 s once while the daemon's loop delay
    // stayed at 151 ms), so the bound is a hang bound
    assert.equal(h.failures, 0)
    assert.ok((h.maxMs ?? Infinity) < 5000, `slowest /healthz ${h.maxMs} ms`)
    assert.ok(r.maxMs < 10_000, `slowest scrape ${r.maxMs} ms`)
  })

  test('100 slowloris sockets are closed after the 10 s header timeout; /healthz stays fast', async (t) => {
    const r = await load<{
      closed: number
      firstCloseMs: number
      lastCloseMs: number
      answers: string[]
      healthFailures: number
      healthMaxMs: number
    }>({ mode: 'slowloris', port: d.port, n: 100, dripMs: 1000, durationMs: 20_000, maxRunMs: 60_000 })
    t.diagnostic(JSON.stringify(r))
    assert.equal(r.closed, 100)
    assert.deepEqual(r.answers, ['HTTP/1.1 408 Request Timeout'])
    assert.ok(r.firstCloseMs >= 9500, `first close at ${r.firstCloseMs} ms`)
    assert.ok(r.lastCloseMs < 10_000 + 1000 + 2000, `last close at ${r.lastCloseMs} ms`)
    assert.equal(r.healthFailures, 0)
    assert.ok(r.healthMaxMs < 500, `slowest /healthz ${r.healthMaxMs} ms`)
  })
})
