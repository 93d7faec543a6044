// What the HTTP side keeps across requests, one part per plugin, and what the daemon does with it: put a
// reloaded web config in force, count reloads, and read the tcptracer_http_* and tcptracer_web_config_*
// metrics.
import { EMPTY_WEB_CONFIG, type TlsSettings, type WebConfig } from '../config/webconfig.js'
import type { MetricFamily } from '../metrics/exposition.js'
import { ReloadCounter, reloadFamilies } from '../metrics/self-metrics.js'
import { AuthGuard } from './auth.js'
import { DEFAULT_LIMITS, type HttpLimits } from './limits.js'
import { RequestSlots } from './max-requests.js'
import { TokenBucket } from './rate-limit.js'
import { newRejections, REJECT_REASONS, type Rejections } from './rejections.js'
import { ScrapeSharing } from './scrape-sharing.js'
import { Transport } from './transport.js'

/**
 * The state of each plugin: the users (auth.ts), the rate-limit bucket (rate-limit.ts), the metrics
 * requests in flight (max-requests.ts), the collection being read (scrape-sharing.ts), the server and its
 * TLS settings (transport.ts); and the web config in force and its reload counts.
 */
export class HttpState {
  web: WebConfig
  readonly limits: HttpLimits
  readonly rejected: Rejections = newRejections()
  readonly auth: AuthGuard
  readonly bucket: TokenBucket
  readonly slots: RequestSlots
  readonly scrapes = new ScrapeSharing()
  readonly transport: Transport
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
    this.auth = new AuthGuard(web.users)
    this.bucket = new TokenBucket(web.rateLimit)
    this.slots = new RequestSlots(this.limits.maxRequests, this.limits.responseDeadlineMs)
    this.transport = new Transport(this.limits, web.tls)
  }

  get tls(): TlsSettings | undefined {
    return this.web.tls
  }

  get authEnabled(): boolean {
    return this.auth.enabled
  }

  /** metrics requests being served now */
  get inFlight(): number {
    return this.slots.inFlight
  }

  /**
   * Put a new web config in force. TLS settings apply to new connections (certificate rotation), users,
   * headers and the rate limit at once. Switching between TLS and plain HTTP needs a restart: the returned
   * `restartNeeded` says so and the transport stays as it is.
   */
  reload(next: WebConfig): { restartNeeded: string[] } {
    const { restartNeeded } = this.transport.reload(next.tls)
    const effective = restartNeeded.length ? { ...next, tls: this.web.tls } : next
    this.web = effective
    this.auth.setUsers(effective.users)
    this.bucket.configure(effective.rateLimit)
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
        samples: [{ labels: [], value: this.transport.connectionsDropped }],
      },
      {
        name: 'tcptracer_scrapes_in_flight',
        help: 'Metrics requests being served now (limited by --web.max-requests).',
        type: 'gauge',
        samples: [{ labels: [], value: this.slots.inFlight }],
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
      ...reloadFamilies('tcptracer_web_config', 'Web config', this.reloads),
    ]
  }
}
