// The systemd unit: systemd-analyze verify, the install script, and the daemon
// started the way the unit starts it (its user, its capabilities, its flags),
// passing the end-to-end check without root, and pinning its kernel state into a
// directory made by the unit's own ExecStartPre command, which the next start takes over.
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import { chmodSync, existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import { packageRoot } from '../../../src/kernel/paths.js'
import { DEFAULT_PIN_PATH } from '../../../src/kernel/pinned-state.js'
import {
  exchange,
  fixture,
  privileged,
  runClient,
  scrape,
  startDaemon,
  startServer,
  valueOf,
  type Daemon,
  type Netns as NetnsT,
  type ScrapedSample,
} from '../harness.js'

const UNIT = path.join(packageRoot, 'systemd', 'tcptracer-exporter.service')
const { skip } = privileged()

/** The [Service] settings of the unit, last value of each key. */
function unitSettings(text: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim())
    if (m?.[1] && m[2] !== undefined) out.set(m[1], m[2])
  }
  return out
}

/** Linux capability numbers of the names the unit uses. */
const CAP_BITS: Record<string, number> = {
  CAP_DAC_READ_SEARCH: 2,
  CAP_SYS_PTRACE: 19,
  CAP_PERFMON: 38,
  CAP_BPF: 39,
}

describe('systemd unit', { skip }, () => {
  const fx = fixture('tt-install-', { ns: `tt-sd-${process.pid}` })
  let ns: NetnsT
  let stage: string
  const settings = unitSettings(readFileSync(UNIT, 'utf8'))
  // this test's own pin directory, in place of the unit's
  const pin = `/sys/fs/bpf/tt-sd-${process.pid}`
  const daemons: Daemon[] = []

  before(() => {
    ns = fx.ns
    stage = fx.dir
    chmodSync(stage, 0o755)
  })
  after(async () => {
    for (const d of daemons) if (d.proc.child.exitCode === null) await d.stop('SIGKILL')
    spawnSync(process.execPath, [
      path.join(packageRoot, 'dist', 'src', 'cli.js'),
      'unpin',
      `--bpf.pin-path=${pin}`,
    ])
  })

  /** The unit's user (created if missing), and its capabilities as setpriv gives them. */
  function unitWay(): { user: string; caps: string[]; prefix: string[]; unitFlags: string[]; cli: string } {
    const user = settings.get('User') ?? ''
    assert.ok(user)
    if (spawnSync('id', [user]).status !== 0) {
      execFileSync('useradd', [
        '--system',
        '--no-create-home',
        '--home-dir',
        '/nonexistent',
        '--shell',
        '/usr/sbin/nologin',
        user,
      ])
    }
    const caps = (settings.get('AmbientCapabilities') ?? '').split(/\s+/).filter(Boolean)
    const capList = caps.map((c) => `+${c.replace(/^CAP_/, '').toLowerCase()}`).join(',')
    const prefix = [
      'setpriv',
      `--reuid=${user}`,
      `--regid=${user}`,
      '--clear-groups',
      `--inh-caps=-all,${capList}`,
      `--ambient-caps=-all,${capList}`,
      `--bounding-set=-all,${capList}`,
      '--no-new-privs',
      '--',
    ]
    // ExecStart's own flags, without the config, listen address and pin path that each test sets
    const exec = (settings.get('ExecStart') ?? '').split(/\s+/)
    const unitFlags = exec
      .slice(3)
      .filter((f) => !/^--(config\.file|web\.listen-address|bpf\.pin-path)=/.test(f))
    return { user, caps, prefix, unitFlags, cli: path.join(stage, 'opt/tcptracer-exporter/dist/src/cli.js') }
  }

  test('systemd-analyze verify is clean', () => {
    const r = spawnSync('systemd-analyze', ['verify', UNIT], { encoding: 'utf8' })
    assert.equal(r.status, 0, r.stderr)
    assert.equal(`${r.stdout}${r.stderr}`.trim(), '', 'no warnings')
  })

  test('the unit asks for what the exporter needs', () => {
    assert.equal(settings.get('Type'), 'notify')
    assert.ok(settings.get('WatchdogSec'))
    assert.equal(settings.get('Restart'), 'on-failure')
    assert.equal(settings.get('NoNewPrivileges'), 'yes')
    assert.equal(settings.get('ProtectSystem'), 'strict')
    assert.equal(settings.get('ProtectHome'), 'yes')
    assert.equal(settings.get('PrivateTmp'), 'yes')
    assert.equal(settings.get('ProtectKernelModules'), 'yes')
    assert.ok(settings.get('RestrictAddressFamilies'))
    const filter = settings.get('SystemCallFilter') ?? ''
    assert.ok(filter.includes('bpf') && filter.includes('perf_event_open'), filter)
    assert.equal(settings.get('CapabilityBoundingSet'), settings.get('AmbientCapabilities'))
  })

  test('install.sh stages the daemon, a default config and the unit', () => {
    execFileSync(path.join(packageRoot, 'scripts', 'install.sh'), ['--no-start'], {
      env: { ...process.env, DESTDIR: stage },
      stdio: 'pipe',
    })
    for (const f of [
      'opt/tcptracer-exporter/dist/src/cli.js',
      'opt/tcptracer-exporter/addon/build/Release/tcptracer.node',
      'opt/tcptracer-exporter/.output/tcptracer.bpf.o',
      'opt/tcptracer-exporter/node_modules/fastify/package.json',
      'etc/tcptracer-exporter/config.yaml',
      'etc/systemd/system/tcptracer-exporter.service',
    ]) {
      assert.ok(existsSync(path.join(stage, f)), `${f} installed`)
    }
    assert.ok(
      !existsSync(path.join(stage, 'opt/tcptracer-exporter/node_modules/typescript')),
      'no dev dependencies',
    )
    const check = spawnSync(
      process.execPath,
      [
        path.join(stage, 'opt/tcptracer-exporter/dist/src/cli.js'),
        'check-config',
        `--config.file=${path.join(stage, 'etc/tcptracer-exporter/config.yaml')}`,
      ],
      { encoding: 'utf8' },
    )
    assert.equal(check.status, 0, check.stderr)
  })

  test("started the unit's way (its user, only its capabilities, its flags), it counts exactly", async () => {
    const { user, caps, prefix, unitFlags, cli } = unitWay()
    // ExecStart's own flags, with our config and a free loopback port in place of theirs
    const config = path.join(stage, 'test-config.yaml')
    writeFileSync(config, `filters:\n  netns: [${ns.inode}]\n`)
    chmodSync(config, 0o644)

    // a listener owned by root from before the daemon: seeding it needs the /proc capabilities
    const server = await startServer(ns, ['--comm', 'tt-sd-srv', '--count', '20'])
    const d = await startDaemon(
      [...unitFlags, `--config.file=${config}`, '--web.listen-address=127.0.0.1:0'],
      process.env,
      { prefix, cli },
    )
    try {
      const status = readFileSync(`/proc/${d.proc.child.pid}/status`, 'utf8')
      const uid = execFileSync('id', ['-u', user], { encoding: 'utf8' }).trim()
      assert.match(status, new RegExp(`^Uid:\\s+${uid}\\s`, 'm'), 'runs as the unit user')
      // started with the unit's four, it keeps only cap_sys_ptrace once attached (exporter/capabilities.test.ts
      // checks every thread and every set, and kernels that need cap_bpf kept too)
      const granted = caps.reduce((m, c) => m | (1n << BigInt(CAP_BITS[c] ?? -1)), 0n)
      const field = (k: string): bigint =>
        BigInt(`0x${new RegExp(`^${k}:\\s+([0-9a-f]+)`, 'm').exec(status)?.[1] ?? ''}`)
      assert.equal(field('CapBnd'), granted, `CapBnd is exactly the unit's ${caps.join(' ')}`)
      const ptrace = 1n << BigInt(CAP_BITS['CAP_SYS_PTRACE'] ?? -1)
      assert.equal(field('CapEff'), ptrace, 'CapEff after the drop: cap_sys_ptrace')
      assert.equal(field('CapPrm'), ptrace, 'CapPrm after the drop: cap_sys_ptrace')

      const lines = await runClient(ns, [
        '--comm',
        'tt-sd-cli',
        '--addr',
        '127.0.0.1',
        '--port',
        String(server.port),
        '--count',
        '20',
        '--send',
        '3',
      ])
      assert.equal(lines.filter((l) => l['event'] === 'connected').length, 20)
      assert.equal(await server.proc.exited, 0)
      const s = (await scrape(d)).samples
      const base = { netns: String(ns.inode), family: 'ipv4' }
      assert.equal(valueOf(s, 'tcptracer_connects_total', { ...base, comm: 'tt-sd-cli' }), 20)
      assert.equal(
        valueOf(s, 'tcptracer_accepts_total', { ...base, comm: 'tt-sd-srv' }),
        20,
        'the pre-existing listener was seeded',
      )
      assert.equal(
        valueOf(s, 'tcptracer_closes_total', { ...base, comm: 'tt-sd-srv', direction: 'inbound' }),
        20,
      )
      assert.equal(
        valueOf(s, 'tcptracer_connection_received_bytes_total', {
          ...base,
          comm: 'tt-sd-srv',
          direction: 'inbound',
        }),
        60,
      )
      assert.equal(valueOf(s, 'tcptracer_unattributed_total', { kind: 'accept' }), 0)
      assert.equal((await fetch(`${d.url}/readyz`)).status, 200)
    } finally {
      assert.equal(await d.stop(), 0)
    }
  })

  test("its pinned state: in a directory made by the unit's ExecStartPre, taken over by the next start; unpin removes it", async () => {
    const { user, prefix, unitFlags, cli } = unitWay()
    // ExecStartPre=-+/usr/bin/install ...: "+" runs it as root, outside the sandbox, as here
    const pre = settings.get('ExecStartPre') ?? ''
    const [command, ...args] = pre.replace(/^[-+@:!]+/, '').split(/\s+/)
    assert.ok(!/["'\\$%]/.test(pre), `nothing for systemd to unquote or expand: ${pre}`)
    assert.ok(command !== undefined && command.startsWith('/') && existsSync(command), `a command: ${pre}`)
    assert.equal(args.at(-1), DEFAULT_PIN_PATH, 'ExecStartPre makes the default pin directory')
    assert.ok(
      (settings.get('ExecStart') ?? '').split(/\s+/).includes(`--bpf.pin-path=${DEFAULT_PIN_PATH}`),
      'and ExecStart asks to pin there (the daemon pins only when asked)',
    )
    const rw = (settings.get('ReadWritePaths') ?? '').split(/\s+/).map((p) => p.replace(/^-/, ''))
    assert.ok(rw.includes(DEFAULT_PIN_PATH), 'which the sandbox lets the daemon write')

    rmSync(pin, { recursive: true, force: true })
    execFileSync(command, [...args.slice(0, -1), pin])
    const st = statSync(pin)
    const id = (flag: string): number => Number(execFileSync('id', [flag, user], { encoding: 'utf8' }).trim())
    assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [id('-u'), id('-g'), 0o700])

    const config = path.join(stage, 'pin-config.yaml')
    writeFileSync(config, `filters:\n  netns: [${ns.inode}]\n`)
    chmodSync(config, 0o644)
    const start = async (): Promise<Daemon> => {
      const d = await startDaemon(
        [
          ...unitFlags,
          `--config.file=${config}`,
          '--web.listen-address=127.0.0.1:0',
          `--bpf.pin-path=${pin}`,
        ],
        process.env,
        { prefix, cli },
      )
      daemons.push(d)
      return d
    }
    const state = (s: ScrapedSample[]): Record<string, string> | undefined =>
      s.find((x) => x.name === 'tcptracer_kernel_state_info')?.labels
    const load = { serverComm: 'tt-sdp-srv', clientComm: 'tt-sdp-cli', send: 8 }
    const counts = (s: ScrapedSample[]): Array<number | undefined> => [
      valueOf(s, 'tcptracer_connects_total', { comm: 'tt-sdp-cli', netns: String(ns.inode) }),
      valueOf(s, 'tcptracer_accepts_total', { comm: 'tt-sdp-srv', netns: String(ns.inode) }),
      valueOf(s, 'tcptracer_closes_total', { comm: 'tt-sdp-srv', direction: 'inbound' }),
      valueOf(s, 'tcptracer_connection_received_bytes_total', { comm: 'tt-sdp-srv', direction: 'inbound' }),
    ]

    const d1 = await start()
    const first = (await scrape(d1)).samples
    assert.equal(state(first)?.['origin'], 'new', `pinned: ${d1.proc.stderr}`)
    assert.match(state(first)?.['path'] ?? '', new RegExp(`^${pin}/v\\d+-[0-9a-f]+$`))
    await exchange(ns, { ...load, n: 3 })
    assert.deepEqual(counts((await scrape(d1)).samples), [3, 3, 3, 24])
    // systemctl restart: the daemon stops, connections go on, it starts again
    assert.equal(await d1.stop('SIGTERM'), 0)
    await exchange(ns, { ...load, n: 2 })
    const d2 = await start()
    const second = (await scrape(d2)).samples
    assert.equal(state(second)?.['origin'], 'restored', `taken over: ${d2.proc.stderr}`)
    assert.deepEqual(counts(second), [5, 5, 5, 40], 'counters continue, nothing missed meanwhile')
    assert.equal(await d2.stop('SIGTERM'), 0)

    // install.sh --uninstall runs unpin as root
    assert.equal(readdirSync(pin).length, 1)
    const r = spawnSync(process.execPath, [cli, 'unpin', `--bpf.pin-path=${pin}`], { encoding: 'utf8' })
    assert.equal(r.status, 0, r.stderr)
    assert.match(r.stdout, new RegExp(`^removed ${pin}/v\\d+-[0-9a-f]+$`, 'm'))
    assert.equal(existsSync(pin), false)
  })
})
