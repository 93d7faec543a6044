// Property-based tests of the command-line parsers (fast-check): for any argv, `run` and `trace` flag
// parsing returns arguments that satisfy their ranges or throws a UsageError whose message names the
// flag (or the argument) at fault; never another exception.
//
// FC_SEED=n and FC_NUM_RUNS=n reproduce or lengthen a run.
import { test } from 'node:test'
import assert from 'node:assert/strict'

import fc from 'fast-check'

import { parseIntArg, UsageError } from '../../src/cli/args.js'
import { ACCEPT_MODES } from '../../src/kernel/abi.js'
import { parseListenAddress, parseRunArgs } from '../../src/cli/run.js'
import { parseTraceArgs } from '../../src/cli/trace.js'

const RUNS = Number(process.env['FC_NUM_RUNS'] ?? 1000)
fc.configureGlobal({
  numRuns: RUNS,
  ...(process.env['FC_SEED'] === undefined ? {} : { seed: Number(process.env['FC_SEED']) }),
})

/** The long and short flags of a command, as its help text spells them. */
const RUN_FLAGS = [
  '--web.listen-address',
  '--web.telemetry-path',
  '--config.file',
  '--log.level',
  '--log.format',
]
const RUN_BOOLEANS = ['--help', '-h']
const TRACE_VALUE_FLAGS = ['--pid', '-p', '--netns', '-N', '--accept-mode', '--btf', '--ringbuf-bytes']
const TRACE_BOOLEANS = [
  '--timestamp',
  '-t',
  '--verbose',
  '-v',
  '--ipv4',
  '-4',
  '--ipv6',
  '-6',
  '--json',
  '--help',
  '-h',
]
const TRACE_LONG: Record<string, string> = { '-p': '--pid', '-N': '--netns' }

/** Values that are right for some flag, wrong for others, or wrong for all. */
const value = fc.oneof(
  fc.constantFrom(
    '',
    ' ',
    '0',
    '1',
    '-1',
    '+1',
    '1.5',
    '1e3',
    '0x10',
    '4096',
    '4194304',
    '4194305',
    '4294967295',
    '4294967296',
    '99999999999999999999',
    '1073741824',
    '2147483648',
    '65535',
    '65536',
    ':19427',
    '127.0.0.1:0',
    '[::1]:9',
    '[::1]',
    'localhost:99999',
    ':',
    '/metrics',
    '/',
    '/healthz',
    'metrics',
    '/a b',
    'info',
    'INFO',
    'debug',
    'json',
    'pretty',
    'auto',
    'listener',
    'syscall',
    'fexit',
    '__proto__',
    'constructor',
    '--',
    '-',
    '=',
    '١٢',
    '\n',
    '\u0000',
    '\ud800',
  ),
  fc.string({ maxLength: 12 }),
  fc.string({ maxLength: 12, unit: 'binary' }),
  fc.nat().map(String),
)

/** One argv element: a flag with its value attached, apart, or missing; or something else entirely. */
function argvOf(valueFlags: string[], booleans: string[]): fc.Arbitrary<string[]> {
  const shorts = valueFlags.filter((f) => /^-[^-]$/.test(f))
  const element = fc.oneof(
    fc.tuple(fc.constantFrom(...valueFlags), value).map(([f, v]) => [f, v]),
    fc
      .tuple(fc.constantFrom(...valueFlags.filter((f) => f.startsWith('--'))), value)
      .map(([f, v]) => [`${f}=${v}`]),
    fc
      .tuple(fc.constantFrom(...(shorts.length > 0 ? shorts : valueFlags)), value)
      .map(([f, v]) => [`${f}${v}`]),
    fc.constantFrom(...valueFlags).map((f) => [f]),
    fc.constantFrom(...booleans).map((f) => [f]),
    fc
      .tuple(fc.constantFrom(...booleans.filter((f) => f.startsWith('--'))), value)
      .map(([f, v]) => [`${f}=${v}`]),
    fc
      .constantFrom('--', '-', '---', '--=', '--unknown', '-x', '-tv', '-46', '--no-json', '--__proto__')
      .map((f) => [f]),
    value.map((v) => [v]),
  )
  return fc.array(element, { maxLength: 6 }).map((xs) => xs.flat())
}

/**
 * Whether a usage message names what was wrong: a flag of the command (long or short), or an argv element
 * quoted as it was given.
 */
function namesCulprit(message: string, argv: string[], flags: string[]): boolean {
  if (flags.some((f) => message.includes(f))) return true
  return argv.some((a) => {
    const name = a.startsWith('-') ? a.split('=')[0] : a
    // a group of short flags, -tv, is reported one flag at a time
    const shorts = /^-[^-]/.test(a) ? [...a.slice(1)].map((c) => `-${c}`) : []
    return [a, name, ...shorts].some((x) => message.includes(`'${x}'`) || message.includes(`"${x}"`))
  })
}

function usageOrResult<T>(fn: () => T, argv: string[], flags: string[]): T | undefined {
  try {
    return fn()
  } catch (e) {
    assert.ok(e instanceof UsageError, `argv ${JSON.stringify(argv)} threw ${String(e)}, not a UsageError`)
    assert.equal(e.name, 'UsageError')
    assert.ok(e.message.trim() !== '', `argv ${JSON.stringify(argv)}: an empty usage message`)
    assert.ok(
      namesCulprit(e.message, argv, flags),
      `argv ${JSON.stringify(argv)}: the message names no flag or argument: ${e.message}`,
    )
    return undefined
  }
}

test('property: run flags parse within their ranges, or fail with a UsageError naming the flag', () => {
  const flags = [...RUN_FLAGS, ...RUN_BOOLEANS]
  fc.assert(
    fc.property(argvOf(RUN_FLAGS, RUN_BOOLEANS), (argv) => {
      const r = usageOrResult(() => parseRunArgs(argv), argv, flags)
      if (r === undefined) return
      assert.ok(Number.isInteger(r.port) && r.port >= 0 && r.port <= 65535, JSON.stringify(r))
      assert.ok(r.host !== '')
      assert.ok(r.telemetryPath.startsWith('/') && !['/', '/healthz', '/readyz'].includes(r.telemetryPath))
      assert.ok(['trace', 'debug', 'info', 'warn', 'error', 'fatal'].includes(r.logLevel))
      assert.ok(['json', 'pretty', 'auto'].includes(r.logFormat))
      // the flag given last wins, as in parseArgs; a given listen address is the one parsed
      const given = argv.filter((a) => a.startsWith('--web.listen-address=')).at(-1)
      if (given !== undefined && !argv.includes('--web.listen-address')) {
        assert.equal(r.listenAddress, given.slice('--web.listen-address='.length))
      }
    }),
  )
})

test('property: trace flags parse within their ranges, or fail with a UsageError naming the flag', () => {
  const flags = [...TRACE_VALUE_FLAGS, ...TRACE_BOOLEANS, ...Object.values(TRACE_LONG)]
  fc.assert(
    fc.property(argvOf(TRACE_VALUE_FLAGS, TRACE_BOOLEANS), (argv) => {
      const r = usageOrResult(() => parseTraceArgs(argv), argv, flags)
      if (r === undefined) return
      assert.ok(Number.isInteger(r.pid) && r.pid >= 0 && r.pid <= 4194304, JSON.stringify(r))
      assert.ok(Number.isInteger(r.netns) && r.netns >= 0 && r.netns <= 0xffffffff)
      assert.ok([0, 4, 6].includes(r.ip))
      assert.ok((ACCEPT_MODES as readonly string[]).includes(r.acceptMode))
      assert.ok(r.btfPath === undefined || r.btfPath !== '')
      const rb = r.ringbufBytes
      assert.ok(rb >= 4096 && rb <= 1 << 30 && (rb & (rb - 1)) === 0, `ring buffer ${rb}`)
    }),
  )
})

test('property: parseIntArg returns an integer in range or names the flag', () => {
  fc.assert(
    fc.property(
      fc.oneof(value, fc.integer({ min: -1e12, max: 1e12 }).map(String)),
      fc.integer({ min: 0, max: 2 ** 32 }),
      fc.integer({ min: 0, max: 2 ** 32 }),
      (raw, a, b) => {
        const [min, max] = a <= b ? [a, b] : [b, a]
        try {
          const v = parseIntArg('--some-flag', raw, min, max)
          assert.ok(Number.isSafeInteger(v) && v >= min && v <= max)
          assert.equal(v, Number(raw.trim()))
        } catch (e) {
          assert.ok(e instanceof UsageError, String(e))
          assert.ok(e.message.startsWith('--some-flag '), e.message)
        }
      },
    ),
  )
})

test('property: parseListenAddress gives a host and a port from 0 to 65535, or a UsageError naming the flag', () => {
  const host = fc.oneof(
    fc.constantFrom('', '127.0.0.1', 'localhost', '[::1]', '[::]', '[fe80::1%eth0]', '::1', '0.0.0.0', 'a:b'),
    fc.string({ maxLength: 10 }),
  )
  const port = fc.oneof(fc.integer({ min: -1, max: 100_000 }).map(String), fc.string({ maxLength: 6 }))
  fc.assert(
    fc.property(host, fc.constantFrom(':', '', '::'), port, (h, sep, p) => {
      const addr = `${h}${sep}${p}`
      try {
        const r = parseListenAddress(addr)
        assert.ok(Number.isInteger(r.port) && r.port >= 0 && r.port <= 65535)
        assert.ok(r.host !== '')
      } catch (e) {
        assert.ok(e instanceof UsageError, String(e))
        assert.ok(e.message.includes('--web.listen-address'), e.message)
      }
    }),
  )
})
