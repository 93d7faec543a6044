// The native addon's surface (addon/src), declared once and loaded lazily with a
// clear message when the build is missing.
import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import { addonPath } from './paths.js'

/** sizeof() a record of bpf/tcptracer.h, and offsetof() each of its fields, as compiled into the addon. */
type Struct<F extends string> = { readonly size: number } & { readonly [K in F]: number }

/** The records of bpf/tcptracer.h that TypeScript reads or writes; the codecs are in abi.ts. */
export interface RecordLayout {
  /** TASK_COMM_LEN: the comm fields' size */
  commLen: number
  event: Struct<
    | 'saddr'
    | 'daddr'
    | 'ts_ns'
    | 'duration_ns'
    | 'bytes_sent'
    | 'bytes_received'
    | 'cgroup_id'
    | 'pid'
    | 'netns'
    | 'sport'
    | 'dport'
    | 'type'
    | 'ip'
    | 'reason'
    | 'direction'
    | 'comm'
  >
  aggKey: Struct<'cgroup_id' | 'netns' | 'pid' | 'port' | 'ip' | 'direction' | 'flags' | 'comm'>
  /** with MAX_BUCKETS as maxBuckets (buckets has one more slot, for +Inf) and FAIL_REASONS as failReasons */
  aggValue: Struct<
    | 'opened'
    | 'closed'
    | 'failed'
    | 'sent_bytes'
    | 'received_bytes'
    | 'duration_sum_ns'
    | 'seeded_closed'
    | 'last_ns'
    | 'buckets'
    | 'maxBuckets'
    | 'failReasons'
  >
  tupleKey: Struct<'saddr' | 'daddr' | 'netns' | 'sport' | 'dport' | 'family'>
  listenerKey: Struct<'netns' | 'port' | 'family'>
  owner: Struct<'cgroup_id' | 'pid' | 'comm'>
  listenerValue: Struct<'owner' | 'sk'>
  seedValue: Struct<'owner' | 'port' | 'direction'>
}

/** Every enum member of bpf/tcptracer.h, by its C name, and the state version. */
export interface NativeConstants {
  TCP_EVENT_TYPE_CONNECT: number
  TCP_EVENT_TYPE_ACCEPT: number
  TCP_EVENT_TYPE_CLOSE: number
  TCP_EVENT_TYPE_CONNECT_FAILED: number
  TCP_EVENT_TYPE_SEEDED_CLOSE: number
  TCP_EVENT_TYPE_CLOSE_UNSEEN: number
  FAIL_REASON_NONE: number
  FAIL_REASON_REFUSED: number
  FAIL_REASON_TIMEOUT: number
  FAIL_REASON_UNREACHABLE: number
  FAIL_REASON_OTHER: number
  DIRECTION_OUTBOUND: number
  DIRECTION_INBOUND: number
  ACCEPT_MODE_LISTENER: number
  ACCEPT_MODE_SYSCALL: number
  ACCEPT_MODE_KERNEL: number
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

interface MapInfo {
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
  /** printing (startEvents with `output`): the errno of a failed write, EPIPE when the reader went away; 0 if none */
  outputErrno: number
}

/** How `trace` prints: the columns of BCC's tcptracer, or JSON lines (src/cli/trace-format.ts). */
export interface TraceFormat {
  json: boolean
  timestamp: boolean
  verbose: boolean
  /** a netns filter is set: the NETNS column is left out */
  netnsFiltered: boolean
}

/** Where the drain thread writes the formatted lines. */
export interface TraceOutput extends TraceFormat {
  fd: number
  /** written first, once events are enabled: nothing printed before it can miss an event */
  preamble?: string
}

export type LibbpfLog = (level: 'warn' | 'info' | 'debug', message: string) => void
type BatchCallback = (err: BpfError | null, batch: Buffer | null, count: number) => void

interface NativeTracerOptions {
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
  /**
   * Drain the ring buffer on a native thread: batches of records to `callback`, or with `output`,
   * each record formatted as `trace` prints it and written to `output.fd` by that thread (the
   * callback then gets errors only).
   */
  startEvents(
    callback: BatchCallback,
    options?: { maxQueue?: number; maxBatch?: number; output?: TraceOutput },
  ): void
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
interface CapabilityDrop {
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
  layout: RecordLayout
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
  /**
   * The lines `trace` prints for back-to-back struct event records, each ended by a newline, as the
   * drain thread formats them (startEvents with `output`); records it cannot name are left out.
   */
  formatEvents(records: Buffer, format: TraceFormat): Buffer
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
