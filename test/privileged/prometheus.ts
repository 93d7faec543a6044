// A real Prometheus (the Debian package) for the integration tests: scraping a
// daemon as job "tcptracer" (every second unless a slower scrape asks for more), with optional rule files.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { JsonProcess, TIME_SCALE, type Daemon } from './harness.js'

export interface Series {
  metric: Record<string, string>
  value?: [number, string]
  values?: Array<[number, string]>
}

interface PromResponse<T> {
  status: 'success' | 'error'
  data: T
  error?: string
}

export const sleep = async (ms: number): Promise<void> =>
  await new Promise((resolve) => setTimeout(resolve, ms))

/** Poll fn until it returns something other than undefined; fail after timeoutMs with what was last seen. */
export async function until<T>(
  what: string,
  timeoutMs: number,
  fn: () => Promise<T | undefined>,
): Promise<T> {
  timeoutMs *= TIME_SCALE
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await fn()
      if (v !== undefined) return v
    } catch (err) {
      last = err
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`)
    }
    await sleep(250)
  }
}

/** How Prometheus scrapes the daemon when it serves TLS or wants basic auth (--web.config.file). */
export interface ScrapeSecurity {
  /** Prometheus's tls_config: ca_file, cert_file, key_file, server_name ... */
  tls?: Record<string, string>
  basicAuth?: { username: string; password: string }
}

/** One scrape target as Prometheus reports it (GET /api/v1/targets). */
export interface Target {
  health: 'up' | 'down' | 'unknown'
  lastError: string
  /** When the last scrape started, RFC 3339. */
  lastScrape: string
  /** How long it took, in seconds. */
  lastScrapeDuration: number
  scrapeUrl: string
}

/**
 * The slowest of `n` scrapes of the daemon's /metrics, in seconds: what this machine (or an emulated
 * guest, where one takes seconds) needs, measured rather than assumed.
 */
export async function slowestScrape(d: Daemon, n = 3): Promise<number> {
  let slowest = 0
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    const res = await fetch(`${d.url}/metrics`)
    await res.text()
    slowest = Math.max(slowest, (performance.now() - t0) / 1000)
  }
  return slowest
}

/**
 * The scrape interval (and timeout, equal to it) for a scrape measured at `slowest` seconds: 1 s, or
 * four times the slowest scrape where that is more, in whole seconds. Prometheus drops a scrape that
 * outlasts its timeout, and the timeout may not exceed the interval.
 */
export function scrapeIntervalFor(slowest: number): number {
  return Math.max(1, Math.ceil(4 * slowest))
}

/** Prometheus could not scrape the target: `target` is its last report, `view` all it showed. */
export class ScrapeFailed extends Error {
  constructor(
    message: string,
    readonly target: Target | undefined,
  ) {
    super(message)
  }

  /** Whether the scrapes failed by outlasting the scrape timeout (Prometheus: "context deadline exceeded"). */
  get timedOut(): boolean {
    return /deadline exceeded|timeout/i.test(this.target?.lastError ?? '')
  }
}

/** A real Prometheus on a free loopback port, scraping the daemon as job "tcptracer". */
export class Prometheus {
  private constructor(
    readonly proc: JsonProcess,
    readonly url: string,
    private readonly dir: string,
    /** Seconds between scrapes, and each scrape's timeout. */
    readonly interval: number,
  ) {}

  /** `interval`: seconds between scrapes and each scrape's timeout (default 1; see scrapeIntervalFor). */
  static async start(
    d: Daemon,
    ruleFiles: string[],
    scrape: ScrapeSecurity = {},
    interval = 1,
  ): Promise<Prometheus> {
    const dir = mkdtempSync(path.join(tmpdir(), 'tt-prom-'))
    const security: string[] = []
    if (scrape.tls) {
      security.push('    scheme: https', '    tls_config:')
      for (const [k, v] of Object.entries(scrape.tls)) security.push(`      ${k}: ${JSON.stringify(v)}`)
    }
    if (scrape.basicAuth) {
      security.push(
        '    basic_auth:',
        `      username: ${JSON.stringify(scrape.basicAuth.username)}`,
        `      password: ${JSON.stringify(scrape.basicAuth.password)}`,
      )
    }
    const cfg = path.join(dir, 'prometheus.yml')
    writeFileSync(
      cfg,
      [
        'global:',
        `  scrape_interval: ${interval}s`,
        `  scrape_timeout: ${interval}s`,
        '  evaluation_interval: 1s',
        'rule_files:',
        ...ruleFiles.map((f) => `  - ${JSON.stringify(f)}`),
        'scrape_configs:',
        '  - job_name: tcptracer',
        ...security,
        '    static_configs:',
        `      - targets: ['127.0.0.1:${d.port}']`,
        '',
      ].join('\n'),
    )
    const proc = new JsonProcess(
      spawn(
        'prometheus',
        [
          `--config.file=${cfg}`,
          `--storage.tsdb.path=${path.join(dir, 'data')}`,
          '--web.listen-address=127.0.0.1:0',
        ],
        { stdio: 'pipe' },
      ),
    )
    let exited = false
    proc.exited.then(
      () => {
        exited = true
      },
      () => {},
    )
    const listening = /Listening on.*address=127\.0\.0\.1:(\d+)/
    try {
      await proc.until(
        () => exited || (listening.test(proc.stderr) && /Server is ready/.test(proc.stderr)),
        30000,
        'prometheus to be ready',
      )
      if (exited) throw new Error(`prometheus exited: ${proc.stderr.slice(-2000)}`)
    } catch (err) {
      proc.child.kill('SIGKILL')
      rmSync(dir, { recursive: true, force: true })
      throw err
    }
    return new Prometheus(proc, `http://127.0.0.1:${listening.exec(proc.stderr)![1]}`, dir, interval)
  }

  /** The job's one scrape target, as Prometheus sees it now (undefined before discovery). */
  async target(): Promise<Target | undefined> {
    const data = await this.api<{ activeTargets: Target[] }>('/api/v1/targets', { state: 'active' })
    return data.activeTargets[0]
  }

  /**
   * Wait for a successful scrape that started at or after `since` (ms since the epoch), so that what
   * Prometheus holds is the daemon's state from then on. The wait is counted in Prometheus's own scrape
   * attempts, not in a fixed time: it fails once `attempts` scrapes after `since` have all failed, or
   * when no new attempt shows up within eight intervals (Prometheus stalled). The error, a ScrapeFailed,
   * carries Prometheus's view of the target.
   */
  async scrapedSince(since: number, attempts = 5): Promise<Target> {
    const failed = new Set<string>()
    let last: Target | undefined
    let progress = Date.now()
    for (;;) {
      const t = await this.target()
      if (t !== undefined && t.lastScrape !== last?.lastScrape) progress = Date.now()
      last = t
      if (t !== undefined && Date.parse(t.lastScrape) >= since) {
        if (t.health === 'up') return t
        failed.add(t.lastScrape)
        if (failed.size >= attempts) {
          throw new ScrapeFailed(`${attempts} scrapes failed in a row\n${await this.view()}`, t)
        }
      }
      if (Date.now() - progress > 8 * this.interval * 1000) {
        throw new ScrapeFailed(
          `Prometheus made no scrape attempt in ${8 * this.interval} s\n${await this.view()}`,
          last,
        )
      }
      await sleep(Math.min(250, (this.interval * 1000) / 4))
    }
  }

  /**
   * Prometheus's view, for a failed check: the target (health, last error, last scrape and its
   * duration), its recent `up` and `scrape_duration_seconds`, and the raw samples it holds for each
   * series selector in `queries`.
   */
  async view(...queries: string[]): Promise<string> {
    const out: string[] = []
    const tryJson = async (what: string, f: () => Promise<unknown>): Promise<void> => {
      try {
        out.push(`${what}: ${JSON.stringify(await f())}`)
      } catch (err) {
        out.push(`${what}: (${String(err)})`)
      }
    }
    await tryJson('target', async () => await this.target())
    await tryJson('up[2m]', async () => await this.query('up{job="tcptracer"}[2m]'))
    await tryJson(
      'scrape_duration_seconds[2m]',
      async () => await this.query('scrape_duration_seconds{job="tcptracer"}[2m]'),
    )
    for (const q of queries) {
      for (const sel of q.match(/[a-zA-Z_:][a-zA-Z0-9_:]*\{[^}]*\}/g) ?? []) {
        await tryJson(`${sel}[2m]`, async () => await this.query(`${sel}[2m]`))
      }
    }
    return out.join('\n')
  }

  /** GET an API path; a PromQL error is thrown with Prometheus's message. */
  async api<T>(apiPath: string, params: Record<string, string>): Promise<T> {
    const res = await fetch(`${this.url}${apiPath}?${new URLSearchParams(params).toString()}`)
    const body = (await res.json()) as PromResponse<T>
    if (body.status !== 'success') {
      throw new Error(`${apiPath} ${JSON.stringify(params)}: ${res.status} ${body.error ?? ''}`)
    }
    return body.data
  }

  async query(q: string): Promise<Series[]> {
    const data = await this.api<{ resultType: string; result: Series[] | [number, string] }>(
      '/api/v1/query',
      {
        query: q,
      },
    )
    if (data.resultType === 'scalar') return [{ metric: {}, value: data.result as [number, string] }]
    return data.result as Series[]
  }

  async queryRange(q: string, seconds: number, step: number): Promise<Series[]> {
    const end = Date.now() / 1000
    const data = await this.api<{ result: Series[] }>('/api/v1/query_range', {
      query: q,
      start: String(end - seconds),
      end: String(end),
      step: String(step),
    })
    return data.result
  }

  /** The value of a query returning one series, or undefined. */
  async value(q: string): Promise<number | undefined> {
    const r = await this.query(q)
    return r.length === 1 && r[0]?.value ? Number(r[0].value[1]) : undefined
  }

  async stop(): Promise<void> {
    this.proc.child.kill('SIGTERM')
    const killer = setTimeout(() => this.proc.child.kill('SIGKILL'), 10000)
    await this.proc.exited
    clearTimeout(killer)
    rmSync(this.dir, { recursive: true, force: true })
  }
}
