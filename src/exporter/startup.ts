// The exporter's start, step by step: the kernel it is given (the addon and a way to open the tracer,
// so a test can pass fakes), the tracer's load-time options, the pin plan, the takeover of the state a
// previous run pinned, and the seeding of the sockets that were open before start.
import { mkdirSync } from 'node:fs'
import { discoverSockets, type ConnectionOwner, type DiscoveredSockets } from '../host/procfs.js'
import type { Config } from '../config/config.js'
import { AF_INET, isV4Mapped, type AggregateDump, type Owner, type SeedConnection } from '../kernel/abi.js'
import { loadBinding, type Binding } from '../kernel/binding.js'
import {
  discardState,
  linksPinned,
  NOT_ASKED_TO_PIN,
  planPinnedState,
  stateId,
  type KernelState,
  type PinPlan,
} from '../kernel/pinned-state.js'
import { TcpTracer, type TracerOptions } from '../kernel/tracer.js'

/** Blocks at least this large are mapped on their own, and unmapped when freed (glibc's default start). */
const MMAP_THRESHOLD = 128 * 1024

/** What the exporter uses of the tracer. */
export type ExporterTracer = Pick<
  TcpTracer,
  | 'programs'
  | 'hooks'
  | 'hookProbes'
  | 'acceptHook'
  | 'generation'
  | 'activeGeneration'
  | 'activate'
  | 'pinLinks'
  | 'attach'
  | 'createOverflowEntries'
  | 'setLabelMask'
  | 'setFilters'
  | 'seedListeners'
  | 'seedConnections'
  | 'seedEntry'
  | 'seededOwners'
  | 'unseed'
  | 'sweepUnseenCloses'
  | 'aggregatesCapacity'
  | 'readAggregates'
  | 'deleteAggregate'
  | 'kernelStats'
  | 'recursionMisses'
  | 'libbpfVersion'
  | 'layout'
  | 'constants'
  | 'close'
>

/** The kernel side the exporter starts on: the addon, and how a tracer is opened with it. */
export interface Kernel {
  binding: Pick<Binding, 'layout' | 'constants' | 'mmapThreshold'>
  openTracer(opts: TracerOptions): ExporterTracer
}

/** The real kernel: the built addon, and TcpTracer.open. */
export function realKernel(): Kernel {
  const binding = loadBinding()
  return { binding, openTracer: (opts) => TcpTracer.open(opts, binding) }
}

interface StartLog {
  info(o: object, msg: string): void
  warn(o: object, msg: string): void
  debug(o: object, msg: string): void
}

export interface StartOptions {
  config: Config
  /** keep the kernel state pinned under this bpffs directory across restarts; undefined: don't */
  pinPath?: string
  log: StartLog
  objectPath?: string
  procRoot?: string
}

/**
 * The scrape path's large Buffers (the exposition's lines, the map reads) are kept and reused, but some
 * are freed: with glibc's moving threshold their later siblings would come from the heap, where freed
 * memory stays resident (measured: about 25 MB more RSS at 100k samples).
 */
export function fixMmapThreshold(kernel: Kernel, log: StartLog): void {
  const mapped = kernel.binding.mmapThreshold(MMAP_THRESHOLD)
  log.debug({ bytes: MMAP_THRESHOLD, set: mapped }, 'malloc mmap threshold')
}

/** The tracer's load-time options for aggregation, from the config. */
function tracerOptions(opts: StartOptions): TracerOptions {
  const { config, log } = opts
  return {
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
}

/** Where the kernel state will be pinned, if it can be; the state is unpinned otherwise. */
function planPins(kernel: Kernel, opts: StartOptions): { plan: PinPlan | undefined; state: KernelState } {
  const unpinned: KernelState = { origin: 'unpinned', path: '', reason: NOT_ASKED_TO_PIN }
  if (!opts.pinPath) return { plan: undefined, state: unpinned }
  const { config, log } = opts
  const id = stateId(kernel.binding, {
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
    return { plan: undefined, state: { ...unpinned, reason: p.unavailable } }
  }
  return { plan: p, state: unpinned }
}

/**
 * Open the tracer on the pinned state a previous run left, if its programs kept counting. Otherwise
 * discard that state and plan a fresh one in its place: the tracer is then undefined.
 */
export function takeOver(
  adopting: PinPlan,
  open: (p: PinPlan) => ExporterTracer,
  log: StartLog,
): { tracer: ExporterTracer | undefined; plan: PinPlan } {
  let tracer: ExporterTracer | undefined
  let why: string | undefined
  try {
    tracer = open(adopting)
    if (!linksPinned(adopting, tracer.activeGeneration())) {
      why = 'its programs were no longer attached, so it missed events'
    }
  } catch (e) {
    why = (e as Error).message
  }
  if (why === undefined) return { tracer, plan: adopting }
  tracer?.close()
  log.warn({ path: adopting.dir, reason: why }, 'cannot take over the pinned kernel state: starting afresh')
  discardState(adopting.dir)
  mkdirSync(adopting.mapsDir, { recursive: true, mode: 0o700 })
  return { tracer: undefined, plan: { ...adopting, adopting: false } }
}

/** What opening gives: the tracer (loaded, not attached), its pin plan and the sockets to seed. */
interface Opened {
  tracer: ExporterTracer
  plan: PinPlan | undefined
  state: KernelState
  /** the sockets /proc showed before the programs were loaded; undefined when the state is taken over */
  before: DiscoveredSockets | undefined
}

/**
 * Load the programs, on the pinned state to take over or on a new one. Without state to take over, the
 * sockets that predate us are listed first, so that none opens unseen between the list and the attach.
 */
export async function openTracer(kernel: Kernel, opts: StartOptions): Promise<Opened> {
  const tracerOpts = tracerOptions(opts)
  const open = (p: PinPlan | undefined): ExporterTracer =>
    kernel.openTracer({
      ...tracerOpts,
      ...(p ? { pinMapsDir: p.mapsDir, generation: p.generation } : {}),
    })
  let { plan, state } = planPins(kernel, opts)
  let tracer: ExporterTracer | undefined
  if (plan?.adopting) ({ tracer, plan } = takeOver(plan, open, opts.log))
  const before = plan?.adopting ? undefined : await discoverSockets(discoverOptions(opts))
  tracer ??= open(plan)
  if (plan) state = { origin: plan.adopting ? 'restored' : 'new', path: plan.dir }
  return { tracer, plan, state, before }
}

function discoverOptions(opts: StartOptions): { procRoot?: string } {
  return opts.procRoot ? { procRoot: opts.procRoot } : {}
}

function seedOf(c: ConnectionOwner): SeedConnection {
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

/**
 * Seed what /proc showed before the programs were attached: listener owners and open connections.
 * Returns the seeded connections' owners, counted, for the active gauge.
 */
export async function seedFromProc(
  tracer: ExporterTracer,
  before: DiscoveredSockets,
  opts: StartOptions,
): Promise<Array<[Owner, number]>> {
  const listeners = tracer.seedListeners(before.listeners)
  // open connections: seed by 4-tuple, then drop those that closed before the kernel could see them
  // only what the kernel will count: the netns and port filters apply to seeds too
  const seeds = before.connections.map(seedOf).filter((c) => countable(opts.config, c))
  const added = new Set(tracer.seedConnections(seeds).map((k) => k.toString('hex')))
  const still = new Set(
    (await discoverSockets(discoverOptions(opts))).connections.map((c) =>
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
  opts.log.info(
    { listeners, connections: added.size - gone, closedMeanwhile: gone },
    'seeded sockets that were open before start',
  )
  return countOwners(owners)
}

/**
 * The seeded connections of a state taken over: those still open, and those that closed (the kernel
 * counted their closes in seeded_closed, which active subtracts).
 */
export function seededInKernel(tracer: ExporterTracer, dump: AggregateDump): Array<[Owner, number]> {
  const closed: Array<[Owner, number]> = []
  for (let i = 0; i < dump.length; i++) {
    const n = dump.seededClosed(i)
    if (n > 0) closed.push([dump.owner(i), n])
  }
  return [...countOwners(tracer.seededOwners()), ...closed]
}
