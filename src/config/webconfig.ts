// The web config file (--web.config.file): TLS, basic auth, extra response headers and a request rate
// limit, in the Prometheus exporter-toolkit format (docs/web-configuration.md in prometheus/exporter-toolkit).
//
// Like src/config/config.ts, it is read and parsed by ./yaml.ts (with the same safety checks and errors), a
// zod schema is the source of truth and every object is strict: a key we do not know is an error, and so
// is a key of the toolkit's format that we do not implement (never silently ignored). After the schema,
// the referenced files are read and checked by ./web-tls.ts (the certificate must match its key, a CA file
// must hold certificates), so a file that loads is one the server can use.

import { z } from 'zod'

import {
  CIPHER_SUITES,
  CLIENT_AUTH_TYPES,
  CURVES,
  loadTls,
  TLS_VERSIONS,
  tlsProblems,
  type TlsSettings,
} from './web-tls.js'

import {
  capped,
  ConfigError,
  describeValue,
  expected,
  formatPath,
  parseYaml,
  readConfigText,
  validate,
  type ConfigProblem,
} from './yaml.js'

export { CLIENT_AUTH_TYPES, type ClientAuthType, type TlsSettings } from './web-tls.js'

// ---------------------------------------------------------------------------------------------------------
// Vocabulary of the format (the TLS part is in ./web-tls.ts)

/** The response headers the toolkit lets a config set, with the only values allowed (empty: any). */
const HEADERS: Record<string, readonly string[]> = {
  'Strict-Transport-Security': [],
  'X-Content-Type-Options': ['nosniff'],
  'X-Frame-Options': ['deny', 'sameorigin'],
  'X-XSS-Protection': [],
  'Content-Security-Policy': [],
}

/**
 * Keys of the toolkit's format that tcptracer-exporter does not implement, with why and what to do instead.
 * They are rejected by name rather than ignored: a config that asks for them would otherwise run with less
 * protection than it says.
 */
const UNSUPPORTED: Record<string, string> = {
  'tls_server_config.client_allowed_sans':
    'not supported by tcptracer-exporter; use a client CA that issues only to allowed clients',
  'http_server_config.http2':
    'tcptracer-exporter serves HTTP/1.1 only (Prometheus scrapes over HTTP/1.1 too); remove the key or set it to false',
}

// ---------------------------------------------------------------------------------------------------------
// Schema

function strict<T extends z.core.$ZodLooseShape>(shape: T) {
  return z.strictObject(shape, {
    error: (iss) =>
      iss.code === 'unrecognized_keys' ? 'unknown key' : expected('a mapping (key: value)')(iss),
  })
}

const nonEmpty = (what: string) =>
  z.string({ error: expected(what) }).min(1, { error: `must not be empty; remove the key instead` })

const oneOf = <T extends string>(values: readonly T[], what: string) =>
  z
    .string({ error: expected(`${what}: one of ${values.join(', ')}`) })
    .refine((v): v is T => (values as readonly string[]).includes(v), {
      error: (iss) => `expected one of ${values.join(', ')}, got ${describeValue(iss.input)}`,
    })

const tlsVersion = oneOf(Object.keys(TLS_VERSIONS), 'a TLS version')

// Go's time.ParseDuration syntax, which the toolkit's rate_limit.interval uses: "1s", "1.5s", "1m30s", "250ms".
const GO_UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  μs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
}
const GO_DURATION_RE = /^(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h)/

/** Parse a Go duration (time.ParseDuration) to milliseconds; undefined if it is not one. */
export function parseGoDuration(text: string): number | undefined {
  if (text === '0') return 0
  let rest = text
  let ms = 0
  if (rest === '') return undefined
  while (rest !== '') {
    const m = GO_DURATION_RE.exec(rest)
    if (!m) return undefined
    const unit = /(?:ns|us|µs|μs|ms|s|m|h)$/.exec(m[0])![0]
    ms += Number(m[0].slice(0, -unit.length)) * GO_UNIT_MS[unit]!
    rest = rest.slice(m[0].length)
  }
  return Number.isFinite(ms) ? ms : undefined
}

const GO_DURATION_HELP = 'a duration such as "1s", "100ms" or "1m30s" (0 disables)'
const goDuration = z.custom<string | number>().transform((v: unknown, ctx): number => {
  const ms = v === 0 ? 0 : typeof v === 'string' ? parseGoDuration(v) : undefined
  if (ms === undefined) {
    ctx.addIssue({
      code: 'custom',
      message: `expected ${GO_DURATION_HELP}, got ${describeValue(v)}`,
      input: v,
    })
    return z.NEVER
  }
  return ms
})

/** A bcrypt hash as htpasswd -B and the toolkit's docs make them: $2a$/$2b$/$2y$, a cost, 53 characters. */
export const BCRYPT_RE = /^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$/

const bcryptHash = z
  .string({ error: expected('a bcrypt hash such as "$2y$10$..."') })
  .superRefine((h, ctx) => {
    const m = BCRYPT_RE.exec(h)
    const cost = m ? Number(m[1]) : NaN
    if (!m || cost < 4 || cost > 31) {
      ctx.addIssue({
        code: 'custom',
        message: `expected a bcrypt hash ($2a$, $2b$ or $2y$, cost 04 to 31, 60 characters; make one with \`htpasswd -nBC 10 "" | tr -d ':\\n'\`), got ${h.startsWith('$2') ? 'a malformed hash' : 'something else (a plain-text password?)'}`,
      })
    }
  })

const webConfigSchema = strict({
  tls_server_config: strict({
    cert: nonEmpty('a PEM certificate (a string)').optional(),
    key: nonEmpty('a PEM private key (a string)').optional(),
    client_ca: nonEmpty('PEM CA certificates (a string)').optional(),
    cert_file: nonEmpty('a file name').optional(),
    key_file: nonEmpty('a file name').optional(),
    client_ca_file: nonEmpty('a file name').optional(),
    client_auth_type: oneOf([...CLIENT_AUTH_TYPES, 'RequireClientCert'], 'a client auth type').optional(),
    min_version: tlsVersion.optional(),
    max_version: tlsVersion.optional(),
    cipher_suites: z
      .array(oneOf(Object.keys(CIPHER_SUITES), 'a cipher suite'), {
        error: expected('a list of cipher suites'),
      })
      .optional(),
    prefer_server_cipher_suites: z.boolean({ error: expected('true or false') }).optional(),
    curve_preferences: z
      .array(oneOf(Object.keys(CURVES), 'a curve'), { error: expected('a list of curves') })
      .optional(),
  }).optional(),
  http_server_config: strict({
    http2: z.boolean({ error: expected('true or false') }).optional(),
    headers: z
      .record(z.string(), z.string({ error: expected('a string') }), {
        error: expected('a mapping of header names to values'),
      })
      .optional(),
  }).optional(),
  basic_auth_users: z
    .record(z.string(), bcryptHash, { error: expected('a mapping of user names to bcrypt hashes') })
    .nullable()
    .optional(),
  rate_limit: strict({
    interval: goDuration.optional(),
    burst: z
      .number({ error: expected('an integer from 0') })
      .int({ error: expected('an integer from 0') })
      .min(0, {
        error: expected('an integer from 0'),
      })
      .optional(),
  }).optional(),
})

type RawWebConfig = z.output<typeof webConfigSchema>

// ---------------------------------------------------------------------------------------------------------
// The loaded config

export interface WebConfig {
  /** the file it was read from; undefined for the built-in "no TLS, no auth" */
  file: string | undefined
  tls: TlsSettings | undefined
  /** user name -> bcrypt hash; empty: no authentication */
  users: ReadonlyMap<string, string>
  /** extra response headers */
  headers: Readonly<Record<string, string>>
  /** token bucket: one token per intervalMs, up to burst; undefined: no limit */
  rateLimit: { intervalMs: number; burst: number } | undefined
}

export const EMPTY_WEB_CONFIG: WebConfig = {
  file: undefined,
  tls: undefined,
  users: new Map(),
  headers: {},
  rateLimit: undefined,
}

// ---------------------------------------------------------------------------------------------------------
// Parsing and loading

/** An unknown key's message: why, for a key of the toolkit's format we do not implement; else the known keys. */
function unknownKeyMessage(at: readonly PropertyKey[], key: string): string {
  return UNSUPPORTED[formatPath([...at, key])] ?? `unknown key; known keys are ${knownKeys(at).join(', ')}`
}

function knownKeys(at: readonly PropertyKey[]): string[] {
  let shape: unknown = webConfigSchema.shape
  for (const k of at) {
    const field = (shape as Record<string, { unwrap?: () => { shape?: unknown } } | undefined>)[String(k)]
    shape = field?.unwrap?.().shape
  }
  return Object.keys((shape as object | undefined) ?? {}).filter(
    (k) => UNSUPPORTED[formatPath([...at, k])] === undefined,
  )
}

/** Validate web config text against the schema only (no files read). Throws ConfigError. */
export function parseWebConfigText(text: string, file: string): RawWebConfig {
  const raw = validate(webConfigSchema, parseYaml(text, file), file, unknownKeyMessage)
  const problems: ConfigProblem[] = []
  if (raw.http_server_config?.http2 === true) {
    problems.push({ path: 'http_server_config.http2', message: UNSUPPORTED['http_server_config.http2']! })
  }
  for (const [name, value] of Object.entries(raw.http_server_config?.headers ?? {})) {
    const allowed = HEADERS[name]
    const at = formatPath(['http_server_config', 'headers', name])
    if (allowed === undefined) {
      problems.push({
        path: at,
        message: `this header cannot be set; the ones that can are ${Object.keys(HEADERS).join(', ')}`,
      })
    } else if (allowed.length > 0 && !allowed.includes(value)) {
      problems.push({
        path: at,
        message: `expected one of ${allowed.join(', ')}, got ${describeValue(value)}`,
      })
    } else if (/[\r\n\0]/.test(value)) {
      problems.push({ path: at, message: 'a header value cannot contain line breaks or NUL' })
    }
  }
  for (const user of Object.keys(raw.basic_auth_users ?? {})) {
    if (user === '' || user.includes(':')) {
      problems.push({
        path: formatPath(['basic_auth_users', user]),
        message:
          'a user name must not be empty or contain ":" (basic auth separates user and password with it)',
      })
    }
  }
  const rl = raw.rate_limit
  if (rl !== undefined && rl.interval !== undefined && rl.interval > 0 && (rl.burst ?? 0) < 1) {
    problems.push({
      path: 'rate_limit.burst',
      message: 'must be at least 1 when rate_limit.interval is set (0 would refuse every request)',
    })
  }
  if (raw.tls_server_config) problems.push(...tlsProblems(raw.tls_server_config))
  if (problems.length > 0) throw new ConfigError(file, capped(problems))
  return raw
}

/** Parse a web config and read and check the files it names. Throws ConfigError only. */
export async function parseWebConfig(text: string, file: string): Promise<WebConfig> {
  const raw = parseWebConfigText(text, file)
  const problems: ConfigProblem[] = []
  const tls =
    raw.tls_server_config === undefined ? undefined : await loadTls(file, raw.tls_server_config, problems)
  if (problems.length > 0) throw new ConfigError(file, capped(problems))
  const interval = raw.rate_limit?.interval ?? 0
  return {
    file,
    tls,
    users: new Map(Object.entries(raw.basic_auth_users ?? {})),
    headers: { ...(raw.http_server_config?.headers ?? {}) },
    rateLimit: interval > 0 ? { intervalMs: interval, burst: raw.rate_limit?.burst ?? 1 } : undefined,
  }
}

/** Read, parse and check a web config file; no file means no TLS and no auth. Throws ConfigError only. */
export async function loadWebConfig(file: string | undefined): Promise<WebConfig> {
  if (file === undefined) return EMPTY_WEB_CONFIG
  return await parseWebConfig(await readConfigText(file), file)
}

/** One line per difference that matters to an operator; secrets are not printed. */
export function describeWebChanges(old: WebConfig, next: WebConfig): string[] {
  const out: string[] = []
  const mode = (c: WebConfig) => (c.tls ? 'https' : 'http')
  if (mode(old) !== mode(next)) out.push(`transport: ${mode(old)} -> ${mode(next)}`)
  if (old.tls && next.tls) {
    const o = old.tls
    const n = next.tls
    if (o.context.cert !== n.context.cert || o.context.key !== n.context.key) {
      out.push('tls: certificate or key changed')
    }
    if (o.context.ca !== n.context.ca) out.push('tls: client CA changed')
    if (o.clientAuth !== n.clientAuth) out.push(`tls.client_auth_type: ${o.clientAuth} -> ${n.clientAuth}`)
    if (o.context.minVersion !== n.context.minVersion || o.context.maxVersion !== n.context.maxVersion) {
      out.push(
        `tls versions: ${o.context.minVersion}..${o.context.maxVersion} -> ${n.context.minVersion}..${n.context.maxVersion}`,
      )
    }
    if (o.context.ciphers !== n.context.ciphers || o.context.ecdhCurve !== n.context.ecdhCurve) {
      out.push('tls: cipher suites or curves changed')
    }
  }
  const added = [...next.users.keys()].filter((u) => !old.users.has(u))
  const removed = [...old.users.keys()].filter((u) => !next.users.has(u))
  const changed = [...next.users.keys()].filter(
    (u) => old.users.has(u) && old.users.get(u) !== next.users.get(u),
  )
  if (added.length) out.push(`basic_auth_users added: ${added.join(', ')}`)
  if (removed.length) out.push(`basic_auth_users removed: ${removed.join(', ')}`)
  if (changed.length) out.push(`basic_auth_users with a new password: ${changed.join(', ')}`)
  if (JSON.stringify(old.headers) !== JSON.stringify(next.headers)) {
    out.push('http_server_config.headers changed')
  }
  if (JSON.stringify(old.rateLimit) !== JSON.stringify(next.rateLimit)) {
    const r = (c: WebConfig) => (c.rateLimit ? `${c.rateLimit.intervalMs}ms/${c.rateLimit.burst}` : 'off')
    out.push(`rate_limit: ${r(old)} -> ${r(next)}`)
  }
  return out
}
