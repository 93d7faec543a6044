import { test } from 'node:test'
import assert from 'node:assert/strict'

import { parseIntArg, UsageError } from '../../src/cli/args.js'
import { parseTraceArgs } from '../../src/cli/trace.js'
import type { TraceArgs } from '../../src/cli/trace.js'

const DEFAULTS: TraceArgs = {
  timestamp: false,
  pid: 0,
  netns: 0,
  verbose: false,
  ip: 0,
  json: false,
  acceptMode: 'auto',
  ringbufBytes: 1048576,
  help: false,
}

test('parseTraceArgs: defaults', () => {
  assert.deepEqual(parseTraceArgs([]), DEFAULTS)
})

test('parseTraceArgs: accepted flags', () => {
  const cases: Array<[string[], Partial<TraceArgs>]> = [
    [['-t', '-v', '-4', '--json'], { timestamp: true, verbose: true, ip: 4, json: true }],
    [['--timestamp', '--verbose', '--ipv6'], { timestamp: true, verbose: true, ip: 6 }],
    [['-tv'], { timestamp: true, verbose: true }],
    [['-6'], { ip: 6 }],
    [['-p', '123'], { pid: 123 }],
    [['--pid=123'], { pid: 123 }],
    [['--pid', '123'], { pid: 123 }],
    [['-p123'], { pid: 123 }],
    [['-p', '1'], { pid: 1 }],
    [['-p', '4194304'], { pid: 4194304 }],
    [['-N', '4026531840'], { netns: 4026531840 }],
    [['--netns=4026531840'], { netns: 4026531840 }],
    [['-N', '1'], { netns: 1 }],
    [['-N', '4294967295'], { netns: 4294967295 }],
    [['--accept-mode', 'syscall'], { acceptMode: 'syscall' }],
    [['--accept-mode=listener'], { acceptMode: 'listener' }],
    [['--accept-mode', 'fexit'], { acceptMode: 'fexit' }],
    [['--accept-mode', 'kprobe'], { acceptMode: 'kprobe' }],
    [['--btf', '/tmp/vmlinux.btf'], { btfPath: '/tmp/vmlinux.btf' }],
    [['--ringbuf-bytes', '4096'], { ringbufBytes: 4096 }],
    [['--ringbuf-bytes=1073741824'], { ringbufBytes: 1 << 30 }],
    [['--ringbuf-bytes', '65536'], { ringbufBytes: 65536 }],
    [['-h'], { help: true }],
    [['--help'], { help: true }],
    [
      ['-t', '-p', '181', '-N', '4026531969', '-6', '--json', '--accept-mode', 'syscall'],
      { timestamp: true, pid: 181, netns: 4026531969, ip: 6, json: true, acceptMode: 'syscall' },
    ],
  ]
  for (const [argv, want] of cases) {
    assert.deepEqual(parseTraceArgs(argv), { ...DEFAULTS, ...want }, argv.join(' '))
  }
})

test('parseTraceArgs: usage errors name the flag', () => {
  const cases: Array<[string[], RegExp]> = [
    [['-p', '0'], /--pid/],
    [['--pid=0'], /--pid/],
    [['-p', '-1'], /-p\b/],
    [['--pid=-1'], /--pid/],
    [['-p', 'abc'], /--pid/],
    [['-p', '12abc'], /--pid/],
    [['-p', '1.5'], /--pid/],
    [['-p', ''], /--pid/],
    [['-p', '4194305'], /--pid/],
    [['-p'], /-p\b/],
    [['-N', '0'], /--netns/],
    [['-N', '4294967296'], /--netns/],
    [['-N', '0x10'], /--netns/],
    [['-4', '-6'], /-4.*-6/],
    [['-6', '-4'], /-4.*-6/],
    [['--bogus'], /--bogus/],
    [['-x'], /-x/],
    [['extra'], /extra/],
    [['-t', 'extra'], /extra/],
    [['--accept-mode', 'bogus'], /--accept-mode.*bogus/],
    [['--accept-mode', 'Syscall'], /--accept-mode/],
    [['--btf', ''], /--btf needs a file path/],
    [['--ringbuf-bytes', '5000'], /--ringbuf-bytes.*power of two/],
    [['--ringbuf-bytes', '12288'], /--ringbuf-bytes.*power of two/],
    [['--ringbuf-bytes', '1024'], /--ringbuf-bytes.*4096/],
    [['--ringbuf-bytes', '0'], /--ringbuf-bytes/],
    [['--ringbuf-bytes', '2147483648'], /--ringbuf-bytes/],
    [['--json=yes'], /--json/],
  ]
  for (const [argv, msg] of cases) {
    assert.throws(
      () => parseTraceArgs(argv),
      (e) => {
        assert.ok(e instanceof UsageError, `${argv.join(' ')}: ${String(e)}`)
        assert.equal(e.name, 'UsageError')
        assert.match(e.message, msg, argv.join(' '))
        return true
      },
      argv.join(' '),
    )
  }
})

test('parseIntArg: accepted values', () => {
  const cases: Array<[string, number, number, number]> = [
    ['0', 0, 10, 0],
    ['10', 0, 10, 10],
    ['5', 5, 5, 5],
    ['007', 0, 10, 7],
    [' 42 ', 0, 100, 42],
    ['4294967295', 1, 0xffffffff, 4294967295],
    ['9007199254740991', 0, Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER],
  ]
  for (const [raw, min, max, want] of cases) {
    assert.equal(parseIntArg('--n', raw, min, max), want, JSON.stringify(raw))
  }
})

test('parseIntArg: rejected values', () => {
  const cases: Array<[string, number, number]> = [
    ['', 0, 10],
    ['   ', 0, 10],
    ['-1', 0, 10],
    ['-0', 0, 10],
    ['+5', 0, 10],
    ['1e3', 0, 10000],
    ['1.0', 0, 10],
    ['0x10', 0, 100],
    ['0b1', 0, 100],
    ['1_000', 0, 10000],
    ['1 000', 0, 10000],
    ['abc', 0, 10],
    ['\u0663', 0, 10], // ARABIC-INDIC DIGIT THREE
    ['\uff13', 0, 10], // FULLWIDTH DIGIT THREE
    ['Infinity', 0, Number.MAX_SAFE_INTEGER],
    ['NaN', 0, 10],
    ['11', 0, 10],
    ['4', 5, 10],
    ['9007199254740992', 0, Number.MAX_SAFE_INTEGER],
    ['99999999999999999999', 0, Number.MAX_SAFE_INTEGER],
  ]
  for (const [raw, min, max] of cases) {
    assert.throws(
      () => parseIntArg('--n', raw, min, max),
      (e) =>
        e instanceof UsageError && e.message.startsWith('--n ') && e.message.includes(`${min} to ${max}`),
      JSON.stringify(raw),
    )
  }
})
