// The Dockerfile, read: enough of the format to check ours and to run its steps without a container
// engine (comments, line continuations, exec form, ENV and ARG, .dockerignore). Shared by
// deploy/node-lts.test.ts (static checks, the image's Node) and deploy/image-build.test.ts (the build, run).
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { packageRoot } from '../../src/kernel/paths.js'

export const KNOWN = new Set([
  'ADD',
  'ARG',
  'CMD',
  'COPY',
  'ENTRYPOINT',
  'ENV',
  'EXPOSE',
  'FROM',
  'HEALTHCHECK',
  'LABEL',
  'MAINTAINER',
  'ONBUILD',
  'RUN',
  'SHELL',
  'STOPSIGNAL',
  'USER',
  'VOLUME',
  'WORKDIR',
])

export interface Instruction {
  line: number
  keyword: string
  args: string
}

export interface Stage {
  name: string | undefined
  base: string
  instructions: Instruction[]
}

/** Instructions in order; comment lines are dropped, also inside continuations, as Docker does. */
export function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = []
  let buf: string | undefined
  let start = 0
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.replace(/\r$/, '')
    const trimmed = line.trim()
    if (trimmed === '' || trimmed.startsWith('#')) continue
    if (buf === undefined) {
      buf = ''
      start = i + 1
    }
    const cont = /\\[ \t]*$/.exec(line)
    if (cont) {
      buf += line.slice(0, cont.index) + ' '
      continue
    }
    buf += line
    const m = /^\s*(\S+)\s*([\s\S]*)$/.exec(buf)
    out.push({ line: start, keyword: (m?.[1] ?? '').toUpperCase(), args: (m?.[2] ?? '').trim() })
    buf = undefined
  }
  assert.equal(buf, undefined, 'the Dockerfile ends inside a line continuation')
  return out
}

export function parseStages(ins: Instruction[]): Stage[] {
  const out: Stage[] = []
  for (const i of ins) {
    if (i.keyword === 'FROM') {
      const words = i.args.split(/\s+/).filter((w) => !w.startsWith('--'))
      assert.ok(
        words.length === 1 || (words.length === 3 && words[1]?.toUpperCase() === 'AS'),
        `line ${i.line}: FROM ${i.args}`,
      )
      out.push({ name: words[2], base: words[0] ?? '', instructions: [] })
    } else if (out.length > 0) {
      out[out.length - 1]!.instructions.push(i)
    } else {
      assert.equal(i.keyword, 'ARG', `line ${i.line}: only ARG may come before the first FROM`)
    }
  }
  return out
}

/** The exec form (a JSON array of strings) of CMD, ENTRYPOINT, HEALTHCHECK ... CMD. */
export function execForm(args: string): string[] {
  const v = JSON.parse(args) as unknown
  assert.ok(Array.isArray(v) && v.every((x) => typeof x === 'string'), `not the exec form: ${args}`)
  return v as string[]
}

export const unquote = (s: string): string => (/^"[\s\S]*"$/.test(s) ? (JSON.parse(s) as string) : s)

/** ARG defaults, then LABEL pairs with ${ARG} substituted. */
export function labelsOf(stage: Stage): Map<string, string> {
  const args = new Map<string, string>()
  const labels = new Map<string, string>()
  for (const i of stage.instructions) {
    if (i.keyword === 'ARG') {
      const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$/.exec(i.args)
      assert.ok(m?.[1], `line ${i.line}: ARG ${i.args}`)
      args.set(m[1], unquote(m[2] ?? ''))
    } else if (i.keyword === 'LABEL') {
      for (const m of i.args.matchAll(/([\w.-]+)=("(?:[^"\\]|\\.)*"|\S+)/g)) {
        const value = unquote(m[2]!).replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a?: string, b?: string) => {
          return args.get((a ?? b)!) ?? ''
        })
        labels.set(m[1]!, value)
      }
    }
  }
  return labels
}

/** Packages named by `apt-get install` in a stage's RUN instructions. */
export function aptPackages(stage: Stage): string[] {
  const out: string[] = []
  for (const i of stage.instructions.filter((x) => x.keyword === 'RUN')) {
    for (const m of i.args.matchAll(/apt-get install((?:\s+(?!&&|;|\|)[^\s]+)+)/g)) {
      out.push(
        ...m[1]!
          .trim()
          .split(/\s+/)
          .filter((w) => !w.startsWith('-')),
      )
    }
  }
  return out
}

export const dockerfileText = readFileSync(path.join(packageRoot, 'Dockerfile'), 'utf8')

/** The HEALTHCHECK's command (exec form) and the capabilities node is given (`setcap <caps>=ep`). */
export function runtimeSpecifics(): { health: string[]; caps: string[] } {
  const runtime = parseStages(parseDockerfile(dockerfileText)).at(-1)!
  const health = runtime.instructions.findLast((i) => i.keyword === 'HEALTHCHECK')
  const hc = /^((?:--\S+\s+)*)CMD\s+(.*)$/.exec(health?.args ?? '')
  assert.ok(hc?.[2], `HEALTHCHECK [options] CMD [...]: ${health?.args}`)
  const runs = runtime.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.args)
  const setcap = /setcap\s+(\S+)=ep\s/.exec(runs.join('\n'))
  assert.ok(setcap?.[1], 'the runtime stage sets file capabilities on node')
  return { health: execForm(hc[2]), caps: setcap[1].split(',') }
}

/** The Node.js major the image is built on: `FROM node:<major>-bookworm`. */
export function imageNodeMajor(): number {
  const m = /^FROM\s+node:(\d+)-bookworm\s/m.exec(dockerfileText)
  assert.ok(m?.[1], 'the Dockerfile builds FROM node:<major>-bookworm')
  return Number(m[1])
}

/** `$NAME` and `${NAME}` replaced from vars, as Docker does in ENV, ARG, WORKDIR and COPY (unset: ''). */
export function expand(s: string, vars: ReadonlyMap<string, string>): string {
  return s.replace(/\\\$|\$\{(\w+)\}|\$(\w+)/g, (all, a?: string, b?: string) => {
    if (all === '\\$') return '$'
    return vars.get((a ?? b)!) ?? ''
  })
}

/** The pairs of ENV (`K=V ...`, or the legacy `K V`) and of ARG (`K[=V]`), expanded from vars. */
export function keyValues(
  keyword: 'ENV' | 'ARG',
  args: string,
  vars: ReadonlyMap<string, string>,
): Array<[string, string]> {
  const legacy = keyword === 'ENV' ? /^([A-Za-z_]\w*)\s+([\s\S]*)$/.exec(args) : null
  if (legacy && !legacy[1]!.includes('=')) return [[legacy[1]!, expand(legacy[2]!, vars)]]
  const out: Array<[string, string]> = []
  const re = /([A-Za-z_]\w*)(?:=("(?:[^"\\]|\\.)*"|'[^']*'|\S*))?(?:\s+|$)/y
  let m: RegExpExecArray | null
  while (re.lastIndex < args.length && (m = re.exec(args))) {
    const raw = m[2]
    assert.ok(raw !== undefined || keyword === 'ARG', `ENV ${args}: ${m[1]} has no value`)
    const value = raw?.startsWith("'") ? raw.slice(1, -1) : expand(unquote(raw ?? ''), vars)
    out.push([m[1]!, value])
    vars = new Map([...vars, [m[1]!, value]])
  }
  assert.equal(
    re.lastIndex,
    args.length,
    `${keyword} ${args}: not understood past ${args.slice(re.lastIndex)}`,
  )
  return out
}

export interface Copy {
  /** the stage named by --from=, else undefined (the build context) */
  from: string | undefined
  sources: string[]
  dest: string
}

/** A COPY instruction: --from= (other flags are refused), sources and destination, either form. */
export function parseCopy(i: Instruction): Copy {
  const words: string[] = []
  let rest = i.args
  let from: string | undefined
  for (;;) {
    const flag = /^--([\w-]+)(?:=(\S*))?\s+/.exec(rest)
    if (!flag) break
    assert.equal(flag[1], 'from', `line ${i.line}: COPY --${flag[1]} is not supported here`)
    from = flag[2]
    rest = rest.slice(flag[0].length)
  }
  words.push(...(rest.startsWith('[') ? execForm(rest) : rest.split(/\s+/)))
  assert.ok(words.length >= 2, `line ${i.line}: COPY needs a source and a destination`)
  for (const w of words) {
    assert.ok(!/[*?[]/.test(w), `line ${i.line}: COPY wildcards are not supported here: ${w}`)
  }
  return { from, sources: words.slice(0, -1), dest: words.at(-1)! }
}

/**
 * A .dockerignore file as Docker reads it: each pattern is a path from the context's root (a leading
 * or trailing / is dropped), `*` and `?` stay within a path component, `**` spans any number of them,
 * a pattern that matches a directory excludes everything under it, and a later `!pattern` takes an
 * earlier exclusion back. Returns whether a context-relative path is excluded.
 */
export function dockerignore(text: string): (rel: string) => boolean {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const negate = l.startsWith('!')
      const pattern = path.posix.normalize((negate ? l.slice(1) : l).trim()).replace(/^\/+|\/+$/g, '')
      let re = ''
      for (let k = 0; k < pattern.length; k++) {
        const c = pattern[k]!
        if (pattern.startsWith('**/', k)) {
          re += '(?:.*/)?'
          k += 2
        } else if (pattern.startsWith('**', k)) {
          re += '.*'
          k += 1
        } else if (c === '*') re += '[^/]*'
        else if (c === '?') re += '[^/]'
        else if (c === '[') {
          const end = pattern.indexOf(']', k + 1)
          assert.ok(end > k, `.dockerignore: unterminated [ in ${l}`)
          re += `[${pattern.slice(k + 1, end).replace(/^!/, '^')}]`
          k = end
        } else re += c.replace(/[\\^$.|+(){}]/g, '\\$&')
      }
      // the pattern, or the pattern and anything under it
      return { negate, re: new RegExp(`^${re}(?:/.*)?$`) }
    })
  return (rel) => {
    let excluded = false
    for (const r of rules) if (r.re.test(rel)) excluded = !r.negate
    return excluded
  }
}
