// What tracing costs the traced workload, measured against the obvious alternative (a bpftrace
// script doing the same counting); the tax on every syscall; whether the counts stay exact at the
// generator's maximum rate; and how long the exporter takes to be ready.
//
//   node --import tsx bench/overhead.ts [--rounds R] [--quick] [--connections N] [--threads T]
//        [--calls C] [--duration S] [--startup-runs K] [--wait-foreign S] [--no-bpf-stats] [--out FILE]
//
// Needs root, a built tree (npm run build: dist/, the addon, the BPF object, test/helpers/bin),
// bpftool and bpftrace. Writes bench/results/overhead.json; prints a Markdown summary on stdout.
//
// 1. Cost per connection. In every round each setup runs once, order rotated from round to round:
//      none            nothing attached
//      metrics         `tcptracer-exporter run` (started before the sample, stopped after it)
//      metrics+trace   the same plus `tcptracer-exporter trace --json > /dev/null`
//      bpftrace        bench/peer.bt: per-comm counts and a lifetime histogram, nothing of ours
//    Under each, `tcpload pair` makes a fixed number of loopback connections over IPv4 and over IPv6
//    (order alternating), each run in a fresh network namespace (unshare --net) so TIME_WAIT sockets of
//    earlier runs do not drift the cost, with a wide ephemeral port range (see WIDE_PORTS), and
//    `sysloop` makes getppid() calls. The figure of merit is
//    the generator's own CPU time (getrusage) per connection: BPF programs run in the kernel on
//    behalf of the traced process, so it carries their cost. Samples wait for a quiet machine and no
//    tracing programs of other processes (bpftool), and are measured again if one shows up meanwhile.
// 2. Exactness: the generator at full speed for --duration seconds in a namespace of our own (ip netns
//    add), the exporter filtering on it; its counters must equal the generator's counts exactly. Then
//    the same under `trace --json -N INODE`: events printed and lost against 4 per connection.
// 3. Startup: launch to the first 200 from /readyz, polled every 10 ms.
// 4. Where the cost goes: with kernel.bpf_stats_enabled set for one generator run per setup (restored
//    right after), the run count and run time of every program, per connection.
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process'
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import type { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs, promisify } from 'node:util'

import * as prettier from 'prettier'

import { packageRoot } from '../src/kernel/paths.js'
import { TcpTracer } from '../src/kernel/tracer.js'
import { parseExposition, type ScrapedSample as Series } from '../test/exposition-parser.js'
import { prng } from '../test/prng.js'

const SETUPS = ['none', 'metrics', 'metrics+trace', 'bpftrace'] as const
type Setup = (typeof SETUPS)[number]
const FAMILIES = ['ipv4', 'ipv6'] as const
type Family = (typeof FAMILIES)[number]
type Role = 'exporter' | 'trace' | 'bpftrace'

const ROLES: Record<Setup, Role[]> = {
  none: [],
  metrics: ['exporter'],
  'metrics+trace': ['exporter', 'trace'],
  bpftrace: ['bpftrace'],
}
const BIND: Record<Family, string> = { ipv4: '127.0.0.1', ipv6: '::1' }
/** the process names the generator gives its main (listening) thread, server and client threads */
const COMM = { listen: 'ovb-listen', server: 'ovb-srv', client: 'ovb-cli' } as const

const SETTLE_MS = 300
/** after a setup reports ready: let its startup work (the /proc walk, JIT warm-up) finish */
const READY_SETTLE_MS = 500
const PEER_SETTLE_MS = 300
const SAMPLE_RETRIES = 5
const WATCH_MS = 250
const QUIET_PCT = 10
const QUIET_WINDOW_MS = 500
const QUIET_WAIT_MS = 30_000
const START_TIMEOUT_MS = 30_000
const STOP_TIMEOUT_MS = 10_000
const GENERATOR_TIMEOUT_MS = 180_000
const READY_POLL_MS = 10
const READY_TARGET_MS = 2000
const CPU_TARGET = 1.03
const PEER_SHARE_TARGET = 0.25
/** connections per generator run in the exactness phases: short runs, so the deadline is not overshot much */
const EXACT_CHUNK = 20_000
const BOOTSTRAP_RESAMPLES = 4000

const CLI = path.join(packageRoot, 'dist', 'src', 'cli.js')
const PEER_SCRIPT = path.join(packageRoot, 'bench', 'peer.bt')
const TCPLOAD = path.join(packageRoot, 'test', 'helpers', 'bin', 'tcpload')
const SYSLOOP = path.join(packageRoot, 'test', 'helpers', 'bin', 'sysloop')
const BPF_STATS_SYSCTL = '/proc/sys/kernel/bpf_stats_enabled'

const run = promisify(execFile)

/**
 * Run in every generator namespace. All of a run's connections go to one server port, so each needs its own
 * source port, and a client's port stays in TIME_WAIT after the run's close: with the default range (32768
 * to 60999, connect() taking the even half first) a run of more than about 14,000 connections spends most
 * of its time searching for a free port (measured: 109 µs per connection at 20,000 against 36 µs at
 * 10,000), which would bury the tracing cost under a cost no real workload has. 1024 to 65535 leaves room.
 */
const WIDE_PORTS = "echo '1024 65535' > /proc/sys/net/ipv4/ip_local_port_range"

// ---- options ---------------------------------------------------------------------------------------------

interface Options {
  quick: boolean
  rounds: number
  connections: number
  threads: number
  calls: number
  durationS: number
  startupRuns: number
  waitForeignMs: number
  bpfStats: boolean
  out: string
}

const USAGE = `Usage: node --import tsx bench/overhead.ts [options]
  --rounds R        rounds; each runs every setup once, in rotated order (default 24; --quick 3)
  --quick           a smoke run of about two minutes: fewer rounds, connections, calls, shorter phases
  --connections N   loopback connections per generator run and family (default 20000; --quick 10000)
  --threads T       tcpload pair --threads: T server and T client threads (default 2)
  --calls C         getppid() calls per sysloop run (default 3000000; --quick 1000000)
  --duration S      seconds of full-speed load in each exactness phase (default 30; --quick 8)
  --startup-runs K  exporter launches timed to /readyz 200 (default 7; --quick 3)
  --wait-foreign S  wait up to S seconds for other processes to detach tracing programs (default 300)
  --no-bpf-stats    skip the per-program cost breakdown (kernel.bpf_stats_enabled)
  --out FILE        JSON results (default bench/results/overhead.json)`

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string' },
      quick: { type: 'boolean', default: false },
      connections: { type: 'string' },
      threads: { type: 'string', default: '2' },
      calls: { type: 'string' },
      duration: { type: 'string' },
      'startup-runs': { type: 'string' },
      'wait-foreign': { type: 'string', default: '300' },
      'no-bpf-stats': { type: 'boolean', default: false },
      out: { type: 'string', default: path.join(packageRoot, 'bench', 'results', 'overhead.json') },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  })
  if (values.help) {
    console.log(USAGE)
    process.exit(0)
  }
  const q = values.quick
  const int = (name: string, v: string | undefined, dflt: number, min: number, max: number): number => {
    if (v === undefined) return dflt
    const n = Number(v)
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new RangeError(`--${name} must be an integer from ${min} to ${max}, got ${v}`)
    }
    return n
  }
  return {
    quick: q,
    rounds: int('rounds', values.rounds, q ? 3 : 24, 1, 1000),
    connections: int('connections', values.connections, q ? 10_000 : 20_000, 100, 10_000_000),
    threads: int('threads', values.threads, 2, 1, 64),
    calls: int('calls', values.calls, q ? 1_000_000 : 3_000_000, 1000, 1_000_000_000),
    durationS: int('duration', values.duration, q ? 8 : 30, 1, 3600),
    startupRuns: int('startup-runs', values['startup-runs'], q ? 3 : 7, 1, 100),
    waitForeignMs: 1000 * int('wait-foreign', values['wait-foreign'], 300, 0, 86400),
    bpfStats: !values['no-bpf-stats'],
    out: path.resolve(values.out),
  }
}

// ---- cleanup: children, namespaces, temporary files, the sysctl ------------------------------------------

const live = new Set<Proc>()
const cleanups = new Map<string, () => void>()

async function cleanup(): Promise<void> {
  await Promise.all([...live].map((p) => p.stop('SIGTERM', 5000).catch(() => {})))
  for (const [what, fn] of [...cleanups].reverse()) {
    try {
      fn()
    } catch (err) {
      console.error(`cleanup of ${what} failed: ${(err as Error).message}`)
    }
  }
  cleanups.clear()
}

let interrupted = false
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (interrupted) return
    interrupted = true
    console.error(`${sig}: stopping children and cleaning up`)
    cleanup().finally(() => process.exit(130))
  })
}

// ---- child processes ---------------------------------------------------------------------------------------

type StdoutMode = 'ignore' | 'lines' | number | ((chunk: Buffer) => void)
interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}
const MAX_LINES = 5000

/** A child process we started: its output lines, a way to wait for one, and a bounded stop. */
class Proc {
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
  ) {
    // once interrupted, start nothing new: the cleanup may already have passed
    if (interrupted) throw new Error(`interrupted: not starting ${name}`)
    const mode = typeof stdout === 'number' ? stdout : stdout === 'ignore' ? 'ignore' : 'pipe'
    this.child = spawn(file, args, { stdio: ['ignore', mode, 'pipe'] })
    live.add(this)
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
      live.delete(this)
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
async function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
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

function fmtExit(e: Exit | undefined): string {
  return e ? (e.signal ? `signal ${e.signal}` : `status ${e.code}`) : 'running'
}

/** Run a command to its end, bounded by `timeoutMs`; throws on a non-zero exit. */
async function runToEnd(
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

// ---- system-wide CPU from /proc/stat, waiting for a quiet machine ---------------------------------------

interface CpuStat {
  busy: number
  steal: number
}
const TICK_US = 1e6 / 100 // /proc/stat counts USER_HZ (100) ticks
const NCPU = os.availableParallelism()

function readCpuStat(): CpuStat {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? ''
  const f = line.trim().split(/\s+/).slice(1).map(Number)
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f
  return { busy: (user + nice + system + irq + softirq) * TICK_US, steal: steal * TICK_US }
}

/** Busy share of all CPUs over `ms`, in %. This process sleeps meanwhile, so it is everyone else. */
async function busyPct(ms: number): Promise<number> {
  const a = readCpuStat()
  await sleep(ms)
  const b = readCpuStat()
  return (100 * (b.busy - a.busy)) / (ms * 1000 * NCPU)
}

/** Wait until under QUIET_PCT busy over QUIET_WINDOW_MS; after QUIET_WAIT_MS measure anyway. */
async function waitForQuiet(): Promise<{ busyPct: number; waitedMs: number }> {
  const t0 = Date.now()
  let told = false
  for (;;) {
    const pct = await busyPct(QUIET_WINDOW_MS)
    const waitedMs = Date.now() - t0
    if (pct < QUIET_PCT || waitedMs > QUIET_WAIT_MS) return { busyPct: pct, waitedMs }
    if (!told) {
      console.error(`machine busy (${pct.toFixed(0)} % of all CPUs), waiting for it to quieten`)
      told = true
    }
  }
}

// ---- tracing programs attached (bpftool) --------------------------------------------------------------------

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

interface Attachments {
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

function attachments(ourPids: ReadonlySet<number>): Attachments {
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

interface ProgInfo {
  id: number
  type: string
  name?: string
  run_time_ns?: number
  run_cnt?: number
  recursion_misses?: number
}

function progInfo(id: number): ProgInfo {
  return bpftool<ProgInfo>(['prog', 'show', 'id', String(id)])
}

/**
 * Invocations the kernel skipped because the same program was already running on that CPU (a softirq
 * state change interrupting the program in process context): those state changes are never seen.
 */
function recursionMisses(progIds: readonly number[]): number {
  return progIds.reduce((a, id) => a + (progInfo(id).recursion_misses ?? 0), 0)
}

async function waitForNoForeign(maxMs: number): Promise<void> {
  const deadline = Date.now() + maxMs
  let told = false
  for (;;) {
    const { foreign } = attachments(new Set())
    if (foreign.length === 0) return
    if (Date.now() > deadline) {
      throw new Error(`other tracing programs stay attached, refusing to measure:\n  ${foreign.join('\n  ')}`)
    }
    if (!told) {
      console.error(`waiting for foreign tracing programs to go away:\n  ${foreign.join('\n  ')}`)
      told = true
    }
    await sleep(1000)
  }
}

/** Poll bpftool while a sample runs: a tracing program of another process, even briefly, spoils it. */
function watchForeign(ownProgs: ReadonlySet<number>): () => Promise<string[]> {
  const seen = new Set<string>()
  const state = { stopped: false }
  const poll = async (): Promise<void> => {
    while (!state.stopped) {
      const { stdout } = await run('bpftool', ['perf', 'list', '-j'])
      for (const p of JSON.parse(stdout || '[]') as PerfEntry[]) {
        if (!ownProgs.has(p.prog_id)) seen.add(`pid ${p.pid} ${commOf(p.pid)}: ${describe(p)}`)
      }
      await sleep(WATCH_MS)
    }
  }
  const polling = poll()
  return async () => {
    state.stopped = true
    await polling
    return [...seen]
  }
}

// ---- the workloads ----------------------------------------------------------------------------------------------

interface GenRun {
  family: Family
  connections: number
  accepted: number
  connected: number
  failed: number
  /** generator CPU, user + system, µs */
  cpuUs: number
  wallUs: number
  /** busy CPU of the whole machine during the run (every process, irq and softirq), µs */
  systemBusyUs: number
  stealUs: number
}

function generatorArgs(family: Family, count: number, threads: number): string[] {
  return [
    'pair',
    '--count',
    String(count),
    '--threads',
    String(threads),
    '--bind',
    BIND[family],
    '--comm',
    COMM.listen,
    '--comm-server',
    COMM.server,
    '--comm-client',
    COMM.client,
  ]
}

/** One `tcpload pair` run in a fresh network namespace, or in the named one. */
async function runGenerator(family: Family, count: number, threads: number, netns?: string): Promise<GenRun> {
  const args = generatorArgs(family, count, threads)
  const [file, argv] =
    netns === undefined
      ? [
          'unshare',
          [
            '--net',
            '--',
            'sh',
            '-c',
            `ip link set lo up && ${WIDE_PORTS} && exec "$0" "$@"`,
            TCPLOAD,
            ...args,
          ],
        ]
      : ['ip', ['netns', 'exec', netns, TCPLOAD, ...args]]
  const before = readCpuStat()
  const p = await runToEnd('tcpload', file, argv, GENERATOR_TIMEOUT_MS)
  const after = readCpuStat()
  const done = p.out
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, number | string>)
    .find((e) => e['event'] === 'done')
  if (!done) throw new Error(`tcpload printed no done line:\n${p.tail()}`)
  const r: GenRun = {
    family,
    connections: count,
    accepted: Number(done['accepted']),
    connected: Number(done['connected']),
    failed: Number(done['failed']),
    cpuUs: Number(done['cpu_user_us']) + Number(done['cpu_sys_us']),
    wallUs: Number(done['wall_us']),
    systemBusyUs: after.busy - before.busy,
    stealUs: after.steal - before.steal,
  }
  if (netns === undefined && (r.accepted !== count || r.connected !== count || r.failed !== 0)) {
    throw new Error(`tcpload did not complete every connection: ${JSON.stringify(done)}`)
  }
  return r
}

async function runSysloop(calls: number): Promise<{ cpuNs: number; wallNs: number }> {
  const p = await runToEnd('sysloop', SYSLOOP, [String(calls)], GENERATOR_TIMEOUT_MS)
  const r = JSON.parse(p.out.join('')) as {
    calls: number
    cpu_user_us: number
    cpu_sys_us: number
    wall_ns: number
  }
  if (r.calls !== calls) throw new Error(`sysloop made ${r.calls} calls, not ${calls}`)
  return { cpuNs: (1000 * (r.cpu_user_us + r.cpu_sys_us)) / calls, wallNs: r.wall_ns / calls }
}

// ---- HTTP and the exposition ----------------------------------------------------------------------------------

function httpGet(port: number, urlPath: string, timeoutMs = 5000): Promise<{ status: number; body: string }> {
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

function sum(series: readonly Series[], name: string, where: (l: Record<string, string>) => boolean): number {
  return series.filter((s) => s.name === name && where(s.labels)).reduce((a, s) => a + s.value, 0)
}

async function scrape(port: number): Promise<Series[]> {
  const r = await httpGet(port, '/metrics')
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}: ${r.body.slice(0, 200)}`)
  return parseExposition(r.body)
}

async function freePort(): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  const { port } = s.address() as AddressInfo
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
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

// ---- the setups ------------------------------------------------------------------------------------------------

interface Running {
  setup: Setup
  procs: Partial<Record<Role, Proc>>
  exporterPort?: number
  /** launch of the first process to its readiness, ms */
  readyMs: number
}

interface Exporter {
  proc: Proc
  port: number
  readyMs: number
  /** the daemon's own "tracer ready" figure: load and attach, ms */
  attachMs: number | undefined
}

let devNull = -1

async function startExporter(extra: readonly string[] = [], listen = '127.0.0.1:0'): Promise<Exporter> {
  const t0 = performance.now()
  const proc = new Proc('exporter', process.execPath, [
    CLI,
    'run',
    `--web.listen-address=${listen}`,
    '--log.format=json',
    // unpinned: a pinned state outlives the process, so its programs would keep counting (and be
    // taken for a foreign tracer) after the setup is stopped, and the next launch would take it over
    '--bpf.pin-path=',
    ...extra,
  ])
  try {
    // a fixed port is polled from launch on; an ephemeral one is learnt from the log first
    let port = Number(listen.slice(listen.lastIndexOf(':') + 1))
    if (port === 0) {
      const line = await proc.waitFor((l) => l.includes('"msg":"serving metrics"'), START_TIMEOUT_MS)
      const logged = (JSON.parse(line) as { port?: unknown }).port
      if (typeof logged !== 'number') throw new Error(`no port in the exporter's log line: ${line}`)
      port = logged
    }
    await pollReady(proc, port, t0 + START_TIMEOUT_MS)
    const readyMs = performance.now() - t0
    const ready = proc.err.find((l) => l.includes('"msg":"tracer ready"'))
    const attachMs = ready ? (JSON.parse(ready) as { ms?: number }).ms : undefined
    return { proc, port, readyMs, attachMs }
  } catch (err) {
    await proc.stop()
    throw err
  }
}

async function startTrace(stdout: StdoutMode, extra: readonly string[] = []): Promise<Proc> {
  const proc = new Proc('trace', process.execPath, [CLI, 'trace', '--json', ...extra], stdout)
  try {
    await proc.waitFor((l) => l.startsWith('Tracing TCP'), START_TIMEOUT_MS)
    return proc
  } catch (err) {
    await proc.stop()
    throw err
  }
}

async function startPeer(): Promise<Proc> {
  const proc = new Proc('bpftrace', 'bpftrace', ['-f', 'json', '-B', 'line', PEER_SCRIPT], 'lines')
  try {
    await proc.waitFor((l) => l.includes('peer: attached'), START_TIMEOUT_MS)
    // bpftrace installs its SIGINT handler only after BEGIN has run: a SIGINT right after the BEGIN line
    // is lost (or kills it without the maps), so give it a moment
    await sleep(PEER_SETTLE_MS)
    return proc
  } catch (err) {
    await proc.stop('SIGINT')
    throw err
  }
}

async function startSetup(setup: Setup): Promise<Running> {
  const t0 = performance.now()
  const r: Running = { setup, procs: {}, readyMs: 0 }
  try {
    if (setup === 'metrics' || setup === 'metrics+trace') {
      const e = await startExporter()
      r.procs.exporter = e.proc
      r.exporterPort = e.port
    }
    if (setup === 'metrics+trace') r.procs.trace = await startTrace(devNull)
    if (setup === 'bpftrace') r.procs.bpftrace = await startPeer()
  } catch (err) {
    await stopSetup(r)
    throw err
  }
  r.readyMs = performance.now() - t0
  return r
}

/** Stop every process of a setup; bpftrace prints its maps as it exits. */
async function stopSetup(r: Running): Promise<void> {
  const { exporter, trace, bpftrace } = r.procs
  await Promise.all([trace?.stop('SIGINT'), bpftrace?.stop('SIGINT'), exporter?.stop('SIGTERM')])
  for (const p of [exporter, trace, bpftrace]) {
    if (p?.exit && p.exit.code !== 0) {
      console.error(`warning: ${p.name} exited with ${fmtExit(p.exit)}:\n${p.tail(5)}`)
    }
  }
}

function pidsOf(r: Running): Set<number> {
  return new Set(Object.values(r.procs).map((p) => p.pid))
}

/** Every process of the setup holds a program on inet_sock_set_state, and nothing else of ours is attached. */
function checkOurs(r: Running, a: Attachments): void {
  const roles = ROLES[r.setup]
  for (const role of roles) {
    const p = r.procs[role]
    const held = p ? (a.ours.get(p.pid) ?? []) : []
    if (!held.includes('inet_sock_set_state')) {
      throw new Error(
        `setup ${r.setup}: ${role} (pid ${p?.pid}) holds [${held.join(', ')}], no inet_sock_set_state`,
      )
    }
    // the state program and its nested stand-in (src/kernel/tracer.ts NESTED_BACKBONE_PROGRAM)
    if (role !== 'bpftrace' && held.join() !== 'inet_sock_set_state,inet_sock_set_state') {
      throw new Error(
        `setup ${r.setup}: ${role} holds [${held.join(', ')}], expected [inet_sock_set_state, inet_sock_set_state]`,
      )
    }
  }
  if (roles.length === 0 && a.ours.size) {
    throw new Error('setup none: a process of ours holds tracing programs')
  }
}

/** What the exporter counted for the generator's process names. */
interface Counts {
  connects: number
  accepts: number
  closes: number
  connectFailures: number
}

function exporterCounts(series: readonly Series[], where: (l: Record<string, string>) => boolean): Counts {
  return {
    connects: sum(series, 'tcptracer_connects_total', where),
    accepts: sum(series, 'tcptracer_accepts_total', where),
    closes: sum(series, 'tcptracer_closes_total', where),
    connectFailures: sum(series, 'tcptracer_connect_failures_total', where),
  }
}

const ours = (l: Record<string, string>): boolean => l['comm'] === COMM.client || l['comm'] === COMM.listen

/** The peer's maps, from bpftrace's JSON output at exit. */
function peerCounts(p: Proc): { connects: number; accepts: number; closes: number; lifetimes: number } {
  const maps: Record<string, unknown> = {}
  for (const l of p.out) {
    if (!l.startsWith('{')) continue
    const m = JSON.parse(l) as { type?: string; data?: Record<string, unknown> }
    if (m.type === 'map' || m.type === 'hist') Object.assign(maps, m.data)
  }
  const at = (map: string, key: string): number => {
    const v = (maps[map] as Record<string, number> | undefined)?.[key]
    return typeof v === 'number' ? v : 0
  }
  const hist = (maps['@lifetime_us'] ?? []) as Array<{ count: number }>
  return {
    connects: at('@connects', COMM.client),
    accepts: at('@accepts', COMM.listen),
    closes: at('@closes', COMM.client) + at('@closes', COMM.listen),
    // every close of every process: the histogram has no comm key
    lifetimes: hist.reduce((a, b) => a + b.count, 0),
  }
}

// ---- one sample: start a setup, measure, stop it --------------------------------------------------------------

interface Sample {
  round: number
  position: number
  setup: Setup
  families: Family[]
  runs: GenRun[]
  /** generator CPU per connection over both families, µs */
  connCpuUs: number
  connCpuUsByFamily: Record<Family, number>
  /** whole-machine busy CPU per connection (consumers included), µs */
  connSystemUs: number
  throughput: number
  throughputByFamily: Record<Family, number>
  /** machine busy time the generator's rusage does not explain, % of all CPUs */
  otherCpuPct: number
  callCpuNs: number
  callWallNs: number
  setupReadyMs: number
  busyBeforePct: number
  waitedForQuietMs: number
  attempts: number
  attached: Record<string, string[]>
  /** per process of the setup: state changes its program missed (kernel recursion guard) */
  recursionMisses: Record<string, number>
  exporter?: Counts & { expected: number; exact: boolean }
  peer?: { connects: number; accepts: number; closes: number; expected: number }
}

async function sample(o: Options, round: number, position: number, setup: Setup): Promise<Sample> {
  const families: Family[] = round % 2 === 0 ? ['ipv4', 'ipv6'] : ['ipv6', 'ipv4']
  for (let attempt = 1; ; attempt++) {
    await waitForNoForeign(o.waitForeignMs)
    const quiet = await waitForQuiet()
    const r = await startSetup(setup)
    let result: Omit<Sample, 'peer'> | undefined
    let foreign: string[] = []
    try {
      await sleep(READY_SETTLE_MS)
      const pids = pidsOf(r)
      const pre = attachments(pids)
      checkOurs(r, pre)
      const stopWatch = watchForeign(pre.ownProgs)
      const runs: GenRun[] = []
      let loop: { cpuNs: number; wallNs: number }
      try {
        for (const f of families) {
          runs.push(await runGenerator(f, o.connections, o.threads))
          await sleep(SETTLE_MS) // let the namespace teardown finish before the next measurement
        }
        loop = await runSysloop(o.calls)
      } finally {
        foreign = await stopWatch()
      }
      const post = attachments(pids)
      checkOurs(r, post)
      foreign = [...new Set([...foreign, ...post.foreign])]
      const n = o.connections * runs.length
      const total = (k: 'cpuUs' | 'wallUs' | 'systemBusyUs'): number => runs.reduce((a, x) => a + x[k], 0)
      const by = (f: (x: GenRun) => number): Record<Family, number> => {
        const x = (fam: Family): number => {
          const g = runs.find((y) => y.family === fam)
          return g ? f(g) : NaN
        }
        return { ipv4: x('ipv4'), ipv6: x('ipv6') }
      }
      result = {
        round,
        position,
        setup,
        families,
        runs,
        connCpuUs: total('cpuUs') / n,
        connCpuUsByFamily: by((g) => g.cpuUs / g.connections),
        connSystemUs: total('systemBusyUs') / n,
        throughput: n / (total('wallUs') / 1e6),
        throughputByFamily: by((g) => g.connections / (g.wallUs / 1e6)),
        otherCpuPct: (100 * Math.max(0, total('systemBusyUs') - total('cpuUs'))) / (total('wallUs') * NCPU),
        callCpuNs: loop.cpuNs,
        callWallNs: loop.wallNs,
        setupReadyMs: r.readyMs,
        busyBeforePct: quiet.busyPct,
        waitedForQuietMs: quiet.waitedMs,
        attempts: attempt,
        attached: Object.fromEntries(
          Object.entries(r.procs).map(([role, p]) => [role, pre.ours.get(p.pid) ?? []]),
        ),
        recursionMisses: Object.fromEntries(
          Object.entries(r.procs).map(([role, p]) => [
            role,
            recursionMisses(post.stateProgs.get(p.pid) ?? []),
          ]),
        ),
      }
      if (r.exporterPort !== undefined) {
        const c = exporterCounts(await scrape(r.exporterPort), ours)
        result.exporter = {
          ...c,
          expected: n,
          exact: c.connects === n && c.accepts === n && c.closes === 2 * n && c.connectFailures === 0,
        }
      }
    } finally {
      await stopSetup(r)
      await sleep(SETTLE_MS)
    }
    if (foreign.length) {
      const msg = `round ${round + 1} ${setup}: foreign tracing programs attached mid-sample`
      if (attempt >= SAMPLE_RETRIES) throw new Error(`${msg}, ${attempt} times:\n  ${foreign.join('\n  ')}`)
      console.error(`${msg}, measuring again:\n  ${foreign.join('\n  ')}`)
      continue
    }
    const peerProc = r.procs.bpftrace
    if (!peerProc) return result
    const n = o.connections * families.length
    return { ...result, peer: { ...peerCounts(peerProc), expected: n } }
  }
}

// ---- statistics ---------------------------------------------------------------------------------------------------

interface Summary {
  median: number
  min: number
  max: number
}
interface SetupStat extends Summary {
  /** median of this setup / median of none */
  ratioToNone: number
  /** per round: this setup / none of the same round */
  pairedRatio: Summary
  /** per round: this setup − none of the same round */
  pairedDelta: Summary
}

function median(xs: readonly number[]): number {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b)
  if (!s.length) return NaN
  const m = s.length >> 1
  return s.length % 2 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2
}

function summary(xs: readonly number[]): Summary {
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) }
}

function quantile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.round(q * (s.length - 1))))] ?? NaN
}

/** Values of one setup, one per round, aligned by round (NaN where a round lacks the setup). */
type Getter = (s: Sample) => number

function perRound(samples: readonly Sample[], setup: Setup, get: Getter, rounds: number): number[] {
  return Array.from({ length: rounds }, (_, i) => {
    const s = samples.find((x) => x.round === i && x.setup === setup)
    return s ? get(s) : NaN
  })
}

function setupStat(samples: readonly Sample[], setup: Setup, get: Getter, rounds: number): SetupStat {
  const xs = perRound(samples, setup, get, rounds)
  const base = perRound(samples, 'none', get, rounds)
  return {
    ...summary(xs),
    ratioToNone: median(xs) / median(base),
    pairedRatio: summary(xs.map((x, i) => x / (base[i] ?? NaN))),
    pairedDelta: summary(xs.map((x, i) => x - (base[i] ?? NaN))),
  }
}

function allSetups(samples: readonly Sample[], get: Getter, rounds: number): Record<Setup, SetupStat> {
  return {
    none: setupStat(samples, 'none', get, rounds),
    metrics: setupStat(samples, 'metrics', get, rounds),
    'metrics+trace': setupStat(samples, 'metrics+trace', get, rounds),
    bpftrace: setupStat(samples, 'bpftrace', get, rounds),
  }
}

/** 95 % percentile bootstrap over rounds of a statistic computed from a resample of round indices. */
function bootstrap(rounds: number, stat: (idx: number[]) => number): { lo: number; hi: number } {
  const rnd = prng(0x0bad5eed)
  const xs: number[] = []
  for (let b = 0; b < BOOTSTRAP_RESAMPLES; b++) {
    const idx = Array.from({ length: rounds }, () => Math.floor(rnd() * rounds))
    const v = stat(idx)
    if (Number.isFinite(v)) xs.push(v)
  }
  return { lo: quantile(xs, 0.025), hi: quantile(xs, 0.975) }
}

/** The CPU target: metrics / none, the median of per-round ratios, with its interval. */
function cpuRatio(
  samples: readonly Sample[],
  get: Getter,
  rounds: number,
): { value: number; lo: number; hi: number } {
  const m = perRound(samples, 'metrics', get, rounds)
  const n = perRound(samples, 'none', get, rounds)
  const ratios = m.map((x, i) => x / (n[i] ?? NaN))
  return { value: median(ratios), ...bootstrap(rounds, (idx) => median(idx.map((i) => ratios[i] ?? NaN))) }
}

/** The peer target: median per-round added cost of metrics over the median per-round added cost of bpftrace. */
function peerShare(
  samples: readonly Sample[],
  get: Getter,
  rounds: number,
): { value: number; lo: number; hi: number } {
  const n = perRound(samples, 'none', get, rounds)
  const dm = perRound(samples, 'metrics', get, rounds).map((x, i) => x - (n[i] ?? NaN))
  const db = perRound(samples, 'bpftrace', get, rounds).map((x, i) => x - (n[i] ?? NaN))
  const f = (idx: number[]): number =>
    median(idx.map((i) => dm[i] ?? NaN)) / median(idx.map((i) => db[i] ?? NaN))
  return { value: f(dm.map((_, i) => i)), ...bootstrap(rounds, f) }
}

// ---- exactness at the generator's maximum rate -------------------------------------------------------------------

interface LoadTotals {
  runs: number
  connected: number
  accepted: number
  failed: number
  wallS: number
  connPerSec: number
}

/** `tcpload pair` runs back to back in `netns`, families alternating, until `durationS` have passed. */
async function fullSpeed(o: Options, netns: string, durationS: number): Promise<LoadTotals> {
  const t0 = performance.now()
  const deadline = t0 + durationS * 1000
  const t: LoadTotals = { runs: 0, connected: 0, accepted: 0, failed: 0, wallS: 0, connPerSec: 0 }
  for (let i = 0; i < 100_000 && performance.now() < deadline; i++) {
    const g = await runGenerator(FAMILIES[i % 2] ?? 'ipv4', EXACT_CHUNK, o.threads, netns)
    t.runs++
    t.connected += g.connected
    t.accepted += g.accepted
    t.failed += g.failed
  }
  t.wallS = (performance.now() - t0) / 1000
  t.connPerSec = t.connected / t.wallS
  return t
}

function createNetns(): { name: string; inode: number } {
  const name = `ovb-${process.pid}`
  execFileSync('ip', ['netns', 'add', name])
  cleanups.set(`netns ${name}`, () => execFileSync('ip', ['netns', 'delete', name]))
  execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up'])
  execFileSync('ip', ['netns', 'exec', name, 'sh', '-c', WIDE_PORTS])
  return { name, inode: statSync(`/run/netns/${name}`).ino }
}

/** Scrape until the counters stop moving (the last closes run in softirq after the generator exits). */
async function settledCounts(
  port: number,
  inode: number,
): Promise<{ counts: Counts; other: Record<string, number> }> {
  const where = (l: Record<string, string>): boolean => l['netns'] === String(inode)
  let last = ''
  for (let i = 0; i < 50; i++) {
    await sleep(200)
    const series = await scrape(port)
    const counts = exporterCounts(series, where)
    const key = JSON.stringify(counts)
    if (key === last) {
      const metric = (name: string): number => sum(series, name, () => true)
      return {
        counts,
        other: {
          unattributedAccepts: sum(series, 'tcptracer_unattributed_total', (l) => l['kind'] === 'accept'),
          unattributedConnects: sum(series, 'tcptracer_unattributed_total', (l) => l['kind'] === 'connect'),
          mapUpdateFailures: metric('tcptracer_kernel_map_update_failures_total'),
          eventsLost: metric('tcptracer_events_lost_total'),
          labelSetsDropped: metric('tcptracer_label_sets_dropped_total'),
        },
      }
    }
    last = key
  }
  throw new Error('the exporter counters did not settle within 10 s')
}

interface Exactness {
  durationS: number
  netns: number
  generatorConnections: number
  generator: LoadTotals
  exporter: Counts & Record<string, number> & { recursionMisses: number }
  exact: boolean
  mismatch: { connects: number; accepts: number; closes: number; connectFailures: number }
  trace: {
    durationS: number
    generator: LoadTotals
    expectedEvents: number
    printed: number
    byType: Record<string, number>
    lost: number
    /** state changes the trace's program never saw (kernel recursion guard): neither printed nor lost */
    recursionMisses: number
    accountedFor: boolean
    exitStatus: string
  }
  traceLost: number
  traceEvents: number
}

async function exactness(o: Options, tmp: string): Promise<Exactness> {
  const ns = createNetns()
  try {
    // metrics: the exporter counting only this namespace
    const config = path.join(tmp, 'exact.yml')
    writeFileSync(config, `filters:\n  netns: [${ns.inode}]\n`)
    await waitForQuiet()
    const e = await startExporter([`--config.file=${config}`])
    let gen: LoadTotals
    let got: Awaited<ReturnType<typeof settledCounts>>
    let exporterMisses: number
    try {
      await sleep(READY_SETTLE_MS)
      const progs = attachments(new Set([e.proc.pid])).stateProgs.get(e.proc.pid) ?? []
      console.error(
        `exactness: ${o.durationS} s at full speed in netns ${ns.name} (${ns.inode}), exporter filtering on it`,
      )
      gen = await fullSpeed(o, ns.name, o.durationS)
      got = await settledCounts(e.port, ns.inode)
      exporterMisses = recursionMisses(progs)
    } finally {
      await e.proc.stop()
    }
    const c = got.counts
    const mismatch = {
      connects: c.connects - gen.connected,
      accepts: c.accepts - gen.accepted,
      closes: c.closes - (gen.connected + gen.accepted),
      connectFailures: c.connectFailures - gen.failed,
    }
    console.error(
      `exactness: generator ${gen.connected} connected, ${gen.accepted} accepted, ${gen.failed} failed ` +
        `(${gen.connPerSec.toFixed(0)} conn/s); exporter ${c.connects} connects, ${c.accepts} accepts, ` +
        `${c.closes} closes; its program missed ${exporterMisses} state changes`,
    )

    // trace: every event printed, or counted as lost
    await waitForQuiet()
    const byType: Record<string, number> = {}
    let printed = 0
    let partial = ''
    const count = (chunk: Buffer): void => {
      const s = partial + chunk.toString('latin1')
      let start = 0
      for (let i = s.indexOf('\n'); i >= 0; i = s.indexOf('\n', start)) {
        printed++
        const m = /^\{"type":"([a-z_]+)"/.exec(s.slice(start, start + 32))
        const type = m?.[1] ?? 'unparsed'
        byType[type] = (byType[type] ?? 0) + 1
        start = i + 1
      }
      partial = s.slice(start)
    }
    const tr = await startTrace(count, ['-N', String(ns.inode)])
    let tgen: LoadTotals
    let traceMisses: number
    try {
      await sleep(READY_SETTLE_MS)
      const progs = attachments(new Set([tr.pid])).stateProgs.get(tr.pid) ?? []
      console.error(`exactness: ${o.durationS} s at full speed under trace --json -N ${ns.inode}`)
      tgen = await fullSpeed(o, ns.name, o.durationS)
      // let the consumer catch up: until the count stops moving (bounded)
      for (let i = 0, last = -1; i < 100 && printed !== last; i++) {
        last = printed
        await sleep(300)
      }
      traceMisses = recursionMisses(progs)
    } finally {
      await tr.stop('SIGINT')
    }
    const lostLine = tr.err.find((l) => /^\d+ events lost/.test(l))
    const lost = lostLine ? Number(/^(\d+)/.exec(lostLine)?.[1]) : 0
    // connect + accept + a close at each end per connection; a failed connect is one event
    const expectedEvents = 2 * tgen.connected + 2 * tgen.accepted + tgen.failed
    console.error(
      `exactness: trace printed ${printed} of ${expectedEvents} events, ${lost} lost, ` +
        `its program missed ${traceMisses} state changes`,
    )
    return {
      durationS: o.durationS,
      netns: ns.inode,
      generatorConnections: gen.connected,
      generator: gen,
      exporter: { ...c, ...got.other, recursionMisses: exporterMisses },
      exact: Object.values(mismatch).every((x) => x === 0) && gen.connected > 0,
      mismatch,
      trace: {
        durationS: o.durationS,
        generator: tgen,
        expectedEvents,
        printed,
        byType,
        lost,
        recursionMisses: traceMisses,
        accountedFor: printed + lost === expectedEvents,
        exitStatus: fmtExit(tr.exit),
      },
      traceLost: lost,
      traceEvents: printed,
    }
  } finally {
    cleanups.get(`netns ${ns.name}`)?.()
    cleanups.delete(`netns ${ns.name}`)
  }
}

// ---- startup ------------------------------------------------------------------------------------------------------

interface Startup {
  readyMs: Summary
  /** the daemon's own load-and-attach time ("tracer ready" in its log) */
  attachMs: Summary
  runs: number
  samples: Array<{ readyMs: number; attachMs: number | undefined }>
}

async function startup(o: Options): Promise<Startup> {
  const samples: Startup['samples'] = []
  for (let i = 0; i < o.startupRuns; i++) {
    await waitForQuiet()
    const e = await startExporter([], `127.0.0.1:${await freePort()}`)
    await e.proc.stop()
    samples.push({ readyMs: e.readyMs, attachMs: e.attachMs })
    console.error(`startup ${i + 1}/${o.startupRuns}: ready after ${e.readyMs.toFixed(0)} ms`)
    await sleep(SETTLE_MS)
  }
  return {
    readyMs: summary(samples.map((s) => s.readyMs)),
    attachMs: summary(samples.map((s) => s.attachMs ?? NaN).filter((x) => !Number.isNaN(x))),
    runs: samples.length,
    samples,
  }
}

// ---- where the cost goes: per-program run time (kernel.bpf_stats_enabled) -------------------------------------

interface ProgCost {
  config: CostConfig
  holder: string
  progId: number
  type: string
  name: string
  runs: number
  runTimeNs: number
  recursionMisses: number
  runsPerConnection: number
  nsPerRun: number
  nsPerConnection: number
}

function setBpfStats(value: string): void {
  writeFileSync(BPF_STATS_SYSCTL, `${value}\n`)
}

/** The configurations of the per-program breakdown: the setups, and our program alone with nothing on top. */
const COST_CONFIGS = ['state-only', 'metrics', 'metrics+trace', 'bpftrace'] as const
type CostConfig = (typeof COST_CONFIGS)[number]

interface BpfStats {
  connections: number
  families: Family[]
  note: string
  programs: ProgCost[]
}

async function bpfStats(o: Options): Promise<BpfStats> {
  const original = readFileSync(BPF_STATS_SYSCTL, 'utf8').trim()
  cleanups.set('kernel.bpf_stats_enabled', () => setBpfStats(original))
  const programs: ProgCost[] = []
  try {
    for (const config of COST_CONFIGS) {
      await waitForNoForeign(o.waitForeignMs)
      await waitForQuiet()
      // state-only: our program loaded in this process without aggregation and without a consumer, as
      // bench/accept-cost.ts does: what tracking connection state costs before anything is counted
      const tracer = config === 'state-only' ? TcpTracer.open({ acceptMode: 'listener' }) : undefined
      const r = config === 'state-only' ? undefined : await startSetup(config)
      try {
        tracer?.attach()
        await sleep(READY_SETTLE_MS)
        const holders: Array<[string, number]> = tracer
          ? [['bench', process.pid]]
          : Object.entries(r?.procs ?? {}).map(([role, p]) => [role, p.pid])
        const a = attachments(new Set(holders.map(([, pid]) => pid)))
        const progs = holders.flatMap(([holder, pid]) =>
          (a.stateProgs.get(pid) ?? []).map((id) => ({ holder, id })),
        )
        const show = (): Map<number, ProgInfo> => new Map(progs.map(({ id }) => [id, progInfo(id)]))
        let before: Map<number, ProgInfo>
        let after: Map<number, ProgInfo>
        setBpfStats('1')
        try {
          before = show()
          for (const f of FAMILIES) await runGenerator(f, o.connections, o.threads)
          after = show()
        } finally {
          setBpfStats(original)
        }
        const n = o.connections * FAMILIES.length
        console.error(`bpf stats: ${config} measured`)
        for (const { holder, id } of progs) {
          const x = after.get(id)
          const b = before.get(id)
          const runs = (x?.run_cnt ?? 0) - (b?.run_cnt ?? 0)
          const ns = (x?.run_time_ns ?? 0) - (b?.run_time_ns ?? 0)
          programs.push({
            config,
            holder,
            progId: id,
            type: x?.type ?? '?',
            name: x?.name ?? '?',
            runs,
            runTimeNs: ns,
            recursionMisses: (x?.recursion_misses ?? 0) - (b?.recursion_misses ?? 0),
            runsPerConnection: runs / n,
            nsPerRun: runs ? ns / runs : NaN,
            nsPerConnection: ns / n,
          })
        }
      } finally {
        tracer?.close()
        if (r) await stopSetup(r)
        await sleep(SETTLE_MS)
      }
    }
  } finally {
    setBpfStats(original)
    cleanups.delete('kernel.bpf_stats_enabled')
  }
  return {
    connections: o.connections,
    families: [...FAMILIES],
    note:
      'kernel.bpf_stats_enabled adds two clock reads to every run, so these run times are slightly ' +
      'inflated; they count the program bodies only, not the tracepoint dispatch around them',
    programs,
  }
}

// ---- report ---------------------------------------------------------------------------------------------------------

interface Target {
  measure: string
  target: string
  value: number
  met: boolean
  basis: string
  [k: string]: unknown
}

function fmt(x: number, d = 2): string {
  return Number.isFinite(x) ? x.toFixed(d) : String(x)
}

function statTable(title: string, unit: string, d: number, s: Record<Setup, SetupStat>): string {
  const lines = [
    `| ${title} | median ${unit} | min–max | vs none (medians) | paired vs none: median (min–max) | paired Δ ${unit} |`,
    '| --- | ---: | ---: | ---: | ---: | ---: |',
  ]
  for (const k of SETUPS) {
    const x = s[k]
    const paired =
      k === 'none'
        ? ''
        : `${fmt(x.pairedRatio.median, 3)} (${fmt(x.pairedRatio.min, 3)}–${fmt(x.pairedRatio.max, 3)})`
    const delta = k === 'none' ? '' : `${x.pairedDelta.median >= 0 ? '+' : ''}${fmt(x.pairedDelta.median, d)}`
    lines.push(
      `| ${k} | ${fmt(x.median, d)} | ${fmt(x.min, d)}–${fmt(x.max, d)} | ${fmt(x.ratioToNone, 3)} | ${paired} | ${delta} |`,
    )
  }
  return lines.join('\n')
}

// ---- main -------------------------------------------------------------------------------------------------------------

function version(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8' }).split('\n')[0]?.trim() ?? '?'
  } catch {
    return 'missing'
  }
}

async function main(): Promise<void> {
  const o = parseOptions()
  if (process.getuid?.() !== 0) throw new Error('run as root: attaching BPF programs needs it')
  for (const [file, hint] of [
    [CLI, 'npm run build'],
    [TCPLOAD, 'npm run build:helpers'],
    [SYSLOOP, 'npm run build:helpers'],
    [PEER_SCRIPT, 'it ships with the repository'],
  ] as const) {
    if (!existsSync(file)) throw new Error(`${file} is missing: ${hint}`)
  }
  for (const [cmd, pkg] of [
    ['bpftool', 'bpftool'],
    ['bpftrace', 'bpftrace'],
    ['unshare', 'util-linux'],
    ['ip', 'iproute2'],
  ] as const) {
    if (version('sh', ['-c', `command -v ${cmd}`]) === 'missing') {
      throw new Error(`${cmd} is missing: apt-get install -y ${pkg}`)
    }
  }
  const started = new Date()
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'ovb-'))
  cleanups.set('temporary directory', () => rmSync(tmp, { recursive: true, force: true }))
  devNull = openSync('/dev/null', 'w')
  cleanups.set('/dev/null', () => closeSync(devNull))
  console.error(
    `overhead: ${o.rounds} rounds × ${SETUPS.length} setups × ${FAMILIES.length} families; tcpload pair ` +
      `${o.connections} connections --threads ${o.threads} (fresh netns per run); sysloop ${o.calls} calls; ` +
      `exactness ${o.durationS} s twice; ${o.startupRuns} startups`,
  )

  // warm-up, discarded: page cache, the addon, bpftrace's first compile, the generator
  await waitForNoForeign(o.waitForeignMs)
  for (const setup of ['metrics', 'bpftrace'] as const) await stopSetup(await startSetup(setup))
  for (const f of FAMILIES) await runGenerator(f, o.connections, o.threads)
  await runSysloop(o.calls)

  const samples: Sample[] = []
  for (let round = 0; round < o.rounds; round++) {
    const order = SETUPS.map((_, i) => SETUPS[(i + round) % SETUPS.length] ?? 'none')
    for (const [position, setup] of order.entries()) {
      const s = await sample(o, round, position, setup)
      samples.push(s)
      console.error(
        `round ${round + 1}/${o.rounds} ${setup.padEnd(13)} ${fmt(s.connCpuUs)} µs/conn ` +
          `(v4 ${fmt(s.connCpuUsByFamily.ipv4)}, v6 ${fmt(s.connCpuUsByFamily.ipv6)}; machine ` +
          `${fmt(s.connSystemUs)}) ${fmt(s.throughput, 0)} conn/s ${fmt(s.callCpuNs, 1)} ns/getppid` +
          (s.exporter && !s.exporter.exact ? ' EXPORTER COUNTS OFF' : '') +
          ` misses ${JSON.stringify(s.recursionMisses)} [${((Date.now() - started.getTime()) / 1000).toFixed(0)} s]`,
      )
    }
  }
  const R = o.rounds

  const ex = await exactness(o, tmp)
  const st = await startup(o)
  const costs = o.bpfStats ? await bpfStats(o) : undefined

  // ---- summaries
  const connCpuUs = allSetups(samples, (s) => s.connCpuUs, R)
  const byFamily = (get: (s: Sample, f: Family) => number): Record<Family, Record<Setup, SetupStat>> => ({
    ipv4: allSetups(samples, (s) => get(s, 'ipv4'), R),
    ipv6: allSetups(samples, (s) => get(s, 'ipv6'), R),
  })
  const connCpuUsByFamily = byFamily((s, f) => s.connCpuUsByFamily[f])
  const connSystemUs = allSetups(samples, (s) => s.connSystemUs, R)
  const throughputConnPerSec = allSetups(samples, (s) => s.throughput, R)
  const throughputByFamily = byFamily((s, f) => s.throughputByFamily[f])
  const callCpuNs = allSetups(samples, (s) => s.callCpuNs, R)
  const syscallNs = {
    ...callCpuNs,
    ratioToNone: callCpuNs.metrics.ratioToNone,
    pairedRatio: callCpuNs.metrics.pairedRatio,
  }

  const cpuGet: Record<'both' | Family, Getter> = {
    both: (s) => s.connCpuUs,
    ipv4: (s) => s.connCpuUsByFamily.ipv4,
    ipv6: (s) => s.connCpuUsByFamily.ipv6,
  }
  const cpu = {
    both: cpuRatio(samples, cpuGet.both, R),
    ipv4: cpuRatio(samples, cpuGet.ipv4, R),
    ipv6: cpuRatio(samples, cpuGet.ipv6, R),
  }
  const share = {
    both: peerShare(samples, cpuGet.both, R),
    ipv4: peerShare(samples, cpuGet.ipv4, R),
    ipv6: peerShare(samples, cpuGet.ipv6, R),
  }
  const exporterChecks = samples.filter((s) => s.exporter)
  const missesBySetup = Object.fromEntries(
    SETUPS.filter((k) => k !== 'none').map((k) => {
      const of = samples.filter((s) => s.setup === k)
      const roles = ROLES[k]
      return [
        k,
        Object.fromEntries(
          roles.map((role) => {
            const xs = of.map((s) => s.recursionMisses[role] ?? 0)
            const total = xs.reduce((a, x) => a + x, 0)
            return [
              role,
              {
                ...summary(xs),
                total,
                perMillionConnections: (1e6 * total) / (of.length * 2 * o.connections),
              },
            ]
          }),
        ),
      ]
    }),
  )
  const targets: Target[] = [
    {
      measure: 'metrics-mode CPU per connection, ratio to none',
      target: `≤ ${CPU_TARGET}`,
      value: cpu.both.value,
      met: [cpu.both, cpu.ipv4, cpu.ipv6].every((x) => x.value <= CPU_TARGET),
      basis:
        'median over rounds of (metrics / none) of the generator CPU per connection; must hold for IPv4, ' +
        'IPv6 and both together; ci95 is a bootstrap over rounds',
      byFamily: { ipv4: cpu.ipv4, ipv6: cpu.ipv6 },
      ci95: [cpu.both.lo, cpu.both.hi],
      ratioOfMedians: connCpuUs.metrics.ratioToNone,
    },
    {
      measure: "our added CPU per connection as a share of the bpftrace peer's added cost",
      target: `≤ ${PEER_SHARE_TARGET}`,
      value: share.both.value,
      met: [share.both, share.ipv4, share.ipv6].every((x) => x.value <= PEER_SHARE_TARGET),
      basis:
        'median over rounds of (metrics − none) / median over rounds of (bpftrace − none); must hold for ' +
        'IPv4, IPv6 and both together',
      byFamily: { ipv4: share.ipv4, ipv6: share.ipv6 },
      ci95: [share.both.lo, share.both.hi],
      addedUs: {
        metrics: connCpuUs.metrics.pairedDelta.median,
        bpftrace: connCpuUs.bpftrace.pairedDelta.median,
      },
    },
    {
      measure: 'count error at the maximum rate (exporter counters − generator counts)',
      target: '= 0',
      value:
        Math.abs(ex.mismatch.connects) +
        Math.abs(ex.mismatch.accepts) +
        Math.abs(ex.mismatch.closes) +
        Math.abs(ex.mismatch.connectFailures),
      met: ex.exact,
      basis:
        `${ex.durationS} s at full speed (${ex.generatorConnections} connections, ${fmt(ex.generator.connPerSec, 0)}/s); ` +
        `plus ${exporterChecks.length} per-sample checks, ${exporterChecks.filter((s) => s.exporter?.exact).length} exact. ` +
        `The exporter's program missed ${ex.exporter.recursionMisses} state changes (kernel recursion guard)`,
      mismatch: ex.mismatch,
    },
    {
      measure: 'launch to /readyz 200, ms (median)',
      target: `≤ ${READY_TARGET_MS}`,
      value: st.readyMs.median,
      met: st.readyMs.median <= READY_TARGET_MS,
      basis: `median of ${st.runs} launches, polled every ${READY_POLL_MS} ms; max ${fmt(st.readyMs.max, 0)} ms`,
    },
  ]

  const analysis = costs && {
    addedCpuUsPerConnection: Object.fromEntries(
      SETUPS.filter((s) => s !== 'none').map((s) => [s, connCpuUs[s].pairedDelta.median]),
    ),
    bpfRunTimeUsPerConnection: Object.fromEntries(
      COST_CONFIGS.map((c) => [
        c,
        costs.programs.filter((p) => p.config === c).reduce((a, p) => a + p.nsPerConnection / 1000, 0),
      ]),
    ),
    note:
      'run time counts only the program bodies; the dispatch around them (the raw tracepoint trampoline, ' +
      "or the perf tracepoint's argument copy and buffer for bpftrace) and cache effects are in the added " +
      'CPU but not in the run time',
  }

  const json = {
    benchmark: 'overhead',
    started: started.toISOString(),
    finished: new Date().toISOString(),
    host: {
      kernel: os.release(),
      cpus: NCPU,
      cpuModel: os.cpus()[0]?.model ?? '?',
      node: process.version,
      bpftrace: version('bpftrace', ['--version']),
      bpftool: version('bpftool', ['version']),
    },
    options: { ...o, out: path.relative(packageRoot, o.out) },
    units: {
      connCpuUs: 'generator CPU (user + sys) µs per connection, both families',
      connSystemUs: 'whole-machine busy CPU µs per connection (consumers included)',
      throughputConnPerSec: 'connections per second of wall time',
      syscallNs: 'sysloop CPU ns per getppid() call',
      readyMs: 'ms from launch to the first 200 from /readyz',
    },
    setups: {
      none: { description: 'nothing attached' },
      metrics: {
        description: 'the exporter in metrics mode, started before the sample and stopped after it',
        command: 'node dist/src/cli.js run --web.listen-address=127.0.0.1:0 --log.format=json',
        setupReadyMs: summary(samples.filter((s) => s.setup === 'metrics').map((s) => s.setupReadyMs)),
        countsExact: `${samples.filter((s) => s.setup === 'metrics' && s.exporter?.exact).length} of ${R} samples`,
      },
      'metrics+trace': {
        description: 'the exporter plus an event consumer writing JSON to /dev/null',
        command: 'node dist/src/cli.js trace --json > /dev/null',
        countsExact: `${samples.filter((s) => s.setup === 'metrics+trace' && s.exporter?.exact).length} of ${R} samples`,
      },
      bpftrace: {
        description:
          'bench/peer.bt: per-comm connect/accept/close counts and a lifetime histogram on tracepoint:sock:inet_sock_set_state',
        command: 'bpftrace -f json -B line bench/peer.bt',
        peerCounts: samples.filter((s) => s.peer).map((s) => s.peer),
      },
    },
    connCpuUs,
    connCpuUsByFamily,
    connSystemUs,
    throughputConnPerSec,
    throughputByFamily,
    syscallNs,
    recursionMisses: missesBySetup,
    exactness: ex,
    startup: st,
    bpfStats: costs,
    analysis,
    targets,
    samples,
  }

  const report = [
    `## Overhead (${started.toISOString()}, ${os.release()}, ${NCPU} CPUs)`,
    '',
    `${R} rounds, setups alternating (order rotated per round). Generator: \`tcpload pair --count ${o.connections} ` +
      `--threads ${o.threads}\` over IPv4 and IPv6 loopback, a fresh network namespace per run; sysloop: ${o.calls} getppid() calls.`,
    '',
    statTable('CPU per connection (generator rusage, both families)', 'µs', 2, connCpuUs),
    '',
    statTable('CPU per connection, IPv4', 'µs', 2, connCpuUsByFamily.ipv4),
    '',
    statTable('CPU per connection, IPv6', 'µs', 2, connCpuUsByFamily.ipv6),
    '',
    statTable('CPU per connection (whole machine)', 'µs', 2, connSystemUs),
    '',
    statTable('throughput', 'conn/s', 0, throughputConnPerSec),
    '',
    statTable('CPU per getppid() (sysloop rusage)', 'ns', 1, callCpuNs),
    '',
    `Exactness: ${ex.durationS} s at ${fmt(ex.generator.connPerSec, 0)} conn/s, ${ex.generatorConnections} connections: ` +
      `exporter ${ex.exporter.connects} connects, ${ex.exporter.accepts} accepts, ${ex.exporter.closes} closes: ` +
      `${ex.exact ? 'exact' : `NOT exact ${JSON.stringify(ex.mismatch)}`}. trace: ${ex.traceEvents} events printed, ` +
      `${ex.traceLost} lost, of ${ex.trace.expectedEvents} expected.`,
    '',
    `Startup: /readyz 200 after ${fmt(st.readyMs.median, 0)} ms median (${fmt(st.readyMs.min, 0)}–${fmt(st.readyMs.max, 0)}), ${st.runs} runs.`,
    '',
    ...(costs
      ? [
          '| config | program | runs per connection | ns per run | µs per connection | recursion misses |',
          '| --- | --- | ---: | ---: | ---: | ---: |',
          ...costs.programs.map(
            (p) =>
              `| ${p.config} | ${p.holder}: ${p.name} (${p.type}) | ${fmt(p.runsPerConnection)} | ` +
              `${fmt(p.nsPerRun, 0)} | ${fmt(p.nsPerConnection / 1000)} | ${p.recursionMisses} |`,
          ),
          '',
        ]
      : []),
    '| target | value | met |',
    '| --- | ---: | --- |',
    ...targets.map((t) => `| ${t.measure} ${t.target} | ${fmt(t.value, 3)} | ${t.met ? 'yes' : '**no**'} |`),
  ].join('\n')
  console.log(report)

  mkdirSync(path.dirname(o.out), { recursive: true })
  const text = await prettier.format(JSON.stringify(json), {
    ...(await prettier.resolveConfig(o.out)),
    filepath: o.out,
  })
  writeFileSync(o.out, text)
  console.error(`wrote ${path.relative(process.cwd(), o.out)}`)
}

main()
  .catch((err: unknown) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : err)
    process.exitCode = 1
  })
  .finally(() => (interrupted ? undefined : cleanup()))
