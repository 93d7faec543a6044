// The daemon's YAML config file: schema, error messages and reload diffs. Reading and parsing the YAML,
// its safety checks and the ConfigError it throws are in ./yaml.ts, shared with the web config.
//
// The zod schema below is the single source of truth: the `Config` type is its output, every key is
// optional with a default (so an empty file is the full default config), and every object is strict
// (a misspelt key is an error, not silently ignored). config.example.yml shows every key with its default.

import { z } from 'zod'

import { ACCEPT_MODES } from '../kernel/abi.js'
import { describeValue, expected, parseYaml, readConfigText, validate } from './yaml.js'

export { ConfigError, type ConfigProblem, describeValue, formatPath, MAX_NESTING } from './yaml.js'

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
// Building blocks

/**
 * A strict object whose absence means "all defaults": unknown keys are rejected naming the known ones, and
 * a missing object is parsed from `{}` so its own field defaults apply.
 */
function section<T extends z.core.$ZodLooseShape>(shape: T, what = 'a mapping of settings (key: value)') {
  // Unknown keys are reported per key by validate(), with the known keys and a guess (unknownKeyMessage).
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
// Unknown keys

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

/** Parse and validate config text; `file` names it in errors. Throws ConfigError, never anything else. */
export function parseConfig(text: string, file: string): Config {
  return validate(configSchema, parseYaml(text, file), file, unknownKeyMessage)
}

/** Read and parse a config file; no file means the default config. Throws ConfigError only. */
export async function loadConfig(file: string | undefined): Promise<Config> {
  if (file === undefined) return configSchema.parse({})
  return parseConfig(await readConfigText(file), file)
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
