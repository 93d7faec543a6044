// The HTTP side: /metrics, /healthz, /readyz and the landing page, with TLS, basic auth and the limits
// that keep many, slow or oversized requests from stalling the exporter. build() returns the app without
// listening, so tests drive it through inject().
import http from 'node:http'
import https from 'node:https'
import { Readable } from 'node:stream'
import { setImmediate as yieldToEventLoop } from 'node:timers/promises'
import type { TLSSocket } from 'node:tls'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply } from 'fastify'
import { collectDefaultMetrics, Registry, type RegistryContentType } from 'prom-client'
import {
  CONTENT_TYPES,
  negotiate,
  renderChunks,
  type Format,
  type MetricFamily,
} from '../metrics/exposition.js'
import { ReloadCounter } from '../metrics/self-metrics.js'
import type { CapabilityStatus } from '../host/capabilities.js'
import type { ProgramStatus } from '../kernel/binding.js'
import type { HookStatus } from '../kernel/tracer.js'
import { onExit, type KernelState } from '../kernel/pinned-state.js'
import { AuthBusyError, BasicAuth, PasswordChecker } from './webauth.js'
import { EMPTY_WEB_CONFIG, type TlsSettings, type WebConfig } from '../config/webconfig.js'

export interface MetricsSource {
  collect(): Promise<MetricFamily[]>
  /** undefined when ready */
  notReadyReason(): string | undefined
  readonly programs: readonly ProgramStatus[]
  /** where each part of the tracer is attached, and for accepts what else was tried */
  readonly hooks: readonly HookStatus[]
  /** the capabilities kept and dropped once started; undefined until then */
  readonly capabilities?: CapabilityStatus | undefined
  /** where the kernel state lives, and so what happens to the programs when the exporter exits */
  readonly kernelState?: KernelState | undefined
}

/**
 * Limits on what one client can hold. Only maxRequests is a flag (--web.max-requests); the rest are fixed
 * (README, "Securing the endpoint") and overridable here for tests.
 */
export interface HttpLimits {
  /** concurrent /metrics requests; beyond it 503 (0: no limit) */
  maxRequests: number
  /** the request line and headers must arrive within this (slowloris); 408 */
  headersTimeoutMs: number
  /** the whole request must arrive within this */
  requestTimeoutMs: number
  /** an idle keep-alive connection is closed after this */
  keepAliveTimeoutMs: number
  /** a connection with no traffic either way for this long is closed */
  socketTimeoutMs: number
  /** a /metrics response not fully sent within this is cut off (a scraper that reads too slowly) */
  responseDeadlineMs: number
  /** a TLS handshake must complete within this */
  handshakeTimeoutMs: number
  /** request line plus headers, in bytes; beyond it 431 */
  maxHeaderSize: number
  /** request body, in bytes; beyond it 413 (no route takes a body) */
  bodyLimit: number
  /** open connections; beyond it new ones are closed at once */
  maxConnections: number
  /** how often the server checks the header and request timeouts */
  timeoutCheckIntervalMs: number
}

export const DEFAULT_MAX_REQUESTS = 40

export const DEFAULT_LIMITS: Readonly<HttpLimits> = {
  maxRequests: DEFAULT_MAX_REQUESTS,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 65_000,
  socketTimeoutMs: 30_000,
  responseDeadlineMs: 60_000,
  handshakeTimeoutMs: 10_000,
  maxHeaderSize: 8192,
  bodyLimit: 1024,
  maxConnections: 1024,
  timeoutCheckIntervalMs: 1000,
}

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

const TEXT = 'text/plain; charset=utf-8'
const WWW_AUTHENTICATE = 'Basic realm="tcptracer-exporter", charset="UTF-8"'
const REJECT_REASONS = ['unauthorized', 'auth_overload', 'rate_limit', 'max_requests'] as const
type RejectReason = (typeof REJECT_REASONS)[number]

/**
 * What the HTTP side keeps across requests: the web config in force (swapped by reload()), the
 * password checker, the rate-limit bucket, the scrape being collected, and the counters behind the
 * tcptracer_http_* and tcptracer_web_config_* metrics.
 */
export class HttpState {
  web: WebConfig
  readonly limits: HttpLimits
  private checker: PasswordChecker | undefined
  private auth: BasicAuth | undefined
  private tokens = 0
  private tokensAt = 0
  private pending: Promise<Collection> | undefined
  /** set by build() once the server exists */
  server: http.Server | https.Server | undefined
  inFlight = 0
  readonly rejected: Record<RejectReason, number> = {
    unauthorized: 0,
    auth_overload: 0,
    rate_limit: 0,
    max_requests: 0,
  }
  readonly scrapes = { own: 0, shared: 0 }
  connectionsDropped = 0
  /** the web config's reloads: the daemon passes the Exporter's counter, the one it records in */
  readonly reloads: ReloadCounter

  constructor(
    web: WebConfig = EMPTY_WEB_CONFIG,
    limits: Partial<HttpLimits> = {},
    reloads: ReloadCounter = new ReloadCounter(),
  ) {
    this.reloads = reloads
    this.web = web
    this.limits = { ...DEFAULT_LIMITS, ...limits }
    this.applyUsers(web)
    this.resetBucket()
  }

  get tls(): TlsSettings | undefined {
    return this.web.tls
  }

  private applyUsers(web: WebConfig): void {
    if (web.users.size === 0) {
      this.auth = undefined
      return
    }
    // one bcrypt check at a time, as the toolkit does (its mutex): a flood of bad passwords takes one core
    this.checker ??= new PasswordChecker({ workers: 1, maxQueued: 32 })
    if (this.auth) this.auth.setUsers(web.users)
    else this.auth = new BasicAuth(this.checker, web.users)
  }

  private resetBucket(): void {
    this.tokens = this.web.rateLimit?.burst ?? 0
    this.tokensAt = Date.now()
  }

  /** Take a rate-limit token; false when the bucket is empty. */
  takeToken(): boolean {
    const rl = this.web.rateLimit
    if (!rl) return true
    const now = Date.now()
    this.tokens = Math.min(rl.burst, this.tokens + (now - this.tokensAt) / rl.intervalMs)
    this.tokensAt = now
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }

  get authEnabled(): boolean {
    return this.auth?.enabled ?? false
  }

  async authenticate(header: string | undefined): Promise<'ok' | 'missing' | 'invalid'> {
    return this.auth ? await this.auth.authenticate(header) : 'ok'
  }

  /**
   * Concurrent scrapes share one collection: a scrape that arrives before or while the kernel maps are
   * being read waits for that read instead of starting another, and shares its process metrics too.
   */
  async collect(source: MetricsSource): Promise<Collection> {
    if (this.pending) {
      this.scrapes.shared++
      return await this.pending
    }
    this.scrapes.own++
    // The read starts one turn of the event loop later, so the scrapes that arrived in the same burst
    // join it; every scrape still gets data read after it arrived. (The source's read itself is mostly
    // synchronous: without this turn no two scrapes would ever share one.)
    const p = yieldToEventLoop()
      .then(async () => await source.collect())
      .then((families) => new Collection(families))
      .finally(() => {
        if (this.pending === p) this.pending = undefined
      })
    this.pending = p
    return await p
  }

  /**
   * Put a new web config in force. TLS settings apply to new connections (certificate rotation), users,
   * headers and the rate limit at once. Switching between TLS and plain HTTP needs a restart: the returned
   * `restartNeeded` says so and the transport stays as it is.
   */
  reload(next: WebConfig): { restartNeeded: string[] } {
    const restartNeeded: string[] = []
    const server = this.server
    let effective = next
    if ((this.web.tls === undefined) !== (next.tls === undefined)) {
      restartNeeded.push(
        next.tls
          ? 'tls_server_config: switching from plain HTTP to TLS needs a restart; still serving plain HTTP'
          : 'tls_server_config: switching from TLS to plain HTTP needs a restart; still serving TLS with the previous certificate',
      )
      effective = { ...next, tls: this.web.tls }
    } else if (next.tls && server instanceof https.Server) {
      // validated at load; this throws only if the files changed in between
      server.setSecureContext(next.tls.context)
      applyClientAuth(server, next.tls)
    }
    const rateChanged = JSON.stringify(this.web.rateLimit) !== JSON.stringify(effective.rateLimit)
    this.web = effective
    this.applyUsers(effective)
    if (rateChanged) this.resetBucket()
    return { restartNeeded }
  }

  recordReload(ok: boolean): void {
    this.reloads.record(ok)
  }

  /** The HTTP side's self-metrics. */
  families(): MetricFamily[] {
    return [
      {
        name: 'tcptracer_http_requests_rejected_total',
        help: 'HTTP requests refused before reaching their handler, by reason: unauthorized (401), auth_overload (503: too many password checks pending), rate_limit (429), max_requests (503: --web.max-requests).',
        type: 'counter',
        samples: REJECT_REASONS.map((r) => ({ labels: [['reason', r]], value: this.rejected[r] })),
      },
      {
        name: 'tcptracer_http_connections_dropped_total',
        help: 'Connections closed on arrival because the connection limit was reached.',
        type: 'counter',
        samples: [{ labels: [], value: this.connectionsDropped }],
      },
      {
        name: 'tcptracer_scrapes_in_flight',
        help: 'Metrics requests being served now (limited by --web.max-requests).',
        type: 'gauge',
        samples: [{ labels: [], value: this.inFlight }],
      },
      {
        name: 'tcptracer_scrapes_total',
        help: 'Metrics requests served, by collection: own (read the kernel maps) or shared (joined a read already in progress).',
        type: 'counter',
        samples: [
          { labels: [['collection', 'own']], value: this.scrapes.own },
          { labels: [['collection', 'shared']], value: this.scrapes.shared },
        ],
      },
      {
        name: 'tcptracer_web_config_reloads_total',
        help: 'Web config reloads (SIGHUP), by result.',
        type: 'counter',
        samples: [
          { labels: [['result', 'success']], value: this.reloads.success },
          { labels: [['result', 'failure']], value: this.reloads.failure },
        ],
      },
      {
        name: 'tcptracer_web_config_last_reload_successful',
        help: 'Whether the last web config reload succeeded (1) or failed (0).',
        type: 'gauge',
        samples: [{ labels: [], value: this.reloads.lastSuccess ? 1 : 0 }],
      },
    ]
  }

  async close(): Promise<void> {
    await this.checker?.close()
    this.checker = undefined
    this.auth = undefined
  }
}

/** One read of the source, shared by the scrapes that asked for it at the same time. */
export class Collection {
  private readonly process: Partial<Record<Format, Promise<string>>> = {}
  private users = 0
  private released = false
  constructor(readonly families: MetricFamily[]) {}

  /** A response is about to send this collection. */
  retain(): void {
    if (this.released) throw new Error('a collection was retained after its release')
    this.users++
  }

  /**
   * A response that retained this collection is finished or its connection is gone: once every one is,
   * the families may reuse the memory of what was sent (SampleLines.release). Every scrape that shares a
   * collection retains it in the turn its read completes, before any of them can finish.
   */
  release(): void {
    if (this.users <= 0 || --this.users > 0) return
    this.released = true
    for (const f of this.families) f.lines?.release?.()
  }

  /** prom-client's process metrics, rendered once per collection and format. */
  async processText(format: Format, registry: Registry<RegistryContentType>): Promise<string> {
    this.process[format] ??= registry.metrics()
    return await this.process[format]
  }
}

/**
 * Samples (or histograms) per chunk of the exposition. Between chunks the event loop runs, and it runs
 * every concurrent scrape's next chunk in one turn, so a turn costs up to --web.max-requests chunks: small
 * chunks keep that short (100 histograms of 22 buckets are about 200 KB).
 */
const SAMPLES_PER_CHUNK = 100

/** client_auth_type, as Node's TLS server options; the checks Node has no option for are in onSecure. */
function applyClientAuth(server: https.Server, t: TlsSettings): void {
  // tls.Server reads these for every new connection
  const s = server as https.Server & { requestCert: boolean; rejectUnauthorized: boolean }
  s.requestCert = t.requestCert
  s.rejectUnauthorized = t.rejectUnauthorized
}

function createServer(
  state: HttpState,
  log: FastifyBaseLogger,
  handler: http.RequestListener,
): http.Server | https.Server {
  const L = state.limits
  const common: http.ServerOptions = {
    maxHeaderSize: L.maxHeaderSize,
    headersTimeout: L.headersTimeoutMs,
    requestTimeout: L.requestTimeoutMs,
    keepAliveTimeout: L.keepAliveTimeoutMs,
    connectionsCheckingInterval: L.timeoutCheckIntervalMs,
  }
  const t = state.tls
  let server: http.Server | https.Server
  if (t) {
    const s = https.createServer(
      {
        ...common,
        ...t.context,
        requestCert: t.requestCert,
        rejectUnauthorized: t.rejectUnauthorized,
        handshakeTimeout: L.handshakeTimeoutMs,
      },
      handler,
    )
    // RequireAnyClientCert and VerifyClientCertIfGiven have no Node option: checked once the handshake is done,
    // before any request is read. The current config decides (a reload may change it).
    s.prependListener('secureConnection', (sock: TLSSocket) => {
      const auth = state.tls?.clientAuth
      if (auth !== 'RequireAnyClientCert' && auth !== 'VerifyClientCertIfGiven') return
      const cert = sock.getPeerCertificate()
      const given = cert !== null && Object.keys(cert).length > 0
      if (auth === 'RequireAnyClientCert' && !given) {
        log.debug({ remote: sock.remoteAddress }, 'TLS client sent no certificate (RequireAnyClientCert)')
        sock.destroy()
      } else if (auth === 'VerifyClientCertIfGiven' && given && !sock.authorized) {
        log.debug(
          { remote: sock.remoteAddress, reason: String(sock.authorizationError) },
          'TLS client certificate not verified (VerifyClientCertIfGiven)',
        )
        sock.destroy()
      }
    })
    s.on('tlsClientError', (err: Error, sock: TLSSocket) => {
      log.debug({ remote: sock.remoteAddress, err: err.message }, 'TLS handshake failed')
    })
    server = s
  } else {
    server = http.createServer(common, handler)
  }
  // set on the object as well: older Nodes read some of these only from the properties
  server.keepAliveTimeout = L.keepAliveTimeoutMs
  server.headersTimeout = L.headersTimeoutMs
  server.requestTimeout = L.requestTimeoutMs
  server.maxConnections = L.maxConnections
  server.setTimeout(L.socketTimeoutMs)
  server.on('drop', () => {
    state.connectionsDropped++
  })
  state.server = server
  return server
}

function refuse(reply: FastifyReply, code: number, message: string): FastifyReply {
  return reply.code(code).type(TEXT).send(`${message}\n`)
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
  const state = opts.http ?? new HttpState(opts.web, opts.limits)
  const log = opts.logger
  const app = Fastify({
    loggerInstance: log,
    // nothing here takes a body; refuse anything big early (413)
    bodyLimit: state.limits.bodyLimit,
    return503OnClosing: true,
    // the server, with its timeouts and TLS, is made here
    serverFactory: (handler) => createServer(state, log, handler) as http.Server,
  })
  app.addHook('onClose', async () => await state.close())
  // On close, fastify closes the idle keep-alive connections; one whose response is still being sent
  // becomes idle later and would hold the shutdown for keepAliveTimeout: close it once its answer is out.
  let closing = false
  app.addHook('preClose', async () => {
    closing = true
  })
  app.addHook('onResponse', async () => {
    if (closing) setImmediate(() => state.server?.closeIdleConnections())
  })

  // Headers from the web config on every answer, then the rate limit and basic auth on every path but
  // /healthz: a liveness probe (the kubelet's) must not need credentials nor be starved by a flood.
  app.addHook('onRequest', async (req, reply) => {
    for (const [k, v] of Object.entries(state.web.headers)) reply.header(k, v)
    if (req.routeOptions.url === '/healthz') return
    if (!state.takeToken()) {
      state.rejected.rate_limit++
      return refuse(reply, 429, 'too many requests: over the rate_limit of the web config; try again later')
    }
    if (!state.authEnabled) return
    let result
    try {
      result = await state.authenticate(req.headers.authorization)
    } catch (err) {
      if (!(err instanceof AuthBusyError)) throw err
      state.rejected.auth_overload++
      return refuse(
        reply.header('Retry-After', '1'),
        503,
        `too many password checks in progress: ${err.message}; try again later`,
      )
    }
    if (result === 'ok') return
    state.rejected.unauthorized++
    req.log.debug({ remote: req.ip, result }, 'basic auth refused')
    return refuse(reply.header('WWW-Authenticate', WWW_AUTHENTICATE), 401, 'unauthorized')
  })

  app.get(telemetryPath, { logLevel: 'warn' }, async (req, reply) => {
    const max = state.limits.maxRequests
    if (max > 0 && state.inFlight >= max) {
      state.rejected.max_requests++
      return refuse(
        reply.header('Retry-After', '1'),
        503,
        `too many concurrent scrapes: ${max} are in progress (the limit is --web.max-requests=${max}); try again later`,
      )
    }
    // in flight until the response is sent or the connection is gone, whichever comes first
    state.inFlight++
    let done = false
    const deadline = setTimeout(() => {
      req.log.warn(
        { remote: req.ip, ms: state.limits.responseDeadlineMs },
        'metrics response not sent in time (the scraper reads too slowly); closing its connection',
      )
      req.raw.socket?.destroy()
    }, state.limits.responseDeadlineMs)
    deadline.unref()
    let collection: Collection | undefined
    const release = (): void => {
      if (done) return
      done = true
      state.inFlight--
      clearTimeout(deadline)
      // 'finish': every byte was handed to the kernel; 'close' without it: the rest was dropped
      collection?.release()
    }
    reply.raw.once('finish', release)
    reply.raw.once('close', release)

    const format = negotiate(req.headers.accept)
    const got = await state.collect(source)
    got.retain()
    // A client gone while the maps were read sends nothing: give its share back, but only after the
    // scrapes sharing the collection have retained it, in this same turn (Collection.release).
    if (done) setImmediate(() => got.release())
    else collection = got
    const own = state.families()
    // streamed in chunks: a large exposition is never one string in memory
    const registry = registries?.[format]
    async function* body(): AsyncGenerator<string | Buffer> {
      for (const chunk of renderChunks(got.families, format, SAMPLES_PER_CHUNK)) {
        yield chunk
        // let other requests and timers run between chunks: without this, a socket that takes every
        // write at once (loopback) gets the whole exposition rendered in one turn of the event loop,
        // and concurrent scrapes add up to one long stall
        await yieldToEventLoop()
      }
      yield* renderChunks(own, format)
      if (registry) yield await got.processText(format, registry)
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
