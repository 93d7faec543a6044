// Child processes of a benchmark: their output kept as lines, a wait for a line, a bounded stop, and
// a run to the end with a deadline. Every child is killed at exit at the latest (onExit).
import { type ChildProcess, spawn, type SpawnOptions } from 'node:child_process'
import type { Readable } from 'node:stream'

import { onExit } from './common.js'

/** What a child's stdout becomes: dropped, kept as lines, written to a file descriptor, or handed over. */
export type StdoutMode = 'ignore' | 'lines' | number | ((chunk: Buffer) => void)

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

/** Lines kept per stream: the last ones, for error messages. */
const MAX_LINES = 5000
const STOP_TIMEOUT_MS = 10_000

/** A child process we started: its output lines, a way to wait for one, and a bounded stop. */
export class Proc {
  readonly child: ChildProcess
  readonly out: string[] = []
  readonly err: string[] = []
  readonly closed: Promise<Exit>
  exit: Exit | undefined
  private readonly notify = new Set<() => void>()

  constructor(
    readonly name: string,
    file: string,
    args: readonly string[],
    stdout: StdoutMode = 'ignore',
    options: Pick<SpawnOptions, 'cwd' | 'env'> = {},
  ) {
    const mode = typeof stdout === 'number' ? stdout : stdout === 'ignore' ? 'ignore' : 'pipe'
    this.child = spawn(file, args, { ...options, stdio: ['ignore', mode, 'pipe'] })
    const unregister = onExit(() => {
      if (this.exit === undefined) this.child.kill('SIGKILL')
    })
    this.closed = new Promise<Exit>((resolve) => {
      this.child.once('error', (e) => {
        this.err.push(`spawn failed: ${e.message}`)
        this.exit ??= { code: null, signal: null }
        resolve(this.exit)
      })
      this.child.once('close', (code, signal) => {
        this.exit ??= { code, signal }
        resolve(this.exit)
      })
    }).finally(() => {
      unregister()
      this.wake()
    })
    if (this.child.stderr) this.split(this.child.stderr, this.err)
    if (this.child.stdout) {
      if (typeof stdout === 'function') this.child.stdout.on('data', stdout)
      else this.split(this.child.stdout, this.out)
    }
  }

  get pid(): number {
    return this.child.pid ?? -1
  }

  private split(stream: Readable, into: string[]): void {
    let buf = ''
    stream.setEncoding('utf8')
    stream.on('data', (s: string) => {
      buf += s
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        into.push(buf.slice(0, i))
        buf = buf.slice(i + 1)
      }
      if (into.length > MAX_LINES) into.splice(0, into.length - MAX_LINES)
      this.wake()
    })
    stream.on('end', () => {
      if (buf) into.push(buf)
      this.wake()
    })
  }

  private wake(): void {
    for (const f of this.notify) f()
  }

  tail(n = 20): string {
    return [...this.err, ...this.out].slice(-n).join('\n')
  }

  /** The first stdout or stderr line matching `pred`; rejects when the process ends or time runs out. */
  waitFor(pred: (line: string) => boolean, timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = this.out.find(pred) ?? this.err.find(pred)
        if (hit !== undefined) done(() => resolve(hit))
        else if (this.exit) {
          done(() => reject(new Error(`${this.name} exited (${fmtExit(this.exit)}):\n${this.tail()}`)))
        }
      }
      const timer = setTimeout(
        () => done(() => reject(new Error(`${this.name}: not ready after ${timeoutMs} ms:\n${this.tail()}`))),
        timeoutMs,
      )
      const done = (f: () => void): void => {
        clearTimeout(timer)
        this.notify.delete(check)
        f()
      }
      this.notify.add(check)
      check()
    })
  }

  /** Send `signal`, wait up to `timeoutMs`, then SIGKILL. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = STOP_TIMEOUT_MS): Promise<Exit> {
    if (this.exit) return this.exit
    this.child.kill(signal)
    if ((await within(this.closed, timeoutMs)) === 'timeout') {
      console.error(`${this.name} (pid ${this.pid}) ignored ${signal} for ${timeoutMs} ms: SIGKILL`)
      this.child.kill('SIGKILL')
    }
    return await this.closed
  }
}

/** `p`, or 'timeout' after `ms`; the timer is cleared either way, so it never holds the process open. */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined
  const t = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms)
  })
  try {
    return await Promise.race([p, t])
  } finally {
    clearTimeout(timer)
  }
}

export function fmtExit(e: Exit | undefined): string {
  return e ? (e.signal ? `signal ${e.signal}` : `status ${e.code}`) : 'running'
}

/** Run a command to its end, bounded by `timeoutMs`; throws on a non-zero exit. */
export async function runToEnd(
  name: string,
  file: string,
  args: readonly string[],
  timeoutMs: number,
): Promise<Proc> {
  const p = new Proc(name, file, args, 'lines')
  if ((await within(p.closed, timeoutMs)) === 'timeout') {
    await p.stop('SIGKILL')
    throw new Error(`${name} took longer than ${timeoutMs} ms:\n${p.tail()}`)
  }
  if (p.exit?.code !== 0) throw new Error(`${name} failed (${fmtExit(p.exit)}):\n${p.tail()}`)
  return p
}
