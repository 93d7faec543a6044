// `tcptracer-exporter trace`: live events, printed the way BCC's tcptracer prints them.
import { formatUsage, parseFlags, parseIntArg, UsageError } from './args.js'
import { constants as osConstants } from 'node:os'
import { getSystemErrorName } from 'node:util'
import { textHeader, type TextOptions } from './trace-format.js'
import { loadBinding } from '../kernel/binding.js'
import { discoverListeners } from '../host/procfs.js'
import { ACCEPT_MODES, type AcceptMode } from '../kernel/abi.js'
import { dropCapabilities, heldCapabilities } from '../host/capabilities.js'
import { TcpTracer } from '../kernel/tracer.js'

function isAcceptMode(s: string | undefined): s is AcceptMode {
  return (ACCEPT_MODES as readonly string[]).includes(s ?? '')
}

const TRACE_HELP = `Usage: tcptracer-exporter trace [options]

Trace TCP connections: connect (C), accept (A), close (X) and failed connects (F),
with the owning process and network namespace.

Options:
  -t, --timestamp          include a timestamp column (seconds since the first event;
                           nanoseconds with -v)
  -p, --pid PID            trace this process (tgid) only
  -N, --netns INODE        trace this network namespace only
  -v, --verbose            full event type names and a NETNS column
  -4, --ipv4               IPv4 only (IPv4-mapped IPv6 counts as IPv4)
  -6, --ipv6               IPv6 only
      --json               one JSON object per line instead of columns
      --accept-mode MODE   who accepts are charged to. auto (default): the first of
                           fexit, kprobe, listener this kernel attaches. fexit, kprobe:
                           the accept() caller, from inet_csk_accept (io_uring too);
                           syscall: the accept() caller, from the syscall exits (every
                           syscall on the host gets slower); listener: the listening
                           socket's owner
      --btf FILE           the kernel's BTF from FILE, for kernels without
                           /sys/kernel/btf/vmlinux
      --ringbuf-bytes N    ring buffer size, a power of two (default 1048576)
  -h, --help               show this help

Examples:
  tcptracer-exporter trace              # trace all TCP connect/accept/close events
  tcptracer-exporter trace -t           # with a timestamp column
  tcptracer-exporter trace -p 181       # only events of PID 181
  tcptracer-exporter trace -N 4026531969  # only network namespace 4026531969
  tcptracer-exporter trace -v           # event names and the NETNS column
  tcptracer-exporter trace -6 --json    # IPv6 only, as JSON lines
`

export interface TraceArgs {
  timestamp: boolean
  pid: number
  netns: number
  verbose: boolean
  ip: 0 | 4 | 6
  json: boolean
  acceptMode: AcceptMode
  btfPath?: string
  ringbufBytes: number
  help: boolean
}

export function parseTraceArgs(argv: string[]): TraceArgs {
  const values = parseFlags(argv, {
    timestamp: { type: 'boolean', short: 't', default: false },
    pid: { type: 'string', short: 'p' },
    netns: { type: 'string', short: 'N' },
    verbose: { type: 'boolean', short: 'v', default: false },
    ipv4: { type: 'boolean', short: '4', default: false },
    ipv6: { type: 'boolean', short: '6', default: false },
    json: { type: 'boolean', default: false },
    'accept-mode': { type: 'string', default: 'auto' },
    btf: { type: 'string' },
    'ringbuf-bytes': { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  })
  if (values.ipv4 && values.ipv6) throw new UsageError('-4 and -6 exclude each other')
  const mode = values['accept-mode']
  if (!isAcceptMode(mode)) {
    throw new UsageError(`--accept-mode must be one of ${ACCEPT_MODES.join(', ')}, got "${mode}"`)
  }
  if (values.btf === '') throw new UsageError('--btf needs a file path')
  const rb =
    values['ringbuf-bytes'] === undefined
      ? 1 << 20
      : parseIntArg('--ringbuf-bytes', values['ringbuf-bytes'], 4096, 1 << 30)
  if ((rb & (rb - 1)) !== 0) throw new UsageError(`--ringbuf-bytes must be a power of two, got ${rb}`)
  return {
    timestamp: values.timestamp,
    pid: values.pid === undefined ? 0 : parseIntArg('--pid', values.pid, 1, 4194304),
    netns: values.netns === undefined ? 0 : parseIntArg('--netns', values.netns, 1, 0xffffffff),
    verbose: values.verbose,
    ip: values.ipv4 ? 4 : values.ipv6 ? 6 : 0,
    json: values.json,
    acceptMode: mode,
    ...(values.btf === undefined ? {} : { btfPath: values.btf }),
    ringbufBytes: rb,
    help: values.help,
  }
}

/** Run until SIGINT/SIGTERM; resolves with the exit code. */
export async function runTrace(argv: string[]): Promise<number> {
  const args = parseTraceArgs(argv)
  if (args.help) {
    process.stdout.write(formatUsage(TRACE_HELP))
    return 0
  }
  const binding = loadBinding()
  const err = (s: string): boolean => process.stderr.write(`${s}\n`)
  if (process.geteuid?.() === 0) {
    const fs = binding.ensureFilesystems()
    if (args.acceptMode === 'syscall' && fs.tracefs !== 'present' && fs.tracefs !== 'mounted') {
      err(`warning: tracefs ${fs.tracefs}`)
    }
  }
  const tracer = TcpTracer.open(
    {
      filterPid: args.pid,
      filterNetns: args.netns,
      filterIp: args.ip,
      acceptMode: args.acceptMode,
      ...(args.btfPath === undefined ? {} : { btfPath: args.btfPath }),
      ringBufferBytes: args.ringbufBytes,
      log: (level, msg) => {
        if (level !== 'debug') err(`libbpf: ${level}: ${msg.replace(/^libbpf: /, '')}`)
      },
    },
    binding,
  )
  try {
    for (const p of tracer.attach()) {
      if (!p.attached && args.verbose) err(`program ${p.name} (${p.section}) not attached: ${p.error ?? ''}`)
    }
    if (args.verbose) {
      for (const p of tracer.hookProbes.filter((x) => !x.ok)) {
        err(`accept hook ${p.mode} not available: ${p.error ?? ''}`)
      }
      err(`accept hook: ${tracer.acceptHook}`)
    }
    if (tracer.acceptHook === 'listener') {
      const seeded = tracer.seedListeners(await discoverListeners())
      if (args.verbose) err(`seeded ${seeded} existing listeners from /proc`)
    }
  } catch (e) {
    tracer.close()
    throw e
  }

  const textOpts: TextOptions = {
    timestamp: args.timestamp,
    verbose: args.verbose,
    netnsFiltered: args.netns !== 0,
  }

  return await new Promise<number>((resolve) => {
    let done = false
    let readerGone = false
    let writeFailed = false
    const finish = (exitCode: number): void => {
      if (done) return
      done = true
      let code = exitCode
      let k, d
      try {
        tracer.stopEvents()
        tracer.sweepUnseenCloses()
        k = tracer.kernelStats()
        d = tracer.drainStats()
      } catch (e) {
        err(`error: reading the final counters failed: ${(e as Error).message}`)
        code = 1
      } finally {
        tracer.close()
      }
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
      if (!k || !d) {
        resolve(code)
        return
      }
      // a write that failed as the trace stopped, which no callback reported
      if (d.outputErrno !== 0 && !writeFailed) {
        readerGone = d.outputErrno === osConstants.errno.EPIPE
        if (!readerGone) {
          err(`error: writing events failed: ${getSystemErrorName(-d.outputErrno)}`)
          code = 1
        }
      }
      const lost = k.eventsLost + d.dropped
      // with the reader gone (trace | head), what was not printed was not wanted
      if (lost > 0n && !readerGone) {
        err(`${lost} events lost: the consumer fell behind (try a larger --ringbuf-bytes)`)
      }
      if (k.mapUpdateFailed > 0n) {
        err(
          `${k.mapUpdateFailed} kernel map updates failed: those connections' events may be missing or their accepts unattributed (docs/kernels.md, What differs)`,
        )
      }
      if (k.closeUnseen > 0n) {
        err(
          `${k.closeUnseen} closes never seen: the kernel did not run the programs for them (docs/tracer.md, Known limits); counted when found, after the close`,
        )
      }
      if (args.verbose) {
        err(
          `stats: ${d.delivered} events delivered, ${k.eventsLost} lost in the kernel, ${d.dropped} dropped in the addon, ` +
            `${k.mapUpdateFailed} map update failures, ${k.acceptUnattributed} unattributed accepts, ` +
            `${k.connectUnattributed} unattributed connects, ${k.closeUnseen} closes and ${k.connectUnseen} connects never seen`,
        )
      }
      resolve(code)
    }
    const onSignal = (): void => finish(0)
    process.on('SIGINT', onSignal)
    process.on('SIGTERM', onSignal)
    // a closed stderr (2>&1 | head) must not crash the tracer either
    process.stderr.on('error', () => {})

    // Attached and seeded: from here on only the open maps and the ring buffer are used, which need no
    // capability (but CAP_BPF on kernels before 5.19 with unprivileged BPF disabled). The drain thread
    // starts after the drop, with none.
    try {
      const { status } = dropCapabilities(binding, { kind: 'list', mask: 0n }, heldCapabilities())
      if (args.verbose) {
        err(
          `capabilities: kept ${status.kept.join(', ') || 'none'}; dropped ${status.removed.join(', ') || 'none'}`,
        )
      }
    } catch (e) {
      err(`error: cannot drop capabilities: ${(e as Error).message}`)
      finish(1)
      return
    }
    // The drain thread formats every event natively and writes it to stdout itself: no JavaScript per
    // event, so the output keeps up at full rate. The banner says the trace is ready: for the columns
    // the thread writes it, with the header, once events are enabled.
    const banner = 'Tracing TCP established connections. Ctrl-C to end.'
    tracer.printEvents(
      {
        fd: 1,
        json: args.json,
        ...textOpts,
        ...(args.json ? {} : { preamble: `${banner}\n${textHeader(textOpts)}\n` }),
      },
      (e) => {
        writeFailed = e.op === 'write'
        // a reader that went away (trace | head) ends the trace quietly, as a pipe would
        if (e.code === 'EPIPE') {
          readerGone = true
          finish(0)
          return
        }
        err(`error: ${e.op === 'write' ? 'writing events failed' : 'reading events failed'}: ${e.message}`)
        finish(1)
      },
    )
    if (args.json) err(banner)
  })
}
