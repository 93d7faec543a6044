// A thin typed wrapper over the native Tracer: options in, typed events out.
// The binding is injectable so pure logic can be tested without the kernel.
import { decodeBatch, type TcpEvent } from './events.js'
import { bpfObjectPath } from './paths.js'
import type { ListenerOwner } from './procfs.js'
import {
  loadBinding,
  type Binding,
  type BpfError,
  type DrainStats,
  type LibbpfLog,
  type NativeTracer,
  type ProgramStatus,
} from './native.js'

export type AcceptMode = 'listener' | 'syscall'

export interface TracerOptions {
  objectPath?: string
  /** only events owned by this tgid; 0 = all */
  filterPid?: number
  /** only sockets in this network namespace (inode); 0 = all */
  filterNetns?: number
  /** only IPv4 (4) or IPv6 (6) events; 0 = both */
  filterIp?: 0 | 4 | 6
  acceptMode?: AcceptMode
  /** capacity of the per-socket state map */
  maxConnections?: number
  /** ring buffer size in bytes: a power of two, at least one page */
  ringBufferBytes?: number
  log?: LibbpfLog
}

export interface KernelStats {
  eventsLost: bigint
  mapUpdateFailed: bigint
  acceptUnattributed: bigint
  connectUnattributed: bigint
}

/** The programs that implement ACCEPT_MODE_SYSCALL; not loaded in listener mode. */
export const SYSCALL_ACCEPT_PROGRAMS = ['handle_accept4_exit', 'handle_accept_exit'] as const
/** Without this program nothing works. */
export const BACKBONE_PROGRAM = 'handle_set_state'

const BPF_NOEXIST = 1

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
  ) {}

  /** Open and load the BPF object with the load-time settings. Throws BpfError or RangeError. */
  static open(opts: TracerOptions = {}, binding: Binding = loadBinding()): TcpTracer {
    const filterIp = opts.filterIp ?? 0
    if (filterIp !== 0 && filterIp !== 4 && filterIp !== 6) throw new RangeError('filterIp must be 0, 4 or 6')
    const acceptMode = opts.acceptMode ?? 'listener'
    if (acceptMode !== 'listener' && acceptMode !== 'syscall') {
      throw new RangeError(`acceptMode must be "listener" or "syscall", got ${String(acceptMode)}`)
    }
    const rb = opts.ringBufferBytes ?? 1 << 20
    if (!Number.isInteger(rb) || rb < 4096 || rb > 1 << 30 || (rb & (rb - 1)) !== 0) {
      throw new RangeError(`ringBufferBytes must be a power of two from 4096 to 2^30, got ${rb}`)
    }
    const c = binding.constants
    const native = new binding.Tracer(opts.objectPath ?? bpfObjectPath, {
      rodata: {
        filter_pid: checkUint('filterPid', opts.filterPid ?? 0, 0, 4194304),
        filter_netns: checkUint('filterNetns', opts.filterNetns ?? 0, 0, 0xffffffff),
        filter_ip: filterIp,
        accept_mode: acceptMode === 'syscall' ? c.ACCEPT_MODE_SYSCALL : c.ACCEPT_MODE_LISTENER,
      },
      maxEntries: {
        conns: checkUint('maxConnections', opts.maxConnections ?? 65536, 1024, 1 << 24),
        events: rb,
      },
      disabledPrograms: acceptMode === 'syscall' ? [] : [...SYSCALL_ACCEPT_PROGRAMS],
      ...(opts.log ? { log: opts.log } : {}),
    })
    return new TcpTracer(binding, native)
  }

  /**
   * Attach every enabled program. Returns each program's status; throws the
   * backbone's error if it did not attach, since nothing can be traced then.
   */
  attach(): ProgramStatus[] {
    this.programs.push(...this.native.attach())
    const backbone = this.programs.find((p) => p.name === BACKBONE_PROGRAM)
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
    const L = this.binding.layout
    const info = this.native.mapInfo('listeners')
    if (info.keySize !== L.listenerKeySize || info.valueSize !== L.ownerSize) {
      throw new Error(
        `listeners map is ${info.keySize}/${info.valueSize} bytes, the header says ${L.listenerKeySize}/${L.ownerSize}`,
      )
    }
    let added = 0
    for (const o of owners) {
      const key = Buffer.alloc(L.listenerKeySize)
      key.writeUInt32LE(o.netns, 0)
      key.writeUInt16LE(o.port, 4)
      key.writeUInt16LE(o.family, 6)
      const value = Buffer.alloc(L.ownerSize)
      value.writeBigUInt64LE(o.cgroupId, 0)
      value.writeUInt32LE(o.pid, 8)
      value.write(o.comm.slice(0, L.commLen - 1), 16, 'utf8')
      if (this.native.mapUpdate('listeners', key, value, BPF_NOEXIST)) added++
    }
    return added
  }

  /** Start draining per-event records on the native thread; batches arrive decoded. */
  startEvents(
    onEvents: (events: TcpEvent[]) => void,
    onError: (err: Error) => void,
    opts: { maxQueue?: number; maxBatch?: number } = {},
  ): void {
    const L = this.binding.layout
    this.native.startEvents((err, batch, count) => {
      if (err) return onError(err)
      if (batch) onEvents(decodeBatch(batch, count, L))
    }, opts)
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
      eventsLost: sums[c.STAT_EVENTS_LOST] ?? 0n,
      mapUpdateFailed: sums[c.STAT_MAP_UPDATE_FAILED] ?? 0n,
      acceptUnattributed: sums[c.STAT_ACCEPT_UNATTRIBUTED] ?? 0n,
      connectUnattributed: sums[c.STAT_CONNECT_UNATTRIBUTED] ?? 0n,
    }
  }

  drainStats(): DrainStats {
    return this.native.drainStats()
  }

  /** Detach everything and free the kernel objects. Idempotent. */
  close(): void {
    if (this.closed) return
    this.closed = true
    this.native.close()
  }
}
