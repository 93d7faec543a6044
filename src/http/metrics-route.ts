// The telemetry path (/metrics): the exporter's families in the negotiated format, streamed in chunks,
// then the HTTP self-metrics and prom-client's process metrics.
import { Readable } from 'node:stream'
import { setImmediate as yieldToEventLoop } from 'node:timers/promises'
import type { FastifyPluginAsync } from 'fastify'
import { collectDefaultMetrics, Registry, type RegistryContentType } from 'prom-client'
import {
  CONTENT_TYPES,
  negotiate,
  renderChunks,
  type Format,
  type MetricFamily,
} from '../metrics/exposition.js'

/**
 * Samples (or histograms) per chunk of the exposition. Between chunks the event loop runs, and it runs
 * every concurrent scrape's next chunk in one turn, so a turn costs up to --web.max-requests chunks: small
 * chunks keep that short (100 histograms of 22 buckets are about 200 KB).
 */
const SAMPLES_PER_CHUNK = 100

const MISNAMED = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
]

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

interface MetricsRouteOptions {
  path: string
  /** the HTTP side's own families, read at each scrape */
  selfFamilies: () => MetricFamily[]
  /** prom-client's process and Node.js metrics */
  processMetrics: boolean
}

/** Needs the scrape-sharing plugin (app.scrape). */
export const metricsRoute: FastifyPluginAsync<MetricsRouteOptions> = async (app, opts) => {
  const registries = opts.processMetrics ? processRegistries() : undefined
  app.get(opts.path, { logLevel: 'warn' }, async (req, reply) => {
    const format = negotiate(req.headers.accept)
    const got = await app.scrape(reply)
    const own = opts.selfFamilies()
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
}
