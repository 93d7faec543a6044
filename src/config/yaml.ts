// The YAML loader both config files go through (the config file and --web.config.file): reading the
// file, the safety checks on the text (nesting depth, duplicate keys, alias expansion, YAML 1.1 tags),
// validation against a zod schema, and the errors, which name the file and the path of each problem.
//
// Every check is here so that the two files cannot drift apart: a web config gets the same depth limit,
// the same named duplicate keys and the same cap on reported problems as the config file.

import { readFile } from 'node:fs/promises'

import { LineCounter, Parser, parseDocument } from 'yaml'
import type { z } from 'zod'

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
export const MAX_PROBLEMS = 20

/** The problems as reported: at most MAX_PROBLEMS, the last one counting those left out. */
export function capped(problems: ConfigProblem[]): ConfigProblem[] {
  if (problems.length <= MAX_PROBLEMS) return problems
  const more = problems.length - (MAX_PROBLEMS - 1)
  return [
    ...problems.slice(0, MAX_PROBLEMS - 1),
    { path: '(more)', message: `${more} more problems not shown` },
  ]
}

/** A ConfigError with one problem at `path`, whose message is the error's. */
function failure(file: string, path: string, err: unknown): ConfigError {
  return new ConfigError(file, [{ path, message: (err as Error).message }])
}

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
export const expected =
  (what: string): ErrorFn =>
  (iss) =>
    `expected ${what}, got ${describeValue(iss.input)}`

// ---------------------------------------------------------------------------------------------------------
// Reading and parsing

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

/**
 * Parse YAML text into plain JSON-like data; `file` names it in errors. An empty document (or one holding
 * only comments, or a bare `~`) is `{}`. Throws ConfigError, never anything else.
 */
export function parseYaml(text: string, file: string): unknown {
  let deep: ReturnType<typeof tooDeep>
  try {
    deep = tooDeep(text)
  } catch (err) {
    throw failure(file, '(yaml)', err)
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
    throw failure(file, '(yaml)', err)
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
    throw failure(file, '(yaml)', err)
  }
  if (data === null || data === undefined) data = {}
  // zod would take a Map or a Set for a mapping with no keys, silently dropping what it holds.
  const typeProblems = yamlTypeProblems(data, [])
  if (typeProblems.length > 0) throw new ConfigError(file, capped(typeProblems))
  return data
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

/** The text of a config file. Throws ConfigError (at `(file)`) only. */
export async function readConfigText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    throw failure(file, '(file)', err)
  }
}

// ---------------------------------------------------------------------------------------------------------
// Validation

/**
 * Validate parsed data against a schema. Each unknown key is its own problem, explained by `unknownKey`
 * (given the path of its mapping); at most MAX_PROBLEMS are reported. Throws ConfigError.
 */
export function validate<S extends z.ZodType>(
  schema: S,
  data: unknown,
  file: string,
  unknownKey: (at: readonly PropertyKey[], key: string) => string,
): z.output<S> {
  const result = schema.safeParse(data, {
    // Fallback for any issue without a custom message in the schema.
    error: (iss) => `${iss.message ?? 'invalid value'}, got ${describeValue(iss.input)}`,
  })
  if (result.success) return result.data
  const problems = result.error.issues.flatMap((iss) =>
    iss.code === 'unrecognized_keys'
      ? iss.keys.map((k) => ({ path: formatPath([...iss.path, k]), message: unknownKey(iss.path, k) }))
      : [{ path: formatPath(iss.path), message: iss.message }],
  )
  throw new ConfigError(file, capped(problems))
}
