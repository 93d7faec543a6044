// The exporter's core: the tracer in aggregation mode, the label-set bookkeeping,
// and the metric families computed from both at scrape time. The steps of its start
// are in startup.ts, the reload of the config files on SIGHUP in reload.ts.
import { Aggregator } from '../metrics/aggregator.js'
import { ConnectionExposition } from '../metrics/connection-exposition.js'
import type { MetricFamily } from '../metrics/exposition.js'
import { capabilityFamily, ReloadCounter, selfFamilies } from '../metrics/self-metrics.js'
import type { CapabilityStatus } from '../host/capabilities.js'
import { CgroupResolver } from '../host/cgroups.js'
import { netnsNames } from '../host/netns.js'
import type { DiscoveredSockets } from '../host/procfs.js'
import type { Config } from '../config/config.js'
import { AggregateDump } from '../kernel/abi.js'
import type { ProgramStatus } from '../kernel/binding.js'
import { commitPinnedState, type KernelState } from '../kernel/pinned-state.js'
import { ACCEPT_PROGRAMS, type HookStatus } from '../kernel/tracer.js'
import {
  countable,
  fixMmapThreshold,
  openTracer,
  realKernel,
  seededInKernel,
  seedFromProc,
  type ExporterTracer,
  type Kernel,
  type StartOptions,
} from './startup.js'

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
function hookStatus(tracer: Pick<ExporterTracer, 'hooks' | 'hookProbes'>): HookStatus[] {
  const rejected = tracer.hookProbes.filter((p) => !p.ok).map((p) => ({ mode: p.mode, error: p.error ?? '' }))
  return tracer.hooks().map((h) => (h.hook === 'accept' && rejected.length > 0 ? { ...h, rejected } : h))
}

interface ReloadResult {
  /** changed settings that need a restart; the old values stay in force */
  needRestart: string[]
}

interface ExporterOptions extends StartOptions {
  /** the addon and how to open the tracer with it (default: the built addon, TcpTracer.open) */
  kernel?: Kernel
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
  /** the reloads of the config file and of the web config file, counted once, here */
  readonly reloads = { config: new ReloadCounter(), web: new ReloadCounter() }
  private closed = false
  readonly programs: ProgramStatus[]
  readonly hooks: HookStatus[]
  /** the last scrape's error reading the kernel maps, for /readyz */
  lastReadError: string | undefined
  /** what the daemon did with its capabilities once started (src/host/capabilities.ts), for /readyz */
  capabilities: CapabilityStatus | undefined

  private constructor(
    private readonly tracer: ExporterTracer,
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
   * open connections for the active gauge. Whatever fails, nothing is left attached.
   */
  static async start(opts: ExporterOptions): Promise<Exporter> {
    const kernel = opts.kernel ?? realKernel()
    fixMmapThreshold(kernel, opts.log)
    const { tracer, plan, state, before } = await openTracer(kernel, opts)
    try {
      tracer.createOverflowEntries()
      const exporter = new Exporter(tracer, opts, state)
      exporter.applyKernelSettings(opts.config)
      tracer.attach()
      if (plan) commitPinnedState(plan, tracer)
      await exporter.seed(before, opts)
      await exporter.refreshNames()
      return exporter
    } catch (e) {
      tracer.close()
      throw e
    }
  }

  /** The connections open at start, for the active gauge: from /proc, or from the state taken over. */
  private async seed(before: DiscoveredSockets | undefined, opts: StartOptions): Promise<void> {
    if (before) {
      this.aggregator.setSeeded(await seedFromProc(this.tracer, before, opts))
    } else {
      this.aggregator.setSeeded(seededInKernel(this.tracer, this.readAggregates()))
      opts.log.info({ path: this.kernelState.path }, 'took over the kernel state pinned by the previous run')
    }
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
        reloads: this.reloads.config,
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
