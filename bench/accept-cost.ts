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
import { existsSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'

import { packageRoot } from '../src/kernel/paths.js'
import {
  ACCEPT_PROGRAMS,
  BACKBONE_PROGRAM,
  NESTED_BACKBONE_PROGRAM,
  TcpTracer,
} from '../src/kernel/tracer.js'
import { attachmentsIfAny, type Attachments, waitForNoForeign, watchForeign } from './lib/bpftool.js'
import { median, waitForQuiet, writeJson } from './lib/common.js'
import { runSysloop, runTcpload, SYSLOOP, TCPLOAD } from './lib/workload.js'

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
const QUIET_WAIT_MS = 30_000

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

// ---- the children ----------------------------------------------------------------------------------

interface GeneratorResult {
  cpuUs: number
  wallUs: number
  /** busy CPU of the whole machine during the run (all CPUs, all processes, irq and softirq) */
  systemBusyUs: number
  stealUs: number
}

type SysloopResult = Awaited<ReturnType<typeof runSysloop>>

async function runGenerator(opts: Options): Promise<GeneratorResult> {
  const args = ['pair', '--count', String(opts.connections), '--threads', String(opts.threads)]
  // a fresh network namespace per run: no TIME_WAIT sockets left over from earlier runs
  const g = await runTcpload(args, opts.netns ? { fresh: true, widePorts: false } : 'here')
  const n = opts.connections
  if (g.accepted !== n || g.connected !== n || g.failed !== 0) {
    throw new Error(`tcpload did not complete every connection: ${JSON.stringify(g.done)}`)
  }
  return { cpuUs: g.cpuUs, wallUs: g.wallUs, systemBusyUs: g.systemBusyUs, stealUs: g.stealUs }
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

/** What this process holds, sorted, or null when bpftool is missing. */
function held(a: Attachments | null): string[] | null {
  return a && (a.ours.get(process.pid) ?? [])
}

function checkOurs(setup: Setup, a: Attachments | null): void {
  const ours = held(a)
  if (!ours) return
  const want = EXPECTED_ATTACHMENTS[setup]
  if (ours.join() !== want.join()) {
    throw new Error(`setup ${setup}: this process holds [${ours.join(', ')}], expected [${want.join(', ')}]`)
  }
}

const look = (): Attachments | null => attachmentsIfAny(new Set([process.pid]))

async function sample(opts: Options, round: number, position: number, setup: Setup): Promise<Sample> {
  for (let attempt = 1; ; attempt++) {
    await waitForNoForeign(opts.waitForeignMs)
    const quiet = await waitForQuiet(QUIET_PCT, QUIET_WAIT_MS)
    const tracer = attach(setup)
    try {
      await sleep(SETTLE_MS)
      const pre = look()
      checkOurs(setup, pre)
      const stopWatch = watchForeign(pre?.ownProgs ?? new Set(), WATCH_MS)
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
      const post = look()
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
        attached: held(pre),
      }
    } finally {
      tracer?.close()
      await sleep(SETTLE_MS)
    }
  }
}

// ---- statistics and report -------------------------------------------------------------------------------

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
    [TCPLOAD, 'npm run build:helpers'],
    [SYSLOOP, 'cc -O2 -std=c11 -Wall -Wextra -Werror -o test/helpers/bin/sysloop test/helpers/sysloop.c'],
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
  await writeJson(opts.out, json)
  console.error(`wrote ${path.relative(process.cwd(), opts.out)}`)
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err)
  process.exit(1)
})
