// The server under fastify: the Node HTTP or HTTPS server with the limits of HttpLimits, TLS client
// certificate checks, certificate rotation on reload, and a plugin that lets a shutdown finish promptly.
import http from 'node:http'
import https from 'node:https'
import type { TLSSocket } from 'node:tls'
import type { FastifyBaseLogger, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import type { TlsSettings } from '../config/webconfig.js'
import type { HttpLimits } from './limits.js'

/** client_auth_type, as Node's TLS server options; the checks Node has no option for are in create(). */
function applyClientAuth(server: https.Server, t: TlsSettings): void {
  // tls.Server reads these for every new connection
  const s = server as https.Server & { requestCert: boolean; rejectUnauthorized: boolean }
  s.requestCert = t.requestCert
  s.rejectUnauthorized = t.rejectUnauthorized
}

/** The server and the TLS settings in force; create() is fastify's serverFactory. */
export class Transport {
  /** set by create() */
  server: http.Server | https.Server | undefined
  connectionsDropped = 0

  constructor(
    readonly limits: HttpLimits,
    /** the TLS settings in force; undefined: plain HTTP */
    public tls: TlsSettings | undefined,
  ) {}

  create(log: FastifyBaseLogger, handler: http.RequestListener): http.Server | https.Server {
    const L = this.limits
    const common: http.ServerOptions = {
      maxHeaderSize: L.maxHeaderSize,
      headersTimeout: L.headersTimeoutMs,
      requestTimeout: L.requestTimeoutMs,
      keepAliveTimeout: L.keepAliveTimeoutMs,
      connectionsCheckingInterval: L.timeoutCheckIntervalMs,
    }
    const t = this.tls
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
        const auth = this.tls?.clientAuth
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
      this.connectionsDropped++
    })
    this.server = server
    return server
  }

  /**
   * Put new TLS settings in force for new connections (certificate rotation). Switching between TLS and
   * plain HTTP needs a restart: the transport stays as it is, and restartNeeded says so. Throws, changing
   * nothing, when the certificate files changed since they were validated.
   */
  reload(next: TlsSettings | undefined): { restartNeeded: string[] } {
    if ((this.tls === undefined) !== (next === undefined)) {
      return {
        restartNeeded: [
          next
            ? 'tls_server_config: switching from plain HTTP to TLS needs a restart; still serving plain HTTP'
            : 'tls_server_config: switching from TLS to plain HTTP needs a restart; still serving TLS with the previous certificate',
        ],
      }
    }
    const server = this.server
    if (next && server instanceof https.Server) {
      // validated at load; this throws only if the files changed in between
      server.setSecureContext(next.context)
      applyClientAuth(server, next)
    }
    this.tls = next
    return { restartNeeded: [] }
  }
}

interface ShutdownOptions {
  transport: Transport
}

/**
 * On close, fastify closes the idle keep-alive connections; one whose response is still being sent
 * becomes idle later and would hold the shutdown for keepAliveTimeout: close it once its answer is out.
 */
const shutdownPlugin: FastifyPluginAsync<ShutdownOptions> = async (app, { transport }) => {
  let closing = false
  app.addHook('preClose', async () => {
    closing = true
  })
  app.addHook('onResponse', async () => {
    if (closing) setImmediate(() => transport.server?.closeIdleConnections())
  })
}

export const shutdown = fp(shutdownPlugin, { name: 'tcptracer-shutdown', fastify: '5.x' })
