// Shared by the HTTP plugin tests (test/unit/http-*.test.ts): stand-in sources, the whole app with a given
// HttpState, and a bare fastify app that carries one plugin at a time.
import bcrypt from 'bcryptjs'
import Fastify, { type FastifyInstance } from 'fastify'
import pino from 'pino'

import type { MetricFamily } from '../../src/metrics/exposition.js'
import { build, type HttpState, type MetricsSource } from '../../src/http/app.js'
import { EMPTY_WEB_CONFIG, type WebConfig } from '../../src/config/webconfig.js'

export const basic = (user: string, password: string): string =>
  `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`

export const HASH = bcrypt.hashSync('pw', 4)

/** A source whose collect() takes `delayMs` and returns a family with a counter of collections. */
export class SlowSource implements MetricsSource {
  collects = 0
  constructor(public delayMs = 0) {}
  readonly programs = []
  readonly hooks = []
  notReadyReason(): string | undefined {
    return undefined
  }

  async collect(): Promise<MetricFamily[]> {
    const n = ++this.collects
    if (this.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.delayMs))
    return [
      {
        name: 'test_collection',
        help: 'Which collection this is.',
        type: 'gauge',
        samples: [{ labels: [], value: n }],
      },
    ]
  }
}

export function web(over: Partial<WebConfig>): WebConfig {
  return { ...EMPTY_WEB_CONFIG, ...over }
}

/** The whole app, on `state`. */
export function appWith(source: MetricsSource, state: HttpState): FastifyInstance {
  return build({
    source,
    telemetryPath: '/metrics',
    version: 't',
    logger: pino({ level: 'silent' }),
    processMetrics: false,
    http: state,
  })
}

/**
 * A bare app for one plugin: `register` adds it, then /healthz and /x answer "ok" (the plugin's hooks are
 * in place before the routes, as in build()).
 */
export function bare(register: (app: FastifyInstance) => void): FastifyInstance {
  const app = Fastify({ logger: false })
  register(app)
  app.register(async (routes) => {
    routes.get('/healthz', async () => 'ok\n')
    routes.get('/x', async () => 'ok\n')
  })
  return app
}

/** The value of an unlabelled or labelled sample in a text exposition. */
export function sample(body: string, series: string): number | undefined {
  const line = body.split('\n').find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}
