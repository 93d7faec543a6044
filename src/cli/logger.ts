// The daemon's logger: pino, on stderr, as JSON or pretty for a terminal.
import pino, { type Logger } from 'pino'
import pretty from 'pino-pretty'

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const
export type LogLevel = (typeof LOG_LEVELS)[number]
export type LogFormat = 'json' | 'pretty' | 'auto'

export function createLogger(level: LogLevel, format: LogFormat): Logger {
  const usePretty = format === 'pretty' || (format === 'auto' && process.stderr.isTTY)
  const base = { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }
  // logs go to stderr: stdout stays free for what commands print
  return usePretty
    ? pino(base, pretty({ destination: 2, sync: true, colorize: process.stderr.isTTY }))
    : pino(base, pino.destination({ dest: 2, sync: true }))
}
