// What tracing programs are attached, read with bpftool: ours (by the pids holding them) and anyone
// else's, which would tax the setups of a benchmark unevenly. A sample waits until no foreign tracing
// program is attached and is measured again if one shows up meanwhile (other engineers' tests share
// the machine).
import { execFile, execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

const run = promisify(execFile)

interface PerfEntry {
  pid: number
  prog_id: number
  fd_type?: string
  tracepoint?: string
  func?: string
  filename?: string
}
interface LinkEntry {
  id: number
  type: string
  prog_id: number
  tp_name?: string
}
const TRACING_LINK_TYPES = new Set([
  'raw_tracepoint',
  'tracing',
  'perf_event',
  'kprobe_multi',
  'uprobe_multi',
])

function bpftool<T>(args: string[]): T {
  return JSON.parse(execFileSync('bpftool', [...args, '-j'], { encoding: 'utf8' }) || '[]') as T
}

const missing = (err: unknown): boolean => (err as NodeJS.ErrnoException).code === 'ENOENT'

export interface Attachments {
  /** per pid of ours, the tracepoints (or probe targets) it holds, sorted */
  ours: Map<number, string[]>
  /** programs held by our processes */
  ownProgs: Set<number>
  /** per pid of ours, the programs it has on inet_sock_set_state */
  stateProgs: Map<number, number[]>
  /** tracing attachments held by anyone else */
  foreign: string[]
}

function describe(p: PerfEntry): string {
  return p.tracepoint ?? p.func ?? p.filename ?? '?'
}

function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 120)
  } catch {
    return '?'
  }
}

/** What is attached; `ourPids` are the processes whose programs are ours. Throws when bpftool is missing. */
export function attachments(ourPids: ReadonlySet<number>): Attachments {
  const perf = bpftool<PerfEntry[]>(['perf', 'list'])
  const links = bpftool<LinkEntry[]>(['link', 'list'])
  // a child holds our fds for a moment between fork and exec: whose program it is decides, not the pid
  const ownProgs = new Set(perf.filter((p) => ourPids.has(p.pid)).map((p) => p.prog_id))
  const ours = new Map<number, string[]>()
  const stateProgs = new Map<number, number[]>()
  for (const p of perf) {
    if (!ourPids.has(p.pid)) continue
    ours.set(p.pid, [...(ours.get(p.pid) ?? []), describe(p)].sort())
    if (describe(p) === 'inet_sock_set_state') {
      stateProgs.set(p.pid, [...(stateProgs.get(p.pid) ?? []), p.prog_id])
    }
  }
  const foreign = perf
    .filter((p) => !ownProgs.has(p.prog_id))
    .map((p) => `pid ${p.pid} ${commOf(p.pid)}: ${p.fd_type ?? '?'} ${describe(p)} (prog ${p.prog_id})`)
  const held = new Set(perf.map((p) => p.prog_id))
  for (const l of links) {
    if (!TRACING_LINK_TYPES.has(l.type) || held.has(l.prog_id)) continue
    foreign.push(`link ${l.id}: ${l.type} ${l.tp_name ?? ''} (prog ${l.prog_id}, no holder found)`)
  }
  return { ours, ownProgs, stateProgs, foreign }
}

let bpftoolMissing = false

/** attachments(), or null (with one warning) when bpftool is missing: for benchmarks that can do without. */
export function attachmentsIfAny(ourPids: ReadonlySet<number>): Attachments | null {
  if (bpftoolMissing) return null
  try {
    return attachments(ourPids)
  } catch (err) {
    if (!missing(err)) throw err
    bpftoolMissing = true
    console.error('bpftool not found: cannot check for foreign tracing programs; results may be skewed')
    return null
  }
}

export interface ProgInfo {
  id: number
  type: string
  name?: string
  run_time_ns?: number
  run_cnt?: number
  recursion_misses?: number
}

export function progInfo(id: number): ProgInfo {
  return bpftool<ProgInfo>(['prog', 'show', 'id', String(id)])
}

/**
 * Invocations the kernel skipped because the same program was already running on that CPU (a softirq
 * state change interrupting the program in process context): those state changes are never seen.
 */
export function recursionMisses(progIds: readonly number[]): number {
  return progIds.reduce((a, id) => a + (progInfo(id).recursion_misses ?? 0), 0)
}

/** Wait until no other process has tracing programs attached; throws after `maxMs`. */
export async function waitForNoForeign(maxMs: number): Promise<void> {
  const deadline = Date.now() + maxMs
  let told = false
  for (;;) {
    const a = attachmentsIfAny(new Set())
    if (!a || a.foreign.length === 0) return
    if (Date.now() > deadline) {
      throw new Error(
        `other tracing programs stay attached, refusing to measure:\n  ${a.foreign.join('\n  ')}`,
      )
    }
    if (!told) {
      console.error(`waiting for foreign tracing programs to go away:\n  ${a.foreign.join('\n  ')}`)
      told = true
    }
    await sleep(1000)
  }
}

/**
 * Poll `bpftool perf list` every `everyMs` while a sample runs: another process's tracing program,
 * attached even briefly, spoils the sample. Returns a stop function that resolves to what was seen.
 */
export function watchForeign(ownProgs: ReadonlySet<number>, everyMs: number): () => Promise<string[]> {
  const seen = new Set<string>()
  const state = { stopped: false }
  const poll = async (): Promise<void> => {
    while (!state.stopped) {
      try {
        const { stdout } = await run('bpftool', ['perf', 'list', '-j'])
        for (const p of JSON.parse(stdout || '[]') as PerfEntry[]) {
          if (!ownProgs.has(p.prog_id)) seen.add(`pid ${p.pid} ${commOf(p.pid)}: ${describe(p)}`)
        }
      } catch (err) {
        if (missing(err)) return // the checks around the sample say so
        throw err
      }
      await sleep(everyMs)
    }
  }
  const polling = poll()
  return async () => {
    state.stopped = true
    await polling
    return [...seen]
  }
}
