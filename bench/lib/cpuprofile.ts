// Summaries of a V8 .cpuprofile (node --cpu-prof, inspector Profiler.stop): where the time of a window went, by self time per
// function and per source area, and inclusive time of named functions (collect, render, ...).
import { readFileSync } from 'node:fs'

interface CallFrame {
  functionName: string
  url: string
  lineNumber: number
}

interface ProfileNode {
  id: number
  callFrame: CallFrame
  children?: number[]
}

interface Profile {
  nodes: ProfileNode[]
  startTime: number
  endTime: number
  samples: number[]
  timeDeltas: number[]
}

export interface ProfileSummary {
  /** profiled time inside the window, ms (idle and excluded samples left out) */
  busyMs: number
  /** time of samples left out because a frame on their stack matched `exclude` (the profiler's own hook) */
  excludedMs: number
  windowMs: number
  /** self time by area (our source files by name, dependencies by package, V8 buckets) */
  byArea: Array<{ area: string; ms: number; pct: number }>
  /** the functions with most self time */
  topSelf: Array<{ fn: string; where: string; ms: number; pct: number }>
  /** inclusive time of the named functions (a function on the stack twice counts once) */
  inclusive: Array<{ fn: string; ms: number; pct: number }>
}

/**
 * The area of a frame. Native frames (C++ callbacks, V8 builtins) count for the JavaScript area that
 * called them: V8 names a native-addon frame after whichever function first used the addon's shared
 * callback trampoline, so their names cannot be trusted, but their callers can.
 */
function areaOf(f: CallFrame, caller: CallFrame | undefined): string {
  const { url, functionName } = f
  if (url === '') {
    if (functionName === '(garbage collector)') return 'garbage collector'
    if (functionName === '(idle)') return 'idle'
    if (functionName === '(program)') return 'V8/native (program)'
    if (!caller) return 'native (no JavaScript caller)'
    const c = areaOf(caller, undefined)
    if (c === 'src/kernel/tracer.ts' || c === 'src/kernel/binding.ts') return 'addon (native): map reads'
    return `${c} (native)`
  }
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (nm) return `dependency: ${nm[1]}`
  const own = /\/dist\/(src\/(?:[^/]+\/)?[^/]+)\.js$/.exec(url) ?? /\/(src\/(?:[^/]+\/)?[^/]+)\.ts$/.exec(url)
  if (own) return `${own[1]}.ts`
  if (url.startsWith('node:')) return 'node core'
  return url
}

function whereOf(f: CallFrame): string {
  const short = f.url.replace(/^.*\/node_modules\//, '').replace(/^.*\/dist\//, '')
  return short === '' ? '(native)' : `${short}:${f.lineNumber + 1}`
}

/**
 * Summarise the samples of `file` taken between `fromUs` and `toUs` (CLOCK_MONOTONIC µs, the clock of
 * process.hrtime and of V8's profile timestamps); the whole profile when no sample falls in the window.
 */
export function summarizeProfile(
  file: string,
  fromUs: number,
  toUs: number,
  inclusiveNames: readonly string[],
  exclude?: RegExp,
): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile
  const byId = new Map<number, ProfileNode>()
  const parent = new Map<number, number>()
  for (const n of p.nodes) {
    byId.set(n.id, n)
    for (const c of n.children ?? []) parent.set(c, n.id)
  }
  /** the nearest frame up the stack that is JavaScript (has a url) */
  const jsCaller = (id: number): CallFrame | undefined => {
    for (let cur = parent.get(id); cur !== undefined; cur = parent.get(cur)) {
      const f = byId.get(cur)?.callFrame
      if (f && f.url !== '') return f
    }
    return undefined
  }
  // sample i lasts until sample i + 1
  const times: number[] = []
  let t = p.startTime
  for (const d of p.timeDeltas) times.push((t += d))
  let inWindow = times.map((x) => x >= fromUs && x <= toUs)
  if (!inWindow.some(Boolean)) inWindow = times.map(() => true)
  const self = new Map<number, number>()
  let windowUs = 0
  for (let i = 0; i < p.samples.length; i++) {
    if (!inWindow[i]) continue
    const next = times[i + 1] ?? p.endTime
    const dt = Math.max(0, next - (times[i] ?? next))
    windowUs += dt
    const id = p.samples[i] ?? -1
    self.set(id, (self.get(id) ?? 0) + dt)
  }
  const excluded = (id: number): boolean => {
    if (!exclude) return false
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      if (exclude.test(byId.get(cur)?.callFrame.url ?? '')) return true
    }
    return false
  }
  let idleUs = 0
  let excludedUs = 0
  for (const [id, us] of self) {
    if (byId.get(id)?.callFrame.functionName === '(idle)') idleUs += us
    else if (excluded(id)) {
      excludedUs += us
      self.delete(id)
    }
  }
  const busyUs = windowUs - idleUs - excludedUs
  const pct = (us: number): number => (busyUs > 0 ? Math.round((1000 * us) / busyUs) / 10 : 0)
  const ms = (us: number): number => Math.round(us / 100) / 10

  const areas = new Map<string, number>()
  const fns = new Map<string, { fn: string; where: string; us: number }>()
  const incl = new Map<string, number>(inclusiveNames.map((n) => [n, 0]))
  for (const [id, us] of self) {
    const node = byId.get(id)
    if (!node) continue
    const area = areaOf(node.callFrame, jsCaller(id))
    if (area === 'idle') continue
    areas.set(area, (areas.get(area) ?? 0) + us)
    const key = `${node.callFrame.functionName}@${whereOf(node.callFrame)}`
    const f = fns.get(key) ?? {
      fn: node.callFrame.functionName || '(anonymous)',
      where: whereOf(node.callFrame),
      us: 0,
    }
    f.us += us
    fns.set(key, f)
    // inclusive: every named function on this sample's stack, once
    const seen = new Set<string>()
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const name = byId.get(cur)?.callFrame.functionName ?? ''
      if (incl.has(name) && !seen.has(name)) {
        seen.add(name)
        incl.set(name, (incl.get(name) ?? 0) + us)
      }
    }
  }
  return {
    busyMs: ms(busyUs),
    excludedMs: ms(excludedUs),
    windowMs: ms(windowUs),
    byArea: [...areas].sort((a, b) => b[1] - a[1]).map(([area, us]) => ({ area, ms: ms(us), pct: pct(us) })),
    topSelf: [...fns.values()]
      .sort((a, b) => b.us - a.us)
      .slice(0, 15)
      .map((f) => ({ fn: f.fn, where: f.where, ms: ms(f.us), pct: pct(f.us) })),
    inclusive: [...incl].map(([fn, us]) => ({ fn, ms: ms(us), pct: pct(us) })),
  }
}
