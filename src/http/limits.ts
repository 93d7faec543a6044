// What one client can hold: the limits of the server (transport.ts) and of the metrics route
// (max-requests.ts).

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
