// `trace` at the generator's full rate: every event printed, none lost. The drain thread formats and
// writes the lines itself, so no JavaScript runs per event. Two traces run at once for 30 s, one per
// namespace of a veth pair: `trace --json -v -N CLIENT > /dev/null` (its exit stats must say every
// event was delivered and none lost) and `trace -N SERVER` into a pipe to the test (the default columns,
// every line counted). The load goes over veth with threaded NAPI, as in kernel/full-rate, so that no state
// change runs in the context of a thread the kernel runs no programs for (docs/tracer.md, Known
// limits): each count is exact.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { closeSync, openSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { before, describe, test } from 'node:test'
import { CLI, fixture, privileged, runClient, startServer, TIME_SCALE, vethPair } from '../harness.js'

const { skip } = privileged()
const CLI_ADDR = '10.212.0.1'
const SRV_ADDR = '10.212.0.2'
const DURATION_S = 30
/** connections per client run: short runs, so the 30 s are not overshot by much */
const CHUNK = 20_000

interface Traced {
  exited: Promise<number | null>
  stop(): void
  stderr(): string
  /** newlines written to stdout, when it is a pipe to this process */
  lines(): number
}

/**
 * `trace ARGS`, its stdout to `out` (a file descriptor), or when `out` is 'pipe' read here, its newlines
 * counted; ready once its banner is out (on stderr with --json, else on stdout).
 */
async function startTrace(args: string[], out: number | 'pipe'): Promise<Traced> {
  const child = spawn(process.execPath, [CLI, 'trace', ...args], { stdio: ['ignore', out, 'pipe'] })
  let err = ''
  let head = ''
  let lines = 0
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (err += s))
  child.stdout?.on('data', (b: Buffer) => {
    if (head.length < 200) head += b.toString('utf8', 0, 200)
    for (let i = b.indexOf(10); i >= 0; i = b.indexOf(10, i + 1)) lines++
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const t0 = performance.now()
  while (!err.includes('Tracing TCP') && !head.includes('Tracing TCP')) {
    if (child.exitCode !== null || performance.now() - t0 > 15_000 * TIME_SCALE) {
      throw new Error(`trace did not start: ${err}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return { exited, stop: () => child.kill('SIGINT'), stderr: () => err, lines: () => lines }
}

describe('trace at full rate', { skip }, () => {
  const fx = fixture('tt-trace-rate-', { a: `tt-tra-${process.pid}`, b: `tt-trb-${process.pid}` })

  before(() => vethPair(fx.a, fx.b, CLI_ADDR, [SRV_ADDR]))

  test(`${DURATION_S} s at full rate: --json to /dev/null and the columns to a pipe, every event out, none lost`, async (t) => {
    const server = await startServer(fx.b, [
      '--comm',
      'tt-tr-srv',
      '--bind',
      SRV_ADDR,
      '--forever',
      '--threads',
      '2',
    ])
    const devNull = openSync('/dev/null', 'w')
    const json = await startTrace(['--json', '-v', '-N', String(fx.a.inode)], devNull)
    closeSync(devNull) // the trace has its own
    const text = await startTrace(['-N', String(fx.b.inode)], 'pipe')
    let connections = 0
    let runs = 0
    const t0 = performance.now()
    try {
      while (performance.now() - t0 < DURATION_S * 1000) {
        const lines = await runClient(fx.a, [
          '--comm',
          'tt-tr-cli',
          '--addr',
          SRV_ADDR,
          '--port',
          String(server.port),
          '--count',
          String(CHUNK),
          '--threads',
          '2',
        ])
        const done = lines.find((l) => l['event'] === 'done')
        assert.equal(done?.['connected'], CHUNK, JSON.stringify(done))
        connections += CHUNK
        runs++
      }
    } finally {
      const wallS = (performance.now() - t0) / 1000
      t.diagnostic(`${connections} connections in ${runs} runs, ${(connections / wallS).toFixed(0)}/s`)
      // the last closes run after the client exits: give them a moment before stopping the traces
      await new Promise((resolve) => setTimeout(resolve, 1000))
      json.stop()
      text.stop()
      server.proc.child.kill('SIGTERM')
    }
    assert.equal(await json.exited, 0, json.stderr())
    assert.equal(await text.exited, 0, text.stderr())
    // the client's side: a connect and a close per connection
    const stats = /stats: (\d+) events delivered, (\d+) lost in the kernel, (\d+) dropped in the addon/.exec(
      json.stderr(),
    )
    assert.ok(stats, json.stderr())
    assert.deepEqual(
      { delivered: Number(stats[1]), lost: Number(stats[2]), dropped: Number(stats[3]) },
      { delivered: 2 * connections, lost: 0, dropped: 0 },
      json.stderr(),
    )
    // the server's side: an accept and a close per connection, under the banner and the header
    assert.doesNotMatch(text.stderr(), /lost/)
    assert.equal(text.lines(), 2 + 2 * connections, text.stderr())
  })
})
