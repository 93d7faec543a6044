// The tracer on the real kernel: real sockets in namespaces this test creates,
// asserting the exact multiset of events the `trace` command prints.
// vm-suite: kernel
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, test } from 'node:test'
import { jsonLine } from '../../../src/cli/trace-format.js'
import { isBpfError, loadBinding } from '../../../src/kernel/binding.js'
import { packageRoot } from '../../../src/kernel/paths.js'
import { TcpTracer } from '../../../src/kernel/tracer.js'
import {
  assertTraced,
  exchange as runExchange,
  expectedEvents,
  fixture,
  gatedServer,
  identity,
  privileged,
  runClient,
  sorted,
  startServer,
  startTrace,
  stopTrace,
  TIME_SCALE,
  type Exchange,
  type Json,
  type Netns,
} from '../harness.js'

const N = 25
const SRV = 'tt-srv'
const CLI = 'tt-cli'
// unfiltered traces see the whole host's traffic too: room for it, so nothing of ours is lost
const UNFILTERED = ['--ringbuf-bytes', String(16 << 20)]

/** One server and one client in `ns`: N connections, `sent` bytes each, both sides close. */
async function exchange(ns: Netns, bind: string, addr: string, sent: number): Promise<Exchange> {
  return await runExchange(ns, { n: N, send: sent, bind, addr, serverComm: SRV, clientComm: CLI })
}

function inNs(events: Json[], ...ns: Netns[]): Json[] {
  return events.filter((e) => ns.some((n) => n.inode === e['netns']))
}

const { skip } = privileged()

describe('trace on the real kernel', { skip }, () => {
  const fx = fixture('tt-trace-', { a: `tt-a-${process.pid}`, b: `tt-b-${process.pid}` })

  test('IPv4, IPv6 and dual-stack loopback in two namespaces: the exact events', async () => {
    const trace = await startTrace(UNFILTERED)
    const xs: Exchange[] = []
    for (const ns of [fx.a, fx.b]) {
      xs.push(await exchange(ns, '127.0.0.1', '127.0.0.1', 100))
      xs.push(await exchange(ns, '::1', '::1', 2000))
      xs.push(await exchange(ns, '::', '127.0.0.1', 7))
    }
    const want = sorted(xs.flatMap(expectedEvents))
    assert.equal(want.length, 2 * 3 * N * 4)
    // a timeout is not the failure: the comparison says which events are missing
    await trace
      .until(() => inNs(trace.lines, fx.a, fx.b).length >= want.length, 10000, `${want.length} events`)
      .catch(() => {})
    const got = sorted(inNs(await stopTrace(trace), fx.a, fx.b).map(identity))
    assertTraced(got, want, trace.stderr)
  })

  test('a refused connect is a failed connect with a reason, never a connect', async () => {
    const trace = await startTrace(['-N', String(fx.a.inode)])
    const v4 = await runClient(fx.a, ['--comm', CLI, '--addr', '127.0.0.1', '--port', '1', '--count', '3'])
    const v6 = await runClient(fx.a, ['--comm', CLI, '--addr', '::1', '--port', '1', '--count', '2'])
    const pid4 = v4.find((l) => l['event'] === 'done')!['pid']
    const pid6 = v6.find((l) => l['event'] === 'done')!['pid']
    assert.equal(v4.filter((l) => l['event'] === 'failed' && l['errno'] === 111).length, 3)
    await trace.until(() => trace.lines.length >= 5, 10000, '5 failed connects')
    const events = await stopTrace(trace)
    const mine = events.filter((e) => e['pid'] === pid4 || e['pid'] === pid6)
    assert.deepEqual(
      mine.map((e) => [e['type'], e['reason'], e['comm'], e['ip'], e['dport'], e['netns']]),
      [
        ...Array.from({ length: 3 }, () => ['connect_failed', 'refused', CLI, 4, 1, fx.a.inode]),
        ...Array.from({ length: 2 }, () => ['connect_failed', 'refused', CLI, 6, 1, fx.a.inode]),
      ],
    )
    assert.equal(events.length, 5, 'nothing else happened in the namespace')
  })

  test('-N traces exactly one namespace', async () => {
    const trace = await startTrace(['-N', String(fx.b.inode)])
    const xa = await exchange(fx.a, '127.0.0.1', '127.0.0.1', 10)
    const xb = await exchange(fx.b, '::1', '::1', 10)
    const want = sorted(expectedEvents(xb))
    await trace.until(() => trace.lines.length >= want.length, 10000, `${want.length} events`).catch(() => {})
    // namespace a's traffic came first: had it leaked through, it would be here by now
    const events = await stopTrace(trace)
    assertTraced(sorted(events.map(identity)), want, trace.stderr)
    assert.equal(expectedEvents(xa).length, 4 * N)
  })

  test('-p traces exactly one process', async () => {
    // the server runs only once the trace is attached: an accept() already blocked when a kernel accept
    // hook (fexit, kprobe) attaches is never attributed (docs/tracer.md), and that is not what this tests
    const gated = gatedServer(fx.a, ['--comm', SRV, '--count', String(N)])
    const trace = await startTrace(['-p', String(gated.pid)])
    const server = await gated.release()
    assert.equal(server.pid, gated.pid)
    const clientLines = await runClient(fx.a, [
      '--comm',
      CLI,
      '--addr',
      '127.0.0.1',
      '--port',
      String(server.port),
      '--count',
      String(N),
      '--send',
      '5',
    ])
    assert.equal(await server.proc.exited, 0)
    const all = expectedEvents({
      ns: fx.a,
      server,
      serverAddr: '127.0.0.1',
      serverComm: SRV,
      clientComm: CLI,
      clientLines,
      sent: 5,
    })
    const want = sorted(all.filter((e) => (JSON.parse(e) as Json)['pid'] === server.pid))
    assert.equal(want.length, 2 * N)
    await trace.until(() => trace.lines.length >= want.length, 10000, `${want.length} events`).catch(() => {})
    const events = await stopTrace(trace)
    assertTraced(sorted(events.map(identity)), want, trace.stderr)
  })

  test('a listener created before the tracer started has its accepts attributed (listener mode)', async () => {
    const v4 = await startServer(fx.a, ['--comm', SRV, '--count', String(N)])
    const v6 = await startServer(fx.b, ['--comm', SRV, '--bind', '::1', '--count', String(N)])
    // the listener seeding from /proc is what listener mode needs; in the kernel modes an accept()
    // already blocked at attach is a documented gap, tested per mode in kernel/accept-hooks
    const trace = await startTrace([...UNFILTERED, '--accept-mode', 'listener'])
    const xs: Exchange[] = []
    for (const [ns, server, addr] of [
      [fx.a, v4, '127.0.0.1'],
      [fx.b, v6, '::1'],
    ] as const) {
      const clientLines = await runClient(ns, [
        '--comm',
        CLI,
        '--addr',
        addr,
        '--port',
        String(server.port),
        '--count',
        String(N),
      ])
      assert.equal(await server.proc.exited, 0)
      xs.push({ ns, server, serverAddr: addr, serverComm: SRV, clientComm: CLI, clientLines, sent: 0 })
    }
    const want = sorted(xs.flatMap(expectedEvents))
    await trace
      .until(() => inNs(trace.lines, fx.a, fx.b).length >= want.length, 10000, `${want.length} events`)
      .catch(() => {})
    const got = inNs(await stopTrace(trace), fx.a, fx.b)
    assertTraced(sorted(got.map(identity)), want, trace.stderr)
    assert.equal(
      got.filter((e) => e['type'] === 'accept' && e['pid'] === 0).length,
      0,
      'no unattributed accepts',
    )
  })

  test('a connection held open reports its lifetime', async () => {
    const holdMs = 600
    const trace = await startTrace(['-N', String(fx.a.inode)])
    const server = await startServer(fx.a, ['--comm', SRV, '--count', '1'])
    await runClient(fx.a, [
      '--comm',
      CLI,
      '--addr',
      '127.0.0.1',
      '--port',
      String(server.port),
      '--hold-ms',
      String(holdMs),
    ])
    await trace.until(() => trace.lines.filter((e) => e['type'] === 'close').length >= 2, 10000, '2 closes')
    const closes = (await stopTrace(trace)).filter((e) => e['type'] === 'close')
    assert.equal(closes.length, 2)
    for (const c of closes) {
      const ms = Number(c['duration_ns']) / 1e6
      assert.ok(
        ms >= holdMs && ms < holdMs + 1500 * TIME_SCALE,
        `${String(c['comm'])} lived ${ms} ms, expected ${holdMs} ms to ${holdMs + 1500 * TIME_SCALE} ms`,
      )
    }
  })

  test('--accept-mode syscall charges accepts to the accept() caller, exactly', async () => {
    const trace = await startTrace(['--accept-mode', 'syscall', '-N', String(fx.a.inode)])
    const xs = [await exchange(fx.a, '127.0.0.1', '127.0.0.1', 3), await exchange(fx.a, '::1', '::1', 3)]
    const want = sorted(xs.flatMap(expectedEvents))
    await trace.until(() => trace.lines.length >= want.length, 10000, `${want.length} events`).catch(() => {})
    const events = await stopTrace(trace)
    assertTraced(sorted(events.map(identity)), want, trace.stderr)
  })
})

describe('trace under overload', { skip }, () => {
  const fx = fixture('tt-trace-overload-', { a: `tt-o-${process.pid}` })

  test('ring-buffer reservation failures are counted: printed + lost = produced, exactly', async () => {
    // a one-page ring buffer holds 36 records; a stopped reader lets it overflow
    const trace = await startTrace(['--ringbuf-bytes', '4096', '-N', String(fx.a.inode)])
    trace.child.kill('SIGSTOP')
    let x: Exchange
    try {
      x = await exchange(fx.a, '127.0.0.1', '127.0.0.1', 1)
    } finally {
      trace.child.kill('SIGCONT')
    }
    const produced = expectedEvents(x).length
    await new Promise((resolve) => setTimeout(resolve, 300))
    const events = await stopTrace(trace)
    const m = /(\d+) events lost/.exec(trace.stderr)
    assert.ok(m, `no loss reported: ${trace.stderr}`)
    const lost = Number(m[1])
    assert.ok(lost > 0 && events.length < produced)
    assert.equal(events.length + lost, produced)
  })

  test('a JavaScript consumer that falls behind loses nothing while the ring buffer has room', async (t) => {
    // the queue to JavaScript holds one batch of one record, and every batch keeps the JavaScript thread
    // busy for 5 ms: the drain thread must wait for room, leaving the records in the ring buffer
    const tracer = TcpTracer.open({ filterNetns: fx.a.inode, acceptMode: 'listener' })
    t.after(() => tracer.close())
    tracer.attach()
    const got: string[] = []
    const errors: Error[] = []
    tracer.startEvents(
      (events) => {
        for (const e of events) got.push(identity(JSON.parse(jsonLine(e)) as Json))
        const until = Date.now() + 5
        while (Date.now() < until) {
          // a slow consumer
        }
      },
      (e) => errors.push(e),
      { maxQueue: 1, maxBatch: 1 },
    )
    const want = expectedEvents(await exchange(fx.a, '127.0.0.1', '127.0.0.1', 1))
    const deadline = Date.now() + 30_000 * TIME_SCALE
    while (got.length < want.length && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    tracer.stopEvents()
    assert.deepEqual(errors, [])
    const d = tracer.drainStats()
    const k = tracer.kernelStats()
    assert.equal(d.dropped, 0n, 'no batch dropped by the addon')
    assert.equal(k.eventsLost, 0n, 'no record lost in the ring buffer')
    assertTraced(sorted(got), sorted(want), `${k.mapUpdateFailed} kernel map updates failed\n`)
    assert.equal(d.delivered, BigInt(got.length))
    assert.equal(d.batches, d.delivered, 'one record per batch')
  })
})

describe('a BPF object built from another bpf/tcptracer.h', { skip }, () => {
  test('is refused right after load, naming the map and both sizes', (t) => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tt-abi-'))
    t.after(() => rmSync(dir, { recursive: true, force: true }))
    const bpf = path.join(packageRoot, 'bpf')
    for (const f of ['tcptracer.bpf.c', 'vmlinux.h']) copyFileSync(path.join(bpf, f), path.join(dir, f))
    // struct agg_value with one more counter, as another version of the header might have it
    const header = readFileSync(path.join(bpf, 'tcptracer.h'), 'utf8')
    const grown = header.replace('\t__u64 last_ns;', '\t__u64 last_ns;\n\t__u64 extra;')
    assert.notEqual(grown, header)
    writeFileSync(path.join(dir, 'tcptracer.h'), grown)
    const out = path.join(dir, 'out')
    const make = spawnSync('make', ['-s', '-C', dir, '-f', path.join(bpf, 'Makefile'), `OUTPUT=${out}`], {
      encoding: 'utf8',
    })
    assert.equal(make.status, 0, make.stderr)

    const { aggKey, aggValue } = loadBinding().layout
    const K = aggKey.size
    const size = aggValue.size
    assert.throws(
      () => TcpTracer.open({ objectPath: path.join(out, 'tcptracer.bpf.o'), acceptMode: 'listener' }),
      (e) =>
        isBpfError(e) &&
        e.op === 'check map sizes' &&
        e.code === 'EINVAL' &&
        e.message.includes(
          `map aggs has ${K}-byte keys and ${size + 8}-byte values, bpf/tcptracer.h says ${K} and ${size}`,
        ) &&
        /build both again/.test(e.message),
    )
  })
})
