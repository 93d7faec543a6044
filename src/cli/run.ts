// `tcptracer-exporter run` (the default command): flags, then the exporter and its HTTP server until a signal.
import { readFile } from 'node:fs/promises'
import { parseFlags, parseIntArg, UsageError } from './args.js'
import { createLogger, LOG_LEVELS, type LogFormat, type LogLevel } from './logger.js'
import {
  capabilityNumber,
  capBit,
  CAPABILITY_NAMES,
  dropCapabilities,
  heldCapabilities,
  KEEP_FLAG,
  type CapabilityStatus,
  type KeepSpec,
} from '../host/capabilities.js'
import { ConfigError, loadConfig, type Config } from '../config/config.js'
import { Exporter } from '../exporter/exporter.js'
import { reloadAll, reloadables } from '../exporter/reload.js'
import { loadBinding, type Binding } from '../kernel/binding.js'
import { version } from '../kernel/paths.js'
import { build, DEFAULT_MAX_REQUESTS, HttpState } from '../http/app.js'
import { DEFAULT_PIN_PATH, hasPinnedState, onExit } from '../kernel/pinned-state.js'
import { createNotifier, startWatchdog, watchdogIntervalMs } from '../host/systemd.js'
import { loadWebConfig, type WebConfig } from '../config/webconfig.js'
import { onSignals } from './signals.js'

export const DEFAULT_LISTEN_ADDRESS = ':19427'

const RUN_HELP = `Usage: tcptracer-exporter [run] [flags]

Serve Prometheus metrics for every TCP connect, accept and close on this host.

Flags:
  --web.listen-address=ADDR  address to listen on, [host]:port (default "${DEFAULT_LISTEN_ADDRESS}": all
                             interfaces; "127.0.0.1:19427" or "[::1]:19427" for loopback only)
  --web.telemetry-path=PATH  path of the metrics endpoint (default "/metrics")
  --web.config.file=FILE     TLS and basic auth, in the Prometheus exporter-toolkit web config format
                             (default: plain HTTP, no auth)
  --web.max-requests=N       concurrent metrics requests; more get 503 (default ${DEFAULT_MAX_REQUESTS}; 0: no limit)
  --config.file=FILE         YAML config file (default: built-in defaults; see config.example.yml)
  --log.level=LEVEL          trace, debug, info, warn, error or fatal (default "info")
  --log.format=FORMAT        json, pretty, or auto: pretty on a terminal, else json (default "auto")
  --bpf.pin-path=DIR         keep the kernel state (programs, counters, open connections) in this
                             bpffs directory, so a restart or an upgrade loses nothing (the systemd
                             unit passes "${DEFAULT_PIN_PATH}"). Stopping then leaves the
                             programs counting: "tcptracer-exporter unpin" removes them. Default
                             "": not pinned, everything is detached at exit
  --capabilities.keep=CAPS   capabilities kept once the programs are attached: auto (default:
                             cap_sys_ptrace, to name containers' network namespaces), none, all (drop
                             nothing), or a list such as "cap_sys_ptrace"; cap_bpf is kept anyway on
                             kernels that need it to read the maps
  -h, --help                 show this help

Signals: SIGHUP reloads the config file and the web config file (an invalid file keeps the running one);
SIGTERM or SIGINT stop serving, finish in-flight scrapes, detach and exit 0.

Examples:
  sudo tcptracer-exporter
  sudo tcptracer-exporter run --web.listen-address=127.0.0.1:19427 --config.file=/etc/tcptracer-exporter.yml
  tcptracer-exporter check-config --config.file=/etc/tcptracer-exporter.yml --web.config.file=/etc/web.yml
`

interface RunArgs {
  listenAddress: string
  host: string
  port: number
  telemetryPath: string
  configFile: string | undefined
  webConfigFile: string | undefined
  maxRequests: number
  logLevel: LogLevel
  logFormat: LogFormat
  /** undefined: not pinned */
  pinPath: string | undefined
  /** --capabilities.keep */
  capabilitiesKeep: KeepSpec
  help: boolean
}

/** --capabilities.keep: auto, all, none or a list of capabilities (a usage error otherwise). */
export function parseKeep(raw: string): KeepSpec {
  const v = raw.trim().toLowerCase()
  if (v === 'auto') return { kind: 'auto' }
  if (v === 'all') return { kind: 'all' }
  if (v === 'none') return { kind: 'list', mask: 0n }
  let mask = 0n
  for (const part of v.split(',')) {
    const n = capabilityNumber(part)
    if (part.trim() === '' || n === undefined) {
      throw new UsageError(
        `${KEEP_FLAG} must be auto, all, none or a comma-separated list of capabilities such as ` +
          `cap_sys_ptrace; "${part.trim()}" is not a capability (known: ${CAPABILITY_NAMES.join(', ')})`,
      )
    }
    mask |= capBit(n)
  }
  return { kind: 'list', mask }
}

/** "[host]:port": ":9100" (all interfaces), "127.0.0.1:9100", "[::1]:9100", "localhost:9100". */
export function parseListenAddress(addr: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(addr)
  const port = m ? Number(m[3]) : NaN
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new UsageError(
      `--web.listen-address must be [host]:port, like ":19427", "127.0.0.1:19427" or "[::1]:19427"; got "${addr}"`,
    )
  }
  const host = m[1] ?? m[2] ?? ''
  return { host: host === '' ? '::' : host, port }
}

export function parseRunArgs(argv: string[]): RunArgs {
  const values = parseFlags(argv, {
    'web.listen-address': { type: 'string', default: DEFAULT_LISTEN_ADDRESS },
    'web.telemetry-path': { type: 'string', default: '/metrics' },
    'web.config.file': { type: 'string' },
    'web.max-requests': { type: 'string', default: String(DEFAULT_MAX_REQUESTS) },
    'config.file': { type: 'string' },
    'log.level': { type: 'string', default: 'info' },
    'log.format': { type: 'string', default: 'auto' },
    'bpf.pin-path': { type: 'string', default: '' },
    'capabilities.keep': { type: 'string', default: 'auto' },
    help: { type: 'boolean', short: 'h', default: false },
  })
  const pinPath = values['bpf.pin-path']
  if (pinPath !== '' && !pinPath.startsWith('/')) {
    throw new UsageError(
      `--bpf.pin-path must be an absolute path in bpffs, or "" to turn pinning off; got "${pinPath}"`,
    )
  }
  const level = values['log.level']
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new UsageError(`--log.level must be one of ${LOG_LEVELS.join(', ')}; got "${level}"`)
  }
  const format = values['log.format']
  if (format !== 'json' && format !== 'pretty' && format !== 'auto') {
    throw new UsageError(`--log.format must be json, pretty or auto; got "${format}"`)
  }
  const path = values['web.telemetry-path']
  if (!/^\/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$/.test(path) || ['/', '/healthz', '/readyz'].includes(path)) {
    throw new UsageError(
      `--web.telemetry-path must be a URL path like "/metrics", other than /, /healthz and /readyz; got "${path}"`,
    )
  }
  const { host, port } = parseListenAddress(values['web.listen-address'])
  return {
    listenAddress: values['web.listen-address'],
    host,
    port,
    telemetryPath: path,
    configFile: values['config.file'],
    webConfigFile: values['web.config.file'],
    maxRequests: parseIntArg('--web.max-requests', values['web.max-requests'], 0, 1_000_000),
    logLevel: level as LogLevel,
    logFormat: format,
    pinPath: pinPath === '' ? undefined : pinPath,
    capabilitiesKeep: parseKeep(values['capabilities.keep']),
    help: values.help,
  }
}

type Log = ReturnType<typeof createLogger>

/** Run the exporter until SIGTERM/SIGINT; resolves with the exit code. */
export async function runDaemon(argv: string[]): Promise<number> {
  const args = parseRunArgs(argv)
  if (args.help) {
    process.stdout.write(RUN_HELP)
    return 0
  }
  const log = createLogger(args.logLevel, args.logFormat)
  const loaded = await loadConfigs(args, log)
  if (loaded === undefined) return 2
  const { config, web } = loaded
  const notify = createNotifier(undefined, process.env, {
    onError: (err: unknown, state: string) => log.warn({ err, state }, 'sd_notify failed'),
  })

  const binding = loadBinding()
  if (process.geteuid?.() === 0) {
    const fs = binding.ensureFilesystems()
    log.debug({ tracefs: fs.tracefs, bpffs: fs.bpffs }, 'kernel filesystems')
  }
  notify.status('loading and attaching BPF programs')
  const t0 = Date.now()
  const exporter = await Exporter.start({
    config,
    log: log.child({ component: 'exporter' }),
    ...(args.pinPath === undefined ? {} : { pinPath: args.pinPath }),
  })
  logStarted(exporter, args, log, t0)

  const http = new HttpState(web, { maxRequests: args.maxRequests }, exporter.reloads.web)
  const app = build({
    source: exporter,
    telemetryPath: args.telemetryPath,
    version,
    logger: log.child({ component: 'http' }),
    http,
  })
  // signal handlers first: a SIGHUP or SIGTERM right after READY must find them
  const files = reloadables(exporter, http, { config: args.configFile, web: args.webConfigFile })
  let reloading = Promise.resolve()
  let stopWatchdog = (): void => {}
  let resolveExit: (code: number) => void = () => {}
  const exited = new Promise<number>((resolve) => {
    resolveExit = resolve
  })
  const disposeSignals = onSignals({
    reload: () => {
      reloading = reloading.then(async () => {
        notify.reloading()
        await reloadAll(files, log)
        notify.ready('serving metrics')
      })
    },
    stop: (signal) => {
      disposeSignals()
      const t = Date.now()
      log.info({ signal }, 'shutting down')
      notify.stopping()
      stopWatchdog()
      // stop accepting, let in-flight scrapes finish, then detach
      reloading
        .then(() => app.close())
        .catch((err: unknown) => log.error({ err }, 'closing the HTTP server failed'))
        .finally(() => {
          exporter.close()
          logExit(exporter, log, t)
          resolveExit(0)
        })
    },
  })

  try {
    await app.listen({ host: args.host, port: args.port })
  } catch (e) {
    disposeSignals()
    exporter.close()
    const err = e as NodeJS.ErrnoException
    log.fatal({ err, address: args.listenAddress }, `cannot listen on ${args.listenAddress}: ${err.message}`)
    return 1
  }
  // Least privilege: from here on the daemon reads the maps it holds, /proc and /run/netns, and nothing
  // needs more than what auto keeps (docs/reliability.md). After listen, so that a privileged port works.
  try {
    exporter.capabilities = dropPrivileges(binding, args, log)
  } catch (e) {
    disposeSignals()
    await app.close().catch(() => {})
    exporter.close()
    const err = e as Error
    log.fatal(
      { err },
      `cannot drop capabilities: ${err.message}. The daemon does not run with capabilities it was to give up; ` +
        `${KEEP_FLAG}=all skips the drop`,
    )
    return 1
  }
  await warnUnreadable(args, log)
  const bound = app.server.address()
  logServing(args, web, typeof bound === 'object' && bound ? bound.port : args.port, log)
  notify.ready(`serving metrics on ${args.listenAddress}${args.telemetryPath}`)
  const wd = watchdogIntervalMs(process.env, process.pid)
  if (wd) stopWatchdog = startWatchdog(notify, wd, () => exporter.notReadyReason() === undefined)
  return await exited
}

/** The config and the web config at start; undefined (logged) when one is invalid. */
async function loadConfigs(args: RunArgs, log: Log): Promise<{ config: Config; web: WebConfig } | undefined> {
  try {
    return { config: await loadConfig(args.configFile), web: await loadWebConfig(args.webConfigFile) }
  } catch (e) {
    if (e instanceof ConfigError) {
      const what = e.file === args.webConfigFile ? 'web config' : 'config'
      log.fatal({ file: e.file, problems: e.problems }, `invalid ${what}:\n${e.message}`)
      return undefined
    }
    throw e
  }
}

/** What the start attached, chose and will leave behind at exit. */
function logStarted(exporter: Exporter, args: RunArgs, log: Log, t0: number): void {
  for (const p of exporter.programs) {
    if (p.attached) log.info({ program: p.name, hook: p.section }, 'program attached')
    else if (p.error === 'disabled by configuration') {
      log.debug({ program: p.name, hook: p.section }, 'program not used in this accept mode')
    } else log.warn({ program: p.name, hook: p.section, reason: p.error }, 'program not attached')
  }
  for (const h of exporter.hooks) {
    for (const r of h.rejected ?? []) {
      log.info({ hook: h.hook, mode: r.mode, reason: r.error }, 'hook mode not available')
    }
    log.info({ hook: h.hook, mode: h.mode }, 'hook mode chosen')
  }
  log.info(
    {
      ms: Date.now() - t0,
      accept_mode: exporter.currentConfig.accept_mode,
      kernel_state: exporter.kernelState,
    },
    'tracer ready',
  )
  log.info({ kernel_state: exporter.kernelState }, `on exit: ${onExit(exporter.kernelState)}`)
  if (
    exporter.kernelState.origin === 'unpinned' &&
    args.pinPath === undefined &&
    hasPinnedState(DEFAULT_PIN_PATH)
  ) {
    log.warn(
      { path: DEFAULT_PIN_PATH },
      'a pinned exporter state is in the default pin path (the service\'s, running or stopped): its programs count beside this run\'s; stop here and use that exporter, or run "tcptracer-exporter unpin" once it is stopped for good',
    )
  }
}

/** Drop the capabilities --capabilities.keep does not keep, and log what is left. Throws if it cannot. */
function dropPrivileges(binding: Binding, args: RunArgs, log: Log): CapabilityStatus {
  const { status, reasons, threads } = dropCapabilities(binding, args.capabilitiesKeep, heldCapabilities())
  if (!status.dropped) {
    log.warn(
      { keep: status.keep, kept: status.kept },
      `capabilities not dropped (${KEEP_FLAG}=all): the daemon keeps every capability it started with`,
    )
  } else {
    log.info(
      {
        keep: status.keep,
        kept: reasons,
        dropped: status.removed,
        threads,
        boundingSetReduced: status.boundingSetReduced,
      },
      `capabilities dropped: kept ${status.kept.join(', ') || 'none'}`,
    )
  }
  return status
}

/** A file readable only thanks to CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE could be read at start, not at reload. */
async function warnUnreadable(args: RunArgs, log: Log): Promise<void> {
  for (const file of [args.configFile, args.webConfigFile]) {
    if (file === undefined) continue
    await readFile(file).catch((err: unknown) =>
      log.warn(
        { err, file, uid: process.getuid?.() },
        'a config file cannot be read without the capabilities just dropped: SIGHUP reloads will fail until it is readable by this user',
      ),
    )
  }
}

function logServing(args: RunArgs, web: WebConfig, port: number, log: Log): void {
  const scheme = web.tls ? 'https' : 'http'
  log.info(
    {
      address: args.listenAddress,
      port,
      path: args.telemetryPath,
      version,
      scheme,
      ...(web.tls ? { client_auth: web.tls.clientAuth, cert: web.tls.certSource } : {}),
      basic_auth: web.users.size > 0,
      max_requests: args.maxRequests,
    },
    'serving metrics',
  )
}

function logExit(exporter: Exporter, log: Log, t: number): void {
  if (exporter.kernelState.origin === 'unpinned') log.info({ ms: Date.now() - t }, 'detached, exiting')
  else {
    log.info(
      { ms: Date.now() - t, path: exporter.kernelState.path },
      'exiting; the pinned programs keep counting for the next start (tcptracer-exporter unpin removes them)',
    )
  }
}
