// The command line of bench/overhead.ts.
import path from 'node:path'
import { parseArgs } from 'node:util'

import { packageRoot } from '../../src/kernel/paths.js'

export interface Options {
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

export const USAGE = `Usage: node --import tsx bench/overhead.ts [options]
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

export function parseOptions(): Options {
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
