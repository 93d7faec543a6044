// The app factory: build() returns the fastify app, with one plugin per concern, without listening, so
// tests drive it through inject(). The daemon (cli/run.ts) calls listen.
//
// Every request passes, in order: the web config's headers, the rate limit, basic auth (both but on
// /healthz), then on the telemetry path --web.max-requests; the metrics route shares collections
// between the scrapes that arrive together.
import type http from 'node:http'
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { WebConfig } from '../config/webconfig.js'
import { basicAuth } from './auth.js'
import { webHeaders } from './headers.js'
import type { HttpLimits } from './limits.js'
import { maxRequests } from './max-requests.js'
import { metricsRoute } from './metrics-route.js'
import { rateLimit } from './rate-limit.js'
import { TEXT } from './rejections.js'
import { scrapeSharing } from './scrape-sharing.js'
import type { MetricsSource } from './source.js'
import { HttpState } from './state.js'
import { statusRoutes } from './status-routes.js'
import { shutdown } from './transport.js'

// what the daemon and the tests use besides build()
export { DEFAULT_LIMITS, DEFAULT_MAX_REQUESTS, type HttpLimits } from './limits.js'
export type { MetricsSource } from './source.js'
export { HttpState } from './state.js'

export interface ServerOptions {
  source: MetricsSource
  telemetryPath: string
  version: string
  logger: FastifyBaseLogger
  /** prom-client's process and Node.js metrics (default: on) */
  processMetrics?: boolean
  /** TLS, basic auth, headers, rate limit (default: none of them) */
  web?: WebConfig
  limits?: Partial<HttpLimits>
  /** the state shared with the daemon (reloads, metrics); build() makes one when not given */
  http?: HttpState
}

export function build(opts: ServerOptions): FastifyInstance {
  const { source, telemetryPath, version } = opts
  const state = opts.http ?? new HttpState(opts.web, opts.limits)
  const log = opts.logger
  const app = Fastify({
    loggerInstance: log,
    // nothing here takes a body; refuse anything big early (413)
    bodyLimit: state.limits.bodyLimit,
    return503OnClosing: true,
    // the server, with its timeouts and TLS, is made here
    serverFactory: (handler) => state.transport.create(log, handler) as http.Server,
  })
  app.setErrorHandler((e, req, reply) => {
    const err = e as Error & { statusCode?: number }
    req.log.error({ err }, 'request failed')
    const code = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500
    return reply
      .code(code)
      .type(TEXT)
      .send(`${code >= 500 ? 'internal error' : 'bad request'}: ${err.message}\n`)
  })

  const { rejected } = state
  app.register(shutdown, { transport: state.transport })
  // the hooks run in the order they are registered
  app.register(webHeaders, { headers: () => state.web.headers })
  app.register(rateLimit, { bucket: state.bucket, rejected })
  app.register(basicAuth, { guard: state.auth, rejected })
  app.register(maxRequests, { slots: state.slots, rejected, path: telemetryPath })
  app.register(scrapeSharing, { sharing: state.scrapes, source })

  app.register(metricsRoute, {
    path: telemetryPath,
    selfFamilies: () => state.families(),
    processMetrics: opts.processMetrics ?? true,
  })
  app.register(statusRoutes, { source, telemetryPath, version })
  return app
}
