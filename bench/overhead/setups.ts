// What the phases of bench/overhead.ts share: the setups (nothing, the exporter, the exporter and a trace,
// the bpftrace peer), how each is started, checked and stopped, the generator runs, and the exporter's
// counts read from a scrape.
import { closeSync, openSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'

import { packageRoot } from '../../src/kernel/paths.js'
import { parseExposition, type ScrapedSample as Series } from '../../test/exposition-parser.js'
import type { Attachments } from '../lib/bpftool.js'
import { onExit, waitForQuiet } from '../lib/common.js'
import { CLI, httpGet, startExporter } from '../lib/exporter.js'
import { fmtExit, Proc, type StdoutMode } from '../lib/proc.js'
import { runTcpload, type TcploadRun } from '../lib/workload.js'

export const SETUPS = ['none', 'metrics', 'metrics+trace', 'bpftrace'] as const
export type Setup = (typeof SETUPS)[number]
export const FAMILIES = ['ipv4', 'ipv6'] as const
export type Family = (typeof FAMILIES)[number]
type Role = 'exporter' | 'trace' | 'bpftrace'

export const ROLES: Record<Setup, Role[]> = {
  none: [],
  metrics: ['exporter'],
  'metrics+trace': ['exporter', 'trace'],
  bpftrace: ['bpftrace'],
}
const BIND: Record<Family, string> = { ipv4: '127.0.0.1', ipv6: '::1' }
/** the process names the generator gives its main (listening) thread, server and client threads */
const COMM = { listen: 'ovb-listen', server: 'ovb-srv', client: 'ovb-cli' } as const

export const SETTLE_MS = 300
/** after a setup reports ready: let its startup work (the /proc walk, JIT warm-up) finish */
export const READY_SETTLE_MS = 500
const PEER_SETTLE_MS = 300
export const QUIET_PCT = 10
export const QUIET_WAIT_MS = 30_000
const START_TIMEOUT_MS = 30_000

export const PEER_SCRIPT = path.join(packageRoot, 'bench', 'peer.bt')
export const NCPU = os.availableParallelism()

export { CLI }

// ---- the workloads ----------------------------------------------------------------------------------------------

/** One generator run: tcpload's counts and CPU (TcploadRun, without its raw done line), and what ran. */
export interface GenRun extends Omit<TcploadRun, 'done'> {
  family: Family
  connections: number
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

/** One `tcpload pair` run in a fresh network namespace (wide port range), or in the named one. */
export async function runGenerator(
  family: Family,
  count: number,
  threads: number,
  netns?: string,
): Promise<GenRun> {
  const g = await runTcpload(
    generatorArgs(family, count, threads),
    netns === undefined ? { fresh: true, widePorts: true } : { netns },
  )
  const r: GenRun = {
    family,
    connections: count,
    accepted: g.accepted,
    connected: g.connected,
    failed: g.failed,
    cpuUs: g.cpuUs,
    wallUs: g.wallUs,
    systemBusyUs: g.systemBusyUs,
    stealUs: g.stealUs,
  }
  if (netns === undefined && (r.accepted !== count || r.connected !== count || r.failed !== 0)) {
    throw new Error(`tcpload did not complete every connection: ${JSON.stringify(g.done)}`)
  }
  return r
}

// ---- the exposition ---------------------------------------------------------------------------------------------

export function sum(
  series: readonly Series[],
  name: string,
  where: (l: Record<string, string>) => boolean,
): number {
  return series.filter((s) => s.name === name && where(s.labels)).reduce((a, s) => a + s.value, 0)
}

export async function scrape(port: number): Promise<Series[]> {
  const r = await httpGet(port, '/metrics')
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}: ${r.body.slice(0, 200)}`)
  return parseExposition(r.body)
}

/** What the exporter counted for the generator's process names. */
export interface Counts {
  connects: number
  accepts: number
  closes: number
  connectFailures: number
}

export function exporterCounts(
  series: readonly Series[],
  where: (l: Record<string, string>) => boolean,
): Counts {
  return {
    connects: sum(series, 'tcptracer_connects_total', where),
    accepts: sum(series, 'tcptracer_accepts_total', where),
    closes: sum(series, 'tcptracer_closes_total', where),
    connectFailures: sum(series, 'tcptracer_connect_failures_total', where),
  }
}

/** The generator's series: its client and its listening thread. */
export const ours = (l: Record<string, string>): boolean =>
  l['comm'] === COMM.client || l['comm'] === COMM.listen

// ---- the setups ------------------------------------------------------------------------------------------------

export interface Running {
  setup: Setup
  procs: Partial<Record<Role, Proc>>
  exporterPort?: number
  /** launch of the first process to its readiness, ms */
  readyMs: number
}

let devNull = -1

/** /dev/null, opened once for the trace's output in the metrics+trace setup. */
function nullFd(): number {
  if (devNull < 0) {
    const fd = openSync('/dev/null', 'w')
    devNull = fd
    onExit(() => closeSync(fd))
  }
  return devNull
}

export async function startTrace(stdout: StdoutMode, extra: readonly string[] = []): Promise<Proc> {
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

export async function startSetup(setup: Setup): Promise<Running> {
  const t0 = performance.now()
  const r: Running = { setup, procs: {}, readyMs: 0 }
  try {
    if (setup === 'metrics' || setup === 'metrics+trace') {
      const e = await startExporter({ startTimeoutMs: START_TIMEOUT_MS })
      r.procs.exporter = e.proc
      r.exporterPort = e.port
    }
    if (setup === 'metrics+trace') r.procs.trace = await startTrace(nullFd())
    if (setup === 'bpftrace') r.procs.bpftrace = await startPeer()
  } catch (err) {
    await stopSetup(r)
    throw err
  }
  r.readyMs = performance.now() - t0
  return r
}

/** Stop every process of a setup; bpftrace prints its maps as it exits. */
export async function stopSetup(r: Running): Promise<void> {
  const { exporter, trace, bpftrace } = r.procs
  await Promise.all([trace?.stop('SIGINT'), bpftrace?.stop('SIGINT'), exporter?.stop('SIGTERM')])
  for (const p of [exporter, trace, bpftrace]) {
    if (p?.exit && p.exit.code !== 0) {
      console.error(`warning: ${p.name} exited with ${fmtExit(p.exit)}:\n${p.tail(5)}`)
    }
  }
}

export function pidsOf(r: Running): Set<number> {
  return new Set(Object.values(r.procs).map((p) => p.pid))
}

/** Every process of the setup holds a program on inet_sock_set_state, and nothing else of ours is attached. */
export function checkOurs(r: Running, a: Attachments): void {
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

/** The peer's maps, from bpftrace's JSON output at exit. */
export function peerCounts(p: Proc): {
  connects: number
  accepts: number
  closes: number
  lifetimes: number
} {
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

/** Wait for a quiet machine: under QUIET_PCT % busy; after QUIET_WAIT_MS measure anyway. */
export const quiet = (): Promise<{ busyPct: number; waitedMs: number }> =>
  waitForQuiet(QUIET_PCT, QUIET_WAIT_MS)
