// Restart without loss: the exporter pins its kernel state (maps and program links) in bpffs, so a
// restart, or an upgrade that loads different programs, keeps the connections in flight, the counters
// and the events that happen while no daemon runs. Real daemons, real sockets, a real bpffs.
// vm-suite: kernel hooks
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import { formatLe } from '../../../src/metrics/exposition.js'
import {
  assertCounted,
  CLI,
  type Daemon,
  exchange,
  fixture,
  inNetns,
  type Netns,
  privileged,
  reportedShortfall,
  scrape,
  scrapeUntil,
  type ScrapedSample,
  startDaemon,
  startServer,
  TIME_SCALE,
  valueOf,
} from '../harness.js'

const gate = privileged()

/** The ids of the programs whose links are pinned under dir (bpftool), to see that they go away. */
function pinnedProgramIds(dir: string): number[] {
  const ids: number[] = []
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p)
      else if (d.includes(`${path.sep}links${path.sep}`)) {
        const r = spawnSync('bpftool', ['--json', 'link', 'show', 'pinned', p], { encoding: 'utf8' })
        assert.equal(r.status, 0, `bpftool link show pinned ${p}: ${r.stderr}`)
        ids.push((JSON.parse(r.stdout) as { prog_id: number }).prog_id)
      }
    }
  }
  walk(dir)
  return ids
}

function programExists(id: number): boolean {
  return spawnSync('bpftool', ['prog', 'show', 'id', String(id)], { encoding: 'utf8' }).status === 0
}

/** The ids of the BPF programs the process `pid` holds, as program or link fds (their fdinfo's prog_id). */
function programsOf(pid: number): number[] {
  const ids = new Set<number>()
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^prog_id:\s*(\d+)$/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))
      if (m) ids.add(Number(m[1]))
    } catch {
      // closed meanwhile
    }
  }
  return [...ids]
}

/** Whether all these programs are freed within a few seconds (the kernel frees them after an RCU grace period). */
async function allFreed(ids: number[]): Promise<boolean> {
  const deadline = Date.now() + 5000 * TIME_SCALE
  while (ids.some(programExists)) {
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return true
}

describe('restart without loss', { skip: gate.skip }, () => {
  const fx = fixture('tt-restart-', { ns: `tt-rs-${process.pid}` })
  let ns: Netns
  let dir: string
  let pin: string
  let config: string
  const daemons: Daemon[] = []

  const start = async (extra: string[] = []): Promise<Daemon> => {
    const d = await startDaemon([`--config.file=${config}`, `--bpf.pin-path=${pin}`, ...extra])
    daemons.push(d)
    return d
  }
  const stateOf = (samples: ScrapedSample[]): string | undefined =>
    samples.find((s) => s.name === 'tcptracer_kernel_state_info')?.labels['origin']
  const stateDirs = (): string[] => (existsSync(pin) ? readdirSync(pin) : [])

  before(() => {
    ns = fx.ns
    dir = fx.dir
    pin = `/sys/fs/bpf/tt-rs-${process.pid}`
    config = path.join(dir, 'config.yml')
    writeFileSync(
      config,
      `filters:\n  netns: [${ns.inode}]\nhistogram:\n  buckets_seconds: [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]\n`,
    )
  })
  after(async () => {
    for (const d of daemons) if (d.proc.child.exitCode === null) await d.stop('SIGKILL')
    spawnSync(process.execPath, [CLI, 'unpin', `--bpf.pin-path=${pin}`])
    rmSync(pin, { recursive: true, force: true })
  })

  test('a plain start pins nothing: its log and /readyz say so, and Ctrl-C detaches every program; --bpf.pin-path keeps them', async () => {
    interface Ready {
      kernelState?: { origin: string; path: string; onExit: string }
    }
    const readyz = async (d: Daemon): Promise<Ready> =>
      (await (await fetch(`${d.url}/readyz`)).json()) as Ready
    const exitLog = (d: Daemon): string | undefined =>
      d.logs().find((l) => String(l['msg']).startsWith('on exit: '))?.['msg'] as string | undefined

    // no --bpf.pin-path at all (the harness adds none): as a person starts it in a terminal
    const plain = await startDaemon([`--config.file=${config}`])
    daemons.push(plain)
    const cmdline = readFileSync(`/proc/${plain.proc.child.pid}/cmdline`, 'utf8').split('\0')
    assert.ok(!cmdline.some((a) => a.startsWith('--bpf.pin-path')), cmdline.join(' '))
    const r1 = await readyz(plain)
    assert.equal(r1.kernelState?.origin, 'unpinned')
    assert.equal(r1.kernelState.path, '')
    assert.match(r1.kernelState.onExit, /^detach: /)
    assert.match(exitLog(plain) ?? '', /^on exit: detach: /, plain.proc.stderr)
    assert.equal(stateOf((await scrape(plain)).samples), 'unpinned')
    const held = programsOf(plain.proc.child.pid!)
    assert.ok(held.length >= 2, `the daemon holds its programs: ${held.join(',')}`)
    assert.equal(await plain.stop('SIGINT'), 0, 'Ctrl-C exits 0')
    assert.ok(plain.logs().some((l) => l['msg'] === 'detached, exiting'))
    assert.ok(
      await allFreed(held),
      `every program is gone after Ctrl-C: ${held.filter(programExists).join(',')}`,
    )
    assert.deepEqual(stateDirs(), [], 'nothing pinned')

    // asked to pin: the same start with the flag keeps the programs counting after Ctrl-C
    const pinned = await start()
    const r2 = await readyz(pinned)
    assert.equal(r2.kernelState?.origin, 'new')
    assert.match(r2.kernelState.path, new RegExp(`^${pin}/v\\d+-[0-9a-f]+$`))
    assert.match(r2.kernelState.onExit, /^keep counting: /)
    assert.match(exitLog(pinned) ?? '', /^on exit: keep counting: /, pinned.proc.stderr)
    assert.equal(await pinned.stop('SIGINT'), 0)
    const ids = pinnedProgramIds(pin)
    assert.ok(ids.length >= 2 && ids.every(programExists), 'its programs stay attached and pinned')
    const r = spawnSync(process.execPath, [CLI, 'unpin', `--bpf.pin-path=${pin}`], { encoding: 'utf8' })
    assert.equal(r.status, 0, r.stderr)
    assert.ok(await allFreed(ids), 'unpin frees them')
  })

  test('connections open across a restart, and those made while no daemon runs, are counted exactly, with their lifetimes', async () => {
    const n = 40
    const m = 25
    const d1 = await start()
    const first = await scrape(d1)
    assert.equal(stateOf(first.samples), 'new', 'the first run pins a new state')
    assert.equal(stateDirs().length, 1)

    // n long-lived connections, each held by its own client thread until the client is killed
    const server = await startServer(ns, [
      '--comm',
      'tt-rs-srv',
      '--count',
      String(n),
      '--threads',
      String(n),
    ])
    const client = inNetns(ns, [
      'client',
      '--comm',
      'tt-rs-cli',
      '--addr',
      '127.0.0.1',
      '--port',
      String(server.port),
      '--count',
      String(n),
      '--threads',
      String(n),
      '--send',
      '7',
      '--hold-ms',
      '3600000',
    ])
    const v = (s: ScrapedSample[], name: string, labels: Record<string, string>): number | undefined =>
      valueOf(s, name, labels)
    // Exact; on Debian's 6.1 kernel short by at most the map updates it refused (reportedShortfall)
    const within = (s: ScrapedSample[], got: number | undefined, want: number): boolean =>
      (got ?? 0) <= want && want - (got ?? 0) <= reportedShortfall(s)
    const opened = await scrapeUntil(
      d1,
      (s) =>
        within(s, v(s, 'tcptracer_active_connections', { comm: 'tt-rs-cli', direction: 'outbound' }), n) &&
        within(s, v(s, 'tcptracer_active_connections', { comm: 'tt-rs-srv', direction: 'inbound' }), n),
      20000,
    )
    for (const [comm, direction] of [
      ['tt-rs-cli', 'outbound'],
      ['tt-rs-srv', 'inbound'],
    ] as const) {
      assertCounted(
        v(opened.samples, 'tcptracer_active_connections', { comm, direction }),
        n,
        opened.samples,
        `${comm}: ${n} connections open (client: ${client.stderr})`,
      )
    }
    const openedAt = Date.now()

    assert.equal(await d1.stop(), 0)
    assert.ok(
      d1.logs().some((l) => String(l['msg']).includes('pinned programs keep counting')),
      'the exit log says the programs stay',
    )
    // while no daemon runs: complete connections, which the pinned programs must count
    await exchange(ns, { n: m, send: 3, serverComm: 'tt-rs-qsrv', clientComm: 'tt-rs-qcli' })

    const d2 = await start()
    const mid = await scrape(d2)
    assert.equal(stateOf(mid.samples), 'restored', 'the second run takes the state over')
    assert.ok(
      d2.logs().some((l) => l['msg'] === 'took over the kernel state pinned by the previous run'),
      'the takeover is logged',
    )
    const counted = (
      s: ScrapedSample[],
      name: string,
      labels: Record<string, string>,
      want: number,
      unit = 1,
    ): void => assertCounted(v(s, name, labels), want, s, `${name} ${JSON.stringify(labels)}`, { unit })
    counted(mid.samples, 'tcptracer_connects_total', { comm: 'tt-rs-cli' }, n)
    counted(mid.samples, 'tcptracer_accepts_total', { comm: 'tt-rs-srv' }, n)
    counted(mid.samples, 'tcptracer_active_connections', { comm: 'tt-rs-cli', direction: 'outbound' }, n)
    counted(mid.samples, 'tcptracer_active_connections', { comm: 'tt-rs-srv', direction: 'inbound' }, n)
    counted(mid.samples, 'tcptracer_connects_total', { comm: 'tt-rs-qcli' }, m)
    counted(mid.samples, 'tcptracer_accepts_total', { comm: 'tt-rs-qsrv' }, m)
    counted(mid.samples, 'tcptracer_closes_total', { comm: 'tt-rs-qcli', direction: 'outbound' }, m)
    counted(mid.samples, 'tcptracer_closes_total', { comm: 'tt-rs-qsrv', direction: 'inbound' }, m)

    // close the long-lived ones now, under the second daemon, after at least 2.5 s
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, 2500 - (Date.now() - openedAt))))
    const heldMs = Date.now() - openedAt
    client.child.kill('SIGKILL')
    await client.exited
    assert.equal(await server.proc.exited, 0, server.proc.stderr)
    const end = await scrapeUntil(
      d2,
      (s) =>
        v(s, 'tcptracer_closes_total', { comm: 'tt-rs-srv', direction: 'inbound' }) === n ||
        (reportedShortfall(s) > 0 &&
          within(s, v(s, 'tcptracer_closes_total', { comm: 'tt-rs-srv', direction: 'inbound' }), n)),
      20000,
    )
    for (const [comm, direction] of [
      ['tt-rs-cli', 'outbound'],
      ['tt-rs-srv', 'inbound'],
    ] as const) {
      const l = { comm, direction }
      counted(end.samples, 'tcptracer_closes_total', l, n)
      assertCounted(v(end.samples, 'tcptracer_active_connections', l), 0, end.samples, `${comm} active`, {
        gauge: true,
      })
      counted(end.samples, 'tcptracer_connection_duration_seconds_count', l, n)
      // every lifetime spans the restart: none falls in a bucket below the time they were held
      const below = [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512].filter((b) => b * 1000 < heldMs)
      for (const b of below) {
        assert.equal(
          v(end.samples, 'tcptracer_connection_duration_seconds_bucket', { ...l, le: formatLe(b) }),
          0,
          `${comm}: no lifetime below ${b}s (held ${heldMs} ms)`,
        )
      }
      const sum = v(end.samples, 'tcptracer_connection_duration_seconds_sum', l) ?? 0
      const lifetimes = v(end.samples, 'tcptracer_connection_duration_seconds_count', l) ?? 0
      assert.ok(sum >= (lifetimes * heldMs) / 1000, `${comm}: lifetimes sum ${sum}s, held ${heldMs} ms each`)
    }
    counted(
      end.samples,
      'tcptracer_connection_sent_bytes_total',
      { comm: 'tt-rs-cli', direction: 'outbound' },
      n * 7,
      7,
    )
    counted(
      end.samples,
      'tcptracer_connection_received_bytes_total',
      { comm: 'tt-rs-srv', direction: 'inbound' },
      n * 7,
      7,
    )
    assert.equal(await d2.stop(), 0)
  })

  test('an upgrade to other programs under load: every connection counted once, none lost', async () => {
    const d1 = await start(['--log.level=info'])
    // rounds of the generator, back to back, until the second daemon has taken over: whatever the
    // machine's speed, connections are being made while the programs change hands
    const gen = { stop: false, rounds: 0, connected: 0, accepted: 0 }
    const generator = (async () => {
      while (!gen.stop) {
        const round = inNetns(ns, [
          'pair',
          '--comm',
          'tt-up-main',
          '--comm-server',
          'tt-up-srv',
          '--comm-client',
          'tt-up-cli',
          '--count',
          '2000',
          // one thread pair: with both CPUs saturated the kernel currently loses a few client
          // closes per 100k on its own, takeover or not (under investigation; see docs/tracer.md)
          '--threads',
          '1',
        ])
        assert.equal(await round.exited, 0, round.stderr)
        const done = round.lines.find((l) => l['event'] === 'done')!
        gen.connected += done['connected'] as number
        gen.accepted += done['accepted'] as number
        gen.rounds++
      }
    })()
    const deadline = Date.now() + 20000 * TIME_SCALE
    while (
      !((valueOf((await scrape(d1)).samples, 'tcptracer_connects_total', { comm: 'tt-up-cli' }) ?? 0) > 0)
    ) {
      assert.ok(Date.now() < deadline, 'the load did not start')
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    // the same state taken over by a different copy of the programs: another accept hook
    assert.equal(await d1.stop(), 0)
    const d2 = await start(['--log.level=info', `--config.file=${upgradeConfig()}`])
    assert.equal(stateOf((await scrape(d2)).samples), 'restored')
    // rounds run back to back, so one was running at the takeover; and one more whole round under the
    // new copy
    const atTakeover = gen.rounds
    while (gen.rounds < atTakeover + 2) await new Promise((resolve) => setTimeout(resolve, 20))
    gen.stop = true
    await generator
    const n = gen.connected
    assert.equal(gen.accepted, n, 'the generator accepted what it connected')
    // in listener mode an accept is charged to the thread that called listen() (tt-up-main), in syscall
    // mode to the one that called accept() (tt-up-srv): sum over the pair's names
    let s = (await scrape(d2)).samples
    const total = (name: string, labels: Record<string, string> = {}): number =>
      s
        .filter((x) => x.name === name && x.labels['comm']?.startsWith('tt-up-'))
        .filter((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val))
        .reduce((a, x) => a + x.value, 0)
    // the last closes complete (the final ACK, TIME_WAIT) after the generator exits
    const settled = Date.now() + 10000 * TIME_SCALE
    while (
      (total('tcptracer_closes_total', { direction: 'inbound' }) < n ||
        total('tcptracer_closes_total', { direction: 'outbound' }) < n) &&
      Date.now() < settled
    ) {
      await new Promise((resolve) => setTimeout(resolve, 100))
      s = (await scrape(d2)).samples
    }
    assertCounted(valueOf(s, 'tcptracer_connects_total', { comm: 'tt-up-cli' }), n, s, 'connects')
    assertCounted(total('tcptracer_accepts_total'), n, s, 'accepts')
    assertCounted(
      valueOf(s, 'tcptracer_closes_total', { comm: 'tt-up-cli', direction: 'outbound' }),
      n,
      s,
      'closes out',
    )
    assertCounted(total('tcptracer_closes_total', { direction: 'inbound' }), n, s, 'closes in')
    assert.equal(
      valueOf(s, 'tcptracer_active_connections', { comm: 'tt-up-cli', direction: 'outbound' }),
      0,
      'active out',
    )
    assert.equal(total('tcptracer_active_connections', { direction: 'inbound' }), 0, 'active in')

    assert.equal(await d2.stop(), 0)

    function upgradeConfig(): string {
      const f = path.join(dir, 'upgrade.yml')
      writeFileSync(
        f,
        `accept_mode: syscall\nfilters:\n  netns: [${ns.inode}]\nhistogram:\n  buckets_seconds: [0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]\n`,
      )
      return f
    }
  })

  test('settings that change the maps start a new state and remove the old programs; unpin removes all', async () => {
    const d1 = await start()
    await d1.stop()
    const [old] = stateDirs()
    assert.ok(old, 'a state directory is pinned')
    const oldPrograms = pinnedProgramIds(pin)
    assert.ok(oldPrograms.length >= 2, 'the backbone programs are pinned')
    assert.ok(oldPrograms.every(programExists), 'and stay loaded after the daemon exits')

    const bigger = path.join(dir, 'bigger.yml')
    writeFileSync(bigger, `filters:\n  netns: [${ns.inode}]\nlimits:\n  max_connections: 131072\n`)
    const d2 = await start([`--config.file=${bigger}`])
    assert.equal(stateOf((await scrape(d2)).samples), 'new', 'a different layout cannot be taken over')
    assert.deepEqual(
      stateDirs().filter((x) => x === old),
      [],
      'the old state directory is removed',
    )
    assert.equal(stateDirs().length, 1)
    assert.ok(await allFreed(oldPrograms), 'the old programs are gone')
    // counting works in the new state
    await exchange(ns, { n: 5, send: 1, serverComm: 'tt-nw-srv', clientComm: 'tt-nw-cli' })
    const s2 = (await scrape(d2)).samples
    assertCounted(valueOf(s2, 'tcptracer_connects_total', { comm: 'tt-nw-cli' }), 5, s2, 'connects')
    await d2.stop()

    const programs = pinnedProgramIds(pin)
    const r = spawnSync(process.execPath, [CLI, 'unpin', `--bpf.pin-path=${pin}`], { encoding: 'utf8' })
    assert.equal(r.status, 0, r.stderr)
    assert.match(r.stdout, /^removed \/sys\/fs\/bpf\/tt-rs-\d+\/v\d+-[0-9a-f]+$/m)
    assert.equal(existsSync(pin), false)
    assert.ok(await allFreed(programs), 'no program of ours stays loaded')
    const again = spawnSync(process.execPath, [CLI, 'unpin', `--bpf.pin-path=${pin}`], { encoding: 'utf8' })
    assert.equal(again.status, 0)
    assert.match(again.stdout, /nothing pinned/)
  })

  test('without bpffs at the pin path the daemon runs unpinned and says so; unpin refuses such a path', async () => {
    const notBpf = path.join(dir, 'not-bpffs')
    const d = await startDaemon([`--config.file=${config}`, `--bpf.pin-path=${notBpf}`])
    daemons.push(d)
    const s = (await scrape(d)).samples
    assert.equal(stateOf(s), 'unpinned')
    const warn = d.logs().find((l) => String(l['msg']).startsWith('kernel state not pinned'))
    assert.ok(warn, 'a warning explains it')
    assert.match(String(warn['reason']), /not on a BPF filesystem .*mount -t bpf/)
    assert.equal(await d.stop(), 0)
    assert.ok(d.logs().some((l) => l['msg'] === 'detached, exiting'))

    writeFileSync(path.join(dir, 'keep-me'), 'x')
    const r = spawnSync(process.execPath, [CLI, 'unpin', `--bpf.pin-path=${dir}`], { encoding: 'utf8' })
    assert.equal(r.status, 1)
    assert.match(r.stderr, /is not on a BPF filesystem: refusing to remove it/)
    assert.ok(existsSync(path.join(dir, 'keep-me')), 'nothing was removed')
    const rel = spawnSync(process.execPath, [CLI, 'unpin', '--bpf.pin-path=relative/dir'], {
      encoding: 'utf8',
    })
    assert.equal(rel.status, 2)
  })
})
