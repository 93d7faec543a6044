// Exact at full rate: both CPUs saturated by connections, and every connect, accept and close of
// both sides counted exactly once, with scrapes all along. And what the tracer does about the state
// changes the kernel never runs the programs for (docs/tracer.md, Known limits): a close nobody saw is
// counted, once, by the walk of the per-socket state that runs before every read.
//
// The full-rate load runs between two namespaces over a veth pair whose receive side is a threaded
// NAPI poller, so that every state change runs in the client's or the server's threads or in those
// pollers. Over loopback, packets are processed in softirq on whatever task happens to be running;
// on our CI VMs that is sometimes a thread of the VM's agent, and that kernel never runs BPF
// programs on its time, nor counts the skip anywhere: a loopback run then misses a few state changes
// for reasons no tracer can see (docs/tracer.md).
// vm-suite: kernel hooks
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { before, describe, test } from 'node:test'
import { AggregateDump } from '../../../src/kernel/abi.js'
import { loadBinding } from '../../../src/kernel/binding.js'
import { TcpTracer } from '../../../src/kernel/tracer.js'
import {
  fixture,
  inNetns,
  privileged,
  runClient,
  scrape,
  type ScrapedSample,
  startDaemon,
  startServer,
  TIME_SCALE,
  valueOf,
  vethPair,
} from '../harness.js'

const { skip } = privileged()
const CLI_ADDR = '10.211.0.1'
const SRV_ADDR = '10.211.0.2'

/** The whole aggregation map, read as the exporter reads it, with one histogram bucket besides +Inf. */
function readAggregates(tracer: TcpTracer): AggregateDump {
  const L = tracer.layout
  for (let room = 1024; ; room *= 2) {
    const keys = Buffer.alloc(room * L.aggKey.size)
    const values = Buffer.alloc(room * L.aggValue.size)
    const n = tracer.readAggregates(keys, values)
    if (n >= 0) return new AggregateDump(keys, values, n, tracer, 1)
  }
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

describe('exact at full rate', { skip }, () => {
  // the client's and the server's namespace, joined by a veth pair
  const fx = fixture('tt-full-rate-', { a: `tt-fra-${process.pid}`, b: `tt-frb-${process.pid}` })

  before(() => vethPair(fx.a, fx.b, CLI_ADDR, [SRV_ADDR]))

  const N = TIME_SCALE > 1 ? 10_000 : 100_000
  const SCRAPES_DURING_LOAD = TIME_SCALE > 1 ? 3 : 10
  const MAX_ROUNDS = 6

  test(`${N} connections, 2 client and 2 server threads on 2 busy CPUs: every connect, accept and close exact`, async (t) => {
    const file = path.join(fx.dir, 'full-rate.yml')
    // the state programs at full rate: the accept hooks have their own test (kernel/accept-hooks)
    writeFileSync(file, `accept_mode: listener\nfilters:\n  netns: [${fx.a.inode}, ${fx.b.inode}]\n`)
    const d = await startDaemon([`--config.file=${file}`])
    try {
      const server = await startServer(fx.b, [
        '--comm',
        'tt-fr-srv',
        '--bind',
        SRV_ADDR,
        '--forever',
        '--threads',
        '2',
      ])
      // Scrapes all along: each walks the per-socket state for closes never seen, and must find none.
      // A scrape counts when it began and ended while a client was connecting. On the host dozens fit
      // in one round of the load; in an emulated guest a scrape under this load takes seconds, so the
      // load runs again, N connections a round, until enough scrapes have run inside it.
      const load = { running: false, stop: false, scrapesInside: 0 }
      const scraping = (async (): Promise<void> => {
        while (!load.stop) {
          const began = load.running
          await scrape(d)
          if (began && load.running) load.scrapesInside++
          await sleep(10)
        }
      })()
      let rounds = 0
      try {
        while (rounds === 0 || (load.scrapesInside < SCRAPES_DURING_LOAD && rounds < MAX_ROUNDS)) {
          load.running = true
          const lines = await runClient(fx.a, [
            '--comm',
            'tt-fr-cli',
            '--addr',
            SRV_ADDR,
            '--port',
            String(server.port),
            '--count',
            String(N),
            '--threads',
            '2',
          ])
          load.running = false
          rounds++
          const done = lines.find((l) => l['event'] === 'done')
          assert.equal(done?.['connected'], N, JSON.stringify(done))
        }
      } finally {
        load.stop = true
        await scraping
      }
      assert.ok(
        load.scrapesInside >= SCRAPES_DURING_LOAD,
        `${load.scrapesInside} scrapes inside ${rounds} rounds of ${N} connections, want at least ${SCRAPES_DURING_LOAD}`,
      )
      t.diagnostic(`${rounds} round(s) of ${N} connections, ${load.scrapesInside} scrapes inside the load`)
      const total = rounds * N
      const cli = { comm: 'tt-fr-cli', netns: String(fx.a.inode), family: 'ipv4' }
      const srv = { comm: 'tt-fr-srv', netns: String(fx.b.inode), family: 'ipv4' }
      const closes = (s: ScrapedSample[]): [number | undefined, number | undefined] => [
        valueOf(s, 'tcptracer_closes_total', { ...cli, direction: 'outbound' }),
        valueOf(s, 'tcptracer_closes_total', { ...srv, direction: 'inbound' }),
      ]
      // the last state changes may run after the processes exit: wait until the counts settle
      let s = (await scrape(d)).samples
      const deadline = Date.now() + 20_000 * TIME_SCALE
      while (closes(s).some((c) => c !== total) && Date.now() < deadline) {
        await sleep(200)
        s = (await scrape(d)).samples
      }
      // what else the kernel counted, should an assertion fail
      const why = JSON.stringify(
        s.filter((x) =>
          /^tcptracer_(connects|accepts|closes|unseen|program_recursion_misses|kernel_map_update_failures|unattributed)_total$/.test(
            x.name,
          ),
        ),
      )
      assert.equal(valueOf(s, 'tcptracer_connects_total', cli), total, why)
      assert.equal(valueOf(s, 'tcptracer_accepts_total', srv), total, why)
      assert.deepEqual(closes(s), [total, total], why)
      for (const [labels, direction] of [
        [cli, 'outbound'],
        [srv, 'inbound'],
      ] as const) {
        assert.equal(
          valueOf(s, 'tcptracer_connection_duration_seconds_count', { ...labels, direction }),
          total,
          `every close with its lifetime (${direction})`,
        )
        assert.equal(valueOf(s, 'tcptracer_active_connections', { ...labels, direction }), 0)
      }
      assert.equal(valueOf(s, 'tcptracer_connect_failures_total', { ...cli, reason: 'other' }), 0)
      assert.equal(valueOf(s, 'tcptracer_kernel_map_update_failures_total', { map: 'state' }), 0)
      assert.equal(valueOf(s, 'tcptracer_unseen_total', { kind: 'close' }), 0, why)
      assert.equal(valueOf(s, 'tcptracer_unseen_total', { kind: 'connect' }), 0, why)
      // the server itself accepted every connection, and no more
      server.proc.child.kill('SIGTERM')
      assert.equal(await server.proc.exited, 0, server.proc.stderr)
      const served = server.proc.lines.find((l) => l['event'] === 'done')
      assert.equal(served?.['accepted'], total, JSON.stringify(served))
    } finally {
      assert.equal(await d.stop(), 0)
    }
  })

  test('a close the programs never ran for is counted, once, by the walk before a read', async (t) => {
    // Two copies of the programs on one pinned state, as in a restart: while the copy that is not
    // attached holds `control`, the attached one ignores every event, as the kernel's skipped runs do.
    loadBinding().ensureFilesystems() // bpffs is not mounted on a fresh machine
    const pinDir = mkdtempSync('/sys/fs/bpf/tt-unseen-')
    const opts = {
      aggregate: true,
      acceptMode: 'listener' as const,
      bucketsSeconds: [1],
      pinMapsDir: pinDir,
    }
    const tracer = TcpTracer.open({ ...opts, generation: 1n })
    const quiet = TcpTracer.open({ ...opts, generation: 2n })
    t.after(() => {
      tracer.close()
      quiet.close()
      rmSync(pinDir, { recursive: true, force: true })
    })
    tracer.createOverflowEntries()
    // the exporter's filter: entries for every namespace, counts for this one
    tracer.setFilters([fx.b.inode], [])
    tracer.attach()
    tracer.activate()
    const counts = (comm: string): { opened: number; closed: number; lifetimes: number } => {
      const r = { opened: 0, closed: 0, lifetimes: 0 }
      const dump = readAggregates(tracer)
      for (let i = 0; i < dump.length; i++) {
        const k = dump.owner(i)
        if (k.comm !== comm || k.netns !== fx.b.inode) continue
        const c = {
          opened: 0,
          closed: 0,
          failed: [],
          sentBytes: 0,
          receivedBytes: 0,
          durationSumNs: 0,
          buckets: [0, 0],
          active: 0,
        }
        dump.addInto(i, c)
        r.opened += c.opened
        r.closed += c.closed
        r.lifetimes += c.buckets.reduce((x, y) => x + y, 0)
      }
      return r
    }

    // K connections held open until the client is killed, counted while the programs run
    const K = 16
    const server = await startServer(fx.b, [
      '--comm',
      'tt-us-srv',
      '--count',
      String(K),
      '--threads',
      String(K),
    ])
    const client = inNetns(fx.b, [
      'client',
      '--comm',
      'tt-us-cli',
      '--addr',
      '127.0.0.1',
      '--port',
      String(server.port),
      '--count',
      String(K),
      '--threads',
      String(K),
      '--hold-ms',
      '600000',
    ])
    const heldDeadline = Date.now() + 10_000 * TIME_SCALE
    while ((counts('tt-us-cli').opened < K || counts('tt-us-srv').opened < K) && Date.now() < heldDeadline) {
      await sleep(50)
    }
    assert.deepEqual([counts('tt-us-cli').opened, counts('tt-us-srv').opened], [K, K])

    // they close while the programs ignore every event: both ends, to the last ACK
    quiet.activate()
    client.child.kill('SIGKILL')
    await client.exited
    assert.equal(await server.proc.exited, 0)
    const open = (): string =>
      spawnSync('ip', ['netns', 'exec', fx.b.name, 'ss', '-tanH', 'exclude', 'time-wait'], {
        encoding: 'utf8',
      })
        .stdout.split('\n')
        .filter((l) => l.includes(`:${server.port} `))
        .join('\n')
    const closedDeadline = Date.now() + 10_000 * TIME_SCALE
    while (open() !== '' && Date.now() < closedDeadline) await sleep(50)
    assert.equal(open(), '', 'every held connection closed')
    assert.deepEqual([counts('tt-us-cli').closed, counts('tt-us-srv').closed], [0, 0], 'no close seen')
    const before = tracer.kernelStats().closeUnseen
    tracer.activate()

    // found by the walk the daemon runs before each read, if no new socket took over the memory first
    assert.ok(tracer.sweepUnseenCloses(), 'the sweep runs on this kernel')
    const cli = counts('tt-us-cli')
    const srv = counts('tt-us-srv')
    assert.deepEqual([cli.closed, srv.closed], [K, K], 'each close counted, in its own label set')
    assert.deepEqual([cli.lifetimes, srv.lifetimes], [0, 0], 'with no lifetime: it went with the socket')
    assert.equal(tracer.kernelStats().closeUnseen - before, BigInt(2 * K), 'each counted as unseen')
    // and only once: neither another walk nor new sockets at the same addresses count them again
    assert.ok(tracer.sweepUnseenCloses())
    await runClient(fx.b, ['--comm', 'tt-us-more', '--addr', '127.0.0.1', '--port', '1', '--count', '50'])
    assert.deepEqual(
      [counts('tt-us-cli').closed, counts('tt-us-srv').closed],
      [K, K],
      'each close counted once',
    )
  })
})
