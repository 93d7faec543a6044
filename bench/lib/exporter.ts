// Start the built exporter (dist/src/cli.js) as a child process on a free loopback port, with a config
// file of our own and its kernel state not pinned, and stop it again. The child is killed at exit at the
// latest.
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { stringify } from 'yaml'

import { packageRoot } from '../../src/kernel/paths.js'
import { onExit } from './common.js'

export const CLI = path.join(packageRoot, 'dist', 'src', 'cli.js')

export interface RunningExporter {
  pid: number
  url: string
  /** the exporter's JSON log lines so far (stderr) */
  logs: () => Array<Record<string, unknown>>
  /** SIGTERM, wait for the exit (SIGKILL after `graceMs`); resolves to the exit code or signal */
  stop: (graceMs?: number) => Promise<number | string>
}

export interface StartOptions {
  /** the config file's content, as an object (written as YAML) */
  config: Record<string, unknown>
  /** flags for node before the script, e.g. --import tsx */
  nodeArgs?: string[]
  /** extra environment variables */
  env?: Record<string, string>
  startTimeoutMs?: number
}

export async function startExporter(opts: StartOptions): Promise<RunningExporter> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: npm run build`)
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tcptracer-bench-'))
  const configFile = path.join(dir, 'config.yml')
  writeFileSync(configFile, stringify(opts.config))
  const child = spawn(
    process.execPath,
    [
      ...(opts.nodeArgs ?? []),
      CLI,
      'run',
      '--web.listen-address=127.0.0.1:0',
      `--config.file=${configFile}`,
      '--log.format=json',
      // not pinned: each run starts from empty kernel maps, and leaves nothing counting behind it
      // (pinned, the next exporter would take over this one's counters, and another worktree's)
      '--bpf.pin-path=',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], cwd: packageRoot, env: { ...process.env, ...opts.env } },
  )
  const pid = child.pid
  if (pid === undefined) throw new Error('could not start the exporter')
  const unregister = onExit(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  })
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown'))
  })
  let stderr = ''
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (d: string) => {
    stderr += d
  })
  const logs = (): Array<Record<string, unknown>> =>
    stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>]
        } catch {
          return []
        }
      })

  const stop = async (graceMs = 10_000): Promise<number | string> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
    const result = await exited
    clearTimeout(timer)
    unregister()
    return result
  }

  const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000)
  let done = false
  child.once('exit', () => {
    done = true
  })
  for (;;) {
    const serving = logs().find((l) => l['msg'] === 'serving metrics')
    if (serving) {
      const url = `http://127.0.0.1:${String(serving['port'])}`
      // serving means attached and listening; /readyz says the aggregates are readable too
      const ready = await fetch(`${url}/readyz`)
      await ready.arrayBuffer()
      if (ready.status !== 200) {
        await stop()
        throw new Error(`the exporter serves but is not ready (${ready.status})`)
      }
      return { pid, url, logs, stop }
    }
    if (done) {
      unregister()
      throw new Error(`the exporter exited before serving:\n${stderr}`)
    }
    if (Date.now() > deadline) {
      await stop()
      throw new Error(`the exporter did not serve within ${opts.startTimeoutMs ?? 30_000} ms:\n${stderr}`)
    }
    await sleep(50)
  }
}
