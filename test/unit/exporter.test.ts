// The Exporter without a kernel: a fake tracer stands in for the addon's, so the start's steps and
// their failures, the takeover of pinned state, a collection, a config reload, the signals and the stop
// can be checked unprivileged.
import assert from 'node:assert/strict'
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterEach, beforeEach, describe, test } from 'node:test'
import { onSignals } from '../../src/cli/signals.js'
import { defaultConfig, parseConfig, type Config } from '../../src/config/config.js'
import { Exporter } from '../../src/exporter/exporter.js'
import { configFile, reloadFile, webConfigFile, type ReloadLog } from '../../src/exporter/reload.js'
import { HttpState } from '../../src/http/state.js'
import { EMPTY_WEB_CONFIG } from '../../src/config/webconfig.js'
import { takeOver, type ExporterTracer, type Kernel } from '../../src/exporter/startup.js'
import { loadBinding, type ProgramStatus } from '../../src/kernel/binding.js'
import { linksDir, type PinPlan } from '../../src/kernel/pinned-state.js'
import { encodeAggKey, type SeedConnection } from '../../src/kernel/abi.js'
import {
  ACCEPT_PROGRAMS,
  type HookProbe,
  type KernelStats,
  type TracerOptions,
} from '../../src/kernel/tracer.js'
import { renderChunks, type MetricFamily } from '../../src/metrics/exposition.js'

const { layout: L, constants: C } = loadBinding()

/** A tracer that keeps the aggregation map in a Map and writes down what is asked of it. */
class FakeTracer implements ExporterTracer {
  readonly calls: string[] = []
  readonly programs: ProgramStatus[] = []
  readonly hookProbes: HookProbe[] = [
    { mode: 'fexit', ok: false, error: 'no BTF' },
    { mode: 'kprobe', ok: true },
  ]
  readonly acceptHook = 'kprobe' as const
  readonly generation = 0n
  readonly layout = L
  readonly constants = C
  readonly libbpfVersion = 'v1.5'
  /** the aggregation map: key (hex) -> entry */
  readonly aggs = new Map<string, { key: Buffer; value: Buffer }>()
  attachError: Error | undefined
  seedError: Error | undefined
  /** the generation the state's control map holds */
  active = 0n
  /** the key size the map reports (the layout's unless a test changes it) */
  labelMask: { pid: boolean; cgroup: boolean; port: boolean } | undefined
  filters: [readonly number[], readonly number[]] | undefined
  closed = false

  hooks(): Array<{ hook: 'state' | 'accept'; mode: string }> {
    return [
      { hook: 'state', mode: 'raw_tp' },
      { hook: 'accept', mode: this.acceptHook },
    ]
  }

  activeGeneration(): bigint {
    return this.active
  }

  activate(): void {
    this.calls.push('activate')
  }

  pinLinks(): void {
    this.calls.push('pinLinks')
  }

  attach(): ProgramStatus[] {
    this.calls.push('attach')
    if (this.attachError) throw this.attachError
    this.programs.push(
      { name: 'handle_set_state', section: 'raw_tp/inet_sock_set_state', attached: true },
      ...ACCEPT_PROGRAMS[this.acceptHook].map((name) => ({
        name,
        section: `kprobe/${name}`,
        attached: true,
      })),
    )
    return this.programs
  }

  createOverflowEntries(): void {
    this.calls.push('createOverflowEntries')
  }

  setLabelMask(labels: { pid: boolean; cgroup: boolean; port: boolean }): void {
    this.calls.push('setLabelMask')
    this.labelMask = labels
  }

  setFilters(netns: readonly number[], ports: readonly number[]): void {
    this.calls.push('setFilters')
    this.filters = [netns, ports]
  }

  seedListeners(owners: readonly unknown[]): number {
    this.calls.push('seedListeners')
    if (this.seedError) throw this.seedError
    return owners.length
  }

  seedEntry(s: SeedConnection): { key: Buffer; value: Buffer } {
    return { key: Buffer.from([s.netns, s.sport, s.dport, s.pid].join(':')), value: Buffer.alloc(0) }
  }

  seedConnections(conns: readonly SeedConnection[]): Buffer[] {
    this.calls.push('seedConnections')
    return conns.map((c) => this.seedEntry(c).key)
  }

  seededOwners(): [] {
    return []
  }

  unseed(): boolean {
    return true
  }

  sweepUnseenCloses(): boolean {
    this.calls.push('sweep')
    return false
  }

  aggregatesCapacity(): number {
    return 1024
  }

  readAggregates(keys: Buffer, values: Buffer): number {
    this.calls.push(`read ${keys.length / L.aggKey.size}`)
    const entries = [...this.aggs.values()]
    if (keys.length < (entries.length + 1) * L.aggKey.size) return -1
    entries.forEach((e, i) => {
      e.key.copy(keys, i * L.aggKey.size)
      e.value.copy(values, i * L.aggValue.size)
    })
    return entries.length
  }

  deleteAggregate(key: Buffer): boolean {
    this.calls.push('deleteAggregate')
    return this.aggs.delete(key.toString('hex'))
  }

  kernelStats(): KernelStats {
    return {
      aggregationFull: 0n,
      eventsLost: 0n,
      mapUpdateFailed: 0n,
      acceptUnattributed: 0n,
      connectUnattributed: 0n,
      closeUnseen: 0n,
      connectUnseen: 0n,
    }
  }

  recursionMisses(): Array<{ name: string; misses: bigint }> {
    return []
  }

  close(): void {
    this.calls.push('close')
    this.closed = true
  }

  /** An outbound label set of `comm` with `opened` connects and `closed` closes, last active `lastNs`. */
  add(comm: string, opened: bigint, closed = 0n, lastNs = process.hrtime.bigint()): void {
    const key = encodeAggKey({ comm, netns: 4026531840, ip: 4, direction: 'outbound' }, this)
    const value = Buffer.alloc(L.aggValue.size)
    value.writeBigUInt64LE(opened, L.aggValue.opened)
    value.writeBigUInt64LE(closed, L.aggValue.closed)
    value.writeBigUInt64LE(lastNs, L.aggValue.last_ns)
    this.aggs.set(key.toString('hex'), { key, value })
  }
}

interface LogLine {
  level: string
  o: object
  msg: string
}

function sink(): { lines: LogLine[]; log: ReloadLog & { debug(o: object, msg: string): void } } {
  const lines: LogLine[] = []
  const at =
    (level: string) =>
    (o: object, msg: string): void => {
      lines.push({ level, o, msg })
    }
  return { lines, log: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } }
}

let tmp: string
let procRoot: string
beforeEach(() => {
  tmp = mkdtempSync(path.join(tmpdir(), 'exporter-test-'))
  // an empty /proc: no sockets open before start
  procRoot = path.join(tmp, 'proc')
  mkdirSync(procRoot)
})
afterEach(() => rmSync(tmp, { recursive: true, force: true }))

async function started(
  config: Config = defaultConfig,
  more: { pinPath?: string } = {},
): Promise<{ exporter: Exporter; tracer: FakeTracer; opened: TracerOptions[]; lines: LogLine[] }> {
  const tracer = new FakeTracer()
  const opened: TracerOptions[] = []
  const kernel: Kernel = {
    binding: { layout: L, constants: C, mmapThreshold: () => true },
    openTracer: (opts) => {
      tracer.calls.push('open')
      opened.push(opts)
      return tracer
    },
  }
  const { lines, log } = sink()
  const exporter = await Exporter.start({ config, log, kernel, procRoot, ...more })
  return { exporter, tracer, opened, lines }
}

/** The families in the Prometheus text format. */
function text(families: MetricFamily[]): string {
  return [...renderChunks(families, 'prometheus')].map((c) => c.toString()).join('')
}

/** The value of the sample of `name` whose labels include `label` (`comm="curl"`), if there is one. */
function sample(body: string, name: string, label = ''): number | undefined {
  const line = body
    .split('\n')
    .find((l) => (l.startsWith(`${name}{`) || l.startsWith(`${name} `)) && l.split(' ')[0]!.includes(label))
  return line === undefined ? undefined : Number(line.split(' ').at(-1))
}

describe('Exporter.start', () => {
  test('opens, configures, attaches, then seeds, in that order, and is ready', async () => {
    const { exporter, tracer, opened, lines } = await started(parseConfig('labels: [comm, pid]\n', 'c.yml'))
    assert.deepEqual(tracer.calls, [
      'open',
      'createOverflowEntries',
      'setLabelMask',
      'setFilters',
      'attach',
      'seedListeners',
      'seedConnections',
    ])
    assert.equal(opened.length, 1)
    assert.equal(opened[0]?.aggregate, true)
    assert.equal(opened[0]?.ringBufferBytes, 4096)
    assert.equal(opened[0]?.pinMapsDir, undefined)
    assert.deepEqual(tracer.labelMask, { pid: true, cgroup: false, port: false })
    assert.equal(exporter.kernelState.origin, 'unpinned')
    assert.deepEqual(exporter.hooks[1], {
      hook: 'accept',
      mode: 'kprobe',
      rejected: [{ mode: 'fexit', error: 'no BTF' }],
    })
    assert.ok(lines.some((l) => l.msg === 'seeded sockets that were open before start'))
    assert.equal(exporter.notReadyReason(), undefined)
    exporter.close()
  })

  test('a pin path that is not in bpffs: unpinned, with the reason, and a warning', async () => {
    const { exporter, opened, lines } = await started(defaultConfig, { pinPath: path.join(tmp, 'pins') })
    assert.equal(exporter.kernelState.origin, 'unpinned')
    assert.notEqual(exporter.kernelState.reason, undefined)
    assert.equal(opened[0]?.pinMapsDir, undefined)
    assert.ok(lines.some((l) => l.level === 'warn' && l.msg.startsWith('kernel state not pinned')))
    exporter.close()
  })

  test('an attach failure is thrown as it is, and the tracer is closed: nothing stays attached', async () => {
    const tracer = new FakeTracer()
    tracer.attachError = Object.assign(new Error('program handle_set_state: permission denied'), {
      name: 'BpfError',
    })
    const kernel: Kernel = {
      binding: { layout: L, constants: C, mmapThreshold: () => false },
      openTracer: () => tracer,
    }
    await assert.rejects(
      Exporter.start({ config: defaultConfig, log: sink().log, kernel, procRoot }),
      /program handle_set_state: permission denied/,
    )
    assert.equal(tracer.closed, true)
    assert.deepEqual(tracer.programs, [])
    assert.equal(tracer.calls.at(-1), 'close')
  })

  test('a failure once attached (seeding) closes the tracer too: its programs detach', async () => {
    const tracer = new FakeTracer()
    tracer.seedError = new Error('listeners map full')
    const kernel: Kernel = {
      binding: { layout: L, constants: C, mmapThreshold: () => true },
      openTracer: () => tracer,
    }
    await assert.rejects(
      Exporter.start({ config: defaultConfig, log: sink().log, kernel, procRoot }),
      /listeners map full/,
    )
    assert.deepEqual(tracer.calls.slice(-3), ['attach', 'seedListeners', 'close'])
  })

  test('a tracer that cannot be opened: its error, and nothing to close', async () => {
    const kernel: Kernel = {
      binding: { layout: L, constants: C, mmapThreshold: () => true },
      openTracer: () => {
        throw new Error('accept_mode fexit: cannot load')
      },
    }
    await assert.rejects(
      Exporter.start({ config: defaultConfig, log: sink().log, kernel, procRoot }),
      /accept_mode fexit: cannot load/,
    )
  })
})

describe('takeOver', () => {
  function plan(): PinPlan {
    const dir = path.join(tmp, 'v1-0123456789abcdef')
    mkdirSync(path.join(dir, 'maps'), { recursive: true })
    return { root: tmp, dir, mapsDir: path.join(dir, 'maps'), generation: 7n, adopting: true, stale: [] }
  }

  test('the pinned state whose programs kept counting is taken over', () => {
    const p = plan()
    const tracer = new FakeTracer()
    tracer.active = 5n
    mkdirSync(linksDir(p, 5n), { recursive: true })
    writeFileSync(path.join(linksDir(p, 5n), 'handle_set_state'), '')
    const { lines, log } = sink()
    const r = takeOver(p, () => tracer, log)
    assert.equal(r.tracer, tracer)
    assert.equal(r.plan.adopting, true)
    assert.equal(tracer.closed, false)
    assert.deepEqual(lines, [])
  })

  test('a state whose programs were detached is discarded and started afresh', () => {
    const p = plan()
    writeFileSync(path.join(p.mapsDir, 'aggs'), '')
    const tracer = new FakeTracer()
    tracer.active = 5n
    const { lines, log } = sink()
    const r = takeOver(p, () => tracer, log)
    assert.equal(r.tracer, undefined)
    assert.equal(r.plan.adopting, false)
    assert.equal(tracer.closed, true)
    assert.deepEqual(readdirSync(p.mapsDir), [])
    assert.equal(lines[0]?.msg, 'cannot take over the pinned kernel state: starting afresh')
    assert.match((lines[0]?.o as { reason: string }).reason, /no longer attached/)
  })

  test('a state that cannot be opened is discarded too, with the error as the reason', () => {
    const p = plan()
    const { lines, log } = sink()
    const r = takeOver(
      p,
      () => {
        throw new Error('map aggs: incompatible pinned map')
      },
      log,
    )
    assert.equal(r.plan.adopting, false)
    assert.deepEqual(lines[0]?.o, { path: p.dir, reason: 'map aggs: incompatible pinned map' })
  })
})

describe('Exporter.collect', () => {
  test('sweeps, then reads the map (growing the Buffers) into the connection and self families', async () => {
    const { exporter, tracer } = await started()
    tracer.add('curl', 3n)
    tracer.calls.length = 0
    const families = await exporter.collect()
    assert.equal(tracer.calls[0], 'sweep')
    assert.ok(tracer.calls.filter((c) => c.startsWith('read')).length >= 2, tracer.calls.join())
    const body = text(families)
    assert.equal(sample(body, 'tcptracer_connects_total', 'comm="curl"'), 3)
    assert.equal(sample(body, 'tcptracer_config_reloads_total', 'result="success"'), 0)
    // the reads alternate between two pairs of Buffers: the third reuses the first's, grown, in one read
    await exporter.collect()
    tracer.calls.length = 0
    tracer.add('curl', 5n)
    const third = await exporter.collect()
    assert.equal(tracer.calls.filter((c) => c.startsWith('read')).length, 1)
    assert.equal(sample(text(third), 'tcptracer_connects_total', 'comm="curl"'), 5)
    exporter.close()
  })

  test('idle label sets expire, and their kernel entries are deleted', async () => {
    const { exporter, tracer } = await started(parseConfig('limits: {idle_expiry: 1s}\n', 'c.yml'))
    tracer.add('old', 1n, 1n, 1n)
    await exporter.collect()
    await exporter.collect()
    assert.ok(tracer.calls.includes('deleteAggregate'))
    assert.equal(tracer.aggs.size, 0)
    exporter.close()
  })
})

describe('Exporter.reload', () => {
  test('applies what can change at once and refuses what needs a restart', async () => {
    const { exporter, tracer } = await started()
    const next = parseConfig(
      'labels: [comm, port]\nfilters: {ports: [443]}\nlimits: {max_connections: 131072}\n',
      'c.yml',
    )
    const { needRestart } = exporter.reload(next)
    assert.deepEqual(needRestart, ['limits.max_connections'])
    assert.deepEqual(tracer.labelMask, { pid: false, cgroup: false, port: true })
    assert.deepEqual(tracer.filters, [[], [443]])
    assert.deepEqual(exporter.currentConfig.labels, ['comm', 'port'])
    assert.equal(exporter.currentConfig.limits.max_connections, defaultConfig.limits.max_connections)
    exporter.close()
  })

  test('the reload helper counts and logs a good file and keeps the running config on a bad one', async () => {
    const { exporter } = await started()
    const file = path.join(tmp, 'config.yml')
    const { lines, log } = sink()
    writeFileSync(file, 'labels: [comm, pid]\n')
    await reloadFile(configFile(exporter, file), log)
    assert.deepEqual(exporter.currentConfig.labels, ['comm', 'pid'])
    assert.equal(exporter.reloads.config.success, 1)
    assert.equal(lines.at(-1)?.msg, 'config reloaded')

    writeFileSync(file, 'labels: [nope]\n')
    await reloadFile(configFile(exporter, file), log)
    assert.deepEqual(exporter.currentConfig.labels, ['comm', 'pid'])
    assert.equal(exporter.reloads.config.failure, 1)
    assert.equal(exporter.reloads.config.lastSuccess, false)
    assert.match(lines.at(-1)?.msg ?? '', /^config reload failed, keeping the running config:\n/)
    const body = text(await exporter.collect())
    assert.equal(sample(body, 'tcptracer_config_reloads_total', 'result="success"'), 1)
    assert.equal(sample(body, 'tcptracer_config_reloads_total', 'result="failure"'), 1)
    assert.equal(sample(body, 'tcptracer_config_last_reload_successful'), 0)
    exporter.close()
  })
})

describe('web config reloads', () => {
  test('counted once, in the Exporter, and shown by the HTTP side that shares the counter', async () => {
    const { exporter } = await started()
    const http = new HttpState(EMPTY_WEB_CONFIG, {}, exporter.reloads.web)
    const file = path.join(tmp, 'web.yml')
    const { lines, log } = sink()
    writeFileSync(file, 'basic_auth_users: {alice: not-a-bcrypt-hash}\n')
    await reloadFile(webConfigFile(exporter, http, file), log)
    assert.equal(exporter.reloads.web.failure, 1)
    assert.match(lines.at(-1)?.msg ?? '', /^web config reload failed, keeping the running web config/)
    writeFileSync(file, 'http_server_config: {headers: {X-Frame-Options: deny}}\n')
    await reloadFile(webConfigFile(exporter, http, file), log)
    assert.equal(exporter.reloads.web.success, 1)
    assert.equal(lines.at(-1)?.msg, 'web config reloaded')
    assert.equal((lines.at(-1)?.o as { file?: string }).file, file)
    const body = text(http.families())
    assert.equal(sample(body, 'tcptracer_web_config_reloads_total', 'result="success"'), 1)
    assert.equal(sample(body, 'tcptracer_web_config_reloads_total', 'result="failure"'), 1)
    assert.equal(sample(body, 'tcptracer_web_config_last_reload_successful'), 1)
    await http.auth.close()
    exporter.close()
  })
})

describe('Exporter.close', () => {
  test('closes the tracer and is no longer ready', async () => {
    const { exporter, tracer } = await started()
    exporter.close()
    assert.equal(tracer.closed, true)
    assert.equal(exporter.notReadyReason(), 'shutting down')
  })
})

describe('onSignals', () => {
  test('installs SIGHUP, SIGTERM and SIGINT handlers, and one disposer removes all three', () => {
    const signals = ['SIGHUP', 'SIGTERM', 'SIGINT'] as const
    const before = signals.map((s) => process.listenerCount(s))
    const seen: string[] = []
    const dispose = onSignals({ reload: () => seen.push('reload'), stop: (s) => seen.push(s) })
    assert.deepEqual(
      signals.map((s) => process.listenerCount(s)),
      before.map((n) => n + 1),
    )
    process.emit('SIGHUP', 'SIGHUP')
    process.emit('SIGTERM', 'SIGTERM')
    process.emit('SIGINT', 'SIGINT')
    assert.deepEqual(seen, ['reload', 'SIGTERM', 'SIGINT'])
    dispose()
    assert.deepEqual(
      signals.map((s) => process.listenerCount(s)),
      before,
    )
  })
})
