// What attaching the tracer costs, per accept mode: CPU time per loopback connection of a fixed-count
// load generator, and CPU time per getppid() call (the tax every syscall of every process pays while a
// syscalls:* tracepoint is attached). Setups alternate within each round, rotated from round to round.
//
//   node --import tsx bench/accept-cost.ts [--rounds R] [--connections N] [--threads T] [--calls C]
//                                          [--no-netns] [--wait-foreign S] [--out FILE]
//
// Needs root, a built tree (npm run build) and test/helpers/bin/sysloop. The tracer is attached in
// this process with no event consumer, so the BPF programs run but never reserve ring-buffer records
// (events_enabled stays 0). Their cost runs in the kernel context of the traced process, softirq work
// on top of it included (tick accounting), so the child's rusage carries it; softirq work deferred to
// ksoftirqd does not, which the whole-machine column (/proc/stat) covers. Each generator run gets a
// fresh network namespace, so TIME_WAIT sockets of earlier runs do not drift the cost. Samples wait
// for a quiet machine and are measured again if another process attaches tracing programs meanwhile
// (bpftool), since those would tax the setups unevenly.
import { execFile, execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs, promisify } from 'node:util'

import * as prettier from 'prettier'

import { packageRoot } from '../src/kernel/paths.js'
import {
  ACCEPT_PROGRAMS,
  BACKBONE_PROGRAM,
  NESTED_BACKBONE_PROGRAM,
  TcpTracer,
} from '../src/kernel/tracer.js'

const SETUPS = ['none', 'listener', 'syscall'] as const
type Setup = (typeof SETUPS)[number]

/** BPF attachments this process must hold in each setup (bpftool perf list). */
const EXPECTED_ATTACHMENTS: Record<Setup, string[]> = {
  none: [],
  listener: ['inet_sock_set_state', 'inet_sock_set_state'],
  syscall: ['inet_sock_set_state', 'inet_sock_set_state', 'sys_exit_accept', 'sys_exit_accept4'],
}
const SETTLE_MS = 300
const SAMPLE_RETRIES = 5
const WATCH_MS = 250
const QUIET_PCT = 10
const QUIET_WINDOW_MS = 500
const QUIET_WAIT_MS = 30_000

const run = promisify(execFile)

interface Options {
  rounds: number
  connections: number
  threads: number
  calls: number
  netns: boolean
  waitForeignMs: number
  out: string
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '5' },
      connections: { type: 'string', default: '20000' },
      threads: { type: 'string', default: '1' },
      calls: { type: 'string', default: '5000000' },
      'no-netns': { type: 'boolean', default: false },
      'wait-foreign': { type: 'string', default: '300' },
      out: { type: 'string', default: path.join(packageRoot, 'bench', 'results', 'accept-cost.json') },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  })
  if (values.help) {
    console.log(
      'Usage: node --import tsx bench/accept-cost.ts [--rounds R] [--connections N] [--threads T]\n' +
        '                                             [--calls C] [--no-netns] [--wait-foreign S] [--out FILE]\n' +
        '  --rounds R       rounds; each runs every setup once, in rotated order (default 5)\n' +
        '  --connections N  loopback connections per generator run (default 20000)\n' +
        '  --threads T      tcpload pair --threads: T server and T client threads (default 1)\n' +
        '  --calls C        getppid() calls per sysloop run (default 5000000)\n' +
        '  --no-netns       run the generator in this network namespace, not a fresh one per run\n' +
        '  --wait-foreign S wait up to S seconds for other processes to detach tracing programs (300)\n' +
        '  --out FILE       JSON results (default bench/results/accept-cost.json)',
    )
    process.exit(0)
  }
  const int = (name: string, v: string, min: number, max: number): number => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new RangeError(`--${name} must be an integer from ${min} to ${max}, got ${v}`)
    }
    return n
  }
  return {
    rounds: int('rounds', values.rounds, 1, 1000),
    connections: int('connections', values.connections, 100, 10_000_000),
    threads: int('threads', values.threads, 1, 64),
    calls: int('calls', values.calls, 1000, 1_000_000_000),
    netns: !values['no-netns'],
    waitForeignMs: 1000 * int('wait-foreign', values['wait-foreign'], 0, 86400),
    out: path.resolve(values.out),
  }
}

// ---- system-wide CPU from /proc/stat -------------------------------------------------------------

interface CpuStat {
  busy: number
  steal: number
}

const TICK_US = 1e6 / 100 // /proc/stat counts USER_HZ (100) ticks

function readCpuStat(): CpuStat {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? ''
  const f = line.trim().split(/\s+/).slice(1).map(Number)
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f
  return { busy: (user + nice + system + irq + softirq) * TICK_US, steal: steal * TICK_US }
}

// ---- foreign tracing programs (bpftool) ----------------------------------------------------------

interface PerfEntry {
  pid: number
  prog_id: number
  fd_type?: string
  tracepoint?: string
  func?: string
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
let haveBpftool = true

function bpftool<T>(args: string[]): T[] {
  return JSON.parse(execFileSync('bpftool', [...args, '-j'], { encoding: 'utf8' }) || '[]') as T[]
}

interface Attachments {
  /** names of the tracepoints this process holds, sorted */
  ours: string[]
  /** ids of the programs this process has attached */
  ownProgs: Set<number>
  /** descriptions of tracing attachments held by anyone else */
  foreign: string[]
}

/** What is attached, or null when bpftool is missing. */
function attachments(): Attachments | null {
  if (!haveBpftool) return null
  let perf: PerfEntry[]
  let links: LinkEntry[]
  try {
    perf = bpftool<PerfEntry>(['perf', 'list'])
    links = bpftool<LinkEntry>(['link', 'list'])
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    haveBpftool = false
    console.error('bpftool not found: cannot check for foreign tracing programs; results may be skewed')
    return null
  }
  // A child holds our fds for a moment between fork and exec: whose program it is decides, not the pid.
  const ownProgs = new Set(perf.filter((p) => p.pid === process.pid).map((p) => p.prog_id))
  const ours = perf.filter((p) => p.pid === process.pid).map((p) => p.tracepoint ?? p.func ?? '?')
  const foreign = perf
    .filter((p) => !ownProgs.has(p.prog_id))
    .map(
      (p) =>
        `pid ${p.pid} ${commOf(p.pid)}: ${p.fd_type ?? '?'} ${p.tracepoint ?? p.func ?? '?'} (prog ${p.prog_id})`,
    )
  const held = new Set(perf.map((p) => p.prog_id))
  for (const l of links) {
    if (!TRACING_LINK_TYPES.has(l.type) || held.has(l.prog_id)) continue
    foreign.push(`link ${l.id}: ${l.type} ${l.tp_name ?? ''} (prog ${l.prog_id}, no holder found)`)
  }
  return { ours: ours.sort(), ownProgs, foreign }
}

function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 120)
  } catch {
    return '?'
  }
}

/** Wait until no other process has tracing programs attached; throws after `maxMs`. */
async function waitForNoForeign(maxMs: number): Promise<void> {
  const deadline = Date.now() + maxMs
  let told = false
  for (;;) {
    const a = attachments()
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
 * Poll `bpftool perf list` while a sample runs: another process's tracing program, attached even
 * briefly (other engineers' tests do that), spoils the sample. Returns a stop function that
 * resolves to what was seen.
 */
function watchForeign(ownProgs: ReadonlySet<number>): () => Promise<string[]> {
  const seen = new Set<string>()
  const state = { stopped: false }
  const poll = async (): Promise<void> => {
    while (!state.stopped) {
      try {
        const { stdout } = await run('bpftool', ['perf', 'list', '-j'])
        for (const p of JSON.parse(stdout || '[]') as PerfEntry[]) {
          if (ownProgs.has(p.prog_id)) continue
          seen.add(`pid ${p.pid} ${commOf(p.pid)}: ${p.tracepoint ?? p.func ?? '?'}`)
        }
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return // the checks around the sample say so
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

/** Busy share of all CPUs over `ms`, in %. This process sleeps meanwhile, so it is everyone else. */
async function busyPct(ms: number): Promise<number> {
  const a = readCpuStat()
  await sleep(ms)
  const b = readCpuStat()
  return (100 * (b.busy - a.busy)) / (ms * 1000 * os.availableParallelism())
}

/**
 * Wait until the machine is quiet (other engineers' tests share it): under QUIET_PCT busy over a
 * QUIET_WINDOW_MS window. Gives up after QUIET_WAIT_MS and measures anyway; returns the last busy %.
 */
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

// ---- the children ----------------------------------------------------------------------------------

const tcpload = path.join(packageRoot, 'test', 'helpers', 'bin', 'tcpload')
const sysloop = path.join(packageRoot, 'test', 'helpers', 'bin', 'sysloop')

interface GeneratorResult {
  cpuUs: number
  wallUs: number
  /** busy CPU of the whole machine during the run (all CPUs, all processes, irq and softirq) */
  systemBusyUs: number
  stealUs: number
}

async function runGenerator(opts: Options): Promise<GeneratorResult> {
  const args = ['pair', '--count', String(opts.connections), '--threads', String(opts.threads)]
  const [file, argv] = opts.netns
    ? // a fresh network namespace per run: no TIME_WAIT sockets left over from earlier runs
      ['unshare', ['--net', '--', 'sh', '-c', 'ip link set lo up && exec "$0" "$@"', tcpload, ...args]]
    : [tcpload, args]
  const before = readCpuStat()
  const { stdout } = await run(file, argv as string[], { maxBuffer: 1 << 20 })
  const after = readCpuStat()
  const done = stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, number | string>)
    .find((e) => e['event'] === 'done')
  if (!done) throw new Error(`tcpload printed no done line:\n${stdout}`)
  const { accepted, connected, failed } = done
  if (accepted !== opts.connections || connected !== opts.connections || failed !== 0) {
    throw new Error(`tcpload did not complete every connection: ${JSON.stringify(done)}`)
  }
  return {
    cpuUs: Number(done['cpu_user_us']) + Number(done['cpu_sys_us']),
    wallUs: Number(done['wall_us']),
    systemBusyUs: after.busy - before.busy,
    stealUs: after.steal - before.steal,
  }
}

interface SysloopResult {
  cpuUs: number
  wallNs: number
}

async function runSysloop(calls: number): Promise<SysloopResult> {
  const { stdout } = await run(sysloop, [String(calls)])
  const r = JSON.parse(stdout) as { calls: number; cpu_user_us: number; cpu_sys_us: number; wall_ns: number }
  if (r.calls !== calls) throw new Error(`sysloop made ${r.calls} calls, not ${calls}`)
  return { cpuUs: r.cpu_user_us + r.cpu_sys_us, wallNs: r.wall_ns }
}

// ---- one sample: attach, measure, detach -------------------------------------------------------------

interface Sample {
  round: number
  position: number
  setup: Setup
  /** generator CPU (user + sys) per connection, µs */
  connCpuUs: number
  connWallUs: number
  /** whole-machine busy CPU per connection during the generator run, µs */
  connSystemUs: number
  /** whole-machine busy CPU during the generator run that its own rusage does not explain, % of all CPUs */
  otherCpuPct: number
  stealUs: number
  /** sysloop CPU (user + sys) per getppid() call, ns */
  callCpuNs: number
  callWallNs: number
  /** busy share of all CPUs just before the sample, and how long we waited for it to drop */
  busyBeforePct: number
  waitedForQuietMs: number
  attached: string[] | null
}

function attach(setup: Setup): TcpTracer | null {
  if (setup === 'none') return null
  const tracer = TcpTracer.open({ acceptMode: setup })
  try {
    const attached = tracer
      .attach()
      .filter((p) => p.attached)
      .map((p) => p.name)
      .sort()
    const want = [BACKBONE_PROGRAM, NESTED_BACKBONE_PROGRAM, ...ACCEPT_PROGRAMS[setup]].sort()
    if (attached.join() !== want.join()) {
      throw new Error(`setup ${setup}: attached [${attached.join(', ')}], expected [${want.join(', ')}]`)
    }
  } catch (err) {
    tracer.close()
    throw err
  }
  return tracer
}

function checkOurs(setup: Setup, a: Attachments | null): void {
  if (!a) return
  const want = EXPECTED_ATTACHMENTS[setup]
  if (a.ours.join() !== want.join()) {
    throw new Error(
      `setup ${setup}: this process holds [${a.ours.join(', ')}], expected [${want.join(', ')}]`,
    )
  }
}

async function sample(opts: Options, round: number, position: number, setup: Setup): Promise<Sample> {
  for (let attempt = 1; ; attempt++) {
    await waitForNoForeign(opts.waitForeignMs)
    const quiet = await waitForQuiet()
    const tracer = attach(setup)
    try {
      await sleep(SETTLE_MS)
      const pre = attachments()
      checkOurs(setup, pre)
      const stopWatch = watchForeign(pre?.ownProgs ?? new Set())
      let gen: GeneratorResult
      let loop: SysloopResult
      let seen: string[]
      try {
        gen = await runGenerator(opts)
        await sleep(SETTLE_MS) // let the namespace teardown finish before the next measurement
        loop = await runSysloop(opts.calls)
      } finally {
        seen = await stopWatch()
      }
      const post = attachments()
      checkOurs(setup, post)
      const foreign = [...new Set([...seen, ...(post?.foreign ?? [])])]
      if (foreign.length) {
        const msg = `round ${round + 1} ${setup}: foreign tracing programs attached mid-sample`
        if (attempt >= SAMPLE_RETRIES) throw new Error(`${msg}, ${attempt} times:\n  ${foreign.join('\n  ')}`)
        console.error(`${msg}, measuring again:\n  ${foreign.join('\n  ')}`)
        continue
      }
      const n = opts.connections
      return {
        round,
        position,
        setup,
        connCpuUs: gen.cpuUs / n,
        connWallUs: gen.wallUs / n,
        connSystemUs: gen.systemBusyUs / n,
        otherCpuPct:
          (100 * Math.max(0, gen.systemBusyUs - gen.cpuUs)) / (gen.wallUs * os.availableParallelism()),
        stealUs: gen.stealUs,
        callCpuNs: (loop.cpuUs * 1000) / opts.calls,
        callWallNs: loop.wallNs / opts.calls,
        busyBeforePct: quiet.busyPct,
        waitedForQuietMs: quiet.waitedMs,
        attached: pre?.ours ?? null,
      }
    } finally {
      tracer?.close()
      await sleep(SETTLE_MS)
    }
  }
}

// ---- statistics and report -------------------------------------------------------------------------------

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? (s[m] ?? NaN) : ((s[m - 1] ?? NaN) + (s[m] ?? NaN)) / 2
}

interface Stat {
  median: number
  min: number
  max: number
  /** median / median of 'none' */
  ratio: number
  /** median over rounds of (this setup / 'none' in the same round) */
  pairedRatio: number
  pairedMin: number
  pairedMax: number
}

type StatKey = 'connCpuUs' | 'connSystemUs' | 'callCpuNs'

function stat(samples: readonly Sample[], setup: Setup, key: StatKey): Stat {
  const of = (s: Setup): Sample[] => samples.filter((x) => x.setup === s)
  const xs = of(setup).map((x) => x[key])
  const base = median(of('none').map((x) => x[key]))
  const paired = of(setup).map((x) => {
    const b = of('none').find((y) => y.round === x.round)
    return b ? x[key] / b[key] : NaN
  })
  return {
    median: median(xs),
    min: Math.min(...xs),
    max: Math.max(...xs),
    ratio: median(xs) / base,
    pairedRatio: median(paired),
    pairedMin: Math.min(...paired),
    pairedMax: Math.max(...paired),
  }
}

function table(title: string, unit: string, digits: number, stats: Record<Setup, Stat>): string {
  const f = (x: number, d = digits): string => x.toFixed(d)
  const lines = [
    `| ${title} | median ${unit} | min–max ${unit} | ± half range | median − none ${unit} | vs none | paired vs none (min–max) |`,
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  for (const s of SETUPS) {
    const x = stats[s]
    const spread = `±${f((100 * (x.max - x.min)) / 2 / x.median, 1)} %`
    const delta =
      s === 'none' ? '' : `${x.median - stats.none.median >= 0 ? '+' : ''}${f(x.median - stats.none.median)}`
    const paired = s === 'none' ? '' : `${f(x.pairedRatio, 3)} (${f(x.pairedMin, 3)}–${f(x.pairedMax, 3)})`
    lines.push(
      `| ${s} | ${f(x.median)} | ${f(x.min)}–${f(x.max)} | ${spread} | ${delta} | ${f(x.ratio, 3)} | ${paired} |`,
    )
  }
  return lines.join('\n')
}

// ---- main -----------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const opts = parseOptions()
  if (process.getuid?.() !== 0) throw new Error('run as root: attaching BPF programs needs it')
  for (const [bin, hint] of [
    [tcpload, 'npm run build:helpers'],
    [sysloop, 'cc -O2 -std=c11 -Wall -Wextra -Werror -o test/helpers/bin/sysloop test/helpers/sysloop.c'],
  ] as const) {
    if (!existsSync(bin)) throw new Error(`${bin} is missing: ${hint}`)
  }
  const started = new Date()
  console.error(
    `accept-cost: ${opts.rounds} rounds × ${SETUPS.length} setups; tcpload pair ${opts.connections} connections, ` +
      `--threads ${opts.threads}${opts.netns ? ', fresh netns per run' : ''}; sysloop ${opts.calls} calls`,
  )

  // warm-up, discarded: page cache, the addon, the BPF object's first load
  await waitForNoForeign(opts.waitForeignMs)
  attach('listener')?.close()
  await runGenerator(opts)
  await runSysloop(opts.calls)

  const samples: Sample[] = []
  for (let round = 0; round < opts.rounds; round++) {
    const order = SETUPS.map((_, i) => SETUPS[(i + round) % SETUPS.length] as Setup)
    for (const [position, setup] of order.entries()) {
      const s = await sample(opts, round, position, setup)
      samples.push(s)
      console.error(
        `round ${round + 1}/${opts.rounds} ${setup.padEnd(8)} ${s.connCpuUs.toFixed(2)} µs/conn ` +
          `(machine ${s.connSystemUs.toFixed(2)}, other ${s.otherCpuPct.toFixed(1)} %)  ` +
          `${s.callCpuNs.toFixed(1)} ns/getppid`,
      )
    }
  }

  const summarize = (key: StatKey): Record<Setup, Stat> => ({
    none: stat(samples, 'none', key),
    listener: stat(samples, 'listener', key),
    syscall: stat(samples, 'syscall', key),
  })
  const summary = {
    connCpuUs: summarize('connCpuUs'),
    connSystemUs: summarize('connSystemUs'),
    callCpuNs: summarize('callCpuNs'),
  }
  const otherCpu = samples.map((s) => s.otherCpuPct)

  const report = [
    `## Accept attribution cost (${started.toISOString()}, ${os.release()}, ${os.availableParallelism()} CPUs)`,
    '',
    `${opts.rounds} rounds, setups alternating (order rotated per round). Generator: \`tcpload pair --count ` +
      `${opts.connections} --threads ${opts.threads}\` over IPv4 loopback` +
      `${opts.netns ? ' in a fresh network namespace per run' : ''}; sysloop: ${opts.calls} getppid() calls.`,
    '',
    table('CPU per connection (generator rusage)', 'µs', 2, summary.connCpuUs),
    '',
    table('CPU per connection (whole machine)', 'µs', 2, summary.connSystemUs),
    '',
    table('CPU per getppid() call (sysloop rusage)', 'ns', 1, summary.callCpuNs),
    '',
    `Other CPU during generator runs (machine busy time the generator's rusage does not explain): median ` +
      `${median(otherCpu).toFixed(1)} %, max ${Math.max(...otherCpu).toFixed(1)} % of all CPUs; ` +
      `${samples.filter((s) => s.busyBeforePct >= QUIET_PCT).length} of ${samples.length} samples started ` +
      `on a machine busier than ${QUIET_PCT} %.`,
  ].join('\n')
  console.log(report)

  const json = {
    benchmark: 'accept-cost',
    started: started.toISOString(),
    finished: new Date().toISOString(),
    host: {
      kernel: os.release(),
      cpus: os.availableParallelism(),
      cpuModel: os.cpus()[0]?.model ?? '?',
      node: process.version,
    },
    options: { ...opts, out: path.relative(packageRoot, opts.out) },
    units: { connCpuUs: 'µs per connection', connSystemUs: 'µs per connection', callCpuNs: 'ns per call' },
    summary,
    samples,
  }
  mkdirSync(path.dirname(opts.out), { recursive: true })
  const text = await prettier.format(JSON.stringify(json), {
    ...(await prettier.resolveConfig(opts.out)),
    filepath: opts.out,
  })
  writeFileSync(opts.out, text)
  console.error(`wrote ${path.relative(process.cwd(), opts.out)}`)
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err)
  process.exit(1)
})
