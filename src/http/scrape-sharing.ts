// Scrapes that arrive together share one collection: one read of the kernel maps and one rendering of
// the process metrics. The plugin decorates the app with scrape(reply), which the metrics route calls.
import { setImmediate as yieldToEventLoop } from 'node:timers/promises'
import type { FastifyPluginAsync, FastifyReply } from 'fastify'
import fp from 'fastify-plugin'
import type { Registry, RegistryContentType } from 'prom-client'
import type { Format, MetricFamily } from '../metrics/exposition.js'
import type { MetricsSource } from './source.js'

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * The collection this response sends, read for it or shared with the scrapes it arrived with. It is
     * held until the response is sent or its connection is gone.
     */
    scrape(reply: FastifyReply): Promise<Collection>
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

/** The collection being read, and the counts behind tcptracer_scrapes_total. */
export class ScrapeSharing {
  own = 0
  shared = 0
  private pending: Promise<Collection> | undefined

  /**
   * Concurrent scrapes share one collection: a scrape that arrives before or while the kernel maps are
   * being read waits for that read instead of starting another, and shares its process metrics too.
   */
  async collect(source: MetricsSource): Promise<Collection> {
    if (this.pending) {
      this.shared++
      return await this.pending
    }
    this.own++
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
}

interface ScrapeSharingOptions {
  sharing: ScrapeSharing
  source: MetricsSource
}

const scrapeSharingPlugin: FastifyPluginAsync<ScrapeSharingOptions> = async (app, { sharing, source }) => {
  app.decorate('scrape', async (reply: FastifyReply): Promise<Collection> => {
    let done = false
    let collection: Collection | undefined
    const release = (): void => {
      if (done) return
      done = true
      // 'finish': every byte was handed to the kernel; 'close' without it: the rest was dropped
      collection?.release()
    }
    reply.raw.once('finish', release)
    reply.raw.once('close', release)
    const got = await sharing.collect(source)
    got.retain()
    // A client gone while the maps were read sends nothing: give its share back, but only after the
    // scrapes sharing the collection have retained it, in this same turn (Collection.release).
    if (done) setImmediate(() => got.release())
    else collection = got
    return got
  })
}

export const scrapeSharing = fp(scrapeSharingPlugin, { name: 'tcptracer-scrape-sharing', fastify: '5.x' })
