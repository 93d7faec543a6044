// The YAML loader both config files go through (src/config/yaml.ts): its safety checks, its errors and its
// schema validation. The config file's and the web config's own tests check the same errors through them.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

import { z } from 'zod'

import {
  ConfigError,
  formatPath,
  MAX_NESTING,
  MAX_PROBLEMS,
  parseYaml,
  readConfigText,
  validate,
  type ConfigProblem,
} from '../../src/config/yaml.js'

/** The problems a call throws as a ConfigError for `f.yml`; fails if it returns. */
function problems(f: () => unknown): ConfigProblem[] {
  try {
    f()
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`)
    assert.equal(err.file, 'f.yml')
    return err.problems
  }
  assert.fail('expected a ConfigError')
}

const yamlProblems = (text: string) => problems(() => parseYaml(text, 'f.yml'))

test('plain data comes back as it is written; an empty document is an empty mapping', () => {
  assert.deepEqual(parseYaml('a: [1, "x", {b: null}]\n', 'f.yml'), { a: [1, 'x', { b: null }] })
  for (const text of ['', '# only a comment\n', '~', 'null']) assert.deepEqual(parseYaml(text, 'f.yml'), {})
  // YAML 1.2 core schema: yes and on are strings, << is an ordinary key.
  assert.deepEqual(parseYaml('a: yes\nb: on\n<<: 1\n', 'f.yml'), { a: 'yes', b: 'on', '<<': 1 })
})

test('table: each unsafe or broken text is one problem at (yaml) that says where and what', () => {
  const cases: Array<[text: string, message: string]> = [
    [
      `a: ${'['.repeat(MAX_NESTING + 1)}${']'.repeat(MAX_NESTING + 1)}`,
      'line 1, column 67: collections are nested more than 64 levels deep',
    ],
    ['a: 1\nb: 2\na: 3\n', 'line 3, column 1: Map keys must be unique: a appears more than once'],
    ['x:\n  y: 1\n  y: 2\n', 'line 3, column 3: Map keys must be unique: y appears more than once'],
    ['a: [1\nb: 2\n', 'line '],
    ['a: 1\n---\nb: 2\n', 'multiple documents'],
    ['a: !custom 1\n', 'line 1'],
  ]
  for (const [text, message] of cases) {
    const ps = yamlProblems(text)
    assert.equal(ps[0]?.path, '(yaml)', text)
    assert.ok(ps[0]?.message.includes(message), `${JSON.stringify(text)}: ${JSON.stringify(ps)}`)
  }
})

test('64 levels are accepted; any depth is refused without recursion', () => {
  assert.ok(parseYaml(`${'['.repeat(MAX_NESTING)}${']'.repeat(MAX_NESTING)}`, 'f.yml'))
  const ps = yamlProblems(`${'- '.repeat(50_000)}1\n`)
  assert.equal(ps.length, 1)
  assert.match(ps[0]!.message, /nested more than 64 levels deep/)
})

test('alias expansion is bounded', () => {
  const bomb = ['a: &a [x, x, x, x, x, x, x, x, x, x]']
  for (const [prev, n] of ['ab', 'bc', 'cd', 'de']) {
    bomb.push(`${n}: &${n} [${Array(10).fill(`*${prev}`).join(', ')}]`)
  }
  assert.match(yamlProblems(bomb.join('\n'))[0]!.message, /alias/)
})

test('YAML 1.1 tags are problems at their path', () => {
  assert.deepEqual(yamlProblems('a:\n  b: !!set {x}\n'), [
    {
      path: 'a.b',
      message: 'a set (!!set) is not supported: write a plain mapping, list or value, without a !! tag',
    },
  ])
  assert.match(yamlProblems('a: [!!binary aGVsbG8=]\n')[0]!.message, /binary data/)
  assert.equal(yamlProblems('a: !!omap [b: 1]\n')[0]!.path, 'a')
})

test(`at most ${MAX_PROBLEMS} problems are reported, the last one counting the rest`, () => {
  const text = Array.from({ length: 30 }, () => 'k: 1').join('\n')
  const ps = yamlProblems(text)
  assert.equal(ps.length, MAX_PROBLEMS)
  assert.deepEqual(ps.at(-1), { path: '(more)', message: '10 more problems not shown' })
})

test('validate: schema issues at their paths, one problem per unknown key, capped', () => {
  const schema = z.strictObject({ n: z.number().optional(), s: z.strictObject({ t: z.string() }).optional() })
  assert.deepEqual(
    validate(schema, { n: 1 }, 'f.yml', () => 'unknown'),
    { n: 1 },
  )
  const seen: string[] = []
  const ps = problems(() =>
    validate(schema, { n: 'x', s: { t: 1, u: 1, v: 2 } }, 'f.yml', (at, key) => {
      seen.push(formatPath([...at, key]))
      return `unknown key ${key}`
    }),
  )
  assert.deepEqual(seen, ['s.u', 's.v'])
  assert.deepEqual(
    ps.map((p) => p.path),
    ['n', 's.t', 's.u', 's.v'],
  )
  assert.match(ps[0]!.message, /got "x"$/)
  const many = Object.fromEntries(Array.from({ length: 25 }, (_, i) => [`k${i}`, i]))
  const capped = problems(() => validate(schema, many, 'f.yml', () => 'unknown key'))
  assert.equal(capped.length, MAX_PROBLEMS)
  assert.equal(capped.at(-1)?.path, '(more)')
})

test('an unreadable file is one problem at (file)', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'yaml-test-'))
  try {
    const file = path.join(dir, 'f.yml')
    writeFileSync(file, 'a: 1\n')
    assert.equal(await readConfigText(file), 'a: 1\n')
    const missing = path.join(dir, 'missing.yml')
    await assert.rejects(readConfigText(missing), (err: unknown) => {
      assert.ok(err instanceof ConfigError)
      assert.equal(err.problems[0]?.path, '(file)')
      assert.match(err.message, /^.*missing\.yml: \(file\): ENOENT/)
      return true
    })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('ConfigError: one `file: path: message` line per problem', () => {
  const err = new ConfigError('f.yml', [
    { path: 'a', message: 'one' },
    { path: '(yaml)', message: 'two' },
  ])
  assert.equal(err.message, 'f.yml: a: one\nf.yml: (yaml): two')
  assert.equal(formatPath(['a', 2, 'b c']), 'a[2]["b c"]')
  assert.equal(formatPath([]), '(root)')
})
