// Output of the `trace` command: the columns BCC's tcptracer prints, or JSON lines. The drain thread
// prints the events themselves natively (addon/src/objects/event_format.cpp), byte for byte as these
// functions do: they are its reference, held to it by test/unit/trace-native-format.test.ts.
import type { EventType, TcpEvent } from '../kernel/abi.js'
import type { TraceFormat } from '../kernel/binding.js'

/** The text form's options; the drain thread formats the same way (TraceFormat, addon/src/objects/event_format.cpp). */
export type TextOptions = Omit<TraceFormat, 'json'>

const LETTER: Record<EventType, string> = { connect: 'C', accept: 'A', close: 'X', connect_failed: 'F' }
const WORD: Record<EventType, string> = {
  connect: 'connect',
  accept: 'accept',
  close: 'close',
  connect_failed: 'connfail',
}

function left(s: string | number, width: number): string {
  return String(s).padEnd(width)
}

/**
 * Printable text for a terminal: control characters become \xNN escapes, and invisible format characters
 * (bidirectional overrides such as U+202E, zero-width characters, U+FEFF) and the line and paragraph
 * separators U+2028 and U+2029 become \uNNNN, so a process name can neither start a line nor reorder or
 * hide the columns around it. A backslash is doubled, so the escapes cannot be forged.
 */
export function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f-\u009f\\]|\p{Cf}|\p{Zl}|\p{Zp}/gu, (c) => {
    if (c === '\\') return '\\\\'
    const code = c.codePointAt(0) as number
    if (code < 0x100) return `\\x${code.toString(16).padStart(2, '0')}`
    return code < 0x10000 ? `\\u${code.toString(16).padStart(4, '0')}` : `\\u{${code.toString(16)}}`
  })
}

export function textHeader(o: TextOptions): string {
  let h = ''
  if (o.verbose) {
    if (o.timestamp) h += left('TIME(ns)', 14)
    h +=
      [
        left('TYPE', 12),
        left('PID', 6),
        left('COMM', 16),
        left('IP', 2),
        left('SADDR', 16),
        left('DADDR', 16),
      ].join(' ') + ` ${left('SPORT', 6)} ${left('DPORT', 7)}`
    if (!o.netnsFiltered) h += left('NETNS', 8)
    return h
  }
  if (o.timestamp) h += left('TIME(s)', 9)
  return (
    h +
    [
      left('T', 2),
      left('PID', 6),
      left('COMM', 16),
      left('IP', 2),
      left('SADDR', 16),
      left('DADDR', 16),
      left('SPORT', 6),
      left('DPORT', 6),
    ].join(' ')
  )
}

/** One row; `startNs` is the first event's timestamp, the zero of the TIME column. */
export function textLine(e: TcpEvent, o: TextOptions, startNs: bigint): string {
  let s = ''
  if (o.timestamp) {
    const rel = e.tsNs - startNs
    s += o.verbose ? left(rel.toString(), 14) : left((Number(rel) / 1e9).toFixed(3), 9)
  }
  s += o.verbose ? `${left(WORD[e.type], 12)} ` : `${left(LETTER[e.type], 2)} `
  const addr = (a: string): string => (e.ip === 6 ? `[${a}]` : a)
  s += [
    left(e.pid, 6),
    left(printable(e.comm), 16),
    left(e.ip, 2),
    left(addr(e.saddr), 16),
    left(addr(e.daddr), 16),
    left(e.sport, 6),
    left(e.dport, 6),
  ].join(' ')
  if (o.verbose && !o.netnsFiltered) s += ` ${left(e.netns, 8)}`
  if (e.type === 'connect_failed' && e.reason) s += ` ${e.reason}`
  return s.trimEnd()
}

/**
 * One JSON object. 64-bit counters are written as exact integers, not rounded
 * through a double: ts_ns exceeds 2^53 after 104 days of uptime.
 */
export function jsonLine(e: TcpEvent): string {
  const fields: string[] = [
    `"type":${JSON.stringify(e.type)}`,
    `"ts_ns":${e.tsNs}`,
    `"pid":${e.pid}`,
    `"comm":${JSON.stringify(e.comm)}`,
    `"ip":${e.ip}`,
    `"saddr":${JSON.stringify(e.saddr)}`,
    `"daddr":${JSON.stringify(e.daddr)}`,
    `"sport":${e.sport}`,
    `"dport":${e.dport}`,
    `"netns":${e.netns}`,
    `"cgroup_id":${e.cgroupId}`,
    `"direction":${JSON.stringify(e.direction)}`,
  ]
  if (e.type === 'close') {
    fields.push(
      `"duration_ns":${e.durationNs}`,
      `"bytes_sent":${e.bytesSent}`,
      `"bytes_received":${e.bytesReceived}`,
    )
  }
  if (e.type === 'connect_failed') fields.push(`"reason":${JSON.stringify(e.reason ?? 'other')}`)
  return `{${fields.join(',')}}`
}
