// Preloaded into the exporter for the profiled pass of bench/scrape-cost.ts:
//   node --import tsx --import ./bench/lib/profile-hook.ts dist/src/cli.js run ...
// with TCPTRACER_BENCH_PROFILE=FILE. The first SIGUSR2 starts V8's sampling profiler (then FILE.started
// appears); the second stops it and writes the profile to FILE (.cpuprofile JSON), and to FILE.memory.json
// the peaks of process.memoryUsage() (polled every 10 ms while profiling) and V8's heap spaces at the peak.
//
// Not `node --cpu-prof`: its SIGPROF ticks run from the start, and the kernel's BPF verifier gives up with
// EAGAIN when a signal is pending, so the exporter's programs would fail to load. This profiles only the
// scrapes, after the programs are loaded.
import { renameSync, writeFileSync } from 'node:fs'
import { Session } from 'node:inspector'
import v8 from 'node:v8'

const out = process.env['TCPTRACER_BENCH_PROFILE']

if (out) {
  const session = new Session()
  session.connect()
  const post = (method: string, params: object = {}): Promise<unknown> =>
    new Promise((resolve, reject) => {
      session.post(method, params, (err, result) => {
        if (err) reject(err)
        else resolve(result)
      })
    })
  let state: 'idle' | 'running' | 'done' = 'idle'
  const mb = (n: number): number => Math.round(n / 2 ** 17) / 8
  const peak = { rss: 0, heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }
  let spacesAtPeak: Record<string, { size: number; used: number }> = {}
  let poll: NodeJS.Timeout | undefined
  const sample = (): void => {
    const m = process.memoryUsage()
    if (m.rss > peak.rss) {
      spacesAtPeak = Object.fromEntries(
        v8
          .getHeapSpaceStatistics()
          .map((x) => [x.space_name, { size: mb(x.space_size), used: mb(x.space_used_size) }]),
      )
    }
    for (const k of Object.keys(peak) as Array<keyof typeof peak>) peak[k] = Math.max(peak[k], m[k])
  }
  const fail = (err: unknown): void => {
    writeFileSync(`${out}.error`, String(err instanceof Error ? err.stack : err))
  }
  process.on('SIGUSR2', () => {
    if (state === 'idle') {
      state = 'running'
      post('Profiler.enable')
        .then(() => post('Profiler.setSamplingInterval', { interval: 500 }))
        .then(() => post('Profiler.start'))
        .then(() => {
          poll = setInterval(sample, 10)
          writeFileSync(`${out}.started`, '')
        })
        .catch(fail)
    } else if (state === 'running') {
      state = 'done'
      clearInterval(poll)
      sample()
      const peakMb = Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, mb(v)]))
      writeFileSync(`${out}.memory.json`, JSON.stringify({ peakMb, heapSpacesAtPeakMb: spacesAtPeak }))
      post('Profiler.stop')
        .then((r) => {
          // complete or not at all: the benchmark waits for the file to appear
          writeFileSync(`${out}.tmp`, JSON.stringify((r as { profile: unknown }).profile))
          renameSync(`${out}.tmp`, out)
        })
        .catch(fail)
    }
  })
}
