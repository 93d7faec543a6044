// The real `check-config` command (dist/src/cli.js, built by `npm run build`) on generated bad files:
// exit code 2, every problem on stderr as `FILE: PATH: REASON`, nothing on stdout, never a stack trace.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

import fc from 'fast-check'
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml'

import { packageRoot } from '../../src/kernel/paths.js'

const CLI = path.join(packageRoot, 'dist', 'src', 'cli.js')
const EXAMPLE = path.join(packageRoot, 'config.example.yml')

let dir: string
before(() => {
  assert.ok(existsSync(CLI), `${CLI} is missing: run npm run build first`)
  dir = mkdtempSync(path.join(tmpdir(), 'tt-check-config-'))
})
after(() => rmSync(dir, { recursive: true, force: true }))

function checkConfig(file: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, 'check-config', `--config.file=${file}`], {
    encoding: 'utf8',
    timeout: 30_000,
  })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}

function assertRejected(file: string, where: string, what: string): void {
  const r = checkConfig(file)
  const ctx = `${what}\n--- stderr ---\n${r.stderr}`
  assert.equal(r.status, 2, ctx)
  assert.equal(r.stdout, '', ctx)
  assert.doesNotMatch(r.stderr, /^\s+at /m, `a stack trace: ${ctx}`)
  assert.doesNotMatch(r.stderr, /TypeError|RangeError|ReferenceError/, ctx)
  const lines = r.stderr.trimEnd().split('\n')
  assert.ok(lines.length >= 1 && lines.length <= 20, ctx)
  for (const l of lines) assert.ok(l.startsWith(`${file}: `), `line without the file name: ${l}\n${ctx}`)
  assert.ok(
    lines.some((l) => [': ', '[', '.'].some((next) => l.startsWith(`${file}: ${where}${next}`))),
    `no problem at ${where}: ${ctx}`,
  )
}

// One setting of the example config set to a value it must reject, and where that is reported.
const SETTINGS: Array<[string[], fc.Arbitrary<unknown>]> = [
  [['labels'], fc.constantFrom(['comm', 'host'], 'comm', [['comm']], { comm: 1 })],
  [
    ['accept_mode'],
    fc
      .string({ minLength: 1, maxLength: 20 })
      .filter((s) => !/^(auto|fexit|kprobe|syscall|listener)$/.test(s)),
  ],
  [
    ['limits', 'max_label_sets'],
    fc.oneof(fc.integer({ max: 0 }), fc.constantFrom('many', 1.5, Infinity, null)),
  ],
  [['limits', 'idle_expiry'], fc.constantFrom('10m1h', 'soon', -1, [1])],
  [['limits', 'max_connections'], fc.integer({ min: -1000, max: 1023 })],
  [['histogram', 'buckets_seconds'], fc.constantFrom([], [2, 1], [0], 'fast')],
  [['filters', 'ports'], fc.constantFrom([0], [65_536], ['http'])],
  [['filters', 'comm', 'include'], fc.constantFrom(['('], ['[z-a]'], [5])],
  [['filters', 'bogus'], fc.jsonValue({ maxDepth: 2 })],
]

function formatPath(keys: readonly string[]): string {
  return keys.join('.')
}

test('check-config: generated bad files exit 2 with the path on stderr, never a stack trace', async () => {
  const { readFile } = await import('node:fs/promises')
  const base = parseYaml(await readFile(EXAMPLE, 'utf8')) as Record<string, unknown>
  const cases = fc.sample(
    fc.integer({ min: 0, max: SETTINGS.length - 1 }).chain((i) => {
      const [keys, bad] = SETTINGS[i] as [string[], fc.Arbitrary<unknown>]
      return fc.tuple(fc.constant(keys), bad)
    }),
    { numRuns: 10, seed: 20_240_607 },
  )
  for (const [n, [keys, bad]] of cases.entries()) {
    const doc = structuredClone(base)
    let cur = doc
    for (const k of keys.slice(0, -1)) cur = cur[k] as Record<string, unknown>
    cur[keys.at(-1) as string] = bad
    const file = path.join(dir, `bad-${n}.yml`)
    writeFileSync(file, stringifyYaml(doc))
    assertRejected(file, formatPath(keys), `${formatPath(keys)} = ${JSON.stringify(bad)}`)
  }
})

test('check-config: files that are not YAML, not text, or not files', () => {
  const cases: Array<[string, string | Buffer | null, string]> = [
    ['unclosed.yml', 'labels: [comm\n', '(yaml)'],
    ['tab.yml', '\tlabels: []\n', '(yaml)'],
    [
      'bomb.yml',
      [
        'a: &a [x, x, x, x, x, x, x, x, x, x]',
        ...'bcdef'.split('').map((c, i) => `${c}: &${c} [${Array(10).fill(`*${'abcdef'[i]}`).join(', ')}]`),
      ].join('\n'),
      '(yaml)',
    ],
    ['deep.yml', `labels: ${'['.repeat(20_000)}${']'.repeat(20_000)}\n`, '(yaml)'],
    ['binary.yml', Buffer.from([0xff, 0xfe, 0x00, 0x01, 0x3a, 0x0a, 0x80, 0xc3]), '(yaml)'],
    ['omap.yml', 'filters: !!omap [netns: [1]]\n', 'filters'],
    ['huge-key.yml', `${'k'.repeat(100_000)}: 1\n`, '(yaml)'],
    ['missing.yml', null, '(file)'],
  ]
  for (const [name, content, where] of cases) {
    const file = path.join(dir, name)
    if (content !== null) writeFileSync(file, content)
    assertRejected(file, where, name)
  }
  const sub = path.join(dir, 'a-directory.yml')
  mkdirSync(sub)
  assertRejected(sub, '(file)', 'a directory')
})

test('check-config: the example config is valid (exit 0, nothing on stderr)', () => {
  const r = checkConfig(EXAMPLE)
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stderr, '')
  assert.equal(r.stdout, `${EXAMPLE}: valid\n`)
})
