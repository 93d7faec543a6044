import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import { parse as parseYaml, stringify as stringifyYaml } from 'yaml'

import {
  ConfigError,
  configSchema,
  defaultConfig,
  describeChanges,
  formatDuration,
  loadConfig,
  parseConfig,
  parseDuration,
} from '../../src/config/config.js'
import type { Config, ConfigProblem } from '../../src/config/config.js'
import { prng } from '../prng.js'

const EXAMPLE = new URL('../../config.example.yml', import.meta.url)

/** A config with each RegExp replaced by its source and flags, so comparisons are by pattern. */
function plain(c: Config): unknown {
  return JSON.parse(
    JSON.stringify(c, (_k, v: unknown) => (v instanceof RegExp ? `/${v.source}/${v.flags}` : v)),
  )
}

/** The problems parseConfig reports for `text`; fails if it parses or throws anything but ConfigError. */
function problems(text: string): ConfigProblem[] {
  try {
    parseConfig(text, 'test.yml')
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`)
    return err.problems
  }
  assert.fail(`expected ${JSON.stringify(text)} to be rejected`)
}

/** Assert that `text` is rejected with a problem at exactly `path` whose message contains `message`. */
function assertProblem(text: string, path: string, message: string): void {
  const ps = problems(text)
  const found = ps.find((p) => p.path === path && p.message.includes(message))
  assert.ok(
    found,
    `${JSON.stringify(text)}: no problem at ${path} containing ${message}; got ${JSON.stringify(ps)}`,
  )
}

test('empty documents give the default config', () => {
  for (const text of ['', '\n', '# only a comment\n', '{}', 'null', '~', '---\n', '--- {}\n']) {
    assert.deepEqual(plain(parseConfig(text, 'test.yml')), plain(defaultConfig), JSON.stringify(text))
  }
})

test('defaults', () => {
  assert.deepEqual(plain(defaultConfig), {
    labels: ['comm', 'netns', 'family'],
    accept_mode: 'auto',
    btf_path: null,
    limits: {
      max_label_sets: 10000,
      idle_expiry: 600000,
      max_connections: 65536,
      max_kernel_label_sets: 65536,
    },
    histogram: {
      buckets_seconds: [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
        60, 300, 900, 1800, 3600,
      ],
    },
    filters: { netns: [], ports: [], comm: { include: [], exclude: [] } },
  })
  // Shared and frozen; every parse returns fresh objects.
  assert.ok(Object.isFrozen(defaultConfig) && Object.isFrozen(defaultConfig.limits))
  assert.ok(Object.isFrozen(defaultConfig.labels))
  const a = parseConfig('', 'a.yml')
  a.labels.push('pid')
  a.histogram.buckets_seconds.pop()
  assert.deepEqual(plain(parseConfig('', 'b.yml')), plain(defaultConfig))
})

test('config.example.yml parses to exactly the default config', async () => {
  const text = await readFile(EXAMPLE, 'utf8')
  assert.deepEqual(plain(parseConfig(text, 'config.example.yml')), plain(defaultConfig))
  // Every key is spelt out, so the example documents all of them.
  const raw = parseYaml(text) as Record<string, unknown>
  assert.deepEqual(plain(configSchema.parse(raw)), plain(defaultConfig))
  assert.deepEqual(Object.keys(raw), Object.keys(defaultConfig))
  for (const k of ['limits', 'histogram', 'filters'] as const) {
    assert.deepEqual(Object.keys(raw[k] as object), Object.keys(defaultConfig[k]), k)
  }
  assert.deepEqual(Object.keys((raw['filters'] as { comm: object }).comm), ['include', 'exclude'])
})

test('valid values', () => {
  const cases: Array<[text: string, get: (c: Config) => unknown, want: unknown]> = [
    ['labels: []', (c) => c.labels, []],
    [
      'labels: [pid, cgroup, port, comm, netns, family]',
      (c) => c.labels,
      ['pid', 'cgroup', 'port', 'comm', 'netns', 'family'],
    ],
    ['labels:\n  - comm\n  - pid\n', (c) => c.labels, ['comm', 'pid']],
    ['accept_mode: syscall', (c) => c.accept_mode, 'syscall'],
    ['accept_mode: listener', (c) => c.accept_mode, 'listener'],
    ['accept_mode: fexit', (c) => c.accept_mode, 'fexit'],
    ['accept_mode: kprobe', (c) => c.accept_mode, 'kprobe'],
    ['accept_mode: auto', (c) => c.accept_mode, 'auto'],
    ['btf_path: /boot/vmlinux.btf', (c) => c.btf_path, '/boot/vmlinux.btf'],
    ['limits: {max_label_sets: 1}', (c) => c.limits.max_label_sets, 1],
    ['limits: {max_label_sets: 10000000}', (c) => c.limits.max_label_sets, 10_000_000],
    ['limits: {max_connections: 1024}', (c) => c.limits.max_connections, 1024],
    ['limits: {max_connections: 16777216}', (c) => c.limits.max_connections, 16_777_216],
    ['limits: {max_kernel_label_sets: 0x1000}', (c) => c.limits.max_kernel_label_sets, 4096],
    // Setting one key of a section keeps the others' defaults.
    ['limits: {max_connections: 2048}', (c) => c.limits.max_label_sets, 10_000],
    [
      'histogram: {buckets_seconds: [0.000001, 31536000]}',
      (c) => c.histogram.buckets_seconds,
      [1e-6, 31_536_000],
    ],
    ['histogram: {buckets_seconds: [1]}', (c) => c.histogram.buckets_seconds, [1]],
    ['histogram: {buckets_seconds: [1e-3, 1e0, 1e3]}', (c) => c.histogram.buckets_seconds, [0.001, 1, 1000]],
    ['filters: {netns: [1, 4026531840, 4294967295]}', (c) => c.filters.netns, [1, 4026531840, 4294967295]],
    ['filters: {ports: [1, 80, 65535]}', (c) => c.filters.ports, [1, 80, 65535]],
  ]
  for (const [text, get, want] of cases) {
    assert.deepEqual(get(parseConfig(text, 'test.yml')), want, text)
  }
})

test('comm patterns are compiled, fully anchored', () => {
  const c = parseConfig(
    'filters: {comm: {include: [nginx, "node.*", "a|b"], exclude: ["x\\\\d+"]}}',
    'test.yml',
  )
  const [nginx, node, ab] = c.filters.comm.include
  assert.ok(nginx instanceof RegExp && node instanceof RegExp && ab instanceof RegExp)
  assert.ok(nginx.test('nginx'))
  assert.ok(!nginx.test('nginx-worker') && !nginx.test('my-nginx'))
  assert.ok(node.test('node') && node.test('node-main'))
  assert.ok(ab.test('a') && ab.test('b') && !ab.test('ab') && !ab.test('xa'))
  assert.equal(nginx.flags, 'u')
  const [x] = c.filters.comm.exclude
  assert.ok(x?.test('x12') && !x.test('x12y'))
})

test('invalid values: exact path and message', () => {
  const cases: Array<[text: string, path: string, message: string]> = [
    [
      'labels: [comm, host]',
      'labels[1]',
      '"host" is not a label; choose from comm, netns, family, pid, cgroup, port',
    ],
    ['labels: [comm, netns, comm]', 'labels[2]', 'duplicate label "comm"'],
    ['labels: [5]', 'labels[0]', '5 is not a label'],
    ['labels: [Comm]', 'labels[0]', '"Comm" is not a label'],
    [
      'labels: comm',
      'labels',
      'expected a list of labels from comm, netns, family, pid, cgroup, port, got "comm"',
    ],
    ['labels:', 'labels', 'got null'],
    [
      'accept_mode: fentry',
      'accept_mode',
      'expected one of auto, fexit, kprobe, syscall, listener, got "fentry"',
    ],
    [
      'accept_mode: [listener]',
      'accept_mode',
      'expected one of auto, fexit, kprobe, syscall, listener, got a list',
    ],
    ['btf_path: ""', 'btf_path', 'must not be empty'],
    ['btf_path: 3', 'btf_path', 'expected a file path, got 3'],
    ['btf_path: [a]', 'btf_path', 'expected a file path, got a list'],
    [
      'limits: {max_label_sets: abc}',
      'limits.max_label_sets',
      'expected an integer from 1 to 10000000, got "abc"',
    ],
    ['limits: {max_label_sets: 0}', 'limits.max_label_sets', 'expected an integer from 1 to 10000000, got 0'],
    ['limits: {max_label_sets: 10000001}', 'limits.max_label_sets', 'from 1 to 10000000, got 10000001'],
    ['limits: {max_label_sets: 1.5}', 'limits.max_label_sets', 'got 1.5'],
    ['limits: {max_label_sets: "100"}', 'limits.max_label_sets', 'got "100"'],
    ['limits: {max_label_sets: 10_000}', 'limits.max_label_sets', 'got "10_000"'],
    ['limits: {max_label_sets: true}', 'limits.max_label_sets', 'got true'],
    ['limits: {max_label_sets: .nan}', 'limits.max_label_sets', 'got NaN'],
    [
      'limits: {max_connections: 1023}',
      'limits.max_connections',
      'expected an integer from 1024 to 16777216, got 1023',
    ],
    ['limits: {max_connections: 16777217}', 'limits.max_connections', 'from 1024 to 16777216, got 16777217'],
    ['limits: {max_kernel_label_sets: -1}', 'limits.max_kernel_label_sets', 'from 1024 to 16777216, got -1'],
    ['limits: {max_kernel_label_sets: {}}', 'limits.max_kernel_label_sets', 'got a mapping'],
    ['limits: {idle_expiry: soon}', 'limits.idle_expiry', 'expected a duration such as 500ms'],
    ['filters: {netns: [0]}', 'filters.netns[0]', 'expected an integer from 1 to 4294967295, got 0'],
    ['filters: {netns: [4294967296]}', 'filters.netns[0]', 'got 4294967296'],
    ['filters: {netns: 4026531840}', 'filters.netns', 'expected a list of network namespace inodes'],
    ['filters: {ports: [80, 0]}', 'filters.ports[1]', 'expected an integer from 1 to 65535, got 0'],
    ['filters: {ports: [65536]}', 'filters.ports[0]', 'got 65536'],
    ['filters: {ports: ["http"]}', 'filters.ports[0]', 'got "http"'],
    [
      'filters: {comm: {include: nginx}}',
      'filters.comm.include',
      'expected a list of regular expressions, got "nginx"',
    ],
    [
      'filters: {comm: {include: [ok, 5]}}',
      'filters.comm.include[1]',
      'expected a regular expression (a string), got 5',
    ],
    ['filters: {comm: {exclude: [null]}}', 'filters.comm.exclude[0]', 'got null'],
  ]
  for (const [text, path, message] of cases) assertProblem(text, path, message)
})

test('bad regular expressions name the item and carry the RegExp error', () => {
  assertProblem(
    'filters: {comm: {include: [ok, "("]}}',
    'filters.comm.include[1]',
    'not a valid regular expression',
  )
  assertProblem('filters: {comm: {include: [ok, "("]}}', 'filters.comm.include[1]', 'Unterminated group')
  assertProblem(
    'filters: {comm: {exclude: ["[a-"]}}',
    'filters.comm.exclude[0]',
    'Invalid regular expression',
  )
  assertProblem('filters: {comm: {exclude: ["*"]}}', 'filters.comm.exclude[0]', 'Nothing to repeat')
  // Valid inside the anchoring group, but would break out of it: rejected.
  assertProblem('filters: {comm: {include: ["a)|(b"]}}', 'filters.comm.include[0]', "Unmatched ')'")
  // The u flag is on: lone escapes of ordinary letters are errors.
  assertProblem('filters: {comm: {include: ["\\\\q"]}}', 'filters.comm.include[0]', 'Invalid')
})

test('unknown keys are rejected at every level, naming the known keys', () => {
  const cases: Array<[text: string, path: string, known: string]> = [
    ['bogus: 1', 'bogus', 'labels, accept_mode, btf_path, limits, histogram, filters'],
    ['Labels: [comm]', 'Labels', 'labels, accept_mode'],
    [
      'limits: {bogus: 1}',
      'limits.bogus',
      'max_label_sets, idle_expiry, max_connections, max_kernel_label_sets',
    ],
    [
      'limits: {idle-expiry: 5m}',
      'limits.idle-expiry',
      'max_label_sets, idle_expiry, max_connections, max_kernel_label_sets (did you mean idle_expiry?)',
    ],
    ['histogram: {buckets: [1]}', 'histogram.buckets', 'buckets_seconds'],
    ['filters: {port: [80]}', 'filters.port', 'netns, ports, comm'],
    ['filters: {comm: {includes: [a]}}', 'filters.comm.includes', 'include, exclude'],
    ['"my key": 1', '["my key"]', 'labels'],
    ['__proto__: {labels: []}', '__proto__', 'labels'],
    ['<<: {labels: []}', '["<<"]', 'labels'],
  ]
  for (const [text, path, known] of cases) {
    assertProblem(text, path, `unknown key; known keys are ${known}`)
  }
  // A guess for misspelt or misplaced keys, and none for keys that look like nothing known.
  const guesses: Array<[text: string, path: string, guess: string | undefined]> = [
    ['Labels: [comm]', 'Labels', 'labels'],
    ['lables: [comm]', 'lables', 'labels'],
    ['filters: {port: [80]}', 'filters.port', 'ports'],
    ['limits: {max_conn: 2048}', 'limits.max_conn', 'max_connections'],
    ['max_label_sets: 5', 'max_label_sets', 'limits.max_label_sets'],
    ['filters: {include: [x]}', 'filters.include', 'filters.comm.include'],
    ['histogram: {buckets: [1]}', 'histogram.buckets', 'buckets_seconds'],
    ['zzz: 1', 'zzz', undefined],
    ['limits: {a: 1}', 'limits.a', undefined],
  ]
  for (const [text, path, guess] of guesses) {
    const p = problems(text).find((x) => x.path === path)
    assert.ok(p, text)
    if (guess === undefined) assert.ok(!p.message.includes('did you mean'), `${text}: ${p.message}`)
    else assert.ok(p.message.endsWith(`(did you mean ${guess}?)`), `${text}: ${p.message}`)
  }
  // One problem per unknown key.
  const ps = problems('limits: {a: 1, b: 2}\nc: 3')
  assert.deepEqual(ps.map((p) => p.path).sort(), ['c', 'limits.a', 'limits.b'])
})

test('wrong types for sections and the document', () => {
  assertProblem('5', '(root)', 'expected the config file to be a mapping of settings (key: value), got 5')
  assertProblem('- labels', '(root)', 'got a list')
  assertProblem('just text', '(root)', 'got "just text"')
  assertProblem('limits: 5', 'limits', 'expected a mapping of settings (key: value), got 5')
  assertProblem('limits:', 'limits', 'got null')
  assertProblem('histogram: [1, 2]', 'histogram', 'got a list')
  assertProblem('filters: all', 'filters', 'got "all"')
  assertProblem('filters: {comm: nginx}', 'filters.comm', 'got "nginx"')
  assertProblem('histogram: {buckets_seconds: 1}', 'histogram.buckets_seconds', 'expected a list of bucket')
})

test('YAML 1.1 collection and scalar tags are problems at their path, never an empty section', () => {
  // Found by test/unit/config-properties.test.ts: a !!omap section became a Map, which the schema took
  // for a mapping without keys, so every setting in it was silently dropped.
  assertProblem('filters: !!omap [netns: [1]]\n', 'filters', 'an ordered mapping (!!omap) is not supported')
  assertProblem('filters:\n  comm: !!omap [include: [x]]\n', 'filters.comm', '!!omap')
  assertProblem('limits: !!set {max_label_sets}\n', 'limits', 'a set (!!set) is not supported')
  assertProblem('labels: !!set {comm}\n', 'labels', '!!set')
  assertProblem('labels: !!binary aGVsbG8=\n', 'labels', 'binary data (!!binary)')
  assertProblem('%YAML 1.1\n---\nbtf_path: 2001-12-14\n', 'btf_path', 'a timestamp (!!timestamp)')
  assertProblem(
    'histogram: {buckets_seconds: [1, !!timestamp 2001-12-14]}',
    'histogram.buckets_seconds[1]',
    '!!timestamp',
  )
})

test('deep nesting is refused before it is composed; parsing it again and again cannot abort the process', () => {
  // The yaml library composes recursively. Before the depth check, a 20,000-level file overflowed the
  // stack inside it, and the third such parse in one process (a third SIGHUP with that file) made V8 abort
  // with "FATAL ERROR: RegExpCompiler Allocation failed": an uncatchable crash of the daemon.
  const deep = `labels: ${'['.repeat(20_000)}${']'.repeat(20_000)}\n`
  assertProblem(deep, '(yaml)', 'line 1, column 72: collections are nested more than 64 levels deep')
  assertProblem(`${'- '.repeat(100)}1\n`, '(yaml)', 'nested more than 64 levels')
  const block = Array.from({ length: 100 }, (_, i) => `${' '.repeat(i)}a:`).join('\n')
  assertProblem(
    `${block} 1\n`,
    '(yaml)',
    'line 65, column 65: collections are nested more than 64 levels deep',
  )
  // 64 levels in all is accepted as YAML (and then rejected by the schema, at its path)
  assertProblem(`labels: ${'['.repeat(63)}${']'.repeat(63)}\n`, 'labels[0]', 'is not a label')
  const script = [
    `import { parseConfig } from ${JSON.stringify(new URL('../../src/config/config.ts', import.meta.url).href)}`,
    `const text = ${JSON.stringify(deep)}`,
    'for (let i = 0; i < 10; i++) { try { parseConfig(text, "x.yml") } catch {} }',
    'console.log("survived")',
  ].join('\n')
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 60_000,
  })
  assert.equal(r.status, 0, r.stderr.slice(0, 2000))
  assert.equal(r.stdout, 'survived\n')
})

test('btf_path cannot hold a NUL byte', () => {
  // check-config called this valid; the daemon then failed to open the file at startup.
  assertProblem('btf_path: "/a\\0b"\n', 'btf_path', 'cannot contain a NUL byte')
})

test('durations', () => {
  const ok: Array<[yaml: string, ms: number]> = [
    ['10m', 600_000],
    ['1h30m', 5_400_000],
    ['500ms', 500],
    ['0s', 0],
    ['0', 0],
    ['"0"', 0],
    ['90', 90_000],
    ['0.5', 500],
    ['90s', 90_000],
    ['1d', 86_400_000],
    ['1w', 604_800_000],
    ['1y', 31_536_000_000],
    [
      '1y2w3d4h5m6s7ms',
      31_536_000_000 + 2 * 604_800_000 + 3 * 86_400_000 + 4 * 3_600_000 + 5 * 60_000 + 6_007,
    ],
    ['1h0m', 3_600_000],
    ['120m', 7_200_000],
  ]
  for (const [yaml, ms] of ok) {
    assert.equal(parseConfig(`limits: {idle_expiry: ${yaml}}`, 't.yml').limits.idle_expiry, ms, yaml)
  }
  const bad: Array<[yaml: string, message: string]> = [
    ['10 m', 'got "10 m"'],
    ['1m1h', 'units must each appear once, largest first'],
    ['1s1s', 'units must each appear once, largest first'],
    ['-5s', 'got "-5s"'],
    ['-5', 'got -5'],
    ['1.5h', 'got "1.5h"'],
    ['10M', 'got "10M"'],
    ['"90"', 'got "90"'],
    ['""', 'got ""'],
    ['h', 'got "h"'],
    ['.inf', 'got Infinity'],
    ['0.0001', 'whole milliseconds'],
    ['true', 'got true'],
    ['[1m]', 'got a list'],
    ['9999999999999y', 'too long'],
  ]
  for (const [yaml, message] of bad) {
    assertProblem(`limits: {idle_expiry: ${yaml}}`, 'limits.idle_expiry', message)
  }
  // Every rejection explains the syntax.
  assertProblem(
    'limits: {idle_expiry: 10 m}',
    'limits.idle_expiry',
    'units ms, s, m, h, d, w, y, largest first',
  )
})

test('parseDuration and formatDuration round-trip', () => {
  for (const ms of [0, 1, 999, 1000, 60_000, 90_000, 600_000, 5_400_000, 86_400_000, 31_536_000_000 + 1]) {
    assert.equal(parseDuration(formatDuration(ms)), ms, String(ms))
  }
  assert.equal(formatDuration(5_400_000), '1h30m')
  assert.equal(formatDuration(0), '0s')
  assert.equal(formatDuration(1500), '1s500ms')
  assert.equal(typeof parseDuration('1m1h'), 'object')
})

test('histogram buckets', () => {
  const cases: Array<[buckets: string, path: string, message: string]> = [
    ['[0.1, 1, 0.5]', 'histogram.buckets_seconds', 'must be strictly increasing (index 2: 0.5 after 1)'],
    ['[1, 2, 3, 3]', 'histogram.buckets_seconds', 'must be strictly increasing (index 3: 3 after 3)'],
    ['[0.1, 0.25, 1, 0.5]', 'histogram.buckets_seconds', 'index 3: 0.5 after 1'],
    ['[]', 'histogram.buckets_seconds', 'must have 1 to 30 buckets, got 0'],
    [`[${Array.from({ length: 31 }, (_, i) => i + 1).join(', ')}]`, 'histogram.buckets_seconds', 'got 31'],
    [
      '[-1, 1]',
      'histogram.buckets_seconds[0]',
      'expected a number of seconds from 0.000001 to 31536000, got -1',
    ],
    ['[0]', 'histogram.buckets_seconds[0]', 'got 0'],
    ['[0.0000001]', 'histogram.buckets_seconds[0]', 'got 1e-7'],
    ['[1, 31536001]', 'histogram.buckets_seconds[1]', 'got 31536001'],
    ['[1, .inf]', 'histogram.buckets_seconds[1]', 'got Infinity'],
    ['[.nan]', 'histogram.buckets_seconds[0]', 'got NaN'],
    ['[1, "2"]', 'histogram.buckets_seconds[1]', 'got "2"'],
  ]
  for (const [buckets, path, message] of cases) {
    assertProblem(`histogram: {buckets_seconds: ${buckets}}`, path, message)
  }
  // 30 is allowed.
  const thirty = Array.from({ length: 30 }, (_, i) => i + 1)
  assert.deepEqual(
    parseConfig(`histogram: {buckets_seconds: [${thirty.join(', ')}]}`, 't').histogram.buckets_seconds,
    thirty,
  )
})

test('YAML errors', () => {
  // Duplicate keys, at any level.
  assertProblem('labels: [comm]\nlabels: [pid]\n', '(yaml)', 'line 2, column 1')
  assertProblem('labels: [comm]\nlabels: [pid]\n', '(yaml)', 'labels appears more than once')
  assertProblem('limits:\n  max_connections: 2048\n  max_connections: 4096\n', '(yaml)', 'line 3')
  assertProblem('limits: {idle_expiry: 1m, idle_expiry: 2m}', '(yaml)', 'idle_expiry appears more than once')
  // Syntax errors carry line and column.
  assertProblem('labels: [comm\naccept_mode: listener\n', '(yaml)', 'line ')
  assertProblem('limits:\n  max_connections: 2048\n bad indent: 1\n', '(yaml)', 'line 3')
  assertProblem('labels: [comm]\naccept_mode: "listener\n', '(yaml)', 'Missing closing "quote')
  assertProblem('\tlabels: []', '(yaml)', 'line 1')
  // More than one document, unknown tags, alias bombs.
  assertProblem('labels: []\n---\nlabels: [pid]\n', '(yaml)', 'multiple documents')
  assertProblem('accept_mode: !custom listener', '(yaml)', 'line 1')
  // A billion laughs: each level refers to the previous one ten times.
  const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]']
  for (const [prev, n] of [
    ['a', 'b'],
    ['b', 'c'],
    ['c', 'd'],
    ['d', 'e'],
  ]) {
    bomb.push(`${n}: &${n} [${Array(10).fill(`*${prev}`).join(', ')}]`)
  }
  assertProblem(bomb.join('\n'), '(yaml)', 'alias')
  // Only the first few problems of a very broken file are listed.
  const ps = problems('['.repeat(5000))
  assert.ok(ps.length <= 20, String(ps.length))
})

test('ConfigError formats one line per problem', () => {
  let err: unknown
  try {
    parseConfig('labels: [comm, host]\nlimits: {max_label_sets: abc, bogus: 1}\n', '/etc/tcptracer.yml')
  } catch (e) {
    err = e
  }
  assert.ok(err instanceof ConfigError)
  assert.ok(err instanceof Error)
  assert.equal(err.name, 'ConfigError')
  assert.equal(err.file, '/etc/tcptracer.yml')
  assert.equal(
    err.message,
    [
      '/etc/tcptracer.yml: labels[1]: "host" is not a label; choose from comm, netns, family, pid, cgroup, port',
      '/etc/tcptracer.yml: limits.max_label_sets: expected an integer from 1 to 10000000, got "abc"',
      '/etc/tcptracer.yml: limits.bogus: unknown key; known keys are max_label_sets, idle_expiry, max_connections, max_kernel_label_sets',
    ].join('\n'),
  )
  assert.equal(err.problems.length, 3)
})

test('loadConfig', async () => {
  assert.deepEqual(plain(await loadConfig(undefined)), plain(defaultConfig))
  assert.deepEqual(plain(await loadConfig(EXAMPLE.pathname)), plain(defaultConfig))

  const dir = await mkdtemp(join(tmpdir(), 'tcptracer-config-'))
  try {
    const missing = join(dir, 'missing.yml')
    await assert.rejects(loadConfig(missing), (err: unknown) => {
      assert.ok(err instanceof ConfigError)
      assert.equal(err.file, missing)
      assert.equal(err.problems.length, 1)
      assert.equal(err.problems[0]?.path, '(file)')
      assert.match(err.problems[0]?.message ?? '', /ENOENT: no such file/)
      assert.ok(err.message.startsWith(`${missing}: (file): ENOENT`))
      return true
    })
    await assert.rejects(
      loadConfig(dir),
      (err: unknown) => err instanceof ConfigError && /EISDIR/.test(err.message),
    )

    const good = join(dir, 'good.yml')
    await writeFile(good, 'labels: [comm, pid]\nlimits:\n  idle_expiry: 1h30m\n')
    const c = await loadConfig(good)
    assert.deepEqual(c.labels, ['comm', 'pid'])
    assert.equal(c.limits.idle_expiry, 5_400_000)

    const bad = join(dir, 'bad.yml')
    await writeFile(bad, 'limits:\n  max_connections: 12\n')
    await assert.rejects(loadConfig(bad), (err: unknown) => {
      assert.ok(err instanceof ConfigError)
      assert.equal(
        err.message,
        `${bad}: limits.max_connections: expected an integer from 1024 to 16777216, got 12`,
      )
      return true
    })
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('describeChanges', () => {
  assert.deepEqual(describeChanges(defaultConfig, parseConfig('', 't')), [])
  assert.deepEqual(describeChanges(defaultConfig, parseConfig('labels: [comm, pid]', 't')), [
    'labels: [comm, netns, family] -> [comm, pid]',
  ])
  const next = parseConfig(
    [
      'labels: []',
      'accept_mode: syscall',
      'btf_path: /boot/vmlinux.btf',
      'limits: {max_label_sets: 5, idle_expiry: 1h30m, max_connections: 2048, max_kernel_label_sets: 4096}',
      'histogram: {buckets_seconds: [0.5, 1]}',
      'filters: {netns: [4026531840], ports: [80, 443], comm: {include: [nginx, "node.*"], exclude: ["a/b"]}}',
    ].join('\n'),
    't',
  )
  assert.deepEqual(describeChanges(defaultConfig, next), [
    'labels: [comm, netns, family] -> []',
    'accept_mode: auto -> syscall',
    'btf_path: (none) -> /boot/vmlinux.btf',
    'limits.max_label_sets: 10000 -> 5',
    'limits.idle_expiry: 10m -> 1h30m',
    'limits.max_connections: 65536 -> 2048',
    'limits.max_kernel_label_sets: 65536 -> 4096',
    'histogram.buckets_seconds: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600] -> [0.5, 1]',
    'filters.netns: [] -> [4026531840]',
    'filters.ports: [] -> [80, 443]',
    'filters.comm.include: [] -> ["nginx", "node.*"]',
    'filters.comm.exclude: [] -> ["a\\\\/b"]',
  ])
  // Every setting is covered: the lines above name each leaf of the config once.
  const leaves = (v: unknown, prefix: string): string[] =>
    typeof v === 'object' && v !== null && !Array.isArray(v)
      ? Object.entries(v).flatMap(([k, x]) => leaves(x, prefix === '' ? k : `${prefix}.${k}`))
      : [prefix]
  assert.deepEqual(
    describeChanges(defaultConfig, next).map((l) => l.slice(0, l.indexOf(':'))),
    leaves(defaultConfig, ''),
  )
  assert.deepEqual(describeChanges(next, next), [])
  assert.deepEqual(describeChanges(parseConfig('limits: {idle_expiry: 0}', 't'), defaultConfig), [
    'limits.idle_expiry: 0s -> 10m',
  ])
  // Patterns compare by text: recompiling the same pattern is no change.
  const a = parseConfig('filters: {comm: {include: [x]}}', 't')
  const b = parseConfig('filters: {comm: {include: [x]}}', 't')
  assert.deepEqual(describeChanges(a, b), [])
})

// ---------------------------------------------------------------------------------------------------------
// Property-style: random mutations of the example config never escape as anything but ConfigError.

type Json = null | boolean | number | string | Json[] | { [k: string]: Json }

function setOwn(obj: Record<string, unknown>, key: string, value: unknown): void {
  // defineProperty, so that keys such as __proto__ become own keys rather than prototype changes.
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true })
}

function junkGen(rand: () => number) {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)] as T
  const strings = [
    '',
    ' ',
    '10m',
    '1h30m',
    '-5s',
    '1.5h',
    '0',
    'comm',
    'host',
    'listener',
    'syscall',
    '(',
    'a)|(b',
    '[a-',
    '.*',
    '\\',
    'x\ny',
    '\u0000',
    'ünïcödé',
    '🙂',
    '%',
    '- item',
    'key: value',
    '#',
    '&a',
    '*a',
    '!!str',
    '0x10',
    '1e3',
    'true',
    'null',
    '~',
    '10_000',
    '65536',
    '__proto__',
  ]
  const numbers = [
    0,
    -0,
    1,
    -1,
    0.5,
    1e-7,
    1e-6,
    1023,
    1024,
    65535,
    65536,
    4294967295,
    4294967296,
    10_000_000,
    16_777_217,
    31_536_000,
    Number.MAX_SAFE_INTEGER,
    Number.MAX_SAFE_INTEGER + 2,
    1e300,
    NaN,
    Infinity,
    -Infinity,
  ]
  const keys = [
    'labels',
    'limits',
    'bogus',
    '__proto__',
    'constructor',
    'toString',
    '',
    'a b',
    '0',
    'include',
  ]
  const junk = (depth: number): Json => {
    const r = rand()
    if (r < 0.3) return pick(strings)
    if (r < 0.55) return rand() < 0.5 ? pick(numbers) : Math.floor(rand() * 2 ** 33) - 2 ** 32
    if (r < 0.62) return rand() < 0.5
    if (r < 0.7) return null
    if (depth > 2 || r < 0.85) return Array.from({ length: Math.floor(rand() * 5) }, () => junk(depth + 1))
    const o: Record<string, Json> = {}
    for (let i = Math.floor(rand() * 4); i > 0; i--) setOwn(o, pick(keys), junk(depth + 1))
    return o
  }
  return { junk, pick }
}

/** Every path (as keys and indices) in a tree of plain objects and arrays, containers included. */
function paths(v: unknown, prefix: Array<string | number> = []): Array<Array<string | number>> {
  const out = [prefix]
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...paths(x, [...prefix, i])))
  else if (typeof v === 'object' && v !== null) {
    for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...prefix, k]))
  }
  return out
}

function setPath(root: Json, path: ReadonlyArray<string | number>, value: Json | undefined): Json {
  if (path.length === 0) return value ?? null
  if (typeof root !== 'object' || root === null) root = {}
  let node: unknown = root
  for (const key of path.slice(0, -1)) {
    const next = (node as Record<string | number, unknown>)[key]
    if (typeof next !== 'object' || next === null) {
      const fresh = {}
      setOwn(node as Record<string, unknown>, String(key), fresh)
      node = fresh
    } else node = next
  }
  const last = path[path.length - 1] as string | number
  if (value === undefined) delete (node as Record<string | number, unknown>)[last]
  else if (Array.isArray(node) && typeof last === 'number') node[last] = value
  else setOwn(node as Record<string, unknown>, String(last), value)
  return root
}

function checkOutcome(text: string, seed: number, iteration: number): 'ok' | 'error' {
  const where = `seed ${seed}, iteration ${iteration}, text ${JSON.stringify(text)}`
  let c: Config
  try {
    c = parseConfig(text, 'fuzz.yml')
  } catch (err) {
    assert.ok(err instanceof ConfigError, `${where}: threw ${String(err)}`)
    assert.ok(err.problems.length >= 1, where)
    for (const p of err.problems) {
      assert.ok(typeof p.path === 'string' && p.path.length > 0, `${where}: empty path`)
      assert.ok(typeof p.message === 'string' && p.message.length > 0, `${where}: empty message`)
    }
    assert.equal(err.message.split('\n').length, err.problems.length, `${where}: one line per problem`)
    return 'error'
  }
  // A config that parses satisfies the schema's promises.
  assert.equal(new Set(c.labels).size, c.labels.length, where)
  const b = c.histogram.buckets_seconds
  assert.ok(b.length >= 1 && b.length <= 30, where)
  assert.ok(
    b.every((x, i) => i === 0 || x > (b[i - 1] as number)),
    where,
  )
  assert.ok(Number.isSafeInteger(c.limits.idle_expiry) && c.limits.idle_expiry >= 0, where)
  assert.ok(
    c.filters.comm.include.every((re) => re instanceof RegExp),
    where,
  )
  return 'ok'
}

test('property: 500 random mutations of the example give a Config or a ConfigError', async () => {
  const seed = 0x7cb7ace
  const rand = prng(seed)
  const { junk, pick } = junkGen(rand)
  const base = parseYaml(await readFile(EXAMPLE, 'utf8')) as Json
  const basePaths = paths(base)
  const outcomes = { ok: 0, error: 0 }
  for (let i = 0; i < 500; i++) {
    let doc = structuredClone(base)
    for (let n = 1 + Math.floor(rand() * 3); n > 0; n--) {
      const path = [...pick(basePaths)]
      if (rand() < 0.2) path.push(pick(['bogus', 'include', '__proto__', 0, 5]))
      const r = rand()
      // Mostly junk; sometimes delete the key, sometimes a value that is valid elsewhere in the file.
      const value =
        r < 0.1
          ? undefined
          : r < 0.2
            ? (pick(basePaths).reduce<unknown>((v, k) => (v as never)[k], base) as Json)
            : junk(0)
      doc = setPath(doc, path, value)
    }
    let text = stringifyYaml(doc)
    if (rand() < 0.15) {
      // Text-level damage too: a random character inserted or removed.
      const at = Math.floor(rand() * text.length)
      text =
        rand() < 0.5
          ? text.slice(0, at) +
            pick([':', '-', '[', '{', '"', "'", '\t', '\n  ', '&', '*', '!']) +
            text.slice(at)
          : text.slice(0, at) + text.slice(at + 1)
    }
    outcomes[checkOutcome(text, seed, i)]++
  }
  // Both outcomes actually happen, or the generator is not exercising anything.
  assert.ok(outcomes.ok >= 5 && outcomes.error >= 100, JSON.stringify(outcomes))
})
