// Helpers shared by the benchmarks: statistics, /proc readings of another process, network namespaces,
// prettier-formatted output files, and cleanup of everything a benchmark started when it exits.
import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import * as prettier from 'prettier'

// ---- statistics ----------------------------------------------------------------------------------------

/** Nearest-rank percentile (p in 0..100) of a non-empty list: always one of the values. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN
  const s = [...xs].sort((a, b) => a - b)
  const rank = Math.min(s.length, Math.max(1, Math.ceil((p / 100) * s.length)))
  return s[rank - 1] ?? NaN
}

/** The median of the values that are not NaN (a round that lacks a setup is NaN); NaN if none are left. */
export function median(xs: readonly number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b)
  const m = s.length >> 1
  if (s.length === 0) return NaN
  return s.length % 2 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2
}

export function mean(xs: readonly number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length
}

/** Round to `digits` decimals, for JSON output that stays readable. */
export function round(x: number, digits = 3): number {
  const f = 10 ** digits
  return Math.round(x * f) / f
}

// ---- /proc -------------------------------------------------------------------------------------------------

/** Clock ticks per second of /proc/PID/stat's utime and stime (USER_HZ, 100 on Linux). */
export const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100

/** A field of /proc/PID/status in kB (VmRSS, VmHWM, ...), or NaN when the process is gone. */
export function statusKb(pid: number, field: string): number {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8')
    const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(text)
    return m ? Number(m[1]) : NaN
  } catch {
    return NaN
  }
}

/** utime + stime of a process (its threads included, not its children), in ms. */
export function cpuMs(pid: number): number {
  const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  // the comm field may contain spaces and parentheses: the fields after it start after the last ')'
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15
  const utime = Number(fields[11])
  const stime = Number(fields[12])
  return ((utime + stime) * 1000) / CLK_TCK
}

interface CpuTimes {
  /** user, nice, system, irq and softirq */
  work: number
  steal: number
  busy: number
  total: number
}

/** The whole machine's CPU times since boot (the `cpu` line of /proc/stat), in clock ticks. */
function machineCpu(): CpuTimes {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? ''
  const f = line.trim().split(/\s+/).slice(1, 9).map(Number)
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f
  const work = user + nice + system + irq + softirq
  const busy = work + steal
  return { work, steal, busy, total: busy + idle + iowait }
}

/**
 * The whole machine's CPU time since boot, in µs: `workUs` is what every process, irq and softirq ran
 * (user, nice, system, irq, softirq), `stealUs` what the hypervisor gave to others. Take two readings
 * around a run for its share.
 */
export function machineCpuUs(): { workUs: number; stealUs: number } {
  const t = machineCpu()
  return { workUs: (t.work * 1e6) / CLK_TCK, stealUs: (t.steal * 1e6) / CLK_TCK }
}

/**
 * Starts measuring the whole machine's CPU time; the returned function gives the busy time of all CPUs
 * (user, nice, system, irq, softirq, steal) and their total time since the start, in ms.
 */
export function machineBusy(): () => { busyMs: number; totalMs: number; pct: number } {
  const a = machineCpu()
  return () => {
    const b = machineCpu()
    const busyMs = ((b.busy - a.busy) * 1000) / CLK_TCK
    const totalMs = ((b.total - a.total) * 1000) / CLK_TCK
    return { busyMs, totalMs, pct: totalMs > 0 ? (100 * busyMs) / totalMs : 0 }
  }
}

/**
 * Wait until the machine is quiet (other engineers' tests share it): under `pct` % busy over a 500 ms
 * window. Gives up after `maxMs` and carries on; returns the last busy share and how long it waited.
 */
export async function waitForQuiet(
  pct: number,
  maxMs: number,
): Promise<{ busyPct: number; waitedMs: number }> {
  const t0 = Date.now()
  for (let told = false; ; told = true) {
    const stop = machineBusy()
    await sleep(500)
    const busyPct = stop().pct
    const waitedMs = Date.now() - t0
    if (busyPct < pct || waitedMs > maxMs) return { busyPct, waitedMs }
    if (!told) {
      console.error(`machine busy (${busyPct.toFixed(0)} % of all CPUs), waiting up to ${maxMs / 1000} s`)
    }
  }
}

export function hostInfo(): { kernel: string; cpus: number; cpuModel: string; node: string; memMb: number } {
  return {
    kernel: os.release(),
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? '?',
    node: process.version,
    memMb: Math.round(os.totalmem() / 2 ** 20),
  }
}

// ---- cleanup ---------------------------------------------------------------------------------------------

const cleanups = new Map<number, () => void>()
let nextCleanup = 0
let handlersInstalled = false

/**
 * Run `fn` (synchronous) when the process exits, however it exits: normally, by an uncaught error or by
 * SIGINT/SIGTERM/SIGHUP. Returns a function that runs it now and unregisters it.
 */
export function onExit(fn: () => void): () => void {
  if (!handlersInstalled) {
    handlersInstalled = true
    process.on('exit', () => {
      for (const f of [...cleanups.values()].reverse()) {
        try {
          f()
        } catch {
          // best effort: the others must still run
        }
      }
      cleanups.clear()
    })
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
      process.once(sig, () => {
        console.error(`${sig}: cleaning up`)
        process.exit(128 + (os.constants.signals[sig] ?? 0))
      })
    }
  }
  const id = nextCleanup++
  cleanups.set(id, fn)
  return () => {
    if (cleanups.delete(id)) fn()
  }
}

// ---- network namespaces -------------------------------------------------------------------------------------

export interface Netns {
  name: string
  /** the namespace's inode, as `filters.netns` and the `netns` label take it */
  inode: number
  /** argv prefix that runs a command inside the namespace */
  exec: string[]
  remove: () => void
}

/** Create a named network namespace with loopback up; it is deleted at exit at the latest. */
export function createNetns(name: string): Netns {
  execFileSync('ip', ['netns', 'add', name])
  const remove = onExit(() => {
    try {
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' })
    } catch {
      // already gone
    }
  })
  try {
    execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up'])
    const inode = Number(execFileSync('stat', ['-L', '-c', '%i', `/run/netns/${name}`], { encoding: 'utf8' }))
    if (!Number.isInteger(inode) || inode <= 0) throw new Error(`cannot read the inode of netns ${name}`)
    return { name, inode, exec: ['ip', 'netns', 'exec', name], remove }
  } catch (err) {
    remove()
    throw err
  }
}

// ---- output ----------------------------------------------------------------------------------------------------

/** Write a text file formatted by prettier with the project's settings (bench/results is prettier-checked). */
export async function writeFormatted(file: string, text: string): Promise<void> {
  mkdirSync(path.dirname(file), { recursive: true })
  const formatted = await prettier.format(text, {
    ...(await prettier.resolveConfig(file)),
    filepath: file,
  })
  writeFileSync(file, formatted)
}

export async function writeJson(file: string, value: unknown): Promise<void> {
  await writeFormatted(file, JSON.stringify(value))
}
