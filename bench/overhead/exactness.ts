// Phase 2 of bench/overhead.ts, exactness at the generator's maximum rate: the generator at full speed in
// a network namespace of our own, the exporter filtering on it, whose counters must equal the generator's
// counts exactly; then the same under `trace --json -v -N INODE > /dev/null`, every event printed or
// counted as lost.
import { execFileSync } from 'node:child_process'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

import { attachments, recursionMisses } from '../lib/bpftool.js'
import { createNetns } from '../lib/common.js'
import { startExporter } from '../lib/exporter.js'
import { fmtExit } from '../lib/proc.js'
import { WIDE_PORTS } from '../lib/workload.js'
import type { Options } from './options.js'
import {
  type Counts,
  exporterCounts,
  FAMILIES,
  quiet,
  READY_SETTLE_MS,
  runGenerator,
  scrape,
  startTrace,
  sum,
} from './setups.js'

/** connections per generator run: short runs, so the deadline is not overshot much */
const EXACT_CHUNK = 20_000

export interface LoadTotals {
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

export interface Exactness {
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
    lost: number
    /** closes the kernel ran no program for (found later, no event) */
    closesUnseen: number
    /** state changes the trace's program never saw (kernel recursion guard): neither printed nor lost */
    recursionMisses: number
    accountedFor: boolean
    exitStatus: string
  }
  traceLost: number
  traceEvents: number
}

export async function exactness(o: Options): Promise<Exactness> {
  const ns = createNetns(`ovb-${process.pid}`)
  execFileSync('ip', ['netns', 'exec', ns.name, 'sh', '-c', WIDE_PORTS])
  try {
    // metrics: the exporter counting only this namespace
    await quiet()
    const e = await startExporter({ config: { filters: { netns: [ns.inode] } } })
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
      await e.stop()
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

    // trace: every event printed, or counted as lost. Its stdout is /dev/null, as a user's would be who
    // wants the cost of printing alone; its -v stats line at exit says what was written and lost.
    await quiet()
    const tr = await startTrace('ignore', ['-v', '-N', String(ns.inode)])
    let tgen: LoadTotals
    let traceMisses: number
    try {
      await sleep(READY_SETTLE_MS)
      const progs = attachments(new Set([tr.pid])).stateProgs.get(tr.pid) ?? []
      console.error(
        `exactness: ${o.durationS} s at full speed under trace --json -v -N ${ns.inode} > /dev/null`,
      )
      tgen = await fullSpeed(o, ns.name, o.durationS)
      await sleep(1000) // the last closes run in softirq after the generator exits
      traceMisses = recursionMisses(progs)
    } finally {
      await tr.stop('SIGINT')
    }
    const stats = tr.err
      .map((l) =>
        /^stats: (\d+) events delivered, (\d+) lost in the kernel, (\d+) dropped in the addon, .* (\d+) closes and \d+ connects never seen/.exec(
          l,
        ),
      )
      .find((m) => m !== null)
    if (!stats) throw new Error(`trace printed no stats line: ${tr.err.join('\n')}`)
    const printed = Number(stats[1])
    const lost = Number(stats[2]) + Number(stats[3])
    // closes the kernel ran no program for: counted when found, with no event (docs/tracer.md, Known limits)
    const closesUnseen = Number(stats[4])
    // connect + accept + a close at each end per connection; a failed connect is one event
    const expectedEvents = 2 * tgen.connected + 2 * tgen.accepted + tgen.failed
    console.error(
      `exactness: trace printed ${printed} of ${expectedEvents} events, ${lost} lost, ${closesUnseen} closes ` +
        `never seen; its program missed ${traceMisses} state changes`,
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
        lost,
        closesUnseen,
        recursionMisses: traceMisses,
        accountedFor: printed + lost + closesUnseen === expectedEvents,
        exitStatus: fmtExit(tr.exit),
      },
      traceLost: lost,
      traceEvents: printed,
    }
  } finally {
    ns.remove()
  }
}
