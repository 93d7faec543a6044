// A real Prometheus (the Debian package) for the integration tests: scraping a
// daemon as job "tcptracer" every second, with optional rule files.
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

/** A real Prometheus on a free loopback port, scraping the daemon every second as job "tcptracer". */
export class Prometheus {
  private constructor(
    readonly proc: JsonProcess,
    readonly url: string,
    private readonly dir: string,
  ) {}

  static async start(d: Daemon, ruleFiles: string[], scrape: ScrapeSecurity = {}): Promise<Prometheus> {
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
        '  scrape_interval: 1s',
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
    return new Prometheus(proc, `http://127.0.0.1:${listening.exec(proc.stderr)![1]}`, dir)
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
