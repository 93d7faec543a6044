// Property-based tests of the config parser (fast-check): whatever text or value a config file holds,
// parseConfig returns a Config or throws a ConfigError whose every problem has a path and a reason;
// valid configs round-trip; a valid config with one thing broken is rejected at that thing's path.
//
// FC_SEED=n and FC_NUM_RUNS=n reproduce or lengthen a run; a failure prints the seed and the smallest
// counterexample fast-check found.
import { test } from 'node:test'
import assert from 'node:assert/strict'

import fc from 'fast-check'
import { Document, stringify as stringifyYaml } from 'yaml'

import {
  ConfigError,
  defaultConfig,
  describeChanges,
  formatDuration,
  LABELS,
  parseConfig,
  patternText,
  type Config,
} from '../../src/config/config.js'
import { ACCEPT_MODES } from '../../src/kernel/abi.js'

const RUNS = Number(process.env['FC_NUM_RUNS'] ?? 300)
fc.configureGlobal({
  numRuns: RUNS,
  ...(process.env['FC_SEED'] === undefined ? {} : { seed: Number(process.env['FC_SEED']) }),
})

/** parseConfig's outcome: the config, or the ConfigError; anything else thrown fails the property. */
function outcome(text: string): Config | ConfigError {
  try {
    return parseConfig(text, 'prop.yml')
  } catch (e) {
    if (e instanceof ConfigError) return e
    throw new Error(
      `parseConfig threw ${String(e)} (not a ConfigError) for ${JSON.stringify(text.slice(0, 300))}`,
    )
  }
}

/** The invariants of a rejection: at least one problem, each with a path and a reason, and a message naming the file. */
function assertWellFormed(e: ConfigError): void {
  assert.equal(e.name, 'ConfigError')
  assert.equal(e.file, 'prop.yml')
  assert.ok(e.problems.length > 0, 'a ConfigError has problems')
  assert.ok(e.problems.length <= 20, `at most 20 problems are listed, got ${e.problems.length}`)
  for (const p of e.problems) {
    assert.equal(typeof p.path, 'string')
    assert.equal(typeof p.message, 'string')
    assert.ok(p.path.trim() !== '', `empty path in ${JSON.stringify(p)}`)
    assert.ok(p.message.trim() !== '', `empty reason in ${JSON.stringify(p)}`)
    assert.ok(e.message.includes(`prop.yml: ${p.path}: ${p.message}`))
  }
}

/** Either a config that passes the output invariants, or a well-formed ConfigError. */
function assertSane(text: string): Config | ConfigError {
  const r = outcome(text)
  if (r instanceof ConfigError) assertWellFormed(r)
  else assertValidOutput(r)
  return r
}

/** What every parsed config satisfies, whatever the input was. */
function assertValidOutput(c: Config): void {
  assert.ok(Array.isArray(c.labels) && new Set(c.labels).size === c.labels.length)
  for (const l of c.labels) assert.ok((LABELS as readonly string[]).includes(l))
  assert.ok((ACCEPT_MODES as readonly string[]).includes(c.accept_mode))
  assert.ok(c.btf_path === null || (typeof c.btf_path === 'string' && c.btf_path !== ''))
  const { limits } = c
  assert.ok(Number.isInteger(limits.max_label_sets) && limits.max_label_sets >= 1)
  assert.ok(Number.isSafeInteger(limits.idle_expiry) && limits.idle_expiry >= 0)
  assert.ok(Number.isInteger(limits.max_connections) && limits.max_connections >= 1024)
  assert.ok(Number.isInteger(limits.max_kernel_label_sets) && limits.max_kernel_label_sets >= 1024)
  const b = c.histogram.buckets_seconds
  assert.ok(b.length >= 1 && b.length <= 30)
  b.forEach((x, i) => assert.ok(Number.isFinite(x) && (i === 0 || x > (b[i - 1] as number))))
  for (const n of c.filters.netns) assert.ok(Number.isInteger(n) && n >= 1 && n <= 0xffffffff)
  for (const p of c.filters.ports) assert.ok(Number.isInteger(p) && p >= 1 && p <= 65535)
  for (const re of [...c.filters.comm.include, ...c.filters.comm.exclude]) assert.ok(re instanceof RegExp)
}

/** A config with each RegExp replaced by its source, so configs compare by value. */
function plain(c: Config): unknown {
  return JSON.parse(
    JSON.stringify(c, (_k, v: unknown) => (v instanceof RegExp ? `/${v.source}/${v.flags}` : v)),
  )
}

/** A parsed config written back as the YAML input it came from (durations and patterns as text). */
function toInput(c: Config): Record<string, unknown> {
  return {
    labels: c.labels,
    accept_mode: c.accept_mode,
    btf_path: c.btf_path,
    limits: { ...c.limits, idle_expiry: formatDuration(c.limits.idle_expiry) },
    histogram: c.histogram,
    filters: {
      netns: c.filters.netns,
      ports: c.filters.ports,
      comm: {
        include: c.filters.comm.include.map(patternText),
        exclude: c.filters.comm.exclude.map(patternText),
      },
    },
  }
}

// ---------------------------------------------------------------------------------------------------------
// Arbitraries

/** Pieces of YAML syntax, keys of the schema and troublesome scalars, to assemble into documents. */
const YAML_TOKENS = [
  'labels',
  'accept_mode',
  'btf_path',
  'limits',
  'max_label_sets',
  'idle_expiry',
  'max_connections',
  'max_kernel_label_sets',
  'histogram',
  'buckets_seconds',
  'filters',
  'netns',
  'ports',
  'comm',
  'include',
  'exclude',
  ': ',
  ':',
  '\n',
  '\n  ',
  '\n    ',
  '  ',
  '- ',
  '[',
  ']',
  '{',
  '}',
  ', ',
  '"',
  "'",
  '#',
  '---\n',
  '...\n',
  '%YAML 1.1\n',
  '%YAML 1.2\n',
  '%TAG ! tag:example.com,2000:\n',
  '&a ',
  '*a',
  '&b ',
  '*b',
  '<<: ',
  '? ',
  '!!str ',
  '!!int ',
  '!!float ',
  '!!map ',
  '!!seq ',
  '!!binary ',
  '!!set ',
  '!!omap ',
  '!!pairs ',
  '!!timestamp ',
  '!local ',
  '|\n',
  '>-\n',
  '~',
  'null',
  'true',
  'yes',
  'on',
  '0',
  '-1',
  '1024',
  '1e309',
  '.nan',
  '.inf',
  '-.inf',
  '0x10',
  '0o7',
  '1_000',
  '10m',
  '1h1h',
  '2001-12-14',
  'comm',
  'auto',
  '\t',
  '\r\n',
  '\u0000',
  '\ufeff',
  '\ud800',
  '\\',
]

const yamlish = fc
  .array(fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...YAML_TOKENS) }, fc.string({ maxLength: 8 })), {
    maxLength: 60,
  })
  .map((parts) => parts.join(''))

/** A valid pattern for filters.comm (it compiles with the u flag). */
const pattern = fc
  .oneof(
    fc.constantFrom(
      'nginx',
      'nginx.*',
      'a|b',
      '[a-z]+',
      'x{2,3}',
      '\\d+',
      '(?:ab)*',
      'a/b',
      'é€',
      '\\n',
      '.',
    ),
    fc.string({ maxLength: 12, unit: 'grapheme' }),
  )
  .filter((s) => {
    try {
      // eslint-disable-next-line no-new -- compiled only to validate
      new RegExp(s, 'u')
      return true
    } catch {
      return false
    }
  })

/** A duration as written: a Prometheus duration string or a number of seconds (whole milliseconds). */
const duration = fc.oneof(
  fc
    .integer({ min: 0, max: 10 * 365 * 86_400_000 })
    .map((ms) => ({ input: formatDuration(ms) as unknown, ms })),
  fc.integer({ min: 0, max: 10 * 365 * 86_400_000 }).map((ms) => ({ input: (ms / 1000) as unknown, ms })),
  fc.constant({ input: '0' as unknown, ms: 0 }),
)

/** A bucket list: 1 to 30 strictly increasing numbers in the allowed range. */
const buckets = fc
  .uniqueArray(fc.double({ min: 1e-6, max: 31_536_000, noNaN: true }), { minLength: 1, maxLength: 30 })
  .map((xs) => [...xs].sort((a, b) => a - b))
  .filter((xs) => xs.every((x, i) => i === 0 || x > (xs[i - 1] as number)))

interface ValidInput {
  input: Record<string, unknown>
  /** the parsed config expected, with patterns as sources */
  expected: unknown
}

/** A valid config document (every key optional) and the config it must parse to. */
const validConfig: fc.Arbitrary<ValidInput> = fc
  .record(
    {
      labels: fc.shuffledSubarray([...LABELS]),
      accept_mode: fc.constantFrom(...ACCEPT_MODES),
      btf_path: fc.option(
        fc.string({ minLength: 1, maxLength: 40, unit: 'grapheme' }).filter((s) => !s.includes('\0')),
      ),
      limits: fc.record(
        {
          max_label_sets: fc.integer({ min: 1, max: 10_000_000 }),
          idle_expiry: duration,
          max_connections: fc.integer({ min: 1024, max: 16_777_216 }),
          max_kernel_label_sets: fc.integer({ min: 1024, max: 16_777_216 }),
        },
        { requiredKeys: [] },
      ),
      histogram: fc.record({ buckets_seconds: buckets }, { requiredKeys: [] }),
      filters: fc.record(
        {
          netns: fc.array(fc.integer({ min: 1, max: 4_294_967_295 }), { maxLength: 5 }),
          ports: fc.array(fc.integer({ min: 1, max: 65_535 }), { maxLength: 5 }),
          comm: fc.record(
            {
              include: fc.array(pattern, { maxLength: 3 }),
              exclude: fc.array(pattern, { maxLength: 3 }),
            },
            { requiredKeys: [] },
          ),
        },
        { requiredKeys: [] },
      ),
    },
    { requiredKeys: [] },
  )
  .map((r) => {
    const d = plain(defaultConfig) as Record<string, Record<string, unknown>>
    const limits =
      r.limits === undefined ? undefined : { ...r.limits, idle_expiry: r.limits.idle_expiry?.input }
    if (limits !== undefined && limits.idle_expiry === undefined) delete limits.idle_expiry
    const input: Record<string, unknown> = { ...r, ...(limits === undefined ? {} : { limits }) }
    const comm = r.filters?.comm
    const compiled = (ps: string[] | undefined): string[] | undefined =>
      ps?.map((p) => `/${new RegExp(`^(?:${p})$`, 'u').source}/u`)
    const expected = {
      labels: r.labels ?? d['labels'],
      accept_mode: r.accept_mode ?? d['accept_mode'],
      btf_path: r.btf_path ?? null,
      limits: {
        ...d['limits'],
        ...r.limits,
        idle_expiry: r.limits?.idle_expiry?.ms ?? d['limits']?.['idle_expiry'],
      },
      histogram: { ...d['histogram'], ...r.histogram },
      filters: {
        netns: r.filters?.netns ?? [],
        ports: r.filters?.ports ?? [],
        comm: { include: compiled(comm?.include) ?? [], exclude: compiled(comm?.exclude) ?? [] },
      },
    }
    return { input, expected }
  })

/** Key names that are easy to get wrong in code: prototype names, empty, odd characters, very long. */
const oddKey = fc.oneof(
  fc.constantFrom(
    '',
    ' ',
    'a b',
    '__proto__',
    'constructor',
    'prototype',
    'toString',
    'hasOwnProperty',
    'valueOf',
    '0',
    '-1',
    '<<',
    '=',
    '.',
    'limits.max_label_sets',
    'Labels',
    'max-label-sets',
    'é',
    '\n',
    '"',
    "'",
    '\\',
    '\u0000',
    '\ud800',
    '#x',
    '&a',
    'x'.repeat(2000),
  ),
  fc.string({ maxLength: 20, unit: 'binary' }),
)

/** A value nested `depth` levels deep in lists or mappings. */
const deep = fc.tuple(fc.integer({ min: 1, max: 300 }), fc.boolean()).map(([depth, lists]) => {
  let v: unknown = 1
  for (let i = 0; i < depth; i++) v = lists ? [v] : { k: v }
  return v
})

/** Values wrong for every setting: collections for scalars and the like are chosen per setting below. */
const hugeString = fc.integer({ min: 10_000, max: 200_000 }).map((n) => 'x'.repeat(n))

// Every setting with values it must reject. The path is where the problem must be reported.
const badValues: Record<string, fc.Arbitrary<unknown>> = {
  labels: fc.oneof(
    fc.constantFrom('comm', 5, true, { comm: 1 }, ['comm', 'comm'], ['host'], [['comm']], [null], [5]),
    fc
      .string({ minLength: 1 })
      .filter((s) => !(LABELS as readonly string[]).includes(s))
      .map((s) => [s]),
    hugeString,
    deep,
  ),
  accept_mode: fc.oneof(
    fc.string().filter((s) => !(ACCEPT_MODES as readonly string[]).includes(s)),
    fc.constantFrom(1, true, ['auto'], { auto: true }, null, 'AUTO', ' auto'),
    hugeString,
  ),
  btf_path: fc.constantFrom('', 5, true, ['/x'], { p: 1 }, 'a\u0000b'),
  'limits.max_label_sets': fc.oneof(
    fc.constantFrom(0, -1, 10_000_001, 1.5, Number.NaN, Infinity, -Infinity, '100', true, null, [1], 1e300),
    fc.integer({ max: 0 }),
    fc.integer({ min: 10_000_001 }),
  ),
  'limits.idle_expiry': fc.oneof(
    fc.constantFrom(-1, 0.0001, 'abc', '1h1h', '10m1h', '1.5h', '', ' 1m', '-5s', true, null, [60], { m: 1 }),
    fc.constantFrom(Infinity, Number.NaN, 1e300, '99999999999999999999999y'),
    hugeString,
  ),
  'limits.max_connections': fc.oneof(
    fc.constantFrom(1023, 16_777_217, 2048.5, '65536', null, false),
    fc.integer({ min: -1e9, max: 1023 }),
  ),
  'limits.max_kernel_label_sets': fc.oneof(
    fc.constantFrom(1023, 16_777_217, 2048.5, '65536', null, false),
    fc.integer({ min: -1e9, max: 1023 }),
  ),
  'histogram.buckets_seconds': fc.oneof(
    fc.constantFrom([], [0], [1e-7], [31_536_001], [2, 1], [1, 1], ['1'], 1, 'fast', null, [Infinity]),
    fc.array(fc.double({ min: 1, max: 2 }), { minLength: 31, maxLength: 40 }),
  ),
  'filters.netns': fc.constantFrom([0], [4_294_967_296], ['x'], [1.5], 5, 'all', [-1], [[1]]),
  'filters.ports': fc.constantFrom([0], [65_536], ['http'], [80.5], 80, { 80: true }),
  'filters.comm.include': fc.constantFrom(
    ['('],
    ['[a-'],
    ['a{2,1}'],
    ['\\'],
    [5],
    'nginx',
    [null],
    ['(?<a>x)(?<a>y)'],
  ),
  'filters.comm.exclude': fc.constantFrom([')'], ['*'], ['\\k<nope>'], [true], { a: 1 }, ['\\p{Nope}']),
}

/** `limits.max_label_sets`, `labels[2]`, `(root)`; odd keys quoted as parseConfig reports them. */
function formatPath(path: ReadonlyArray<string | number>): string {
  let out = ''
  for (const k of path) {
    if (typeof k === 'number') out += `[${k}]`
    else if (/^[A-Za-z_][\w-]*$/.test(k)) out += out === '' ? k : `.${k}`
    else out += `[${JSON.stringify(k)}]`
  }
  return out === '' ? '(root)' : out
}

function setPath(obj: Record<string, unknown>, path: string[], value: unknown): Record<string, unknown> {
  const root = structuredClone(obj)
  let cur: Record<string, unknown> = root
  for (const k of path.slice(0, -1)) {
    const next = cur[k]
    cur[k] = typeof next === 'object' && next !== null && !Array.isArray(next) ? next : {}
    cur = cur[k] as Record<string, unknown>
  }
  cur[path.at(-1) as string] = value
  return root
}

const SECTIONS = [[], ['limits'], ['histogram'], ['filters'], ['filters', 'comm']] as const

// ---------------------------------------------------------------------------------------------------------
// Properties

test('property: any text gives a Config or a ConfigError with a path and a reason for every problem', () => {
  fc.assert(
    fc.property(fc.oneof(yamlish, fc.string({ maxLength: 200, unit: 'binary' })), (text) => {
      assertSane(text)
    }),
  )
})

test('property: any JSON-like value, written as YAML or as JSON, gives a Config or a well-formed ConfigError', () => {
  fc.assert(
    fc.property(
      fc.oneof(fc.jsonValue({ maxDepth: 6 }), fc.object({ maxDepth: 4 }), fc.anything({ maxDepth: 3 })),
      fc.boolean(),
      (value, asJson) => {
        let text: string
        try {
          text = asJson ? (JSON.stringify(value) ?? '') : stringifyYaml(value)
        } catch {
          return // not serialisable (a symbol, a function): nothing a file can hold
        }
        assertSane(text)
      },
    ),
  )
})

test('property: valid configs parse to exactly what they say, and a parsed config round-trips', () => {
  fc.assert(
    fc.property(validConfig, fc.boolean(), ({ input, expected }, flow) => {
      const text = stringifyYaml(input, flow ? { collectionStyle: 'flow' } : {})
      const r = outcome(text)
      if (r instanceof ConfigError) assert.fail(`valid config rejected:\n${text}\n${r.message}`)
      assert.deepEqual(plain(r), expected, text)
      assertValidOutput(r)
      // written back and read again: the same config, and a reload would report no change
      const again = parseConfig(stringifyYaml(toInput(r)), 'again.yml')
      assert.deepEqual(plain(again), plain(r))
      assert.deepEqual(describeChanges(r, again), [])
      // the same document as JSON (JSON is YAML)
      assert.deepEqual(plain(parseConfig(JSON.stringify(input), 'json.yml')), expected)
    }),
  )
})

test('property: one bad setting in a valid config is reported at its path, with a reason', () => {
  const setting = fc.constantFrom(...Object.keys(badValues))
  const mutation = setting.chain((path) =>
    fc.tuple(fc.constant(path), badValues[path] as fc.Arbitrary<unknown>),
  )
  fc.assert(
    fc.property(validConfig, mutation, ({ input }, [path, bad]) => {
      const keys = path.split('.')
      const text = stringifyYaml(setPath(input, keys, bad))
      const r = outcome(text)
      assert.ok(r instanceof ConfigError, `accepted ${path} = ${JSON.stringify(bad)}:\n${text.slice(0, 500)}`)
      assertWellFormed(r)
      const where = formatPath(keys)
      if (r.problems.some((p) => p.path === '(yaml)' && p.message.includes('nested more than 64 levels'))) {
        return
      }
      assert.ok(
        r.problems.some(
          (p) => p.path === where || p.path.startsWith(`${where}[`) || p.path.startsWith(`${where}.`),
        ),
        `${path} = ${JSON.stringify(bad)?.slice(0, 100)}: no problem at ${where}: ${JSON.stringify(r.problems)}`,
      )
    }),
  )
})

test('property: an unknown key, however it is spelt and wherever it is, is reported at its path', () => {
  fc.assert(
    fc.property(
      validConfig,
      fc.constantFrom(...SECTIONS),
      oddKey,
      fc.oneof(fc.jsonValue({ maxDepth: 2 }), deep, hugeString),
      ({ input }, section, key, value) => {
        const target = setPath(input, [...section, '__marker__'], 0)
        let obj: Record<string, unknown> = target
        for (const k of section) obj = obj[k] as Record<string, unknown>
        delete obj['__marker__']
        if (Object.prototype.hasOwnProperty.call(obj, key) || knownKeys(section).includes(key)) return
        Object.defineProperty(obj, key, { value, enumerable: true, configurable: true, writable: true })
        const text = stringifyYaml(target)
        const r = outcome(text)
        assert.ok(
          r instanceof ConfigError,
          `unknown key ${JSON.stringify(key)} accepted:\n${text.slice(0, 500)}`,
        )
        assertWellFormed(r)
        const yamlProblem = r.problems.some((p) => p.path === '(yaml)')
        const where = formatPath([...section, key])
        assert.ok(
          yamlProblem || r.problems.some((p) => p.path === where && p.message.startsWith('unknown key')),
          `no unknown-key problem at ${where}: ${JSON.stringify(r.problems).slice(0, 500)}`,
        )
      },
    ),
  )
})

function knownKeys(section: readonly string[]): string[] {
  let v: unknown = defaultConfig
  for (const k of section) v = (v as Record<string, unknown>)[k]
  return Object.keys(v as object)
}

test('property: anchors and aliases mean what they refer to; alias bombs are refused', () => {
  // a list written once and reused: the same config as writing it twice
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 1, max: 65_535 }), { maxLength: 5 }),
      fc.shuffledSubarray([...LABELS], { minLength: 1 }),
      (ports, labels) => {
        const text = `labels: &l [${labels.join(', ')}]\nfilters:\n  netns: &p [${ports.join(', ')}]\n  ports: *p\n`
        const c = outcome(text)
        if (c instanceof ConfigError) assert.fail(`${text}\n${c.message}`)
        assert.deepEqual(c.filters.ports, ports)
        assert.deepEqual(c.filters.netns, ports)
        assert.deepEqual(c.labels, labels)
      },
    ),
  )
  // nested aliases that would expand to width^depth nodes
  fc.assert(
    fc.property(fc.integer({ min: 4, max: 12 }), fc.integer({ min: 3, max: 8 }), (width, depth) => {
      const lines = ['a0: &a0 [x]']
      for (let i = 1; i <= depth; i++) {
        lines.push(`a${i}: &a${i} [${new Array<string>(width).fill(`*a${i - 1}`).join(', ')}]`)
      }
      const r = outcome(`${lines.join('\n')}\n`)
      assert.ok(r instanceof ConfigError)
      assertWellFormed(r)
    }),
    { numRuns: Math.min(RUNS, 50) },
  )
})

test('property: deep nesting anywhere is a ConfigError, never a crash', () => {
  fc.assert(
    fc.property(
      fc.oneof(fc.integer({ min: 1, max: 100 }), fc.integer({ min: 1, max: 20_000 })),
      fc.constantFrom('[', '{a: ', '- ', '{', '? '),
      (n, open) => {
        const close = open === '[' ? ']' : open.startsWith('{') ? '}' : ''
        const r = assertSane(`labels: ${open.repeat(n)}1${close.repeat(n)}\n`)
        // past 64 levels in all (the document's own mapping is one) it is refused as such
        if (n >= 64 && open !== '- ') {
          assert.ok(
            r instanceof ConfigError && r.problems.some((p) => p.message.includes('nested more than 64')),
          )
        }
      },
    ),
    { numRuns: Math.min(RUNS, 60) },
  )
})

test('property: an explicit YAML tag on any value gives the same config or a problem at that value', () => {
  // Scalar tags (!!str, !!null, ...) may turn a valid value into another valid one: only sanity is checked
  // for them. Collection and YAML 1.1 tags must never change a config silently.
  const SCALAR_TAGS = ['str', 'int', 'float', 'bool', 'null']
  const STRICT_TAGS = ['map', 'seq', 'set', 'omap', 'pairs', 'binary', 'timestamp']
  fc.assert(
    fc.property(
      validConfig,
      fc.nat(),
      fc.constantFrom(...SCALAR_TAGS, ...STRICT_TAGS),
      ({ input, expected }, pick, tag) => {
        const nodes = valuePaths(input)
        if (nodes.length === 0) return
        const path = nodes[pick % nodes.length] as Array<string | number>
        const doc = new Document(input)
        const value = doc.getIn(path) as unknown
        if ((tag === 'omap' || tag === 'pairs') && isPlainMapping(value)) {
          // how these tags are meant to be written: a sequence of single-pair mappings
          doc.setIn(path, doc.createNode(Object.entries(value).map(([k, v]) => ({ [k]: v }))))
        }
        const node = doc.getIn(path, true) as { tag?: string } | undefined
        if (node === undefined || typeof node !== 'object') return
        node.tag = `tag:yaml.org,2002:${tag}`
        const text = String(doc)
        const r = assertSane(text)
        if (SCALAR_TAGS.includes(tag)) return
        if (!(r instanceof ConfigError)) {
          assert.deepEqual(plain(r), expected, `!!${tag} at ${formatPath(path)} changed the config:\n${text}`)
          return
        }
        assertWellFormed(r)
        const where = formatPath(path)
        assert.ok(
          r.problems.some(
            (p) =>
              p.path === '(yaml)' || p.path === where || where.startsWith(p.path) || p.path.startsWith(where),
          ),
          `!!${tag} at ${where}: ${JSON.stringify(r.problems)}\n${text}`,
        )
      },
    ),
  )
})

function isPlainMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Map)
}

/** The path of every value in a plain object tree, collections included. */
function valuePaths(v: unknown, path: Array<string | number> = []): Array<Array<string | number>> {
  const out: Array<Array<string | number>> = path.length > 0 ? [path] : []
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...valuePaths(x, [...path, i])))
  else if (typeof v === 'object' && v !== null) {
    for (const [k, x] of Object.entries(v)) out.push(...valuePaths(x, [...path, k]))
  }
  return out
}
