// --web.max-requests: how many metrics requests may be served at once (beyond it 503 with Retry-After),
// and the deadline of each: a response not fully sent in time has its connection closed.
import type { FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { refuse, type Rejections } from './rejections.js'

/** The metrics requests in flight and their limits. */
export class RequestSlots {
  inFlight = 0
  constructor(
    /** concurrent requests; 0: no limit */
    readonly limit: number,
    /** a response not fully sent within this is cut off */
    readonly deadlineMs: number,
  ) {}
}

interface MaxRequestsOptions {
  slots: RequestSlots
  rejected: Rejections
  /** the route limited (the telemetry path) */
  path: string
}

const maxRequestsPlugin: FastifyPluginAsync<MaxRequestsOptions> = async (app, { slots, rejected, path }) => {
  // after the guards registered before it: a refused request never takes a slot
  app.addHook('onRequest', async (req, reply) => {
    if (req.routeOptions.url !== path) return
    const max = slots.limit
    if (max > 0 && slots.inFlight >= max) {
      rejected.max_requests++
      return refuse(
        reply.header('Retry-After', '1'),
        503,
        `too many concurrent scrapes: ${max} are in progress (the limit is --web.max-requests=${max}); try again later`,
      )
    }
    // in flight until the response is sent or the connection is gone, whichever comes first
    slots.inFlight++
    let done = false
    const deadline = setTimeout(() => {
      req.log.warn(
        { remote: req.ip, ms: slots.deadlineMs },
        'metrics response not sent in time (the scraper reads too slowly); closing its connection',
      )
      req.raw.socket?.destroy()
    }, slots.deadlineMs)
    deadline.unref()
    const release = (): void => {
      if (done) return
      done = true
      slots.inFlight--
      clearTimeout(deadline)
    }
    reply.raw.once('finish', release)
    reply.raw.once('close', release)
  })
}

export const maxRequests = fp(maxRequestsPlugin, { name: 'tcptracer-max-requests', fastify: '5.x' })
