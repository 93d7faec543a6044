// The workloads of the cost benchmarks, both from test/helpers (npm run build:helpers): `tcpload pair`
// makes a fixed number of loopback connections and reports its own CPU time (getrusage), and `sysloop`
// makes getppid() calls, for the tax every syscall pays while a syscalls:* tracepoint is attached.
import path from 'node:path'

import { packageRoot } from '../../src/kernel/paths.js'
import { machineCpuUs } from './common.js'
import { runToEnd } from './proc.js'

export const TCPLOAD = path.join(packageRoot, 'test', 'helpers', 'bin', 'tcpload')
export const SYSLOOP = path.join(packageRoot, 'test', 'helpers', 'bin', 'sysloop')

/** A generator run is stopped after this long. */
const RUN_TIMEOUT_MS = 180_000

/**
 * Raises the ephemeral port range, in a generator's namespace. All of a run's connections go to one
 * server port, so each needs its own source port, and a client's port stays in TIME_WAIT after the run's
 * close: with the default range (32768 to 60999, connect() taking the even half first) a run of more than
 * about 14,000 connections spends most of its time searching for a free port (measured: 109 µs per
 * connection at 20,000 against 36 µs at 10,000), which would bury the tracing cost under a cost no real
 * workload has. 1024 to 65535 leaves room.
 */
export const WIDE_PORTS = "echo '1024 65535' > /proc/sys/net/ipv4/ip_local_port_range"

/** Where a generator runs: a fresh network namespace (optionally with WIDE_PORTS), a named one, or here. */
export type Where = { fresh: true; widePorts: boolean } | { netns: string } | 'here'

export interface TcploadRun {
  /** the `done` line tcpload prints */
  done: Record<string, number | string>
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

/** One tcpload run with `args` (`pair --count N ...`). A fresh namespace leaves no TIME_WAIT sockets behind. */
export async function runTcpload(args: readonly string[], where: Where): Promise<TcploadRun> {
  let file: string
  let argv: string[]
  if (where === 'here') {
    ;[file, argv] = [TCPLOAD, [...args]]
  } else if ('netns' in where) {
    ;[file, argv] = ['ip', ['netns', 'exec', where.netns, TCPLOAD, ...args]]
  } else {
    const prelude = where.widePorts ? `ip link set lo up && ${WIDE_PORTS}` : 'ip link set lo up'
    ;[file, argv] = ['unshare', ['--net', '--', 'sh', '-c', `${prelude} && exec "$0" "$@"`, TCPLOAD, ...args]]
  }
  const before = machineCpuUs()
  const p = await runToEnd('tcpload', file, argv, RUN_TIMEOUT_MS)
  const after = machineCpuUs()
  const done = p.out
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, number | string>)
    .find((e) => e['event'] === 'done')
  if (!done) throw new Error(`tcpload printed no done line:\n${p.tail()}`)
  return {
    done,
    accepted: Number(done['accepted']),
    connected: Number(done['connected']),
    failed: Number(done['failed']),
    cpuUs: Number(done['cpu_user_us']) + Number(done['cpu_sys_us']),
    wallUs: Number(done['wall_us']),
    systemBusyUs: after.workUs - before.workUs,
    stealUs: after.stealUs - before.stealUs,
  }
}

/** One sysloop run of `calls` getppid() calls: its CPU time (user + system) in µs and its wall time in ns. */
export async function runSysloop(calls: number): Promise<{ cpuUs: number; wallNs: number }> {
  const p = await runToEnd('sysloop', SYSLOOP, [String(calls)], RUN_TIMEOUT_MS)
  const r = JSON.parse(p.out.join('')) as {
    calls: number
    cpu_user_us: number
    cpu_sys_us: number
    wall_ns: number
  }
  if (r.calls !== calls) throw new Error(`sysloop made ${r.calls} calls, not ${calls}`)
  return { cpuUs: r.cpu_user_us + r.cpu_sys_us, wallNs: r.wall_ns }
}
