// The native addon's surface (addon/src), declared once and loaded lazily with a
// clear message when the build is missing.
import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import { addonPath } from './paths.js'

/** offsetof() every field of `struct event` in bpf/tcptracer.h, as compiled into the addon. */
export interface EventLayout {
  size: number
  saddr: number
  daddr: number
  ts_ns: number
  duration_ns: number
  bytes_sent: number
  bytes_received: number
  cgroup_id: number
  pid: number
  netns: number
  sport: number
  dport: number
  type: number
  ip: number
  reason: number
  direction: number
  comm: number
  commLen: number
  listenerKeySize: number
  ownerSize: number
  listenerValueSize: number
  aggKey: {
    size: number
    cgroup_id: number
    netns: number
    pid: number
    port: number
    ip: number
    direction: number
    flags: number
    comm: number
  }
  aggValue: {
    size: number
    opened: number
    closed: number
    failed: number
    sent_bytes: number
    received_bytes: number
    duration_sum_ns: number
    seeded_closed: number
    last_ns: number
    buckets: number
    maxBuckets: number
    failReasons: number
  }
  tupleKey: {
    size: number
    saddr: number
    daddr: number
    netns: number
    sport: number
    dport: number
    family: number
  }
  seedValue: { size: number; owner: number; port: number; direction: number }
}

export interface NativeConstants {
  STAT_EVENTS_LOST: number
  STAT_MAP_UPDATE_FAILED: number
  STAT_ACCEPT_UNATTRIBUTED: number
  STAT_CONNECT_UNATTRIBUTED: number
  STAT_AGG_FULL: number
  STAT_CLOSE_UNSEEN: number
  STAT_CONNECT_UNSEEN: number
  STAT_MAX: number
  LABEL_PID: number
  LABEL_CGROUP: number
  LABEL_PORT: number
  AGG_OVERFLOW: number
  AGG_UNATTRIBUTED: number
  ACCEPT_MODE_LISTENER: number
  ACCEPT_MODE_SYSCALL: number
  ACCEPT_MODE_KERNEL: number
  /** version of the kernel state pinned under bpffs (bpf/tcptracer.h) */
  STATE_VERSION: number
  numPossibleCpus: number
}

export interface ProgramStatus {
  name: string
  section: string
  attached: boolean
  error?: string
  errno?: number
  code?: string
  hint?: string
}

export interface MapInfo {
  type: number
  keySize: number
  valueSize: number
  /** bytes of a lookup result: valueSize, or per-CPU slots times CPUs */
  valueBytes: number
  maxEntries: number
}

export interface DrainStats {
  delivered: bigint
  dropped: bigint
  malformed: bigint
  batches: bigint
  running: boolean
}

export type LibbpfLog = (level: 'warn' | 'info' | 'debug', message: string) => void
export type BatchCallback = (err: BpfError | null, batch: Buffer | null, count: number) => void

export interface NativeTracerOptions {
  /** scalars, or a Buffer of exactly the variable's size (arrays) */
  rodata?: Record<string, number | bigint | Buffer>
  maxEntries?: Record<string, number>
  disabledPrograms?: string[]
  /** loaded but never attached, for runProgram(); not loaded where the kernel lacks what they need */
  onDemandPrograms?: string[]
  /** the kernel's BTF from this file instead of /sys/kernel/btf/vmlinux */
  btfPath?: string
  /** these maps live at dir/NAME in bpffs: reused when pinned there and compatible, else pinned there */
  pin?: { dir: string; maps: readonly string[] }
  log?: LibbpfLog
}

export declare class NativeTracer {
  constructor(objectPath: string, options?: NativeTracerOptions)
  attach(): ProgramStatus[]
  /** attach one program and detach it again: whether this kernel lets it attach */
  probeAttach(name: string): ProgramStatus
  /** pin the link of every attached program at dir/PROGRAM: it outlives this process */
  pinLinks(dir: string): void
  startEvents(callback: BatchCallback, options?: { maxQueue?: number; maxBatch?: number }): void
  stopEvents(): void
  mapInfo(name: string): MapInfo
  mapEntries(name: string): Array<{ key: Buffer; value: Buffer }>
  /**
   * Read every entry into these Buffers: entry i's key at keys[i * keySize], its value at
   * values[i * valueBytes]. Returns the number of entries, or -1 when the Buffers cannot hold them all.
   */
  mapRead(name: string, keys: Buffer, values: Buffer): number
  mapLookup(name: string, key: Buffer): Buffer | null
  mapUpdate(name: string, key: Buffer, value: Buffer, flags?: number): boolean
  mapDelete(name: string, key: Buffer): boolean
  drainStats(): DrainStats
  /** per loaded program: runs the kernel skipped because it was already running on that CPU */
  programStats(): Array<{ name: string; recursionMisses: bigint }>
  /** run an on-demand program once on this CPU (BPF_PROG_TEST_RUN); its return value */
  runProgram(name: string): number
  /** change a .bss setting of the loaded program */
  setGlobal(name: string, value: number | bigint): void
  close(): void
}

/** What dropCapabilities did: masks of capability bits (bit n = capability n). */
export interface CapabilityDrop {
  /** the calling thread's permitted set before */
  before: bigint
  /** every thread's effective and permitted set now */
  after: bigint
  /** the calling thread's bounding set now */
  bounding: bigint
  /** whether the bounding set was reduced too (needs CAP_SETPCAP) */
  boundingDropped: boolean
  /** threads switched, the calling one included */
  threads: number
}

export interface Binding {
  Tracer: typeof NativeTracer
  layout: EventLayout
  constants: NativeConstants
  libbpfVersion(): string
  ensureFilesystems(): { tracefs: string; bpffs: string }
  setVerbose(on: boolean): void
  sdNotify(state: string): boolean
  /**
   * Every thread keeps only the capabilities in `keep` that it holds (effective = permitted), with
   * empty inheritable and ambient sets and no_new_privs; the bounding set is reduced too where
   * CAP_SETPCAP allows. Checked in /proc/self/task/<tid>/status; throws a BpfError otherwise.
   */
  dropCapabilities(keep: bigint): CapabilityDrop
  /** whether bpf() on file descriptors already open needs CAP_BPF or CAP_SYS_ADMIN on this kernel */
  bpfNeedsCapability(): boolean
  /**
   * glibc's M_MMAP_THRESHOLD, fixed: blocks of at least `bytes` are mapped on their own and given back to
   * the kernel when freed (glibc otherwise raises the threshold as such blocks are freed). False where
   * the C library is not glibc.
   */
  mmapThreshold(bytes: number): boolean
}

/** Errors thrown by the addon: the failing step, the errno and, where known, the fix. */
export interface BpfError extends Error {
  name: 'BpfError'
  op: string
  errno: number
  code: string
  hint?: string
}

export function isBpfError(e: unknown): e is BpfError {
  return e instanceof Error && e.name === 'BpfError'
}

let cached: Binding | undefined

export function loadBinding(file = addonPath): Binding {
  if (cached) return cached
  if (!existsSync(file)) {
    throw new Error(`the native addon is not built (${file} is missing): run \`npm run build\``)
  }
  cached = createRequire(import.meta.url)(file) as Binding
  return cached
}
