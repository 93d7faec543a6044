// A thin typed wrapper over the native Tracer: options in, typed events out.
// The binding is injectable so pure logic can be tested without the kernel.
import os from 'node:os'
import {
  decodeBatch,
  decodeSeed,
  encodeAggKey,
  encodeListener,
  encodeSeed,
  type AcceptHook,
  type AcceptMode,
  type ListenerOwner,
  type Owner,
  type SeedConnection,
  type TcpEvent,
} from './abi.js'
import { checkBtfFile } from './btf.js'
import { bpfObjectPath } from './paths.js'
import {
  loadBinding,
  type Binding,
  type BpfError,
  type DrainStats,
  type LibbpfLog,
  type NativeConstants,
  type NativeTracer,
  type ProgramStatus,
  type RecordLayout,
  type TraceOutput,
} from './binding.js'

/** The programs each accept hook loads; listener mode needs none beyond the backbone. */
export const ACCEPT_PROGRAMS: Readonly<Record<AcceptHook, readonly string[]>> = {
  fexit: ['handle_accept_fexit'],
  kprobe: ['handle_accept_kretprobe'],
  syscall: ['handle_accept4_exit', 'handle_accept_exit'],
  listener: [],
}
/** What `auto` tries, best first: exact attribution at no system-wide cost, then the fallback. */
const AUTO_ACCEPT_ORDER: readonly AcceptHook[] = ['fexit', 'kprobe', 'listener']

const FEXIT_HINT =
  'this kernel does not load fexit programs (they need BTF, CONFIG_FUNCTION_TRACER and ' +
  'CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS), or a security policy refuses them'

/** One hook's trial in `auto` mode (or the explicit choice): loaded and attached, or why not. */
export interface HookProbe {
  mode: AcceptHook
  ok: boolean
  error?: string
}

/** Where each part of the tracer is attached: the backbone and the accept attribution. */
interface HookMode {
  hook: 'state' | 'accept'
  mode: string
}

/** A hook as the exporter reports it: for accepts, with the candidates tried before it. */
export interface HookStatus {
  hook: string
  mode: string
  /** the candidates tried before this one, and why each failed */
  rejected?: ReadonlyArray<{ mode: string; error: string }>
}

export interface TracerOptions {
  objectPath?: string
  /** only events owned by this tgid; 0 = all */
  filterPid?: number
  /** only sockets in this network namespace (inode); 0 = all */
  filterNetns?: number
  /** only IPv4 (4) or IPv6 (6) events; 0 = both */
  filterIp?: 0 | 4 | 6
  /** default `auto`: the first of AUTO_ACCEPT_ORDER this kernel loads and attaches */
  acceptMode?: AcceptMode
  /** the kernel's BTF from a file, for kernels without /sys/kernel/btf/vmlinux */
  btfPath?: string
  /** capacity of the per-socket state map */
  maxConnections?: number
  /** ring buffer size in bytes: a power of two, at least one page */
  ringBufferBytes?: number
  log?: LibbpfLog
  /** exporter mode: count every event in the kernel's aggregation map */
  aggregate?: boolean
  /** lifetime histogram upper bounds, seconds, increasing (exporter mode) */
  bucketsSeconds?: readonly number[]
  /** capacity of the kernel aggregation map (label sets) */
  maxKernelLabelSets?: number
  /**
   * Keep the kernel state in bpffs (exporter mode): PINNED_MAPS live in this directory, reused
   * when a previous run left them there. The programs stay inactive until activate().
   */
  pinMapsDir?: string
  /** this copy's generation: it counts while the `control` map holds it (0 when unpinned) */
  generation?: bigint
}

export interface KernelStats {
  /** new label sets counted in the overflow entry because the aggregation map was full */
  aggregationFull: bigint
  eventsLost: bigint
  mapUpdateFailed: bigint
  acceptUnattributed: bigint
  connectUnattributed: bigint
  /**
   * closes of counted connections that neither program saw, counted late when a new socket
   * took over the closed one's memory (docs/tracer.md, Known limits)
   */
  closeUnseen: bigint
  /** outbound connections whose establishment neither program saw, counted at their close */
  connectUnseen: bigint
}

/** Without this program nothing works. */
export const BACKBONE_PROGRAM = 'handle_set_state'
/** The backbone's stand-in for the runs the kernel skips while it is interrupted mid-run. */
export const NESTED_BACKBONE_PROGRAM = 'handle_set_state_nested'
/** Run on demand, never attached: counts the closes the programs never saw (sweepUnseenCloses). */
const SWEEP_PROGRAM = 'sweep_conns'
/** walks of one sweep at most: another only after a walk that removed entries */
const SWEEP_WALKS = 4

const BPF_NOEXIST = 1

/**
 * The maps that make up the exporter's kernel state: what a restarted daemon takes over.
 * Not the ring buffer, the per-CPU scratch value or the recursion depth, which belong to
 * one loaded copy of the programs.
 */
export const PINNED_MAPS = [
  'control',
  'conns',
  'listeners',
  'aggs',
  'stats',
  'seeded',
  'netns_filter',
  'port_filter',
] as const

function checkUint(name: string, v: number, min: number, max: number): number {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`${name} must be an integer from ${min} to ${max}, got ${v}`)
  }
  return v
}

export class TcpTracer {
  readonly programs: ProgramStatus[] = []
  private closed = false

  private constructor(
    private readonly binding: Binding,
    private readonly native: NativeTracer,
    /** the accept hook in use */
    readonly acceptHook: AcceptHook,
    /** what was tried to choose it, in order */
    readonly hookProbes: readonly HookProbe[],
    /** this copy's generation (see activeGeneration) */
    readonly generation: bigint,
  ) {}

  /** The generation the kernel state's `control` map holds: the copy of the programs that counts. */
  activeGeneration(): bigint {
    const v = this.native.mapLookup('control', Buffer.alloc(4))
    return v ? v.readBigUInt64LE(0) : 0n
  }

  /**
   * Make this copy of the programs the one that counts, in one map write: a previous copy
   * sharing the pinned state goes quiet at the same instant.
   */
  activate(): void {
    const v = Buffer.alloc(8)
    v.writeBigUInt64LE(this.generation)
    this.native.mapUpdate('control', Buffer.alloc(4), v)
  }

  /** Pin the attached programs' links in dir: they stay attached after this process exits. */
  pinLinks(dir: string): void {
    this.native.pinLinks(dir)
  }

  /**
   * Open and load the BPF object with the load-time settings, choosing the accept hook.
   * `auto` decides by loading and attaching each candidate in turn; an explicit fexit or
   * kprobe that does not attach is an error. Throws BpfError or RangeError.
   */
  static open(opts: TracerOptions = {}, binding: Binding = loadBinding()): TcpTracer {
    const filterIp = opts.filterIp ?? 0
    if (filterIp !== 0 && filterIp !== 4 && filterIp !== 6) throw new RangeError('filterIp must be 0, 4 or 6')
    const acceptMode = opts.acceptMode ?? 'auto'
    if (acceptMode !== 'auto' && !(acceptMode in ACCEPT_PROGRAMS)) {
      throw new RangeError(
        `acceptMode must be auto or one of ${Object.keys(ACCEPT_PROGRAMS).join(', ')}, got ${String(acceptMode)}`,
      )
    }
    const rb = opts.ringBufferBytes ?? 1 << 20
    if (!Number.isInteger(rb) || rb < 4096 || rb > 1 << 30 || (rb & (rb - 1)) !== 0) {
      throw new RangeError(`ringBufferBytes must be a power of two from 4096 to 2^30, got ${rb}`)
    }
    const c = binding.constants
    const maxBuckets = binding.layout.aggValue.maxBuckets
    const buckets = opts.bucketsSeconds ?? []
    if (buckets.length > maxBuckets) {
      throw new RangeError(`at most ${maxBuckets} histogram buckets, got ${buckets.length}`)
    }
    const bounds = Buffer.alloc(8 * maxBuckets)
    buckets.forEach((b, i) => bounds.writeBigUInt64LE(BigInt(Math.round(b * 1e9)), 8 * i))
    const maxConnections = checkUint('maxConnections', opts.maxConnections ?? 65536, 1024, 1 << 24)
    const filterPid = checkUint('filterPid', opts.filterPid ?? 0, 0, 4194304)
    const filterNetns = checkUint('filterNetns', opts.filterNetns ?? 0, 0, 0xffffffff)
    const maxLabelSets = checkUint('maxKernelLabelSets', opts.maxKernelLabelSets ?? 65536, 16, 1 << 24)
    if (opts.btfPath !== undefined) checkBtfFile(opts.btfPath)
    const allAcceptPrograms = Object.values(ACCEPT_PROGRAMS).flat()
    const load = (hook: AcceptHook, log: LibbpfLog | undefined): NativeTracer =>
      new binding.Tracer(opts.objectPath ?? bpfObjectPath, {
        rodata: {
          filter_pid: filterPid,
          filter_netns: filterNetns,
          filter_ip: filterIp,
          accept_mode:
            hook === 'listener'
              ? c.ACCEPT_MODE_LISTENER
              : hook === 'syscall'
                ? c.ACCEPT_MODE_SYSCALL
                : c.ACCEPT_MODE_KERNEL,
          aggregate: opts.aggregate ? 1 : 0,
          nbuckets: buckets.length,
          bucket_bounds_ns: bounds,
          generation: opts.generation ?? 0n,
        },
        maxEntries: { conns: maxConnections, seeded: maxConnections, aggs: maxLabelSets, events: rb },
        disabledPrograms: allAcceptPrograms.filter((p) => !ACCEPT_PROGRAMS[hook].includes(p)),
        onDemandPrograms: [SWEEP_PROGRAM],
        ...(opts.btfPath === undefined ? {} : { btfPath: opts.btfPath }),
        ...(opts.pinMapsDir === undefined ? {} : { pin: { dir: opts.pinMapsDir, maps: PINNED_MAPS } }),
        ...(log ? { log } : {}),
      })

    const candidates = acceptMode === 'auto' ? AUTO_ACCEPT_ORDER : [acceptMode]
    const probes: HookProbe[] = []
    for (const [i, hook] of candidates.entries()) {
      const last = i === candidates.length - 1
      // libbpf's complaints about a candidate `auto` rejects are debug noise, not warnings
      const held: Array<Parameters<LibbpfLog>> = []
      const hold: LibbpfLog = (...m) => {
        held.push(m)
      }
      const log = opts.log && !last ? hold : opts.log
      const release = (rejected: boolean): void => {
        for (const [level, msg] of held) opts.log?.(rejected ? 'debug' : level, msg)
      }
      let native: NativeTracer | undefined
      try {
        native = load(hook, log)
        // the syscall programs report their attach status at attach(); the kernel hooks must attach now
        if (hook === 'fexit' || hook === 'kprobe') {
          for (const name of ACCEPT_PROGRAMS[hook]) {
            const st = native.probeAttach(name)
            if (!st.attached) {
              throw Object.assign(new Error(st.error ?? 'not attached'), st, { name: 'BpfError' })
            }
          }
        }
      } catch (e) {
        native?.close()
        const err = e as BpfError
        // an object built from another header fails every hook alike: no other candidate is tried
        if (err.op === 'check map sizes') {
          release(true)
          throw err
        }
        if (hook === 'fexit' && err.op === 'load') {
          // the one program that differs from the other candidates is the fexit one
          err.message = `${err.message.replace(/; .*$/s, '')}; ${FEXIT_HINT}`
          err.hint = FEXIT_HINT
        }
        if (opts.btfPath !== undefined && err.op === 'load') {
          err.message += `; the kernel's BTF came from ${opts.btfPath}: check that it was made from this kernel (${os.release()})`
        }
        if (last && acceptMode !== 'auto') {
          err.message = `accept_mode ${hook}: ${err.message}`
          throw err
        }
        release(true)
        probes.push({ mode: hook, ok: false, error: err.message })
        if (last) throw err
        continue
      }
      release(false)
      probes.push({ mode: hook, ok: true })
      return new TcpTracer(binding, native, hook, probes, opts.generation ?? 0n)
    }
    throw new Error('unreachable: no accept hook candidates')
  }

  /** Where each part is attached: `state` is the backbone, `accept` attributes accepts. */
  hooks(): HookMode[] {
    const backbone = this.programs.find((p) => p.name === BACKBONE_PROGRAM)
    return [
      { hook: 'state', mode: backbone?.section.split('/')[0] ?? 'raw_tp' },
      { hook: 'accept', mode: this.acceptHook },
    ]
  }

  /**
   * Attach every enabled program. Returns each program's status; throws the
   * backbone's error if it did not attach, since nothing can be traced then.
   */
  attach(): ProgramStatus[] {
    this.programs.push(...this.native.attach())
    const backbone =
      this.programs.find(
        (p) => !p.attached && [BACKBONE_PROGRAM, NESTED_BACKBONE_PROGRAM].includes(p.name),
      ) ?? this.programs.find((p) => p.name === BACKBONE_PROGRAM)
    if (!backbone?.attached) {
      const err = new Error(backbone?.error ?? `program ${BACKBONE_PROGRAM} is missing`) as BpfError
      err.name = 'BpfError'
      err.op = `attach ${backbone?.section ?? BACKBONE_PROGRAM}`
      err.errno = backbone?.errno ?? 0
      err.code = backbone?.code ?? ''
      if (backbone?.hint) err.hint = backbone.hint
      throw err
    }
    return this.programs
  }

  /**
   * Record owners of listeners that predate the tracer. An owner the kernel has
   * already recorded (a listen() since attach) wins. Returns how many were added.
   */
  seedListeners(owners: readonly ListenerOwner[]): number {
    let added = 0
    for (const o of owners) {
      const { key, value } = encodeListener(o, this.binding)
      if (this.native.mapUpdate('listeners', key, value, BPF_NOEXIST)) added++
    }
    return added
  }

  /**
   * Count the closes of counted connections that the programs never saw and no new socket
   * has found yet (docs/tracer.md, Known limits): a walk of the per-socket state in the kernel,
   * before the counters are read, again while a walk removes something (a removal can make the
   * kernel's walk miss other entries; at most SWEEP_WALKS walks). False where the kernel cannot
   * run it (before 5.13).
   */
  sweepUnseenCloses(): boolean {
    try {
      for (let i = 0; i < SWEEP_WALKS && this.native.runProgram(SWEEP_PROGRAM) > 0; i++) {
        // found some: walk again
      }
      return true
    } catch {
      return false
    }
  }

  /**
   * Read the aggregation map into these Buffers (keys one after another, values likewise): the number of
   * entries, or -1 when they do not fit (grow the Buffers and read again).
   */
  readAggregates(keys: Buffer, values: Buffer): number {
    return this.native.mapRead('aggs', keys, values)
  }

  /** The aggregation map's capacity (max_entries). */
  aggregatesCapacity(): number {
    return this.native.mapInfo('aggs').maxEntries
  }

  deleteAggregate(key: Buffer): boolean {
    return this.native.mapDelete('aggs', key)
  }

  /** Create the catch-all entries (one per direction) new label sets land in when the aggregation map is full. */
  createOverflowEntries(): void {
    for (const direction of ['outbound', 'inbound'] as const) {
      const key = encodeAggKey({ direction, overflow: true }, this.binding)
      this.native.mapUpdate('aggs', key, Buffer.alloc(this.binding.layout.aggValue.size), BPF_NOEXIST)
    }
  }

  /** Which optional labels the kernel keeps in its aggregation key. */
  setLabelMask(labels: { pid: boolean; cgroup: boolean; port: boolean }): void {
    const c = this.binding.constants
    const mask =
      (labels.pid ? c.LABEL_PID : 0) | (labels.cgroup ? c.LABEL_CGROUP : 0) | (labels.port ? c.LABEL_PORT : 0)
    this.native.setGlobal('label_mask', mask)
  }

  /** Count only these network namespaces and service ports (empty: all). */
  setFilters(netns: readonly number[], ports: readonly number[]): void {
    const one = Buffer.from([1])
    // add before removing and switch off before clearing, so no event is counted that neither set allows
    const sync = (map: string, on: string, keys: Buffer[]): void => {
      const want = new Set(keys.map((k) => k.toString('hex')))
      if (keys.length === 0) this.native.setGlobal(on, 0)
      for (const k of keys) this.native.mapUpdate(map, k, one)
      for (const { key } of this.native.mapEntries(map)) {
        if (!want.has(key.toString('hex'))) this.native.mapDelete(map, key)
      }
      if (keys.length > 0) this.native.setGlobal(on, 1)
    }
    // the filter maps' keys: a netns inode (u32) and a port (u16), little-endian as the kernel stores them
    const le = (bytes: 2 | 4, v: number): Buffer => {
      const b = Buffer.alloc(bytes)
      b.writeUIntLE(v, 0, bytes)
      return b
    }
    sync(
      'netns_filter',
      'netns_filter_on',
      netns.map((n) => le(4, n)),
    )
    sync(
      'port_filter',
      'port_filter_on',
      ports.map((p) => le(2, p)),
    )
  }

  /** Key and value of a connection open before the daemon started, as the `seeded` map holds them. */
  seedEntry(c: SeedConnection): { key: Buffer; value: Buffer } {
    return encodeSeed(c, this.binding)
  }

  /** Record connections open before the daemon started; returns the keys that were added. */
  seedConnections(conns: readonly SeedConnection[]): Buffer[] {
    const added: Buffer[] = []
    for (const c of conns) {
      const { key, value } = this.seedEntry(c)
      if (this.native.mapUpdate('seeded', key, value, BPF_NOEXIST)) added.push(key)
    }
    if (added.length > 0) this.native.setGlobal('seeded_any', 1)
    return added
  }

  /** The owners of the seeded connections that have not closed yet, as the `seeded` map holds them. */
  seededOwners(): Owner[] {
    return this.native.mapEntries('seeded').map(({ key, value }) => decodeSeed(key, value, this.binding))
  }

  /** Forget a seeded connection; false when the kernel already consumed it at its close. */
  unseed(key: Buffer): boolean {
    return this.native.mapDelete('seeded', key)
  }

  /** Start draining per-event records on the native thread; batches arrive decoded. */
  startEvents(
    onEvents: (events: TcpEvent[]) => void,
    onError: (err: Error) => void,
    opts: { maxQueue?: number; maxBatch?: number } = {},
  ): void {
    this.native.startEvents((err, batch, count) => {
      if (err) return onError(err)
      if (batch) onEvents(decodeBatch(batch, count, this.binding))
    }, opts)
  }

  /**
   * Start printing events from the native drain thread: each record formatted as `trace` prints it
   * and written to `output.fd`, with no JavaScript per event. `onError` gets a failed write (EPIPE
   * included) or poll; the thread then stops.
   */
  printEvents(output: TraceOutput, onError: (err: BpfError) => void): void {
    this.native.startEvents(
      (err) => {
        if (err) onError(err)
      },
      { output },
    )
  }

  stopEvents(): void {
    this.native.stopEvents()
  }

  /** Counters the kernel program keeps, summed over CPUs. */
  kernelStats(): KernelStats {
    const c = this.binding.constants
    const sums = new Array<bigint>(c.STAT_MAX).fill(0n)
    for (const { key, value } of this.native.mapEntries('stats')) {
      const idx = key.readUInt32LE(0)
      for (let off = 0; off + 8 <= value.length; off += 8) {
        sums[idx] = (sums[idx] ?? 0n) + value.readBigUInt64LE(off)
      }
    }
    return {
      aggregationFull: sums[c.STAT_AGG_FULL] ?? 0n,
      eventsLost: sums[c.STAT_EVENTS_LOST] ?? 0n,
      mapUpdateFailed: sums[c.STAT_MAP_UPDATE_FAILED] ?? 0n,
      acceptUnattributed: sums[c.STAT_ACCEPT_UNATTRIBUTED] ?? 0n,
      connectUnattributed: sums[c.STAT_CONNECT_UNATTRIBUTED] ?? 0n,
      closeUnseen: sums[c.STAT_CLOSE_UNSEEN] ?? 0n,
      connectUnseen: sums[c.STAT_CONNECT_UNSEEN] ?? 0n,
    }
  }

  drainStats(): DrainStats {
    return this.native.drainStats()
  }

  /** Per program: runs the kernel skipped because the program was already running on that CPU. */
  recursionMisses(): Array<{ name: string; misses: bigint }> {
    return this.native.programStats().map((p) => ({ name: p.name, misses: p.recursionMisses }))
  }

  get libbpfVersion(): string {
    return this.binding.libbpfVersion()
  }

  get layout(): RecordLayout {
    return this.binding.layout
  }

  get constants(): NativeConstants {
    return this.binding.constants
  }

  /** Detach everything and free the kernel objects. Idempotent. */
  close(): void {
    if (this.closed) return
    this.closed = true
    this.native.close()
  }
}
