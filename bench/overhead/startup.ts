// Phase 3 of bench/overhead.ts, startup: from the exporter's launch to the first 200 from /readyz,
// polled every 10 ms on a port fixed before the launch.
import net, { type AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

import { startExporter } from '../lib/exporter.js'
import { type Summary, summary } from './cost.js'
import type { Options } from './options.js'
import { quiet, SETTLE_MS } from './setups.js'

async function freePort(): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve))
  const { port } = s.address() as AddressInfo
  await new Promise<void>((resolve) => s.close(() => resolve()))
  return port
}

export interface Startup {
  readyMs: Summary
  /** the daemon's own load-and-attach time ("tracer ready" in its log) */
  attachMs: Summary
  runs: number
  samples: Array<{ readyMs: number; attachMs: number | undefined }>
}

export async function startup(o: Options): Promise<Startup> {
  const samples: Startup['samples'] = []
  for (let i = 0; i < o.startupRuns; i++) {
    await quiet()
    const e = await startExporter({ listen: `127.0.0.1:${await freePort()}` })
    await e.stop()
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
