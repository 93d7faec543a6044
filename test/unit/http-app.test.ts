// The whole app (src/http/app.ts) through inject(): the routes, both exposition formats, errors and limits
// on the request size.
import { afterEach, beforeEach, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { Writable } from 'node:stream'

import type { FastifyInstance } from 'fastify'
import pino from 'pino'

import type { CapabilityStatus } from '../../src/host/capabilities.js'
import type { MetricFamily } from '../../src/metrics/exposition.js'
import type { ProgramStatus } from '../../src/kernel/binding.js'
import { build } from '../../src/http/app.js'
import type { HookStatus } from '../../src/kernel/tracer.js'
import type { MetricsSource, ServerOptions } from '../../src/http/app.js'
import { NOT_ASKED_TO_PIN, type KernelState } from '../../src/kernel/pinned-state.js'
import { parseExposition } from '../exposition-parser.js'

/** The Accept header Prometheus 2.x/3.x sends by default. */
const PROMETHEUS_ACCEPT =
  'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1'
const TEXT = 'text/plain; version=0.0.4; charset=utf-8'
const OPENMETRICS = 'application/openmetrics-text; version=1.0.0; charset=utf-8'
const VERSION = '9.8.7-test'
const HOSTILE = `<script>alert("x")</script> & 'q'`

const FAMILIES: MetricFamily[] = [
  {
    name: 'tcptracer_connects_total',
    help: 'Outbound TCP connections established.',
    type: 'counter',
    samples: [{ labels: [['comm', 'curl']], value: 3 }],
  },
  {
    name: 'tcptracer_active_connections',
    help: 'Open TCP connections.',
    type: 'gauge',
    samples: [
      {
        labels: [
          ['comm', 'curl'],
          ['direction', 'outbound'],
        ],
        value: 2,
      },
    ],
  },
]

const TEXT_SAMPLES =
  '# HELP tcptracer_connects_total Outbound TCP connections established.\n' +
  '# TYPE tcptracer_connects_total counter\n' +
  'tcptracer_connects_total{comm="curl"} 3\n' +
  '# HELP tcptracer_active_connections Open TCP connections.\n' +
  '# TYPE tcptracer_active_connections gauge\n' +
  'tcptracer_active_connections{comm="curl",direction="outbound"} 2\n'

const OM_SAMPLES =
  '# TYPE tcptracer_connects counter\n' +
  '# HELP tcptracer_connects Outbound TCP connections established.\n' +
  'tcptracer_connects_total{comm="curl"} 3\n' +
  '# TYPE tcptracer_active_connections gauge\n' +
  '# HELP tcptracer_active_connections Open TCP connections.\n' +
  'tcptracer_active_connections{comm="curl",direction="outbound"} 2\n'

class FakeSource implements MetricsSource {
  reason: string | undefined = undefined
  capabilities: CapabilityStatus | undefined = undefined
  kernelState: KernelState | undefined = undefined
  failure: Error | undefined = undefined
  collects = 0
  readonly programs: ProgramStatus[] = [
    { name: 'handle_set_state', section: 'tracepoint/sock/inet_sock_set_state', attached: true },
    {
      name: 'kretprobe_inet_csk_accept',
      section: 'kretprobe/inet_csk_accept',
      attached: false,
      error: HOSTILE,
    },
  ]
  readonly hooks: HookStatus[] = [
    { hook: 'state', mode: 'raw_tp' },
    { hook: 'accept', mode: 'listener', rejected: [{ mode: 'fexit', error: HOSTILE }] },
  ]

  async collect(): Promise<MetricFamily[]> {
    this.collects++
    if (this.failure) throw this.failure
    return FAMILIES
  }

  notReadyReason(): string | undefined {
    return this.reason
  }
}

/** A pino logger writing JSON lines into an array. */
function capture(): { logger: pino.Logger; lines: () => Array<Record<string, unknown>> } {
  const chunks: string[] = []
  const sink = new Writable({
    write(chunk: Buffer | string, _enc, cb) {
      chunks.push(chunk.toString())
      cb()
    },
  })
  return {
    logger: pino({ level: 'info' }, sink),
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter((l) => l !== '')
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  }
}

function makeApp(source: MetricsSource, o: Partial<ServerOptions> = {}): FastifyInstance {
  return build({
    source,
    telemetryPath: '/metrics',
    version: VERSION,
    logger: pino({ level: 'silent' }),
    ...o,
  })
}

function countOf(haystack: string, needle: string): number {
  return haystack.split(needle).length - 1
}

describe('server', () => {
  let source: FakeSource
  let app: FastifyInstance
  let log: ReturnType<typeof capture>

  beforeEach(async () => {
    source = new FakeSource()
    log = capture()
    app = makeApp(source, { logger: log.logger, processMetrics: true })
    await app.ready()
  })

  afterEach(async () => {
    await app.close()
  })

  test('/metrics without Accept: text format 0.0.4 with process metrics', async () => {
    const res = await app.inject({ method: 'GET', url: '/metrics' })
    assert.equal(res.statusCode, 200)
    assert.equal(res.headers['content-type'], TEXT)
    assert.ok(res.body.startsWith(TEXT_SAMPLES), res.body.slice(0, 500))
    assert.match(res.body, /^process_cpu_user_seconds_total \d/m)
    assert.match(res.body, /^# TYPE process_cpu_user_seconds_total counter$/m)
    assert.ok(!res.body.includes('# EOF'))
    assert.ok(res.body.endsWith('\n'))
    assert.equal(source.collects, 1)
  })

  test('/metrics with an Accept that prefers text', async () => {
    const res = await app.inject({ url: '/metrics', headers: { accept: 'text/plain;version=0.0.4' } })
    assert.equal(res.statusCode, 200)
    assert.equal(res.headers['content-type'], TEXT)
    assert.ok(res.body.startsWith(TEXT_SAMPLES))
  })

  test("/metrics with Prometheus's Accept: OpenMetrics, one # EOF at the very end", async () => {
    const res = await app.inject({ url: '/metrics', headers: { accept: PROMETHEUS_ACCEPT } })
    assert.equal(res.statusCode, 200)
    assert.equal(res.headers['content-type'], OPENMETRICS)
    assert.ok(res.body.startsWith(OM_SAMPLES), res.body.slice(0, 500))
    assert.ok(res.body.endsWith('\n# EOF\n'))
    assert.equal(countOf(res.body, '# EOF'), 1)
    // OpenMetrics has no blank lines (Prometheus's parser rejects them)
    assert.ok(!res.body.includes('\n\n'))
    // prom-client's counters in their OpenMetrics form
    assert.match(res.body, /^# TYPE process_cpu_user_seconds counter$/m)
    assert.match(res.body, /^process_cpu_user_seconds_total \d/m)
  })

  test('/metrics in both formats, process metrics included, reads with the parser of the tests and bench', async () => {
    for (const accept of ['text/plain;version=0.0.4', PROMETHEUS_ACCEPT]) {
      const res = await app.inject({ url: '/metrics', headers: { accept } })
      assert.equal(res.statusCode, 200)
      const samples = parseExposition(res.body)
      assert.deepEqual(samples.slice(0, 2), [
        { name: 'tcptracer_connects_total', labels: { comm: 'curl' }, value: 3 },
        { name: 'tcptracer_active_connections', labels: { comm: 'curl', direction: 'outbound' }, value: 2 },
      ])
      assert.ok(
        samples.some((x) => x.name === 'process_cpu_user_seconds_total'),
        accept,
      )
    }
  })

  test('HEAD /metrics', async () => {
    const res = await app.inject({ method: 'HEAD', url: '/metrics' })
    assert.equal(res.statusCode, 200)
    assert.equal(res.headers['content-type'], TEXT)
    assert.equal(res.body, '')
    const om = await app.inject({ method: 'HEAD', url: '/metrics', headers: { accept: PROMETHEUS_ACCEPT } })
    assert.equal(om.statusCode, 200)
    assert.equal(om.headers['content-type'], OPENMETRICS)
    assert.equal(om.body, '')
  })

  test('/healthz', async () => {
    const res = await app.inject({ url: '/healthz' })
    assert.equal(res.statusCode, 200)
    assert.equal(res.headers['content-type'], 'text/plain; charset=utf-8')
    assert.equal(res.body, 'ok\n')
    // liveness does not depend on readiness
    source.reason = 'not yet'
    assert.equal((await app.inject({ url: '/healthz' })).statusCode, 200)
  })

  test('/readyz: 200 when ready, 503 with the reason when not', async () => {
    const ok = await app.inject({ url: '/readyz' })
    assert.equal(ok.statusCode, 200)
    assert.match(String(ok.headers['content-type']), /^application\/json/)
    assert.deepEqual(ok.json(), {
      status: 'ready',
      hooks: [
        { hook: 'state', mode: 'raw_tp' },
        { hook: 'accept', mode: 'listener', rejected: [{ mode: 'fexit', error: HOSTILE }] },
      ],
      programs: [
        { name: 'handle_set_state', hook: 'tracepoint/sock/inet_sock_set_state', attached: true },
        {
          name: 'kretprobe_inet_csk_accept',
          hook: 'kretprobe/inet_csk_accept',
          attached: false,
          error: HOSTILE,
        },
      ],
    })

    source.reason = 'program handle_set_state is not attached: EPERM'
    const notReady = await app.inject({ url: '/readyz' })
    assert.equal(notReady.statusCode, 503)
    const body = notReady.json<{ status: string; reason: string; programs: unknown[] }>()
    assert.equal(body.status, 'not ready')
    assert.equal(body.reason, 'program handle_set_state is not attached: EPERM')
    assert.equal(body.programs.length, 2)

    source.reason = undefined
    assert.equal((await app.inject({ url: '/readyz' })).statusCode, 200)
  })

  test('/ : landing page with version, telemetry link and program status, HTML-escaped', async () => {
    const res = await app.inject({ url: '/' })
    assert.equal(res.statusCode, 200)
    assert.equal(res.headers['content-type'], 'text/html; charset=utf-8')
    const html = res.body
    assert.ok(html.startsWith('<!DOCTYPE html>'))
    assert.ok(html.includes(`Version ${VERSION}.`))
    assert.ok(html.includes('<a href="/metrics">/metrics</a>'))
    assert.ok(html.includes('<strong>ready</strong>'))
    assert.ok(
      html.includes(
        '<tr><td>handle_set_state</td><td>tracepoint/sock/inet_sock_set_state</td><td>attached</td></tr>',
      ),
    )
    assert.ok(
      html.includes(
        '<tr><td>kretprobe_inet_csk_accept</td><td>kretprobe/inet_csk_accept</td><td>not attached: ' +
          '&#60;script&#62;alert(&#34;x&#34;)&#60;/script&#62; &#38; &#39;q&#39;</td></tr>',
      ),
    )
    assert.ok(html.includes('<tr><td>state</td><td>raw_tp</td><td></td></tr>'))
    assert.ok(
      html.includes(
        '<tr><td>accept</td><td>listener</td><td>fexit: ' +
          '&#60;script&#62;alert(&#34;x&#34;)&#60;/script&#62; &#38; &#39;q&#39;</td></tr>',
      ),
    )
    assert.ok(!html.includes('<script>'))
    assert.ok(!html.includes('alert("x")'))
  })

  test('/readyz and / : whether the programs detach at exit or stay pinned', async () => {
    const state = async (): Promise<unknown> =>
      (await app.inject({ url: '/readyz' })).json<Record<string, unknown>>()['kernelState']
    assert.equal(await state(), undefined)
    source.kernelState = { origin: 'unpinned', path: '', reason: NOT_ASKED_TO_PIN }
    assert.deepEqual(await state(), {
      origin: 'unpinned',
      path: '',
      reason: NOT_ASKED_TO_PIN,
      onExit: 'detach: the programs and counters go with this process',
    })
    assert.ok(
      (await app.inject({ url: '/' })).body.includes(
        '<p>Kernel state: unpinned; on exit, detach: the programs and counters go with this process.</p>',
      ),
    )
    source.kernelState = { origin: 'restored', path: '/sys/fs/bpf/tcptracer-exporter/v2-0123456789abcdef' }
    assert.deepEqual(await state(), {
      ...source.kernelState,
      onExit:
        'keep counting: the programs stay attached in /sys/fs/bpf/tcptracer-exporter/v2-0123456789abcdef for the next start (tcptracer-exporter unpin removes them)',
    })
    assert.match(
      (await app.inject({ url: '/' })).body,
      /<p>Kernel state: restored in \/sys\/fs\/bpf\/tcptracer-exporter\/v2-0123456789abcdef; on exit, keep counting: /,
    )
    source.kernelState = undefined
  })

  test('/readyz and / : the capabilities kept and dropped once started', async () => {
    assert.equal(
      (await app.inject({ url: '/readyz' })).json<Record<string, unknown>>()['capabilities'],
      undefined,
    )
    assert.ok(!(await app.inject({ url: '/' })).body.includes('Capabilities:'))

    source.capabilities = {
      keep: 'auto',
      dropped: true,
      kept: ['cap_sys_ptrace'],
      removed: ['cap_dac_read_search', 'cap_perfmon', 'cap_bpf'],
      boundingSetReduced: false,
    }
    const ready = await app.inject({ url: '/readyz' })
    assert.equal(ready.statusCode, 200)
    assert.deepEqual(ready.json<Record<string, unknown>>()['capabilities'], source.capabilities)
    source.reason = 'shutting down'
    assert.deepEqual(
      (await app.inject({ url: '/readyz' })).json<Record<string, unknown>>()['capabilities'],
      source.capabilities,
    )
    source.reason = undefined
    assert.ok(
      (await app.inject({ url: '/' })).body.includes(
        '<p>Capabilities: kept cap_sys_ptrace; dropped cap_dac_read_search, cap_perfmon, cap_bpf once the programs were attached (--capabilities.keep=auto).</p>',
      ),
    )

    source.capabilities = {
      keep: 'all',
      dropped: false,
      kept: ['cap_bpf'],
      removed: [],
      boundingSetReduced: false,
    }
    assert.ok(
      (await app.inject({ url: '/' })).body.includes(
        '<p>Capabilities: <strong>not dropped</strong> (--capabilities.keep=all): cap_bpf.</p>',
      ),
    )
  })

  test('/ : the not-ready reason is shown, escaped', async () => {
    source.reason = 'map <aggs> unreadable'
    const res = await app.inject({ url: '/' })
    assert.equal(res.statusCode, 200)
    assert.ok(res.body.includes('<strong>not ready: map &#60;aggs&#62; unreadable</strong>'))
  })

  test('a collect() that throws: 500 text/plain with a message, logged, and the next scrape works', async () => {
    source.failure = new Error('the aggregation map cannot be read: EPERM')
    const res = await app.inject({ url: '/metrics' })
    assert.equal(res.statusCode, 500)
    assert.equal(res.headers['content-type'], 'text/plain; charset=utf-8')
    assert.equal(res.body, 'internal error: the aggregation map cannot be read: EPERM\n')
    const errors = log.lines().filter((l) => l['level'] === 50)
    assert.equal(errors.length, 1)
    assert.equal(errors[0]?.['msg'], 'request failed')

    const om = await app.inject({ url: '/metrics', headers: { accept: PROMETHEUS_ACCEPT } })
    assert.equal(om.statusCode, 500)
    assert.equal(om.headers['content-type'], 'text/plain; charset=utf-8')

    source.failure = undefined
    const next = await app.inject({ url: '/metrics' })
    assert.equal(next.statusCode, 200)
    assert.ok(next.body.startsWith(TEXT_SAMPLES))
    assert.equal((await app.inject({ url: '/healthz' })).statusCode, 200)
    assert.equal(source.collects, 3)
  })

  test('POST /metrics is not a route; a big body is refused', async () => {
    const small = await app.inject({ method: 'POST', url: '/metrics', payload: 'x' })
    assert.ok([404, 405].includes(small.statusCode), String(small.statusCode))
    const big = await app.inject({
      method: 'POST',
      url: '/metrics',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({ junk: 'x'.repeat(100_000) }),
    })
    assert.equal(big.statusCode, 413)
    assert.equal(source.collects, 0)
    // the app keeps serving
    assert.equal((await app.inject({ url: '/metrics' })).statusCode, 200)
  })

  test('unknown paths are 404', async () => {
    for (const url of ['/nope', '/metrics/x', '/metricsx', '/healthz/extra']) {
      const res = await app.inject({ url })
      assert.equal(res.statusCode, 404, url)
    }
    assert.equal(source.collects, 0)
  })
})

test('a custom telemetry path serves metrics; /metrics is then 404', async (t) => {
  const source = new FakeSource()
  const app = makeApp(source, { telemetryPath: '/internal/prom', processMetrics: false })
  t.after(() => app.close())

  const res = await app.inject({ url: '/internal/prom' })
  assert.equal(res.statusCode, 200)
  assert.equal(res.headers['content-type'], TEXT)
  assert.ok(res.body.startsWith(TEXT_SAMPLES))
  assert.equal((await app.inject({ url: '/metrics' })).statusCode, 404)
  assert.equal((await app.inject({ method: 'HEAD', url: '/internal/prom' })).statusCode, 200)
  const landing = await app.inject({ url: '/' })
  assert.ok(landing.body.includes('<a href="/internal/prom">/internal/prom</a>'))
  assert.ok(!landing.body.includes('href="/metrics"'))
})

test('without process metrics: only our families', async (t) => {
  const source = new FakeSource()
  const app = makeApp(source, { processMetrics: false })
  t.after(() => app.close())

  const text = await app.inject({ url: '/metrics' })
  assert.equal(text.statusCode, 200)
  assert.ok(text.body.startsWith(TEXT_SAMPLES))
  assert.ok(!text.body.includes('process_'))
  assert.ok(!text.body.includes('nodejs_'))
})

test('without process metrics, OpenMetrics still has no blank line before # EOF', async (t) => {
  const source = new FakeSource()
  const app = makeApp(source, { processMetrics: false })
  t.after(() => app.close())

  const res = await app.inject({ url: '/metrics', headers: { accept: PROMETHEUS_ACCEPT } })
  assert.equal(res.statusCode, 200)
  assert.equal(res.headers['content-type'], OPENMETRICS)
  assert.ok(res.body.startsWith(OM_SAMPLES), res.body)
  // the HTTP side's own families follow, then one # EOF
  const rest = res.body.slice(OM_SAMPLES.length)
  assert.ok(rest.startsWith('# TYPE tcptracer_http_requests_rejected counter\n'), rest)
  assert.ok(rest.endsWith('tcptracer_web_config_last_reload_successful 1\n# EOF\n'), rest)
  assert.ok(!res.body.includes('\n\n'))
  assert.equal(countOf(res.body, '# EOF'), 1)
})

test('an HTML-hostile version and telemetry path are escaped on the landing page', async (t) => {
  const source = new FakeSource()
  const app = makeApp(source, { version: '<b>1</b>', telemetryPath: "/m'x", processMetrics: false })
  t.after(() => app.close())
  const res = await app.inject({ url: '/' })
  assert.ok(res.body.includes('Version &#60;b&#62;1&#60;/b&#62;.'))
  assert.ok(res.body.includes('<a href="/m&#39;x">/m&#39;x</a>'))
})
