// The systemd notify protocol (Type=notify / Type=notify-reload, WatchdogSec=): readiness, status,
// reload and stop announcements, and watchdog keep-alives. The datagram itself is sent by the addon's
// sdNotify(); everything here is a no-op when $NOTIFY_SOCKET is unset, and a failed notification is
// reported, never thrown: it must not take the daemon down.
import { loadBinding } from '../kernel/binding.js'

interface Notifier {
  /** READY=1, with an optional STATUS=; also sent again when a reload has finished. */
  ready(status?: string): void
  status(text: string): void
  stopping(): void
  /** RELOADING=1 with MONOTONIC_USEC=, as Type=notify-reload requires; follow with ready(). */
  reloading(): void
  watchdog(): void
  readonly enabled: boolean
}

interface NotifierOptions {
  /** Called with the error and the state that could not be sent; exceptions it throws are ignored. */
  onError?: (err: unknown, state: string) => void
}

/** Values are single-line: a newline would start a new assignment. */
function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ')
}

export function createNotifier(
  send: (state: string) => boolean = (state) => loadBinding().sdNotify(state),
  env: NodeJS.ProcessEnv = process.env,
  options: NotifierOptions = {},
): Notifier {
  const enabled = Boolean(env['NOTIFY_SOCKET'])
  const notify = (state: string): void => {
    if (!enabled) return
    try {
      send(state)
    } catch (err) {
      try {
        options.onError?.(err, state)
      } catch {
        // a broken error handler must not crash the daemon either
      }
    }
  }
  return {
    enabled,
    ready(status) {
      notify(status === undefined ? 'READY=1' : `READY=1\nSTATUS=${oneLine(status)}`)
    },
    status(text) {
      notify(`STATUS=${oneLine(text)}`)
    },
    stopping() {
      notify('STOPPING=1')
    },
    reloading() {
      // process.hrtime is CLOCK_MONOTONIC on Linux, the clock systemd compares MONOTONIC_USEC with.
      notify(`RELOADING=1\nMONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`)
    },
    watchdog() {
      notify('WATCHDOG=1')
    },
  }
}

/**
 * How often to send WATCHDOG=1: half of $WATCHDOG_USEC, in milliseconds (at least 1). undefined when
 * the watchdog is off, the value is invalid, or $WATCHDOG_PID names another process.
 */
export function watchdogIntervalMs(
  env: NodeJS.ProcessEnv = process.env,
  pid: number = process.pid,
): number | undefined {
  const usecText = env['WATCHDOG_USEC']
  if (usecText === undefined || !/^\d+$/.test(usecText)) return undefined
  const usec = Number(usecText)
  if (!Number.isSafeInteger(usec) || usec <= 0) return undefined
  const pidText = env['WATCHDOG_PID']
  if (pidText !== undefined && pidText !== '') {
    if (!/^\d+$/.test(pidText) || Number(pidText) !== pid) return undefined
  }
  return Math.max(1, Math.floor(usec / 2000))
}

/**
 * Send WATCHDOG=1 every intervalMs while healthy() says so (a throwing healthy() counts as unhealthy),
 * so that systemd restarts a daemon that is alive but stuck. The timer does not keep the process
 * alive. Returns a function that stops it.
 */
export function startWatchdog(
  n: Notifier,
  intervalMs: number,
  healthy: () => boolean = () => true,
): () => void {
  const timer = setInterval(() => {
    let ok = false
    try {
      ok = healthy()
    } catch {
      ok = false
    }
    if (ok) n.watchdog()
  }, intervalMs)
  timer.unref()
  return () => clearInterval(timer)
}
