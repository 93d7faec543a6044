// Phase 1 of bench/overhead.ts, the cost per connection: in every round each setup runs once, in an order
// rotated from round to round, under the same generator runs (tcpload pair over IPv4 and IPv6, sysloop);
// then the statistics over rounds, paired with the round's run without tracing, and their tables.
import { setTimeout as sleep } from 'node:timers/promises'

import { prng } from '../../test/prng.js'
import { attachments, recursionMisses, waitForNoForeign, watchForeign } from '../lib/bpftool.js'
import { median } from '../lib/common.js'
import { runSysloop } from '../lib/workload.js'
import type { Options } from './options.js'
import {
  checkOurs,
  exporterCounts,
  type Counts,
  type Family,
  type GenRun,
  NCPU,
  ours,
  peerCounts,
  pidsOf,
  quiet,
  READY_SETTLE_MS,
  runGenerator,
  scrape,
  SETTLE_MS,
  type Setup,
  SETUPS,
  startSetup,
  stopSetup,
} from './setups.js'

const SAMPLE_RETRIES = 5
/** bpftool is polled this often during a sample, for foreign tracing programs */
const WATCH_MS = 250
const BOOTSTRAP_RESAMPLES = 4000

// ---- one sample: start a setup, measure, stop it --------------------------------------------------------------

export interface Sample {
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

export async function sample(o: Options, round: number, position: number, setup: Setup): Promise<Sample> {
  const families: Family[] = round % 2 === 0 ? ['ipv4', 'ipv6'] : ['ipv6', 'ipv4']
  for (let attempt = 1; ; attempt++) {
    await waitForNoForeign(o.waitForeignMs)
    const quietness = await quiet()
    const r = await startSetup(setup)
    let result: Omit<Sample, 'peer'> | undefined
    let foreign: string[] = []
    try {
      await sleep(READY_SETTLE_MS)
      const pids = pidsOf(r)
      const pre = attachments(pids)
      checkOurs(r, pre)
      const stopWatch = watchForeign(pre.ownProgs, WATCH_MS)
      const runs: GenRun[] = []
      let loop: { cpuNs: number; wallNs: number }
      try {
        for (const f of families) {
          runs.push(await runGenerator(f, o.connections, o.threads))
          await sleep(SETTLE_MS) // let the namespace teardown finish before the next measurement
        }
        const l = await runSysloop(o.calls)
        loop = { cpuNs: (1000 * l.cpuUs) / o.calls, wallNs: l.wallNs / o.calls }
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
        busyBeforePct: quietness.busyPct,
        waitedForQuietMs: quietness.waitedMs,
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

export interface Summary {
  median: number
  min: number
  max: number
}
export interface SetupStat extends Summary {
  /** median of this setup / median of none */
  ratioToNone: number
  /** per round: this setup / none of the same round */
  pairedRatio: Summary
  /** per round: this setup − none of the same round */
  pairedDelta: Summary
}

export function summary(xs: readonly number[]): Summary {
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs) }
}

function quantile(xs: readonly number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.max(0, Math.round(q * (s.length - 1))))] ?? NaN
}

/** Values of one setup, one per round, aligned by round (NaN where a round lacks the setup). */
export type Getter = (s: Sample) => number

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

export function allSetups(samples: readonly Sample[], get: Getter, rounds: number): Record<Setup, SetupStat> {
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
export function cpuRatio(
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
export function peerShare(
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

// ---- tables ---------------------------------------------------------------------------------------------------------

export function fmt(x: number, d = 2): string {
  return Number.isFinite(x) ? x.toFixed(d) : String(x)
}

export function statTable(title: string, unit: string, d: number, s: Record<Setup, SetupStat>): string {
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
