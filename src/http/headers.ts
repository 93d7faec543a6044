// The headers of the web config (http_server_config.headers), on every answer: errors, refusals and
// /healthz included.
import type { FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'

interface HeadersOptions {
  /** the headers in force; read at each request, since a reload may change them */
  headers: () => Readonly<Record<string, string>>
}

const headersPlugin: FastifyPluginAsync<HeadersOptions> = async (app, { headers }) => {
  app.addHook('onRequest', async (_req, reply) => {
    for (const [k, v] of Object.entries(headers())) reply.header(k, v)
  })
}

export const webHeaders = fp(headersPlugin, { name: 'tcptracer-headers', fastify: '5.x' })
