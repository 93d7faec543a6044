// Phase 4 of bench/overhead.ts, where the cost goes: with kernel.bpf_stats_enabled set for one generator
// run per configuration (restored right after, and at exit at the latest), the run count and run time of
// every program on inet_sock_set_state, per connection.
import { readFileSync, writeFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'

import { TcpTracer } from '../../src/kernel/tracer.js'
import { attachments, progInfo, type ProgInfo, waitForNoForeign } from '../lib/bpftool.js'
import { onExit } from '../lib/common.js'
import type { Options } from './options.js'
import {
  type Family,
  FAMILIES,
  quiet,
  READY_SETTLE_MS,
  runGenerator,
  SETTLE_MS,
  startSetup,
  stopSetup,
} from './setups.js'

const BPF_STATS_SYSCTL = '/proc/sys/kernel/bpf_stats_enabled'

export interface ProgCost {
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
export const COST_CONFIGS = ['state-only', 'metrics', 'metrics+trace', 'bpftrace'] as const
export type CostConfig = (typeof COST_CONFIGS)[number]

export interface BpfStats {
  connections: number
  families: Family[]
  note: string
  programs: ProgCost[]
}

export async function bpfStats(o: Options): Promise<BpfStats> {
  const original = readFileSync(BPF_STATS_SYSCTL, 'utf8').trim()
  const restore = onExit(() => setBpfStats(original))
  const programs: ProgCost[] = []
  try {
    for (const config of COST_CONFIGS) {
      await waitForNoForeign(o.waitForeignMs)
      await quiet()
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
    restore()
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
