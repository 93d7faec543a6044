// The daemon's YAML config file: schema, parsing, error reporting and reload diffs.
//
// The zod schema below is the single source of truth: the `Config` type is its output, every key is
// optional with a default (so an empty file is the full default config), and every object is strict
// (a misspelt key is an error, not silently ignored). config.example.yml shows every key with its default.

import { readFile } from 'node:fs/promises'

import { LineCounter, Parser, parseDocument } from 'yaml'
import { z } from 'zod'

import { ACCEPT_MODES } from '../kernel/abi.js'

/** Labels a metric can be broken down by. */
export const LABELS = ['comm', 'netns', 'family', 'pid', 'cgroup', 'port'] as const
export type Label = (typeof LABELS)[number]

const DEFAULT_LABELS: readonly Label[] = ['comm', 'netns', 'family']
const DEFAULT_BUCKETS: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
  300, 900, 1800, 3600,
]
const MIN_BUCKET_SECONDS = 1e-6
const MAX_BUCKET_SECONDS = 31_536_000
const MAX_BUCKETS = 30

// ---------------------------------------------------------------------------------------------------------
// Value rendering for messages

/** A short, unambiguous rendering of a YAML value for error messages: strings quoted, collections named. */
export function describeValue(v: unknown): string {
  if (typeof v === 'string') {
    const s = JSON.stringify(v)
    return s.length > 60 ? `${s.slice(0, 56)}..."` : s
  }
  if (v === null) return 'null (an empty value)'
  if (Array.isArray(v)) return 'a list'
  const tagged = yamlTypeName(v)
  if (tagged !== undefined) return tagged
  if (typeof v === 'object') return 'a mapping'
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v)
  return typeof v
}

/**
 * What the yaml library makes of its explicit YAML 1.1 tags (!!omap, !!pairs, !!set, !!binary,
 * !!timestamp, also resolved under a `%YAML 1.1` directive) that plain JSON-like data never holds.
 */
function yamlTypeName(v: unknown): string | undefined {
  if (v instanceof Map) return 'an ordered mapping (!!omap)'
  if (v instanceof Set) return 'a set (!!set)'
  if (v instanceof Date) return 'a timestamp (!!timestamp)'
  if (v instanceof Uint8Array) return 'binary data (!!binary)'
  return undefined
}

/** zod error-map callback shape: issues carry the offending input. */
type ErrorFn = (iss: { input?: unknown }) => string

/** An error map that always says `${expected}, got <value>`. */
const expected =
  (what: string): ErrorFn =>
  (iss) =>
    `expected ${what}, got ${describeValue(iss.input)}`

// ---------------------------------------------------------------------------------------------------------
// Building blocks

/**
 * A strict object whose absence means "all defaults": unknown keys are rejected naming the known ones, and
 * a missing object is parsed from `{}` so its own field defaults apply.
 */
function section<T extends z.core.$ZodLooseShape>(shape: T, what = 'a mapping of settings (key: value)') {
  // Unknown keys are reported per key by toProblems, with the known keys and a guess.
  const object = z.strictObject(shape, {
    error: (iss) => (iss.code === 'unrecognized_keys' ? 'unknown key' : expected(what)(iss)),
  })
  // Every field has a default, so {} is a valid input; TypeScript cannot see that for a generic shape.
  return object.prefault({} as z.input<typeof object>)
}

/** An integer in [min, max], with one message for every way of getting it wrong. */
function intRange(min: number, max: number) {
  const error = expected(`an integer from ${min} to ${max}`)
  return z.number({ error }).int({ error }).min(min, { error }).max(max, { error })
}

/** A list of integers in [min, max]. */
function intList(min: number, max: number, what: string) {
  return z.array(intRange(min, max), { error: expected(`a list of ${what}`) })
}

// Prometheus duration syntax (model.ParseDuration): each unit at most once, largest first, integers only.
const UNIT_MS = { y: 31_536_000_000, w: 604_800_000, d: 86_400_000, h: 3_600_000, m: 60_000, s: 1000, ms: 1 }
type Unit = keyof typeof UNIT_MS
const UNITS_DESC = Object.keys(UNIT_MS) as Unit[]
const DURATION_RE = /^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$/
const DURATION_ANY_ORDER_RE = /^(?:\d+(?:ms|[ywdhms]))+$/
const DURATION_HELP =
  'a duration such as 500ms, 90s, 10m or 1h30m (whole numbers with units ms, s, m, h, d, w, y, largest first) or a plain number of seconds'

/** Parse a Prometheus duration string to milliseconds, or return an explanation of why it is not one. */
export function parseDuration(text: string): number | { error: string } {
  if (text === '0') return 0
  const m = DURATION_RE.exec(text)
  if (m === null || text === '') {
    if (DURATION_ANY_ORDER_RE.test(text)) {
      return {
        error: `units must each appear once, largest first (y, w, d, h, m, s, ms), got ${describeValue(text)}`,
      }
    }
    return { error: `expected ${DURATION_HELP}, got ${describeValue(text)}` }
  }
  let ms = 0
  UNITS_DESC.forEach((unit, i) => {
    const n = m[i + 1]
    if (n !== undefined) ms += Number(n) * UNIT_MS[unit]
  })
  if (!Number.isSafeInteger(ms)) return { error: `duration ${describeValue(text)} is too long` }
  return ms
}

/** Render milliseconds in the Prometheus syntax parseDuration accepts (0 is "0s"). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s'
  let rest = ms
  let out = ''
  for (const unit of UNITS_DESC) {
    const n = Math.floor(rest / UNIT_MS[unit])
    if (n > 0) {
      out += `${n}${unit}`
      rest -= n * UNIT_MS[unit]
    }
  }
  return out
}

/**
 * A duration (Prometheus string or non-negative number of seconds) as milliseconds. z.custom() without a
 * check lets every value through to the transform, which explains any wrong type itself; its type parameter
 * only documents the input.
 */
const durationSchema = z.custom<string | number>().transform((v: unknown, ctx): number => {
  let ms: number | { error: string }
  if (typeof v === 'string') {
    ms = parseDuration(v)
  } else if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
    ms = { error: `expected ${DURATION_HELP}, got ${describeValue(v)}` }
  } else {
    // Whole milliseconds; a positive value must not round down to 0, which would mean "disabled".
    ms = Math.round(v * 1000)
    if (v > 0 && ms === 0) ms = { error: `durations are counted in whole milliseconds, got ${v} seconds` }
    else if (!Number.isSafeInteger(ms)) ms = { error: `duration ${v} seconds is too long` }
  }
  if (typeof ms === 'number') return ms
  ctx.addIssue({ code: 'custom', message: ms.error, input: v })
  return z.NEVER
})

/**
 * A comm regular expression, fully anchored like Prometheus relabelling. The pattern is first compiled on its
 * own so that something like `a)|(b` cannot escape the anchoring group.
 */
const commPattern = z.string({ error: expected('a regular expression (a string)') }).transform((re, ctx) => {
  try {
    // eslint-disable-next-line no-new -- compiled only to validate
    new RegExp(re, 'u')
    return new RegExp(`^(?:${re})$`, 'u')
  } catch (err) {
    ctx.addIssue({
      code: 'custom',
      message: `not a valid regular expression: ${(err as Error).message}`,
      input: re,
    })
    return z.NEVER
  }
})
const commPatterns = z
  .array(commPattern, { error: expected('a list of regular expressions') })
  .default(() => [])

/** The original text of a pattern compiled by commPattern (as escaped by RegExp#source). */
export function patternText(re: RegExp): string {
  const m = /^\^\(\?:([^]*)\)\$$/.exec(re.source)
  return m?.[1] ?? re.source
}

// ---------------------------------------------------------------------------------------------------------
// The schema

const labelError = (iss: { input?: unknown }) =>
  `${describeValue(iss.input)} is not a label; choose from ${LABELS.join(', ')}`

const bucketError = expected(`a number of seconds from ${MIN_BUCKET_SECONDS} to ${MAX_BUCKET_SECONDS}`)
const bucketCountError = (iss: { input?: unknown }) =>
  `must have 1 to ${MAX_BUCKETS} buckets, got ${Array.isArray(iss.input) ? iss.input.length : describeValue(iss.input)}`

export const configSchema = section(
  {
    /** Labels on every metric; each one multiplies the number of series. Unique; may be empty. */
    labels: z
      .array(z.enum(LABELS, { error: labelError }), {
        error: expected(`a list of labels from ${LABELS.join(', ')}`),
      })
      .superRefine((labels, ctx) => {
        labels.forEach((l, i) => {
          if (labels.indexOf(l) !== i) {
            ctx.addIssue({ code: 'custom', path: [i], message: `duplicate label "${l}"`, input: l })
          }
        })
      })
      .default(() => [...DEFAULT_LABELS]),

    /**
     * Accept attribution: the accept() caller from `fexit` or `kprobe` on inet_csk_accept or
     * the `syscall` exits, or the `listener` (the listen() caller); `auto` probes in that order
     * (without syscall, which slows every syscall).
     */
    accept_mode: z
      .enum(ACCEPT_MODES, { error: expected(`one of ${ACCEPT_MODES.join(', ')}`) })
      .default('auto'),

    /** The kernel's BTF from a file, for kernels without /sys/kernel/btf/vmlinux; null: the kernel's own. */
    btf_path: z
      .string({ error: expected('a file path') })
      .min(1, { error: 'must not be empty' })
      .refine((p) => !p.includes('\0'), { error: 'a file path cannot contain a NUL byte' })
      .nullable()
      .default(null),

    limits: section({
      /** Cap on distinct label sets per metric. */
      max_label_sets: intRange(1, 10_000_000).default(10_000),
      /** Label sets idle this long are removed, in milliseconds; 0 disables expiry. */
      idle_expiry: durationSchema.default(600_000),
      /** Size of the kernel map holding per-connection state. */
      max_connections: intRange(1024, 16_777_216).default(65_536),
      /** Size of the kernel map aggregating counters per label set. */
      max_kernel_label_sets: intRange(1024, 16_777_216).default(65_536),
    }),

    histogram: section({
      /** Upper bounds (seconds) of the connection-duration histogram buckets, strictly increasing. */
      buckets_seconds: z
        .array(
          z
            .number({ error: bucketError })
            .min(MIN_BUCKET_SECONDS, { error: bucketError })
            .max(MAX_BUCKET_SECONDS, { error: bucketError }),
          { error: expected('a list of bucket upper bounds in seconds') },
        )
        .min(1, { error: bucketCountError })
        .max(MAX_BUCKETS, { error: bucketCountError })
        .superRefine((b, ctx) => {
          for (let i = 1; i < b.length; i++) {
            const prev = b[i - 1] as number
            const cur = b[i] as number
            if (!(cur > prev)) {
              ctx.addIssue({
                code: 'custom',
                message: `must be strictly increasing (index ${i}: ${cur} after ${prev})`,
                input: b,
              })
              return
            }
          }
        })
        .default(() => [...DEFAULT_BUCKETS]),
    }),

    /** Which connections are counted at all. Empty lists mean "all". */
    filters: section({
      /** Network namespace inodes (as in `ls -l /proc/PID/ns/net`). */
      netns: intList(1, 4_294_967_295, 'network namespace inodes (integers from 1 to 4294967295)').default(
        () => [],
      ),
      /** Service ports: the local port of accepted connections, the remote port of outgoing ones. */
      ports: intList(1, 65_535, 'ports (integers from 1 to 65535)').default(() => []),
      comm: section({
        /** Process names to count: each is a fully anchored regular expression; empty = all. */
        include: commPatterns,
        /** Process names to drop, applied after include. */
        exclude: commPatterns,
      }),
    }),
  },
  'the config file to be a mapping of settings (key: value)',
)

/** The parsed config. `limits.idle_expiry` is in milliseconds; `filters.comm.*` are compiled RegExps. */
export type Config = z.output<typeof configSchema>
/** The config as written in YAML (every key optional). */
export type ConfigInput = z.input<typeof configSchema>

function deepFreeze<T>(v: T): T {
  if (typeof v === 'object' && v !== null && !(v instanceof RegExp)) {
    for (const child of Object.values(v)) deepFreeze(child)
    Object.freeze(v)
  }
  return v
}

/** The config an empty file gives. Frozen: it is shared. */
export const defaultConfig: Config = deepFreeze(configSchema.parse({}))

// ---------------------------------------------------------------------------------------------------------
// Errors

export interface ConfigProblem {
  /** Where: `limits.max_label_sets`, `labels[2]`, `(root)`, `(yaml)` or `(file)`. */
  path: string
  message: string
}

/** An invalid or unreadable config file; `message` has one `file: path: message` line per problem. */
export class ConfigError extends Error {
  override name = 'ConfigError'
  readonly file: string
  readonly problems: ConfigProblem[]

  constructor(file: string, problems: ConfigProblem[]) {
    super(problems.map((p) => `${file}: ${p.path}: ${p.message}`).join('\n'))
    this.file = file
    this.problems = problems
  }
}

/** `limits.max_label_sets`, `labels[2]`, `(root)`; odd keys are quoted: `limits["a b"]`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = ''
  for (const k of path) {
    if (typeof k === 'number') out += `[${k}]`
    else if (typeof k === 'string' && /^[A-Za-z_][\w-]*$/.test(k)) out += out === '' ? k : `.${k}`
    else out += `[${JSON.stringify(String(k))}]`
  }
  return out === '' ? '(root)' : out
}

/** At most this many problems are reported; the rest are summed up in one last line. */
const MAX_PROBLEMS = 20

function capped(problems: ConfigProblem[]): ConfigProblem[] {
  if (problems.length <= MAX_PROBLEMS) return problems
  const more = problems.length - (MAX_PROBLEMS - 1)
  return [
    ...problems.slice(0, MAX_PROBLEMS - 1),
    { path: '(more)', message: `${more} more problems not shown` },
  ]
}

/** zod issues to problems; an unknown-keys issue becomes one problem per key. */
function toProblems(issues: readonly z.core.$ZodIssue[]): ConfigProblem[] {
  return issues.flatMap((iss) =>
    iss.code === 'unrecognized_keys'
      ? iss.keys.map((k) => ({ path: formatPath([...iss.path, k]), message: unknownKeyMessage(iss.path, k) }))
      : [{ path: formatPath(iss.path), message: iss.message }],
  )
}

const isMapping = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof RegExp)

/** Every setting and section path (`limits`, `limits.idle_expiry`, ...), read off the defaults. */
function settingPaths(v: unknown, prefix = ''): string[] {
  if (!isMapping(v)) return []
  return Object.entries(v).flatMap(([k, child]) => {
    const path = prefix === '' ? k : `${prefix}.${k}`
    return [path, ...settingPaths(child, path)]
  })
}

/** `unknown key; known keys are ...`, plus a guess when the key looks misspelt or misplaced. */
function unknownKeyMessage(sectionPath: readonly PropertyKey[], key: string): string {
  let section: unknown = defaultConfig
  for (const k of sectionPath) section = isMapping(section) ? section[String(k)] : undefined
  const known = isMapping(section) ? Object.keys(section) : []
  const norm = key.toLowerCase().replace(/[-\s]+/g, '_')
  const guess =
    // A near miss in the same section: idle-expiry, port, max_conn, Labels ...
    known.find((k) => k === norm || editDistance(k, norm) <= Math.min(2, norm.length / 3)) ??
    known.find((k) => norm.length >= 4 && k.startsWith(norm)) ??
    // The right name in the wrong place: max_label_sets at the top level ...
    settingPaths(defaultConfig).find((p) => p.endsWith(`.${norm}`))
  return `unknown key; known keys are ${known.join(', ')}${guess === undefined ? '' : ` (did you mean ${guess}?)`}`
}

/** Levenshtein distance, for guessing misspelt keys. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const cur = [i]
    for (let j = 1; j <= b.length; j++) {
      const subst = (prev[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1)
      cur.push(Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, subst))
    }
    prev = cur
  }
  return prev[b.length] ?? 0
}

// ---------------------------------------------------------------------------------------------------------
// Parsing and loading

/**
 * Collections nested deeper than this are refused before the document is composed. The yaml library
 * composes, and converts to JavaScript, recursively: thousands of levels overflow the stack, and once
 * the stack has overflowed a few times V8 may abort the whole process ("RegExpCompiler Allocation failed"
 * is a fatal error, not an exception), which on SIGHUP would take the running daemon down. A real config
 * is 4 levels deep.
 */
export const MAX_NESTING = 64

/**
 * Where the first collection nested deeper than MAX_NESTING starts, or undefined. Reads the concrete
 * syntax tree, which the yaml library builds without recursion, with an explicit stack: any depth is safe.
 */
function tooDeep(text: string): { line: number; col: number } | undefined {
  const lines = new LineCounter()
  const stack: Array<[unknown, number]> = []
  for (const token of new Parser(lines.addNewLine).parse(text)) stack.push([token, 0])
  while (stack.length > 0) {
    const [node, depth] = stack.pop() as [unknown, number]
    if (typeof node !== 'object' || node === null) continue
    if (Array.isArray(node)) {
      for (const x of node) stack.push([x, depth])
      continue
    }
    let d = depth
    const { type, offset } = node as { type?: unknown; offset?: unknown }
    if (type === 'block-map' || type === 'block-seq' || type === 'flow-collection') {
      if (++d > MAX_NESTING) return lines.linePos(typeof offset === 'number' ? offset : 0)
    }
    for (const v of Object.values(node)) if (typeof v === 'object' && v !== null) stack.push([v, d])
  }
  return undefined
}

/** Parse and validate config text; `file` names it in errors. Throws ConfigError, never anything else. */
export function parseConfig(text: string, file: string): Config {
  let deep: ReturnType<typeof tooDeep>
  try {
    deep = tooDeep(text)
  } catch (err) {
    throw new ConfigError(file, [{ path: '(yaml)', message: (err as Error).message }])
  }
  if (deep !== undefined) {
    throw new ConfigError(file, [
      {
        path: '(yaml)',
        message: `line ${deep.line}, column ${deep.col}: collections are nested more than ${MAX_NESTING} levels deep`,
      },
    ])
  }
  // uniqueKeys (the default, made explicit) turns duplicate keys into errors; YAML 1.2 core schema, so
  // `yes`/`no`/`on` are strings and `<<` is an ordinary (and therefore unknown) key.
  let doc: ReturnType<typeof parseDocument>
  try {
    doc = parseDocument(text, { uniqueKeys: true, strict: true, prettyErrors: true, logLevel: 'error' })
  } catch (err) {
    throw new ConfigError(file, [{ path: '(yaml)', message: (err as Error).message }])
  }
  const yamlProblems = [...doc.errors, ...doc.warnings].map((e) => {
    const pos = e.linePos?.[0]
    const where = pos === undefined ? '' : `line ${pos.line}, column ${pos.col}: `
    // prettyErrors appends a source excerpt after the first line; keep the first line only.
    let msg = (e.message.split('\n')[0] ?? e.message).replace(/ at line \d+, column \d+:?$/, '')
    if (e.code === 'DUPLICATE_KEY') {
      // The error points at the second occurrence of the key: name it.
      const key = /^[^:\n]*/.exec(text.slice(e.pos[0]))?.[0].trim()
      if (key) msg += `: ${key} appears more than once`
    }
    return { path: '(yaml)', message: `${where}${msg}` }
  })
  if (yamlProblems.length > 0) throw new ConfigError(file, capped(yamlProblems))

  let data: unknown
  try {
    data = doc.toJS({ maxAliasCount: 100 })
  } catch (err) {
    throw new ConfigError(file, [{ path: '(yaml)', message: (err as Error).message }])
  }
  // An empty document (or one holding only comments, or a bare `~`) is all defaults.
  if (data === null || data === undefined) data = {}
  // zod would take a Map or a Set for a mapping with no keys, silently dropping what it holds.
  const typeProblems = yamlTypeProblems(data, [])
  if (typeProblems.length > 0) throw new ConfigError(file, capped(typeProblems))

  const result = configSchema.safeParse(data, {
    // Fallback for any issue without a custom message above.
    error: (iss) => `${iss.message ?? 'invalid value'}, got ${describeValue(iss.input)}`,
  })
  if (!result.success) throw new ConfigError(file, capped(toProblems(result.error.issues)))
  return result.data
}

/** A problem for every value below `v` that is not plain JSON-like data (see yamlTypeName). */
function yamlTypeProblems(v: unknown, path: PropertyKey[]): ConfigProblem[] {
  const tagged = yamlTypeName(v)
  if (tagged !== undefined) {
    return [
      {
        path: formatPath(path),
        message: `${tagged} is not supported: write a plain mapping, list or value, without a !! tag`,
      },
    ]
  }
  if (Array.isArray(v)) return v.flatMap((x, i) => yamlTypeProblems(x, [...path, i]))
  if (typeof v === 'object' && v !== null) {
    return Object.entries(v).flatMap(([k, x]) => yamlTypeProblems(x, [...path, k]))
  }
  return []
}

/** Read and parse a config file; no file means the default config. Throws ConfigError only. */
export async function loadConfig(file: string | undefined): Promise<Config> {
  if (file === undefined) return configSchema.parse({})
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new ConfigError(file, [{ path: '(file)', message: (err as Error).message }])
  }
  return parseConfig(text, file)
}

// ---------------------------------------------------------------------------------------------------------
// Reload diffs

const list = (items: readonly unknown[]): string => `[${items.join(', ')}]`
const patterns = (res: readonly RegExp[]): string => list(res.map((re) => JSON.stringify(patternText(re))))

/** Every setting, as a path and a renderer; used to report what a reload changed. */
const SETTINGS: ReadonlyArray<[path: string, render: (c: Config) => string]> = [
  ['labels', (c) => list(c.labels)],
  ['accept_mode', (c) => c.accept_mode],
  ['btf_path', (c) => c.btf_path ?? '(none)'],
  ['limits.max_label_sets', (c) => String(c.limits.max_label_sets)],
  ['limits.idle_expiry', (c) => formatDuration(c.limits.idle_expiry)],
  ['limits.max_connections', (c) => String(c.limits.max_connections)],
  ['limits.max_kernel_label_sets', (c) => String(c.limits.max_kernel_label_sets)],
  ['histogram.buckets_seconds', (c) => list(c.histogram.buckets_seconds)],
  ['filters.netns', (c) => list(c.filters.netns)],
  ['filters.ports', (c) => list(c.filters.ports)],
  ['filters.comm.include', (c) => patterns(c.filters.comm.include)],
  ['filters.comm.exclude', (c) => patterns(c.filters.comm.exclude)],
]

/** One `path: old -> new` line per setting that differs, in schema order; empty if nothing changed. */
export function describeChanges(old: Config, next: Config): string[] {
  const lines: string[] = []
  for (const [path, render] of SETTINGS) {
    const a = render(old)
    const b = render(next)
    if (a !== b) lines.push(`${path}: ${a} -> ${b}`)
  }
  return lines
}
