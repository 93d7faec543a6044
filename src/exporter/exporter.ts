// The exporter's core: the tracer in aggregation mode, the label-set bookkeeping,
// and the metric families computed from both at scrape time.
import { mkdirSync } from 'node:fs'
import { Aggregator } from '../metrics/aggregator.js'
import { ConnectionExposition } from '../metrics/connection-families.js'
import type { MetricFamily } from '../metrics/exposition.js'
import { capabilityFamily, selfFamilies } from '../metrics/self-metrics.js'
import type { CapabilityStatus } from '../host/capabilities.js'
import { CgroupResolver } from '../host/cgroups.js'
import { netnsNames } from '../host/netns.js'
import { discoverSockets, type ConnectionOwner } from '../host/procfs.js'
import type { Config } from '../config/config.js'
import { AF_INET, AggregateDump, isV4Mapped, type Owner, type SeedConnection } from '../kernel/abi.js'
import { loadBinding, type ProgramStatus } from '../kernel/binding.js'
import {
  commitPinnedState,
  discardState,
  linksPinned,
  NOT_ASKED_TO_PIN,
  planPinnedState,
  stateId,
  type KernelState,
  type PinPlan,
} from '../kernel/pinned-state.js'
import { ACCEPT_PROGRAMS, TcpTracer, type HookStatus, type TracerOptions } from '../kernel/tracer.js'

/** Blocks at least this large are mapped on their own, and unmapped when freed (glibc's default start). */
const MMAP_THRESHOLD = 128 * 1024

/** Settings that only take effect when the daemon starts: the kernel objects are sized and built with them. */
export function restartOnlyChanges(old: Config, next: Config): string[] {
  const out: string[] = []
  if (old.accept_mode !== next.accept_mode) out.push('accept_mode')
  if (old.btf_path !== next.btf_path) out.push('btf_path')
  if (old.limits.max_connections !== next.limits.max_connections) out.push('limits.max_connections')
  if (old.limits.max_kernel_label_sets !== next.limits.max_kernel_label_sets) {
    out.push('limits.max_kernel_label_sets')
  }
  if (old.histogram.buckets_seconds.join() !== next.histogram.buckets_seconds.join()) {
    out.push('histogram.buckets_seconds')
  }
  return out
}

/** The tracer's hooks, with the accept candidates `auto` rejected before its choice. */
export function hookStatus(tracer: Pick<TcpTracer, 'hooks' | 'hookProbes'>): HookStatus[] {
  const rejected = tracer.hookProbes.filter((p) => !p.ok).map((p) => ({ mode: p.mode, error: p.error ?? '' }))
  return tracer.hooks().map((h) => (h.hook === 'accept' && rejected.length > 0 ? { ...h, rejected } : h))
}

export function seedOf(c: ConnectionOwner): SeedConnection {
  return {
    netns: c.netns,
    family: c.family,
    saddr: c.saddr,
    daddr: c.daddr,
    sport: c.sport,
    dport: c.dport,
    pid: c.pid,
    comm: c.comm.slice(0, 15),
    cgroupId: c.cgroupId,
    port: c.direction === 'inbound' ? c.sport : c.dport,
    direction: c.direction,
  }
}

function ownerOfSeed(s: SeedConnection): Owner {
  return {
    comm: s.comm,
    netns: s.netns,
    pid: s.pid,
    cgroupId: s.cgroupId,
    port: s.port,
    ip: s.family === AF_INET || isV4Mapped(s.daddr) ? 4 : 6,
    direction: s.direction,
  }
}

/** Whether the config's kernel-side filters let a connection be counted. */
export function countable(c: Config, s: { netns: number; port: number }): boolean {
  return (
    (c.filters.netns.length === 0 || c.filters.netns.includes(s.netns)) &&
    (c.filters.ports.length === 0 || c.filters.ports.includes(s.port))
  )
}

export interface ReloadResult {
  /** changed settings that need a restart; the old values stay in force */
  needRestart: string[]
}

/** Owners counted by label-relevant identity, as the aggregator's seeded list wants them. */
function countOwners(owners: readonly Owner[]): Array<[Owner, number]> {
  const counts = new Map<string, [Owner, number]>()
  for (const o of owners) {
    const id = [o.comm, o.netns, o.pid, o.cgroupId, o.port, o.ip, o.direction].join('\0')
    const c = counts.get(id)
    if (c) c[1]++
    else counts.set(id, [o, 1])
  }
  return [...counts.values()]
}

export interface ExporterOptions {
  config: Config
  /** keep the kernel state pinned under this bpffs directory across restarts; undefined: don't */
  pinPath?: string
  log: {
    info(o: object, msg: string): void
    warn(o: object, msg: string): void
    debug(o: object, msg: string): void
  }
  objectPath?: string
  procRoot?: string
}

export class Exporter {
  private config: Config
  private readonly aggregator: Aggregator
  /** the connection families' lines, kept between scrapes */
  private readonly exposition = new ConnectionExposition()
  /**
   * Two pairs of Buffers the aggregation map is read into, in turn: the aggregator compares each entry
   * with the previous read, which the other pair still holds. They grow to what the map holds.
   */
  private readonly readBuffers = [
    { keys: Buffer.alloc(0), values: Buffer.alloc(0) },
    { keys: Buffer.alloc(0), values: Buffer.alloc(0) },
  ]
  private nextRead = 0
  /** the collection in progress: collections run one at a time */
  private collecting: Promise<unknown> = Promise.resolve()
  private readonly cgroups = new CgroupResolver()
  private netnsNames = new Map<number, string>()
  private netnsNamesAt = 0
  private cgroupsAt = 0
  private readonly startedAt = Date.now()
  private reloads = { success: 0, failure: 0, lastSuccess: true, lastSuccessTime: Date.now() / 1000 }
  private closed = false
  readonly programs: ProgramStatus[]
  readonly hooks: HookStatus[]
  /** the last scrape's error reading the kernel maps, for /readyz */
  lastReadError: string | undefined
  /** what the daemon did with its capabilities once started (src/host/capabilities.ts), for /readyz */
  capabilities: CapabilityStatus | undefined

  private constructor(
    private readonly tracer: TcpTracer,
    opts: ExporterOptions,
    readonly kernelState: KernelState,
  ) {
    this.config = opts.config
    this.programs = tracer.programs
    this.hooks = hookStatus(tracer)
    this.aggregator = new Aggregator(this.aggregatorOptions(opts.config))
  }

  /**
   * Load and attach the programs. With a pin path, take over the kernel state a previous run
   * pinned there (counters, open connections, listeners), or start it. Without state to take
   * over, find the sockets that predate us in /proc and seed them: listener owners, and the
   * open connections for the active gauge.
   */
  static async start(opts: ExporterOptions): Promise<Exporter> {
    const { config, log } = opts
    // The scrape path's large Buffers (the exposition's lines, the map reads) are kept and reused, but
    // some are freed: with glibc's moving threshold their later siblings would come from the heap, where
    // freed memory stays resident (measured: about 25 MB more RSS at 100k samples).
    const mapped = loadBinding().mmapThreshold(MMAP_THRESHOLD)
    log.debug({ bytes: MMAP_THRESHOLD, set: mapped }, 'malloc mmap threshold')
    const discoverOpts = opts.procRoot ? { procRoot: opts.procRoot } : {}
    const tracerOpts: TracerOptions = {
      aggregate: true,
      acceptMode: config.accept_mode,
      ...(config.btf_path === null ? {} : { btfPath: config.btf_path }),
      bucketsSeconds: config.histogram.buckets_seconds,
      maxConnections: config.limits.max_connections,
      maxKernelLabelSets: config.limits.max_kernel_label_sets,
      // the ring buffer is never read in metrics mode: keep it one page
      ringBufferBytes: 4096,
      log: (level, message) => {
        if (level === 'warn') log.warn({ libbpf: true }, message.trim())
        else log.debug({ libbpf: true }, message.trim())
      },
      ...(opts.objectPath ? { objectPath: opts.objectPath } : {}),
    }

    let plan: PinPlan | undefined
    let state: KernelState = { origin: 'unpinned', path: '', reason: NOT_ASKED_TO_PIN }
    if (opts.pinPath) {
      const id = stateId(loadBinding(), {
        maxConnections: config.limits.max_connections,
        maxKernelLabelSets: config.limits.max_kernel_label_sets,
        bucketsSeconds: config.histogram.buckets_seconds,
      })
      const p = planPinnedState(opts.pinPath, id)
      if ('unavailable' in p) {
        log.warn(
          { reason: p.unavailable },
          'kernel state not pinned: a restart of the daemon will reset the counters and miss the connections open meanwhile',
        )
        state = { origin: 'unpinned', path: '', reason: p.unavailable }
      } else {
        plan = p
      }
    }
    const open = (p: PinPlan | undefined): TcpTracer =>
      TcpTracer.open({
        ...tracerOpts,
        ...(p ? { pinMapsDir: p.mapsDir, generation: p.generation } : {}),
      })

    let tracer: TcpTracer | undefined
    if (plan?.adopting) {
      const adopting = plan
      let why: string | undefined
      try {
        tracer = open(adopting)
        if (!linksPinned(adopting, tracer.activeGeneration())) {
          why = 'its programs were no longer attached, so it missed events'
        }
      } catch (e) {
        why = (e as Error).message
      }
      if (why !== undefined) {
        tracer?.close()
        tracer = undefined
        log.warn(
          { path: adopting.dir, reason: why },
          'cannot take over the pinned kernel state: starting afresh',
        )
        discardState(adopting.dir)
        mkdirSync(adopting.mapsDir, { recursive: true, mode: 0o700 })
        plan = { ...adopting, adopting: false }
      }
    }
    const before = plan?.adopting ? undefined : await discoverSockets(discoverOpts)
    tracer ??= open(plan)
    if (plan) state = { origin: plan.adopting ? 'restored' : 'new', path: plan.dir }

    let exporter: Exporter | undefined
    try {
      tracer.createOverflowEntries()
      exporter = new Exporter(tracer, opts, state)
      exporter.applyKernelSettings(config)
      tracer.attach()
      if (plan) commitPinnedState(plan, tracer)
      if (before) {
        await exporter.seed(before, discoverOpts, log)
      } else {
        // the seeded connections still open, and those that closed (the kernel counted their
        // closes in seeded_closed, which active subtracts)
        const dump = exporter.readAggregates()
        const closed: Array<[Owner, number]> = []
        for (let i = 0; i < dump.length; i++) {
          const n = dump.seededClosed(i)
          if (n > 0) closed.push([dump.owner(i), n])
        }
        exporter.aggregator.setSeeded([...countOwners(tracer.seededOwners()), ...closed])
        log.info({ path: state.path }, 'took over the kernel state pinned by the previous run')
      }
      await exporter.refreshNames()
      return exporter
    } catch (e) {
      tracer.close()
      throw e
    }
  }

  /** Seed what /proc showed before the programs were attached: listener owners and open connections. */
  private async seed(
    before: Awaited<ReturnType<typeof discoverSockets>>,
    discoverOpts: { procRoot?: string },
    log: ExporterOptions['log'],
  ): Promise<void> {
    const tracer = this.tracer
    const listeners = tracer.seedListeners(before.listeners)
    // open connections: seed by 4-tuple, then drop those that closed before the kernel could see them
    // only what the kernel will count: the netns and port filters apply to seeds too
    const seeds = before.connections.map(seedOf).filter((c) => countable(this.config, c))
    const added = new Set(tracer.seedConnections(seeds).map((k) => k.toString('hex')))
    const still = new Set(
      (await discoverSockets(discoverOpts)).connections.map((c) =>
        tracer.seedEntry(seedOf(c)).key.toString('hex'),
      ),
    )
    const owners: Owner[] = []
    let gone = 0
    for (const s of seeds) {
      const { key } = tracer.seedEntry(s)
      const hex = key.toString('hex')
      if (!added.has(hex)) continue
      if (!still.has(hex) && tracer.unseed(key)) {
        gone++
        continue
      }
      owners.push(ownerOfSeed(s))
    }
    this.aggregator.setSeeded(countOwners(owners))
    log.info(
      { listeners, connections: added.size - gone, closedMeanwhile: gone },
      'seeded sockets that were open before start',
    )
  }

  private aggregatorOptions(c: Config): ConstructorParameters<typeof Aggregator>[0] {
    return {
      labels: c.labels,
      maxLabelSets: c.limits.max_label_sets,
      idleExpiryMs: c.limits.idle_expiry,
      commInclude: c.filters.comm.include,
      commExclude: c.filters.comm.exclude,
      nbuckets: c.histogram.buckets_seconds.length,
      resolveCgroup: (id) => this.cgroups.resolve(id),
    }
  }

  private applyKernelSettings(c: Config): void {
    this.tracer.setLabelMask({
      pid: c.labels.includes('pid'),
      cgroup: c.labels.includes('cgroup'),
      port: c.labels.includes('port'),
    })
    this.tracer.setFilters(c.filters.netns, c.filters.ports)
  }

  /** Apply a new config; settings that need a restart are reported and left as they were. */
  reload(next: Config): ReloadResult {
    const needRestart = restartOnlyChanges(this.config, next)
    const effective: Config = {
      ...next,
      accept_mode: this.config.accept_mode,
      btf_path: this.config.btf_path,
      limits: {
        ...next.limits,
        max_connections: this.config.limits.max_connections,
        max_kernel_label_sets: this.config.limits.max_kernel_label_sets,
      },
      histogram: this.config.histogram,
    }
    this.applyKernelSettings(effective)
    this.aggregator.reconfigure(this.aggregatorOptions(effective))
    this.aggregator.filterSeeded((o) => countable(effective, o))
    this.config = effective
    return { needRestart }
  }

  recordReload(ok: boolean): void {
    if (ok) {
      this.reloads.success++
      this.reloads.lastSuccessTime = Date.now() / 1000
    } else {
      this.reloads.failure++
    }
    this.reloads.lastSuccess = ok
  }

  get currentConfig(): Config {
    return this.config
  }

  /** Names of network namespaces: `ip netns` names and container ids. Refreshed at most every 30 s. */
  private async refreshNames(): Promise<void> {
    this.netnsNames = await netnsNames()
    this.netnsNamesAt = Date.now()
    if (this.config.labels.includes('cgroup')) await this.cgroups.refresh().catch(() => {})
  }

  /** Why the exporter is not ready, or undefined when it is. */
  notReadyReason(): string | undefined {
    if (this.closed) return 'shutting down'
    const backbone = this.programs.find((p) => p.name === 'handle_set_state')
    if (!backbone?.attached) {
      return `program handle_set_state is not attached: ${backbone?.error ?? 'missing'}`
    }
    const hook = this.tracer.acceptHook
    const missing = this.programs.filter((p) => ACCEPT_PROGRAMS[hook].includes(p.name) && !p.attached)
    if (missing.length > 0) {
      return `accept_mode ${hook}, but ${missing.map((p) => `${p.name} (${p.error ?? 'not attached'})`).join(', ')}`
    }
    if (this.lastReadError) return `the aggregation map cannot be read: ${this.lastReadError}`
    try {
      this.tracer.kernelStats()
    } catch (e) {
      return `the kernel counters cannot be read: ${(e as Error).message}`
    }
    return undefined
  }

  /** Every metric family, computed now from the kernel's aggregates. */
  async collect(): Promise<MetricFamily[]> {
    const run = this.collecting.then(async () => await this.collectNow())
    this.collecting = run.catch(() => {})
    return await run
  }

  /**
   * Read the aggregation map into the pair of Buffers the previous snapshot does not use, growing it
   * until the map fits.
   */
  private readAggregates(): AggregateDump {
    const L = this.tracer.layout
    const ks = L.aggKey.size
    const vs = L.aggValue.size
    // entries are stepped through by the layout's sizes, which the addon checked against the map at load
    const pair = this.readBuffers[this.nextRead]!
    for (let attempt = 0; ; attempt++) {
      const n = this.tracer.readAggregates(pair.keys, pair.values)
      if (n >= 0) {
        return new AggregateDump(
          pair.keys,
          pair.values,
          n,
          this.tracer,
          this.config.histogram.buckets_seconds.length,
        )
      }
      const fits = pair.keys.length / ks
      // Buffers with room for more than the map's capacity cannot be too small: only a map that grows
      // between reads, faster than the Buffers double, gets here so often
      if (fits > this.tracer.aggregatesCapacity() || attempt > 40) {
        throw new Error('the aggregation map kept growing while it was read')
      }
      // room for the whole map, plus one: a read that fills the Buffers exactly counts as too small
      const want = Math.max(1024, Math.min(2 * fits, this.tracer.aggregatesCapacity() + 1), fits + 1)
      pair.keys = Buffer.allocUnsafeSlow(want * ks)
      pair.values = Buffer.allocUnsafeSlow(want * vs)
    }
  }

  private async collectNow(): Promise<MetricFamily[]> {
    if (Date.now() - this.netnsNamesAt > 30_000) await this.refreshNames().catch(() => {})
    let table
    try {
      this.tracer.sweepUnseenCloses()
      table = this.readAggregates()
      this.lastReadError = undefined
    } catch (e) {
      this.lastReadError = (e as Error).message
      throw e
    }
    if (this.config.labels.includes('cgroup') && Date.now() - this.cgroupsAt > 1000) {
      // a cgroup created since the last walk (a new container) is named now, not one scrape later
      for (let i = 0; i < table.length; i++) {
        const id = table.cgroupId(i)
        if (id !== 0n && this.cgroups.resolve(id) === '') {
          this.cgroupsAt = Date.now()
          await this.cgroups.refresh().catch(() => {})
          break
        }
      }
    }
    const snap = this.aggregator.snapshot(table)
    // the next read goes into the other Buffers: this snapshot's are the next one's comparison
    this.nextRead ^= 1
    for (const key of snap.expiredKeys) this.tracer.deleteAggregate(key)
    const stats = this.tracer.kernelStats()
    return [
      ...this.exposition.families(snap.sets, this.config.histogram.buckets_seconds),
      ...selfFamilies({
        stats,
        admitted: snap.admitted,
        folded: snap.folded,
        foldedTotal: this.aggregator.foldedTotal,
        expiredTotal: this.aggregator.expiredTotal,
        libbpfVersion: this.tracer.libbpfVersion,
        programs: this.programs,
        recursionMisses: this.tracer.recursionMisses(),
        hooks: this.hooks,
        kernelState: this.kernelState,
        reloads: this.reloads,
        startedAt: this.startedAt,
        netnsNames: this.netnsNames,
      }),
      await capabilityFamily(),
    ]
  }

  /** Detach and free. Idempotent. */
  close(): void {
    this.closed = true
    this.tracer.close()
  }
}
