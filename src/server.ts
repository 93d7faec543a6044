// The HTTP side: /metrics, /healthz, /readyz and the landing page. build()
// returns the app without listening, so tests drive it through inject().
import { Readable } from 'node:stream'
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import { collectDefaultMetrics, Registry, type RegistryContentType } from 'prom-client'
import { CONTENT_TYPES, negotiate, renderChunks, type Format, type MetricFamily } from './exposition.js'
import type { CapabilityStatus } from './capabilities.js'
import type { ProgramStatus } from './native.js'

export interface MetricsSource {
  collect(): Promise<MetricFamily[]>
  /** undefined when ready */
  notReadyReason(): string | undefined
  readonly programs: readonly ProgramStatus[]
  /** where each part of the tracer is attached, and for accepts what else was tried */
  readonly hooks: readonly HookStatus[]
  /** the capabilities kept and dropped once started; undefined until then */
  readonly capabilities?: CapabilityStatus | undefined
}

export interface HookStatus {
  hook: string
  mode: string
  /** the candidates tried before this one, and why each failed */
  rejected?: ReadonlyArray<{ mode: string; error: string }>
}

export interface ServerOptions {
  source: MetricsSource
  telemetryPath: string
  version: string
  logger: FastifyBaseLogger
  /** prom-client's process and Node.js metrics (default: on) */
  processMetrics?: boolean
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

/**
 * prom-client renders its own registry per format. Its counters get renamed in place
 * for OpenMetrics, so each format has its own registry and its own metric objects.
 */
function processRegistries(): Record<Format, Registry<RegistryContentType>> {
  const prometheus = new Registry<RegistryContentType>()
  const openmetrics = new Registry<RegistryContentType>()
  openmetrics.setContentType(Registry.OPENMETRICS_CONTENT_TYPE)
  for (const r of [prometheus, openmetrics]) {
    collectDefaultMetrics({ register: r })
    // gauges named like counters: promtool rejects them
    for (const name of MISNAMED) r.removeSingleMetric(name)
  }
  return { prometheus, openmetrics }
}

const MISNAMED = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
]

export function build(opts: ServerOptions): FastifyInstance {
  const { source, telemetryPath, version } = opts
  const registries = (opts.processMetrics ?? true) ? processRegistries() : undefined
  const app = Fastify({
    loggerInstance: opts.logger,
    // nothing here takes a body; refuse anything big early
    bodyLimit: 1024,
    // a scrape that takes longer than this is stuck: free the socket
    requestTimeout: 60_000,
    connectionTimeout: 60_000,
    return503OnClosing: true,
  })

  app.get(telemetryPath, { logLevel: 'warn' }, async (req, reply) => {
    const format = negotiate(req.headers.accept)
    const families = await source.collect()
    // streamed in chunks: a large exposition is never one string in memory
    const registry = registries?.[format]
    async function* body(): AsyncGenerator<string> {
      yield* renderChunks(families, format)
      if (registry) yield await registry.metrics()
      else if (format === 'openmetrics') yield '# EOF\n'
    }
    return reply.type(CONTENT_TYPES[format]).send(Readable.from(body(), { objectMode: false }))
  })

  app.get('/healthz', { logLevel: 'warn' }, async (_req, reply) =>
    reply.type('text/plain; charset=utf-8').send('ok\n'),
  )

  app.get('/readyz', { logLevel: 'warn' }, async (_req, reply) => {
    const reason = source.notReadyReason()
    const programs = source.programs.map((p) => ({
      name: p.name,
      hook: p.section,
      attached: p.attached,
      ...(p.error ? { error: p.error } : {}),
    }))
    const hooks = source.hooks
    const capabilities = source.capabilities
    const details = { hooks, programs, ...(capabilities ? { capabilities } : {}) }
    return reply
      .code(reason ? 503 : 200)
      .send(reason ? { status: 'not ready', reason, ...details } : { status: 'ready', ...details })
  })

  app.get('/', async (_req, reply) => {
    const reason = source.notReadyReason()
    const rows = source.programs
      .map(
        (p) =>
          `<tr><td>${escapeHtml(p.name)}</td><td>${escapeHtml(p.section)}</td><td>${p.attached ? 'attached' : `not attached: ${escapeHtml(p.error ?? '')}`}</td></tr>`,
      )
      .join('\n')
    const hookRows = source.hooks
      .map(
        (h) =>
          `<tr><td>${escapeHtml(h.hook)}</td><td>${escapeHtml(h.mode)}</td><td>${(h.rejected ?? []).map((r) => `${escapeHtml(r.mode)}: ${escapeHtml(r.error)}`).join('<br>')}</td></tr>`,
      )
      .join('\n')
    const path = escapeHtml(telemetryPath)
    const caps = source.capabilities
    const capsLine = !caps
      ? ''
      : caps.dropped
        ? `<p>Capabilities: kept ${escapeHtml(caps.kept.join(', ') || 'none')}; dropped ${escapeHtml(caps.removed.join(', ') || 'none')} once the programs were attached (--capabilities.keep=${escapeHtml(caps.keep)}).</p>\n`
        : `<p>Capabilities: <strong>not dropped</strong> (--capabilities.keep=all): ${escapeHtml(caps.kept.join(', ') || 'none')}.</p>\n`
    const html = `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>tcptracer-exporter</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:.2em .8em;text-align:left}</style></head>
<body>
<h1>tcptracer-exporter</h1>
<p>Version ${escapeHtml(version)}. Counts TCP connects, accepts and closes per process and network namespace with eBPF.</p>
<p>Status: <strong>${reason ? `not ready: ${escapeHtml(reason)}` : 'ready'}</strong></p>
${capsLine}<ul>
<li><a href="${path}">${path}</a>: metrics</li>
<li><a href="/healthz">/healthz</a>: liveness</li>
<li><a href="/readyz">/readyz</a>: readiness, with the attach status of every program</li>
</ul>
<h2>Hooks</h2>
<table><tr><th>hook</th><th>mode</th><th>not available here</th></tr>
${hookRows}
</table>
<h2>BPF programs</h2>
<table><tr><th>program</th><th>hook</th><th>status</th></tr>
${rows}
</table>
</body>
</html>
`
    return reply.type('text/html; charset=utf-8').send(html)
  })

  app.setErrorHandler((e, req, reply) => {
    const err = e as Error & { statusCode?: number }
    req.log.error({ err }, 'request failed')
    const code = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500
    return reply
      .code(code)
      .type('text/plain; charset=utf-8')
      .send(`${code >= 500 ? 'internal error' : 'bad request'}: ${err.message}\n`)
  })
  return app
}
