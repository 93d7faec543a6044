// Start the built exporter (dist/src/cli.js) as a child process, its kernel state not pinned, and stop
// it again: on a free loopback port or a given one, with a config file of our own or none. The child is
// killed at exit at the latest.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

import { stringify } from 'yaml'

import { packageRoot } from '../../src/kernel/paths.js'
import { onExit } from './common.js'
import { fmtExit, Proc } from './proc.js'

export const CLI = path.join(packageRoot, 'dist', 'src', 'cli.js')

/** /readyz is polled this often until it answers 200. */
const READY_POLL_MS = 10

export interface RunningExporter {
  proc: Proc
  pid: number
  port: number
  url: string
  /** from launch to the first 200 from /readyz, ms */
  readyMs: number
  /** the daemon's own "tracer ready" figure: load and attach, ms */
  attachMs: number | undefined
  /** the exporter's JSON log lines so far (stderr) */
  logs: () => Array<Record<string, unknown>>
  /** SIGTERM, wait for the exit (SIGKILL after `graceMs`); resolves to the exit code or signal */
  stop: (graceMs?: number) => Promise<number | string>
}

export interface StartOptions {
  /** the config file's content, as an object (written as YAML); none: no --config.file */
  config?: Record<string, unknown>
  /** more flags of `run` */
  args?: readonly string[]
  /** --web.listen-address (default 127.0.0.1:0); a fixed port is polled from launch on */
  listen?: string
  /** flags for node before the script, e.g. --import tsx */
  nodeArgs?: string[]
  /** extra environment variables */
  env?: Record<string, string>
  startTimeoutMs?: number
}

/** GET a path of the exporter with node:http, without keep-alive. */
export function httpGet(
  port: number,
  urlPath: string,
  timeoutMs = 5000,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      { host: '127.0.0.1', port, path: urlPath, agent: false, timeout: timeoutMs },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
        )
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error(`GET ${urlPath}: no answer in ${timeoutMs} ms`)))
    req.on('error', reject)
  })
}

/** Poll /readyz every READY_POLL_MS until it answers 200; throws when `p` exits or at `deadline`. */
async function pollReady(p: Proc, port: number, deadline: number): Promise<void> {
  for (;;) {
    if (p.exit) throw new Error(`${p.name} exited (${fmtExit(p.exit)}) before it was ready:\n${p.tail()}`)
    try {
      if ((await httpGet(port, '/readyz', 1000)).status === 200) return
    } catch {}
    if (performance.now() > deadline) throw new Error(`${p.name}: /readyz not 200 in time:\n${p.tail()}`)
    await sleep(READY_POLL_MS)
  }
}

/** Start the exporter and wait until /readyz says the aggregates are readable. */
export async function startExporter(opts: StartOptions = {}): Promise<RunningExporter> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: npm run build`)
  const listen = opts.listen ?? '127.0.0.1:0'
  const timeoutMs = opts.startTimeoutMs ?? 30_000
  const config: string[] = []
  let removeDir = (): void => {}
  if (opts.config !== undefined) {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'tcptracer-bench-'))
    removeDir = onExit(() => rmSync(dir, { recursive: true, force: true }))
    const configFile = path.join(dir, 'config.yml')
    writeFileSync(configFile, stringify(opts.config))
    config.push(`--config.file=${configFile}`)
  }
  const t0 = performance.now()
  const proc = new Proc(
    'exporter',
    process.execPath,
    [
      ...(opts.nodeArgs ?? []),
      CLI,
      'run',
      `--web.listen-address=${listen}`,
      ...config,
      '--log.format=json',
      // unpinned: each run starts from empty kernel maps and leaves nothing counting behind it (pinned,
      // its programs would keep counting, and be taken for a foreign tracer, after it is stopped, and the
      // next exporter would take over this one's counters, and another worktree's)
      '--bpf.pin-path=',
      ...(opts.args ?? []),
    ],
    'ignore',
    { cwd: packageRoot, env: { ...process.env, ...opts.env } },
  )
  const logs = (): Array<Record<string, unknown>> =>
    proc.err
      .filter((l) => l.startsWith('{'))
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>]
        } catch {
          return []
        }
      })
  const stop = async (graceMs = 10_000): Promise<number | string> => {
    const e = await proc.stop('SIGTERM', graceMs)
    removeDir()
    return e.code ?? e.signal ?? 'unknown'
  }
  try {
    // a fixed port is polled from launch on; an ephemeral one is learnt from the log first
    let port = Number(listen.slice(listen.lastIndexOf(':') + 1))
    if (port === 0) {
      const line = await proc.waitFor((l) => l.includes('"msg":"serving metrics"'), timeoutMs)
      const logged = (JSON.parse(line) as { port?: unknown }).port
      if (typeof logged !== 'number') throw new Error(`no port in the exporter's log line: ${line}`)
      port = logged
    }
    await pollReady(proc, port, t0 + timeoutMs)
    const readyMs = performance.now() - t0
    const ready = proc.err.find((l) => l.includes('"msg":"tracer ready"'))
    const attachMs = ready ? (JSON.parse(ready) as { ms?: number }).ms : undefined
    return { proc, pid: proc.pid, port, url: `http://127.0.0.1:${port}`, readyMs, attachMs, logs, stop }
  } catch (err) {
    await stop()
    throw err
  }
}
