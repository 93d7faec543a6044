// /healthz (liveness), /readyz (readiness, with the attach status of every program) and the landing page.
import type { FastifyPluginAsync } from 'fastify'
import { onExit } from '../kernel/pinned-state.js'
import type { MetricsSource } from './source.js'
import { TEXT } from './rejections.js'

interface StatusRoutesOptions {
  source: MetricsSource
  telemetryPath: string
  version: string
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

export const statusRoutes: FastifyPluginAsync<StatusRoutesOptions> = async (app, opts) => {
  const { source, telemetryPath, version } = opts

  app.get('/healthz', { logLevel: 'warn' }, async (_req, reply) => reply.type(TEXT).send('ok\n'))

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
    const state = source.kernelState
    const kernelState = state ? { ...state, onExit: onExit(state) } : undefined
    const details = {
      hooks,
      programs,
      ...(capabilities ? { capabilities } : {}),
      ...(kernelState ? { kernelState } : {}),
    }
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
${capsLine}${source.kernelState ? `<p>Kernel state: ${escapeHtml(source.kernelState.origin)}${source.kernelState.path ? ` in ${escapeHtml(source.kernelState.path)}` : ''}; on exit, ${escapeHtml(onExit(source.kernelState))}.</p>\n` : ''}<ul>
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
}
