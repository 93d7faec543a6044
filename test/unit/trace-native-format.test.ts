// The addon's formatEvents, the native formatter of the `trace` command, against the TypeScript one
// (src/cli/trace-format.ts), byte for byte: every record is built here byte by byte from the layout
// the addon reports, decoded by decodeEvent and formatted by textLine or jsonLine, as trace.ts printed
// them before it printed natively; the native output of the same bytes must be the same UTF-8, line
// for line. The random records come from a seeded PRNG (test/prng.ts): a failure names its seed and
// replays exactly.
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { decodeEvent, type TcpEvent } from '../../src/kernel/abi.js'
import { loadBinding, type TraceFormat } from '../../src/kernel/binding.js'
import { jsonLine, textLine } from '../../src/cli/trace-format.js'
import { prng } from '../prng.js'

const B = loadBinding()
const L = B.layout.event
const C = B.constants
const COMM_LEN = B.layout.commLen

/** All 16 combinations of the four options. */
const COMBOS: TraceFormat[] = []
for (let m = 0; m < 16; m++) {
  COMBOS.push({
    json: (m & 1) !== 0,
    timestamp: (m & 2) !== 0,
    verbose: (m & 4) !== 0,
    netnsFiltered: (m & 8) !== 0,
  })
}

function describeOptions(o: TraceFormat): string {
  const on = Object.entries(o)
    .filter(([, v]) => v)
    .map(([k]) => k)
  return on.length > 0 ? on.join('+') : 'plain text'
}

/**
 * What the TypeScript path prints for these records, one line each: as trace.ts printed them, its TIME zero
 * the earliest tsNs so far, over the records decodeEvent accepts; a record it rejects gives no line
 * (and sets no zero).
 */
function reference(records: Buffer, o: TraceFormat): { lines: string[]; skipped: number[] } {
  const lines: string[] = []
  const skipped: number[] = []
  let startNs: bigint | undefined
  for (let i = 0; i * L.size < records.length; i++) {
    let e: TcpEvent
    try {
      e = decodeEvent(records, i * L.size, B)
    } catch (err) {
      assert.ok(err instanceof RangeError && /^unknown /.test(err.message), String(err))
      skipped.push(i)
      continue
    }
    if (o.json) {
      lines.push(jsonLine(e))
      continue
    }
    if (startNs === undefined || e.tsNs < startNs) startNs = e.tsNs
    lines.push(textLine(e, o, startNs))
  }
  return { lines, skipped }
}

/** The native output cut into lines at each '\n', as bytes (the last, after the final '\n', dropped). */
function splitLines(out: Buffer): Buffer[] {
  const lines: Buffer[] = []
  let from = 0
  for (let nl = out.indexOf(0x0a); nl >= 0; nl = out.indexOf(0x0a, from)) {
    lines.push(out.subarray(from, nl))
    from = nl + 1
  }
  if (from < out.length) lines.push(out.subarray(from))
  return lines
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex')

/** Little-endian, one byte at a time, so the decoder's readers are not used to build their own input. */
function putLE(buf: Buffer, off: number, width: number, value: number | bigint): void {
  let v = BigInt(value)
  for (let i = 0; i < width; i++) {
    buf[off + i] = Number(v & 0xffn)
    v >>= 8n
  }
  assert.equal(v, 0n, `value ${value} does not fit in ${width} bytes`)
}

function putBytes(buf: Buffer, off: number, bytes: ArrayLike<number>): void {
  for (let i = 0; i < bytes.length; i++) buf[off + i] = bytes[i] ?? 0
}

interface RawEvent {
  type: number
  ip: number
  saddr: ArrayLike<number>
  daddr: ArrayLike<number>
  sport: number
  dport: number
  tsNs: bigint
  durationNs: bigint
  bytesSent: bigint
  bytesReceived: bigint
  cgroupId: bigint
  pid: number
  netns: number
  reason: number
  direction: number
  /** COMM_LEN bytes as they are in the record (shorter: the rest is 0) */
  comm: ArrayLike<number>
}

/** One struct event; the bytes no field covers (padding, the tail of an IPv4 address) are `fill`. */
function record(r: RawEvent, fill: (i: number) => number = () => 0xee): Buffer {
  const buf = Buffer.alloc(L.size)
  for (let i = 0; i < L.size; i++) buf[i] = fill(i)
  buf.fill(0, L.comm, L.comm + COMM_LEN)
  putBytes(buf, L.saddr, r.saddr)
  putBytes(buf, L.daddr, r.daddr)
  putLE(buf, L.ts_ns, 8, r.tsNs)
  putLE(buf, L.duration_ns, 8, r.durationNs)
  putLE(buf, L.bytes_sent, 8, r.bytesSent)
  putLE(buf, L.bytes_received, 8, r.bytesReceived)
  putLE(buf, L.cgroup_id, 8, r.cgroupId)
  putLE(buf, L.pid, 4, r.pid)
  putLE(buf, L.netns, 4, r.netns)
  putLE(buf, L.sport, 2, r.sport)
  putLE(buf, L.dport, 2, r.dport)
  putLE(buf, L.type, 1, r.type)
  putLE(buf, L.ip, 1, r.ip)
  putLE(buf, L.reason, 1, r.reason)
  putLE(buf, L.direction, 1, r.direction)
  putBytes(buf, L.comm, r.comm)
  return buf
}

/** 16 bytes from 8 groups, network byte order. */
function v6(...groups: number[]): number[] {
  assert.equal(groups.length, 8)
  return groups.flatMap((g) => [g >> 8, g & 0xff])
}

/** Every code point that this Node's ICU counts as \p{Cf} (format characters), to cover them all. */
const CF: number[] = []
for (let c = 0; c <= 0x10ffff; c++) {
  if ((c < 0xd800 || c > 0xdfff) && /\p{Cf}/u.test(String.fromCodePoint(c))) CF.push(c)
}

/** The format characters named in printable()'s contract: \p{Cf} to this Node, and so escaped. */
const NAMED_CF = [
  0xad, 0x61c, 0x200b, 0x200c, 0x200d, 0x200e, 0x200f, 0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2060, 0x2061,
  0x2062, 0x2063, 0x2064, 0x2066, 0x2067, 0x2068, 0x2069, 0x206a, 0x206b, 0x206c, 0x206d, 0x206e, 0x206f,
  0xfeff, 0xfff9, 0xfffa, 0xfffb, 0x110bd, 0x1d173, 0xe0001, 0xe0020, 0xe0041, 0xe007f,
]

/** Other code points a comm's text form must get right: separators, spaces, emoji, edges. */
const SPECIAL = [
  0x2028, 0x2029, 0xa0, 0x3000, 0x1680, 0x85, 0x80, 0x9f, 0xff, 0x100, 0x7ff, 0x800, 0xfffd, 0xfffe, 0xffff,
  0xe000, 0x10000, 0x10ffff, 0x1f600, 0x1f4a9, 0x1f1fa, 0x1f1f8, 0x1f469, 0x1f3fb, 0x2764, 0xfe0f, 0x301,
  0x5d0, 0x627, 0x65e5, 0xac00, 0x378,
]

/** Byte sequences that are not UTF-8, each an instance of one way to be wrong. */
const INVALID: number[][] = [
  // lone continuation bytes
  [0x80],
  [0xbf],
  [0x8f, 0x8f],
  // a lead byte with too few continuations (the next piece, or the NUL or the end, cuts it)
  [0xc2],
  [0xdf],
  [0xe0, 0xa0],
  [0xe1],
  [0xef, 0xbf],
  [0xf0, 0x90],
  [0xf0, 0x90, 0x80],
  [0xf1],
  [0xf4, 0x8f, 0xbf],
  // overlong forms
  [0xc0, 0x80],
  [0xc1, 0xbf],
  [0xe0, 0x80, 0x80],
  [0xe0, 0x9f, 0xbf],
  [0xf0, 0x80, 0x80, 0x80],
  [0xf0, 0x8f, 0xbf, 0xbf],
  // surrogates, alone and as a CESU-8 pair
  [0xed, 0xa0, 0x80],
  [0xed, 0xbf, 0xbf],
  [0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80],
  // above U+10FFFF, and bytes that never occur
  [0xf4, 0x90, 0x80, 0x80],
  [0xf7, 0xbf, 0xbf, 0xbf],
  [0xf5],
  [0xf8, 0x88, 0x80, 0x80, 0x80],
  [0xfc],
  [0xfe],
  [0xff],
]

type Rand = () => number

/** Random fields of records, drawn from `rand`. */
function generator(rand: Rand) {
  const int = (n: number): number => Math.floor(rand() * n)
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)] as T
  const chance = (p: number): boolean => rand() < p
  /** a random integer below 2^bits, 0 <= bits <= 64 */
  const bits = (n: number): bigint => {
    let v = 0n
    for (let done = 0; done < n; done += 16) {
      const w = Math.min(16, n - done)
      v = (v << BigInt(w)) | BigInt(int(2 ** w))
    }
    return v
  }

  const U64_EDGES = [
    0n,
    1n,
    999n,
    1000n,
    2n ** 32n - 1n,
    2n ** 32n,
    2n ** 53n - 1n,
    2n ** 53n,
    2n ** 53n + 1n,
    2n ** 63n - 1n,
    2n ** 63n,
    9_999_999_999_999_999_999n,
    10n ** 19n,
    2n ** 64n - 2n,
    2n ** 64n - 1n,
  ]
  const u64 = (): bigint => {
    const r = rand()
    if (r < 0.2) return pick(U64_EDGES)
    if (r < 0.5) return bits(64)
    if (r < 0.8) return bits(int(65))
    return BigInt(int(100_000))
  }
  const U32_EDGES = [0, 1, 2, 9, 10, 99_999, 100_000, 999_999, 4_194_304, 4_026_531_840, 2 ** 31, 2 ** 32 - 1]
  const u32 = (): number => {
    const r = rand()
    if (r < 0.25) return pick(U32_EDGES)
    if (r < 0.6) return int(2 ** 32)
    if (r < 0.8) return int(2 ** int(33))
    return int(100_000)
  }
  const PORTS = [0, 1, 22, 80, 443, 1023, 1024, 8080, 9999, 10000, 32768, 65534, 65535]
  const port = (): number => (chance(0.25) ? pick(PORTS) : int(65536))

  const FIXED_V6 = [v6(0, 0, 0, 0, 0, 0, 0, 0), v6(0, 0, 0, 0, 0, 0, 0, 1), v6(1, 0, 0, 0, 0, 0, 0, 0)]
  const group = (): number => pick([1 + int(0xf), 0x10 + int(0xf0), 0x100 + int(0xf00), 0x1000 + int(0xf000)])
  /** 16 bytes of IPv6: every pattern of zero groups (runs of every length and position) */
  const ipv6 = (): number[] => {
    const r = rand()
    if (r < 0.05) return v6(0, 0, 0, 0, 0, 0, 0xffff, group()).map((b, i) => (i >= 12 ? int(256) : b))
    if (r < 0.1) return pick(FIXED_V6)
    if (r < 0.15) return Array.from({ length: 16 }, () => int(256))
    const zeros = int(256) // bit i: group i is 0
    return v6(...Array.from({ length: 8 }, (_, i) => ((zeros >> i) & 1 ? 0 : group())))
  }
  /** 16 bytes of IPv4: the address in the first 4, the rest 0 as the kernel leaves it, or garbage */
  const ipv4 = (): number[] => {
    const a = chance(0.1)
      ? pick([
          [0, 0, 0, 0],
          [255, 255, 255, 255],
          [127, 0, 0, 1],
          [10, 0, 0, 1],
        ])
      : Array.from({ length: 4 }, () => pick([0, 1, 9, 10, 99, 100, 199, 200, 255, int(256)]))
    return [...a, ...Array.from({ length: 12 }, () => (chance(0.5) ? 0 : int(256)))]
  }

  /** UTF-8 of one code point */
  const utf8 = (c: number): number[] => [...Buffer.from(String.fromCodePoint(c), 'utf8')]
  const codePoint = (): number => {
    const r = rand()
    if (r < 0.25) return 0x80 + int(0x780) // 2 bytes, C1 controls included
    if (r < 0.35) return 0x80 + int(0x20) // C1 controls
    if (r < 0.7) {
      const c = 0x800 + int(0xf800 - 0x800) // 3 bytes, no surrogates
      return c >= 0xd800 ? c + 0x800 : c
    }
    return 0x10000 + int(0x100000) // 4 bytes
  }
  /** some bytes of a comm, none of them 0 */
  const piece = (): number[] => {
    const r = rand()
    if (r < 0.3) return [0x20 + int(0x5f)] // printable ASCII
    if (r < 0.4) return [pick([0x7f, 1 + int(0x1f)])] // control bytes
    if (r < 0.45) return [pick([0x5c, 0x22])] // backslash, double quote
    if (r < 0.6) return utf8(codePoint())
    if (r < 0.7) return utf8(pick(CF))
    if (r < 0.75) return utf8(pick(NAMED_CF))
    if (r < 0.82) return utf8(pick(SPECIAL))
    if (r < 0.95) return pick(INVALID)
    return [1 + int(255)] // any byte but NUL
  }
  /** COMM_LEN bytes: NUL-terminated (the rest garbage) or full without a NUL; a cut may split a character */
  const comm = (): number[] => {
    const bytes = Array.from({ length: COMM_LEN }, () => int(256))
    const r = rand()
    const len = r < 0.55 ? int(COMM_LEN) : r < 0.85 ? COMM_LEN : COMM_LEN - 1 - int(4)
    const text: number[] = []
    if (chance(0.08)) {
      while (text.length < len) text.push(1 + int(255))
    } else {
      while (text.length < len) text.push(...piece())
    }
    for (let i = 0; i < len; i++) bytes[i] = text[i] as number
    if (len < COMM_LEN) bytes[len] = 0
    return bytes
  }

  const TYPES = [
    C.TCP_EVENT_TYPE_CONNECT,
    C.TCP_EVENT_TYPE_ACCEPT,
    C.TCP_EVENT_TYPE_CLOSE,
    C.TCP_EVENT_TYPE_CONNECT_FAILED,
  ]
  const REASONS = [
    C.FAIL_REASON_REFUSED,
    C.FAIL_REASON_TIMEOUT,
    C.FAIL_REASON_UNREACHABLE,
    C.FAIL_REASON_OTHER,
  ]
  const DIRECTIONS = [C.DIRECTION_OUTBOUND, C.DIRECTION_INBOUND]

  /** one valid record at time `tsNs`; fields the type does not use are random, and must not show */
  const event = (tsNs: bigint): RawEvent => {
    const type = pick(TYPES)
    const ip = chance(0.5) ? 4 : 6
    return {
      type,
      ip,
      saddr: ip === 4 ? ipv4() : ipv6(),
      daddr: ip === 4 ? ipv4() : ipv6(),
      sport: port(),
      dport: port(),
      tsNs,
      durationNs: u64(),
      bytesSent: u64(),
      bytesReceived: u64(),
      cgroupId: u64(),
      pid: u32(),
      netns: u32(),
      reason: type === C.TCP_EVENT_TYPE_CONNECT_FAILED ? pick(REASONS) : int(256),
      direction: pick(DIRECTIONS),
      comm: comm(),
    }
  }

  const clamp = (v: bigint): bigint => (v < 0n ? 0n : v > 2n ** 64n - 1n ? 2n ** 64n - 1n : v)
  /** a step between two timestamps: nanoseconds to days, many digits, and halves of a millisecond */
  const step = (): bigint => {
    const r = rand()
    if (r < 0.15) return BigInt(int(1000))
    if (r < 0.35) return BigInt(int(1_000_000))
    if (r < 0.6) return BigInt(int(1_000_000_000))
    if (r < 0.75) return bits(30 + int(20))
    return halfMs()
  }
  /** around the rounding of toFixed(3): k ms + 0.5 ms, or a few ns off it; k up to many digits */
  const halfMs = (): bigint => {
    const ms = chance(0.5) ? BigInt(int(1000)) : bits(int(45))
    return ms * 1_000_000n + 500_000n + (chance(0.5) ? 0n : BigInt(int(7) - 3))
  }
  /** the timestamps of one batch: random u64s, or a realistic clock, in order or slightly out of it */
  const timestamps = (n: number): bigint[] => {
    const r = rand()
    if (r < 0.2) return Array.from({ length: n }, () => u64())
    if (r < 0.35) {
      // the first is the zero, the others exactly a rounding edge after it
      const t0 = chance(0.5) ? bits(int(60)) : 1_000_000_000_000n + bits(45)
      return Array.from({ length: n }, (_, i) => (i === 0 ? t0 : t0 + halfMs()))
    }
    const outOfOrder = r < 0.65 ? 0 : 0.25
    let t = pick([
      0n,
      bits(40),
      1_000_000_000_000n + bits(50), // a host up for hours to years
      2n ** 63n - bits(40),
      2n ** 64n - 1n - bits(45),
    ])
    const out: bigint[] = []
    for (let i = 0; i < n; i++) {
      out.push(t)
      t = clamp(chance(outOfOrder) ? t - step() : t + step())
    }
    return out
  }

  /** the records of one batch, back to back */
  const batch = (n: number): Buffer => {
    const garbage = chance(0.5) ? () => int(256) : () => 0
    return Buffer.concat(timestamps(n).map((ts) => record(event(ts), garbage)))
  }

  return { int, pick, chance, batch }
}

/**
 * Native and TypeScript output of `records` are the same bytes; on a difference, the first differing
 * line, its record in hex, and the record that set the TIME zero.
 */
function assertSame(records: Buffer, o: TraceFormat, where: string): number {
  const { lines, skipped } = reference(records, o)
  const want = Buffer.from(lines.map((l) => `${l}\n`).join(''), 'utf8')
  const got = B.formatEvents(records, o)
  assert.ok(Buffer.isBuffer(got), `${where}: formatEvents returned ${typeof got}, not a Buffer`)
  if (got.equals(want)) return lines.length
  const gotLines = splitLines(got)
  const kept = [...Array(records.length / L.size).keys()].filter((i) => !skipped.includes(i))
  const same = (k: number): boolean => gotLines[k]?.equals(Buffer.from(lines[k] ?? '', 'utf8')) ?? false
  let k = 0
  while (k < lines.length && same(k)) k++
  const i = kept[k]
  const rec = (j: number | undefined): string =>
    j === undefined ? '(none)' : hex(records.subarray(j * L.size, (j + 1) * L.size))
  let zero: number | undefined
  if (!o.json && o.timestamp) {
    for (const j of kept.slice(0, k + 1)) {
      const ts = records.readBigUInt64LE(j * L.size + L.ts_ns)
      if (zero === undefined || ts < records.readBigUInt64LE(zero * L.size + L.ts_ns)) zero = j
    }
  }
  const g = gotLines[k]
  assert.fail(
    [
      `${where}: line ${k} of ${lines.length} differs (native gave ${gotLines.length} lines, ${got.length} bytes; want ${want.length})`,
      `record ${i ?? '(none)'}: ${rec(i)}`,
      ...(zero !== undefined && zero !== i ? [`TIME zero set by record ${zero}: ${rec(zero)}`] : []),
      `want: ${JSON.stringify(lines[k])}`,
      `got:  ${g === undefined ? '(no line)' : JSON.stringify(g.toString('utf8'))}`,
      `got bytes:  ${g === undefined ? '' : hex(g)}`,
      `want bytes: ${lines[k] === undefined ? '' : hex(Buffer.from(lines[k] as string, 'utf8'))}`,
    ].join('\n'),
  )
}

const SEED = 0x7ace0f3a
const RECORDS_PER_COMBINATION = 5000

describe('formatEvents: the same bytes as the TypeScript formatter', () => {
  test('property: random records, every combination of json, timestamp, verbose and netnsFiltered', async (t) => {
    for (const [m, o] of COMBOS.entries()) {
      const seed = SEED + m
      await t.test(`${describeOptions(o)} (seed ${seed})`, () => {
        const g = generator(prng(seed))
        let records = 0
        for (let b = 0; records < RECORDS_PER_COMBINATION; b++) {
          const n = g.chance(0.05) ? 500 + g.int(2000) : 1 + g.int(g.pick([4, 64, 256]))
          let recs = g.batch(n)
          if (g.chance(0.2)) {
            // a view at an unaligned offset into a larger buffer, as a slice of a batch is
            const shift = 1 + g.int(15)
            recs = Buffer.concat([Buffer.alloc(shift, 0xa5), recs, Buffer.alloc(7, 0x5a)]).subarray(
              shift,
              shift + recs.length,
            )
          }
          const lines = assertSame(recs, o, `seed ${seed}, options ${JSON.stringify(o)}, batch ${b}`)
          assert.equal(lines, n, `seed ${seed}, batch ${b}: every generated record is valid`)
          records += n
        }
      })
    }
  })

  test('the format characters printable() is to escape are all \\p{Cf} to this Node', () => {
    assert.ok(CF.length >= 170, `${CF.length} format characters`)
    for (const c of NAMED_CF) assert.ok(CF.includes(c), `U+${c.toString(16)}`)
  })

  test('every format character, separator and invalid sequence, alone and cut, in every combination', () => {
    const g = generator(prng(SEED - 1))
    const comms: number[][] = []
    for (const c of [...CF, ...SPECIAL]) {
      const u = [...Buffer.from(String.fromCodePoint(c), 'utf8')]
      comms.push(u, [0x61, ...u, 0x62])
      for (let cut = 1; cut < u.length; cut++) {
        // cut by the NUL, and by the end of the array
        comms.push([...u.slice(0, cut), 0, ...u.slice(cut)])
        comms.push([...Array<number>(COMM_LEN - cut).fill(0x78), ...u.slice(0, cut)])
      }
      comms.push([...Array<number>(COMM_LEN - u.length).fill(0x5c), ...u])
    }
    for (const s of INVALID) {
      comms.push(
        s,
        [0x61, ...s, 0x62],
        [...s, 0x80, 0xe2, 0x82, 0xac],
        [...Array<number>(COMM_LEN - 1).fill(0x22), ...s],
      )
    }
    for (let b = 1; b < 0x100; b++) comms.push([b], [b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b])
    const recs = Buffer.concat(
      comms.map((comm, i) =>
        record({
          type: C.TCP_EVENT_TYPE_CONNECT,
          ip: 4,
          saddr: [10, 0, 0, 1],
          daddr: [10, 0, 0, 2],
          sport: 40000,
          dport: 443,
          tsNs: 1_000_000_000_000n + BigInt(i) * 1_000_500n,
          durationNs: 0n,
          bytesSent: 0n,
          bytesReceived: 0n,
          cgroupId: 1n,
          pid: i,
          netns: 4026531840,
          reason: 0,
          direction: C.DIRECTION_OUTBOUND,
          // what the array cannot hold is dropped; what it does not fill is garbage after a NUL
          comm:
            comm.length >= COMM_LEN
              ? comm.slice(0, COMM_LEN)
              : [...comm, 0, ...Array<number>(COMM_LEN).fill(g.int(256))],
        }),
      ),
    )
    for (const o of COMBOS) {
      assert.equal(assertSame(recs, o, `comms, options ${JSON.stringify(o)}`), comms.length)
    }
  })

  test('every IPv6 pattern of zero groups, in text and JSON', () => {
    const recs: Buffer[] = []
    for (let zeros = 0; zeros < 256; zeros++) {
      for (const nonzero of [1, 0xab, 0xffff]) {
        const a = v6(...Array.from({ length: 8 }, (_, i) => ((zeros >> i) & 1 ? 0 : nonzero)))
        recs.push(
          record({
            type: C.TCP_EVENT_TYPE_ACCEPT,
            ip: 6,
            saddr: a,
            daddr: [...a].reverse(),
            sport: 443,
            dport: 55555,
            tsNs: BigInt(zeros),
            durationNs: 0n,
            bytesSent: 0n,
            bytesReceived: 0n,
            cgroupId: 0n,
            pid: 1,
            netns: 1,
            reason: 0,
            direction: C.DIRECTION_INBOUND,
            comm: [0x73, 0x73, 0x68, 0x64],
          }),
        )
      }
    }
    const all = Buffer.concat(recs)
    for (const o of COMBOS) {
      assert.equal(assertSame(all, o, `IPv6 zero runs, ${JSON.stringify(o)}`), recs.length)
    }
  })
})

describe('formatEvents: fixed records, the format written out', () => {
  const base: RawEvent = {
    type: C.TCP_EVENT_TYPE_CONNECT,
    ip: 4,
    saddr: [10, 0, 0, 1],
    daddr: [93, 184, 216, 34],
    sport: 51234,
    dport: 443,
    tsNs: 1_000_000_000_000n,
    durationNs: 0n,
    bytesSent: 0n,
    bytesReceived: 0n,
    cgroupId: 4242n,
    pid: 1234,
    netns: 4026531840,
    reason: C.FAIL_REASON_NONE,
    direction: C.DIRECTION_OUTBOUND,
    comm: [...Buffer.from('curl')],
  }
  const comm = (s: string): number[] => [...Buffer.from(s)]
  const FIXED: RawEvent[] = [
    base,
    {
      ...base,
      type: C.TCP_EVENT_TYPE_ACCEPT,
      direction: C.DIRECTION_INBOUND,
      saddr: [10, 0, 0, 2],
      daddr: [192, 168, 1, 20],
      sport: 80,
      dport: 40000,
      pid: 812,
      comm: comm('nginx'),
      tsNs: 1_001_500_000_000n,
    },
    {
      ...base,
      type: C.TCP_EVENT_TYPE_CLOSE,
      tsNs: 1_002_250_000_001n,
      durationNs: 1_500_000_000n,
      bytesSent: 1024n,
      bytesReceived: 65536n,
    },
    {
      ...base,
      type: C.TCP_EVENT_TYPE_CONNECT_FAILED,
      reason: C.FAIL_REASON_REFUSED,
      daddr: [127, 0, 0, 1],
      dport: 9,
      comm: comm('a"b\\c\nd'),
      tsNs: 1_003_000_499_999n,
    },
    {
      ...base,
      ip: 6,
      saddr: v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
      daddr: v6(0x2606, 0x2800, 0x220, 1, 0x248, 0x1893, 0x25c8, 0x1946),
      pid: 4294967295,
      comm: comm('0123456789abcdef'),
      tsNs: 999_999_999_999n,
    },
    {
      ...base,
      type: C.TCP_EVENT_TYPE_ACCEPT,
      direction: C.DIRECTION_INBOUND,
      ip: 6,
      saddr: v6(0, 0, 0, 0, 0, 0, 0, 1),
      daddr: v6(0, 0, 0, 0, 0, 0, 0, 1),
      sport: 22,
      dport: 65535,
      pid: 0,
      netns: 0,
      comm: [0x73, 0x73, 0x68, 0xe2, 0x80, 0xae, 0xff],
      tsNs: 1_061_000_500_000n,
    },
    {
      ...base,
      type: C.TCP_EVENT_TYPE_CLOSE,
      ip: 6,
      saddr: v6(0xfe80, 0, 0, 0, 1, 0, 0, 1),
      daddr: v6(1, 0, 0, 1, 0, 0, 1, 1),
      cgroupId: 2n ** 64n - 1n,
      durationNs: 2n ** 53n + 1n,
      bytesSent: 2n ** 64n - 1n,
      bytesReceived: 0n,
      comm: comm('né€😀'),
      tsNs: 1_000_000_000_001n + 3_600_000_000_000n,
    },
    {
      ...base,
      type: C.TCP_EVENT_TYPE_CONNECT_FAILED,
      reason: C.FAIL_REASON_TIMEOUT,
      ip: 6,
      saddr: v6(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x201),
      daddr: v6(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0),
      tsNs: 1_000_000_000_000n,
    },
  ]
  const records = Buffer.concat(FIXED.map((r) => record(r)))
  const check = (o: TraceFormat, want: string[]): void => {
    const text = want.map((l) => `${l}\n`).join('')
    assert.deepEqual(reference(records, o).lines, want, 'the TypeScript formatter')
    assert.equal(B.formatEvents(records, o).toString('utf8'), text, 'the native formatter')
    assert.ok(B.formatEvents(records, o).equals(Buffer.from(text, 'utf8')))
  }

  test('text', () => {
    check({ json: false, timestamp: false, verbose: false, netnsFiltered: false }, [
      'C  1234   curl             4  10.0.0.1         93.184.216.34    51234  443',
      'A  812    nginx            4  10.0.0.2         192.168.1.20     80     40000',
      'X  1234   curl             4  10.0.0.1         93.184.216.34    51234  443',
      'F  1234   a"b\\\\c\\x0ad      4  10.0.0.1         127.0.0.1        51234  9      refused',
      'C  4294967295 0123456789abcdef 6  [2001:db8::1]    [2606:2800:220:1:248:1893:25c8:1946] 51234  443',
      'A  0      ssh\\u202e\ufffd       6  [::1]            [::1]            22     65535',
      'X  1234   né€😀            6  [fe80::1:0:0:1]  [1::1:0:0:1:1]   51234  443',
      'F  1234   curl             6  [::ffff:c000:201] [2001:db8:0:1::] 51234  443    timeout',
    ])
  })

  test('text, -t: seconds since the earliest record so far', () => {
    check({ json: false, timestamp: true, verbose: false, netnsFiltered: false }, [
      '0.000    C  1234   curl             4  10.0.0.1         93.184.216.34    51234  443',
      '1.500    A  812    nginx            4  10.0.0.2         192.168.1.20     80     40000',
      '2.250    X  1234   curl             4  10.0.0.1         93.184.216.34    51234  443',
      '3.000    F  1234   a"b\\\\c\\x0ad      4  10.0.0.1         127.0.0.1        51234  9      refused',
      '0.000    C  4294967295 0123456789abcdef 6  [2001:db8::1]    [2606:2800:220:1:248:1893:25c8:1946] 51234  443',
      '61.001   A  0      ssh\\u202e\ufffd       6  [::1]            [::1]            22     65535',
      '3600.000 X  1234   né€😀            6  [fe80::1:0:0:1]  [1::1:0:0:1:1]   51234  443',
      '0.000    F  1234   curl             6  [::ffff:c000:201] [2001:db8:0:1::] 51234  443    timeout',
    ])
  })

  test('text, -t -v: nanoseconds, event names and the NETNS column', () => {
    check({ json: false, timestamp: true, verbose: true, netnsFiltered: false }, [
      '0             connect      1234   curl             4  10.0.0.1         93.184.216.34    51234  443    4026531840',
      '1500000000    accept       812    nginx            4  10.0.0.2         192.168.1.20     80     40000  4026531840',
      '2250000001    close        1234   curl             4  10.0.0.1         93.184.216.34    51234  443    4026531840',
      '3000499999    connfail     1234   a"b\\\\c\\x0ad      4  10.0.0.1         127.0.0.1        51234  9      4026531840 refused',
      '0             connect      4294967295 0123456789abcdef 6  [2001:db8::1]    [2606:2800:220:1:248:1893:25c8:1946] 51234  443    4026531840',
      '61000500001   accept       0      ssh\\u202e\ufffd       6  [::1]            [::1]            22     65535  0',
      '3600000000002 close        1234   né€😀            6  [fe80::1:0:0:1]  [1::1:0:0:1:1]   51234  443    4026531840',
      '1             connfail     1234   curl             6  [::ffff:c000:201] [2001:db8:0:1::] 51234  443    4026531840 timeout',
    ])
  })

  test('text, -v with a netns filter: no NETNS column', () => {
    check({ json: false, timestamp: false, verbose: true, netnsFiltered: true }, [
      'connect      1234   curl             4  10.0.0.1         93.184.216.34    51234  443',
      'accept       812    nginx            4  10.0.0.2         192.168.1.20     80     40000',
      'close        1234   curl             4  10.0.0.1         93.184.216.34    51234  443',
      'connfail     1234   a"b\\\\c\\x0ad      4  10.0.0.1         127.0.0.1        51234  9      refused',
      'connect      4294967295 0123456789abcdef 6  [2001:db8::1]    [2606:2800:220:1:248:1893:25c8:1946] 51234  443',
      'accept       0      ssh\\u202e\ufffd       6  [::1]            [::1]            22     65535',
      'close        1234   né€😀            6  [fe80::1:0:0:1]  [1::1:0:0:1:1]   51234  443',
      'connfail     1234   curl             6  [::ffff:c000:201] [2001:db8:0:1::] 51234  443    timeout',
    ])
  })

  test('JSON', () => {
    const common = '"netns":4026531840,"cgroup_id":4242,"direction":"outbound"'
    check({ json: true, timestamp: false, verbose: false, netnsFiltered: false }, [
      `{"type":"connect","ts_ns":1000000000000,"pid":1234,"comm":"curl","ip":4,"saddr":"10.0.0.1","daddr":"93.184.216.34","sport":51234,"dport":443,${common}}`,
      '{"type":"accept","ts_ns":1001500000000,"pid":812,"comm":"nginx","ip":4,"saddr":"10.0.0.2","daddr":"192.168.1.20","sport":80,"dport":40000,"netns":4026531840,"cgroup_id":4242,"direction":"inbound"}',
      `{"type":"close","ts_ns":1002250000001,"pid":1234,"comm":"curl","ip":4,"saddr":"10.0.0.1","daddr":"93.184.216.34","sport":51234,"dport":443,${common},"duration_ns":1500000000,"bytes_sent":1024,"bytes_received":65536}`,
      `{"type":"connect_failed","ts_ns":1003000499999,"pid":1234,"comm":"a\\"b\\\\c\\nd","ip":4,"saddr":"10.0.0.1","daddr":"127.0.0.1","sport":51234,"dport":9,${common},"reason":"refused"}`,
      `{"type":"connect","ts_ns":999999999999,"pid":4294967295,"comm":"0123456789abcdef","ip":6,"saddr":"2001:db8::1","daddr":"2606:2800:220:1:248:1893:25c8:1946","sport":51234,"dport":443,${common}}`,
      '{"type":"accept","ts_ns":1061000500000,"pid":0,"comm":"ssh\u202e\ufffd","ip":6,"saddr":"::1","daddr":"::1","sport":22,"dport":65535,"netns":0,"cgroup_id":4242,"direction":"inbound"}',
      '{"type":"close","ts_ns":4600000000001,"pid":1234,"comm":"né€😀","ip":6,"saddr":"fe80::1:0:0:1","daddr":"1::1:0:0:1:1","sport":51234,"dport":443,"netns":4026531840,"cgroup_id":18446744073709551615,"direction":"outbound","duration_ns":9007199254740993,"bytes_sent":18446744073709551615,"bytes_received":0}',
      `{"type":"connect_failed","ts_ns":1000000000000,"pid":1234,"comm":"curl","ip":6,"saddr":"::ffff:c000:201","daddr":"2001:db8:0:1::","sport":51234,"dport":443,${common},"reason":"timeout"}`,
    ])
  })
})

describe('formatEvents: records the decoder rejects', () => {
  const good = (pid: number, tsNs: bigint): RawEvent => ({
    type: C.TCP_EVENT_TYPE_CONNECT,
    ip: 4,
    saddr: [10, 0, 0, 1],
    daddr: [10, 0, 0, 2],
    sport: 40000 + pid,
    dport: 443,
    tsNs,
    durationNs: 0n,
    bytesSent: 0n,
    bytesReceived: 0n,
    cgroupId: 7n,
    pid,
    netns: 4026531840,
    reason: 0,
    direction: C.DIRECTION_OUTBOUND,
    comm: [...Buffer.from(`p${pid}`)],
  })
  const BAD: Array<[string, Partial<RawEvent>]> = [
    ['type 0', { type: 0 }],
    ['type 9 (unknown)', { type: 9 }],
    ['type 255', { type: 255 }],
    ['TCP_EVENT_TYPE_SEEDED_CLOSE', { type: C.TCP_EVENT_TYPE_SEEDED_CLOSE }],
    ['TCP_EVENT_TYPE_CLOSE_UNSEEN', { type: C.TCP_EVENT_TYPE_CLOSE_UNSEEN }],
    ['ip 5', { ip: 5 }],
    ['ip 0', { ip: 0 }],
    ['ip 255', { ip: 255 }],
    ['direction 0', { direction: 0 }],
    ['direction 3 (unknown)', { direction: 3 }],
    ['connect_failed, reason NONE', { type: C.TCP_EVENT_TYPE_CONNECT_FAILED, reason: C.FAIL_REASON_NONE }],
    ['connect_failed, reason 5', { type: C.TCP_EVENT_TYPE_CONNECT_FAILED, reason: 5 }],
  ]

  test('each is left out, and the lines of the records around it are kept', async (t) => {
    for (const [name, over] of BAD) {
      await t.test(name, () => {
        // the rejected record is later than the first good one: it cannot be the TIME zero either way
        const recs = Buffer.concat([
          record(good(1, 5_000_000_000n)),
          record({ ...good(2, 6_000_000_000n), ...over }),
          record(good(3, 7_250_000_000n)),
        ])
        for (const o of COMBOS) {
          const { lines, skipped } = reference(recs, o)
          assert.deepEqual(skipped, [1], `${name}: the TypeScript decoder rejects it`)
          assert.equal(lines.length, 2)
          assert.equal(assertSame(recs, o, `${name}, ${JSON.stringify(o)}`), 2)
        }
      })
    }
  })

  test('all of them between good records: exactly their lines are missing', () => {
    const raws: RawEvent[] = []
    let pid = 1
    raws.push(good(pid++, 10_000_000_000n))
    for (const [, over] of BAD) {
      raws.push({ ...good(pid++, 10_000_000_000n + BigInt(pid) * 1_000_000n), ...over })
      raws.push(good(pid++, 10_000_000_000n + BigInt(pid) * 1_000_000n))
    }
    const recs = Buffer.concat(raws.map((r) => record(r)))
    for (const o of COMBOS) {
      const lines = splitLines(B.formatEvents(recs, o)).map((l) => l.toString('utf8'))
      assert.equal(lines.length, BAD.length + 1, JSON.stringify(o))
      // the good records have odd pids; every line is one of them, in order
      const pids = lines.map((l) => (o.json ? /"pid":(\d+)/ : / (\d+) +p\d+ /).exec(l)?.[1])
      assert.deepEqual(
        pids,
        raws.filter((_, i) => i % 2 === 0).map((r) => String(r.pid)),
        JSON.stringify(o),
      )
      assertSame(recs, o, `all rejected kinds, ${JSON.stringify(o)}`)
    }
  })

  test('a skipped record does not set the TIME zero', () => {
    // the rejected record is the earliest: the TypeScript path never sees it, so the zero is the good one's
    const recs = Buffer.concat([
      record({ ...good(1, 1_000_000_000n), type: 9 }),
      record(good(2, 3_000_000_000n)),
      record(good(3, 4_500_000_000n)),
    ])
    const o = { json: false, timestamp: true, verbose: false, netnsFiltered: false }
    assert.deepEqual(
      B.formatEvents(recs, o)
        .toString('utf8')
        .split('\n')
        .map((l) => l.slice(0, 9)),
      ['0.000    ', '1.500    ', ''],
    )
    assertSame(recs, o, 'a rejected earliest record')
  })

  test('a batch of nothing but rejected records gives no output', () => {
    const recs = Buffer.concat(BAD.map(([, over], i) => record({ ...good(i, BigInt(i)), ...over })))
    for (const o of COMBOS) assert.equal(B.formatEvents(recs, o).length, 0, JSON.stringify(o))
  })
})

describe('formatEvents: the records argument', () => {
  test('an empty Buffer gives an empty Buffer', () => {
    for (const o of COMBOS) {
      const out = B.formatEvents(Buffer.alloc(0), o)
      assert.ok(Buffer.isBuffer(out), JSON.stringify(o))
      assert.equal(out.length, 0, JSON.stringify(o))
    }
  })

  test('a length that is not a multiple of the record size is a RangeError naming the size', () => {
    const two = Buffer.alloc(2 * L.size)
    for (const len of [1, L.size - 1, L.size + 1, 2 * L.size - 1, 2 * L.size - 8]) {
      for (const o of [COMBOS[0], COMBOS[1]] as TraceFormat[]) {
        assert.throws(
          () => B.formatEvents(two.subarray(0, len), o),
          (e: unknown) => e instanceof RangeError && e.message.includes(String(L.size)),
          `${len} bytes, ${JSON.stringify(o)}`,
        )
      }
    }
  })
})
