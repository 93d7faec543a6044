// The benchmark report: bench/results/latest.md (markdown tables) and bench/results/cost-ratios.svg (a bar
// chart of CPU per connection relative to no tracing), from bench/results/overhead.json and
// bench/results/scrape-cost.json. Either input may be missing; the report says so.
//
//   node --import tsx bench/report.ts [--overhead FILE] [--scrape FILE] [--out-dir DIR] [--print]
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'

import { packageRoot } from '../src/kernel/paths.js'
import { writeFormatted } from './lib/common.js'

const RESULTS = path.join(packageRoot, 'bench', 'results')
/** The CPU-per-connection target line of the chart: at most 3 % over no tracing. */
const RATIO_TARGET = 1.03

// ---- input shapes (as far as the report relies on them; everything else is rendered generically) ----------

interface Target {
  measure: string
  target: string | number
  value: string | number | null
  met: boolean | null
  /** how the value was obtained */
  basis?: string
}

interface Summary {
  median: number
  min: number
  max: number
}

interface ConnCpu {
  median?: number
  min?: number
  max?: number
  ratioToNone?: number
  /** median over rounds of this setup / none of the same round; or that median with its min and max */
  pairedRatio?: number | Summary
  pairedDelta?: number | Summary
  [k: string]: unknown
}

interface Overhead {
  started?: string
  /** the setups in order: a list of names, or an object keyed by name (with descriptions) */
  setups?: unknown
  connCpuUs?: Record<string, ConnCpu>
  throughputConnPerSec?: unknown
  syscallNs?: unknown
  exactness?: unknown
  startup?: unknown
  targets?: Target[]
  [k: string]: unknown
}

interface ScrapeStats {
  p50Ms: number
  p99Ms: number
  meanMs: number
  bytes: number
  cpuMsPerScrape: number
  scrapes: number
}

interface ScrapeSize {
  target: number
  ports: number
  labelSets: number
  kernelEntries: number
  samples: number
  firstScrapeMs: number
  text: ScrapeStats
  openmetrics: ScrapeStats | null
  rssMb: { start: number; loaded: number; maxDuringScrapes: number; peakVmHWM: number }
  otherBusyPct?: number
  generation?: { wallMs: number; exporterCpuMs: number }
  changed?: {
    scrapes: number
    p50Ms: number
    p99Ms: number
    cpuMsPerScrape: number
    rssMb: { maxDuringPass: number; peakVmHWM: number }
  } | null
  profile?: {
    busyMs: number
    byArea: Array<{ area: string; pct: number }>
    inclusive: Array<{ fn: string; pct: number }>
    memory?: { peakMb: Record<string, number>; heapSpacesAtPeakMb: Record<string, { used: number }> }
  }
}

interface ScrapeCost {
  started?: string
  host?: Record<string, unknown>
  options?: { scrapes?: number; omScrapes?: number; changed?: number; client?: string }
  exporter?: { labels?: string[]; samplesPerPort?: number }
  targets?: Target[]
  sizes?: ScrapeSize[]
}

// ---- formatting ---------------------------------------------------------------------------------------------

/** Integers as they are, other numbers to 4 significant digits (1.029, 75.2, 417.9), no exponent. */
function num(x: number): string {
  if (!Number.isFinite(x) || Number.isInteger(x)) return String(x)
  return String(Number(x.toPrecision(Math.max(4, Math.ceil(Math.log10(Math.abs(x) + 1))))))
}

const isPlainObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v)

/** {median, min, max} (and nothing else but numbers): shown as one value, `median (min to max)`. */
function isSummary(v: unknown): v is Summary {
  return (
    isPlainObject(v) &&
    typeof v['median'] === 'number' &&
    typeof v['min'] === 'number' &&
    typeof v['max'] === 'number' &&
    Object.values(v).every((x) => typeof x === 'number')
  )
}

const medianOf = (v: number | Summary | undefined): number | undefined => (isSummary(v) ? v.median : v)

function cell(v: unknown): string {
  let s: string
  if (v === null || v === undefined) s = '–'
  else if (isSummary(v)) s = `${num(v.median)} (${num(v.min)} to ${num(v.max)})`
  else if (typeof v === 'number') s = num(v)
  else if (typeof v === 'boolean') s = v ? 'yes' : 'no'
  else if (typeof v === 'string') s = v
  else if (Array.isArray(v) && v.every((x) => typeof x !== 'object')) s = v.map((x) => cell(x)).join(', ')
  else if (Array.isArray(v)) s = `${v.length} entries (see the JSON)`
  else s = '`' + JSON.stringify(v) + '`'
  return s.replace(/\|/g, '\\|').replace(/\n/g, ' ')
}

function table(header: readonly string[], rows: ReadonlyArray<readonly unknown[]>, align?: string): string {
  const sep = header.map((_, i) => (align?.[i] === 'l' ? '---' : i === 0 ? '---' : '---:'))
  return [
    `| ${header.join(' | ')} |`,
    `| ${sep.join(' | ')} |`,
    ...rows.map((r) => `| ${r.map((v) => cell(v)).join(' | ')} |`),
  ].join('\n')
}

/** A value shown in one cell: not an object, or a summary, or a list. */
const isLeaf = (v: unknown): boolean => !isPlainObject(v) || isSummary(v)

/** Leaf values of an object by dotted path (`mismatch.connects`), at most `depth` levels down. */
function flatten(v: Record<string, unknown>, prefix = '', depth = 3): Array<[string, unknown]> {
  return Object.entries(v).flatMap(([k, x]): Array<[string, unknown]> =>
    isLeaf(x) || depth <= 1
      ? [[prefix + k, x]]
      : flatten(x as Record<string, unknown>, `${prefix}${k}.`, depth - 1),
  )
}

/**
 * Any JSON value as markdown, for overhead.json's parts whose exact shape this report does not rely on:
 * a list of objects as a table; an object whose object-valued entries share their keys (per-setup
 * statistics) as a table with one row per entry, its other entries listed after it; any other object as
 * a table of its leaf values by path; anything else as text. {median, min, max} shows as one value.
 */
function generic(v: unknown, keyName = 'setup'): string {
  if (Array.isArray(v) && v.length > 0 && v.every(isPlainObject)) {
    const cols = [...new Set(v.flatMap((o) => Object.keys(o)))]
    return table(
      cols,
      v.map((o) => cols.map((c) => o[c])),
    )
  }
  if (!isPlainObject(v)) return cell(v)
  const records = Object.entries(v).filter(([, x]) => !isLeaf(x)) as Array<[string, Record<string, unknown>]>
  const keys = records.map(([, x]) => Object.keys(x))
  const shared = keys[0]?.filter((k) => keys.every((ks) => ks.includes(k))) ?? []
  const uniform = records.length >= 2 && shared.length >= Math.max(1, ...keys.map((ks) => ks.length)) / 2
  if (!uniform) return table(['measure', 'value'], flatten(v))
  const cols = [...new Set(keys.flat())]
  const rest = Object.entries(v).filter(([, x]) => isLeaf(x))
  return [
    table(
      [keyName, ...cols],
      records.map(([k, x]) => [k, ...cols.map((c) => x[c])]),
    ),
    ...(rest.length > 0 ? ['', table(['measure', 'value'], rest)] : []),
  ].join('\n')
}

function readJson<T>(file: string): { data: T | undefined; note: string | undefined } {
  if (!existsSync(file)) return { data: undefined, note: `${path.relative(packageRoot, file)} not found` }
  try {
    return { data: JSON.parse(readFileSync(file, 'utf8')) as T, note: undefined }
  } catch (err) {
    return {
      data: undefined,
      note: `${path.relative(packageRoot, file)} unreadable: ${(err as Error).message}`,
    }
  }
}

/** The setups in the order overhead.json gives them (`setups`: a list, or an object keyed by name). */
function setupOrder(o: Overhead | undefined): string[] {
  const conn = Object.keys(o?.connCpuUs ?? {})
  const given = Array.isArray(o?.setups)
    ? o.setups.map(String)
    : isPlainObject(o?.setups)
      ? Object.keys(o.setups)
      : []
  return [...new Set([...given.filter((s) => conn.includes(s)), ...conn])]
}

// ---- the chart ----------------------------------------------------------------------------------------------

// value labels get a white halo, so a grid or target line behind them does not cross the digits
const LABEL_ATTRS =
  'text-anchor="middle" font-size="11" fill="#222" stroke="#fff" stroke-width="3" paint-order="stroke"'

const esc = (s: string): string =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;')

/**
 * Bars of CPU per connection relative to no tracing, one group per setup: the ratio of medians and the
 * median of per-round paired ratios, starting at 1.0 (no overhead), with the min–max of the setup's runs
 * over the median of 'none' as a whisker, and the target as a dashed line.
 */
export function costRatiosSvg(conn: Record<string, ConnCpu>, order: readonly string[]): string {
  const setups = order.filter((s) => conn[s] !== undefined)
  const none = conn['none']?.median
  const bars = setups.map((s) => {
    const c = conn[s] ?? {}
    const ratio = c.ratioToNone ?? (none && c.median ? c.median / none : NaN)
    const p = c.pairedRatio
    return {
      setup: s,
      ratio,
      paired: medianOf(p) ?? NaN,
      // the spread: of the paired ratios over rounds when given, else of the runs over the median of none
      lo: isSummary(p) ? p.min : none && c.min !== undefined ? c.min / none : NaN,
      hi: isSummary(p) ? p.max : none && c.max !== undefined ? c.max / none : NaN,
    }
  })
  const pairedSpread = Object.values(conn).some((c) => isSummary(c.pairedRatio))
  const values = bars.flatMap((b) => [b.ratio, b.paired, b.lo, b.hi]).filter(Number.isFinite)
  const lo = Math.min(0.97, ...values) - 0.005
  const hi = Math.max(RATIO_TARGET + 0.02, ...values) + 0.005
  const tick = hi - lo <= 0.12 ? 0.01 : hi - lo <= 0.3 ? 0.02 : hi - lo <= 0.6 ? 0.05 : 0.1
  // the axis starts and ends on a labelled tick
  const yMin = Math.floor(lo / tick) * tick
  const yMax = Math.ceil(hi / tick) * tick
  const span = yMax - yMin

  const W = Math.max(680, 150 + setups.length * 150)
  const H = 420
  const m = { left: 90, right: 130, top: 56, bottom: 70 }
  const pw = W - m.left - m.right
  const ph = H - m.top - m.bottom
  const y = (v: number): number => m.top + ph - ((v - yMin) / span) * ph
  const groupW = pw / Math.max(1, setups.length)
  const barW = Math.min(44, groupW / 3)
  const out: string[] = []
  const text = (x: number, yy: number, s: string, attrs = ''): void => {
    out.push(`<text x="${x.toFixed(1)}" y="${yy.toFixed(1)}" ${attrs}>${esc(s)}</text>`)
  }

  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      `font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="13">`,
    `<rect width="${W}" height="${H}" fill="#ffffff"/>`,
  )
  text(
    W / 2,
    26,
    'CPU per connection, relative to no tracing',
    'text-anchor="middle" font-size="16" font-weight="bold"',
  )
  // grid and y axis
  for (let v = Math.ceil(yMin / tick - 1e-9) * tick; v <= yMax + 1e-9; v += tick) {
    const yy = y(v)
    out.push(
      `<line x1="${m.left}" x2="${m.left + pw}" y1="${yy.toFixed(1)}" y2="${yy.toFixed(1)}" stroke="#e4e4e4"/>`,
    )
    text(m.left - 8, yy + 4, v.toFixed(2), 'text-anchor="end" fill="#333"')
  }
  out.push(
    `<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="#333"/>`,
    `<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}" stroke="#333"/>`,
  )
  const yLabelX = 18
  const yLabelY = m.top + ph / 2
  text(
    yLabelX,
    yLabelY,
    'CPU per connection ÷ none',
    `text-anchor="middle" transform="rotate(-90 ${yLabelX} ${yLabelY})" fill="#333"`,
  )
  // baseline 1.0
  if (yMin < 1 && yMax > 1) {
    out.push(
      `<line x1="${m.left}" x2="${m.left + pw}" y1="${y(1).toFixed(1)}" y2="${y(1).toFixed(1)}" stroke="#555" stroke-width="1.5"/>`,
    )
  }
  // the target, under the bars and their labels
  if (RATIO_TARGET > yMin && RATIO_TARGET < yMax) {
    const ty = y(RATIO_TARGET)
    out.push(
      `<line x1="${m.left}" x2="${m.left + pw}" y1="${ty.toFixed(1)}" y2="${ty.toFixed(1)}" stroke="#c0392b" stroke-width="2" stroke-dasharray="7 5"/>`,
    )
    text(m.left + pw + 8, ty + 4, `target ≤ ${RATIO_TARGET.toFixed(2)}`, 'fill="#c0392b" font-weight="bold"')
  }
  // bars
  bars.forEach((b, i) => {
    const cx = m.left + groupW * (i + 0.5)
    const draw = (v: number, x: number, fill: string): void => {
      if (!Number.isFinite(v)) return
      const top = Math.min(y(v), y(1))
      const h = Math.max(1, Math.abs(y(v) - y(1)))
      out.push(
        `<rect x="${x.toFixed(1)}" y="${top.toFixed(1)}" width="${barW.toFixed(1)}" height="${h.toFixed(1)}" fill="${fill}"/>`,
      )
      text(x + barW / 2, v >= 1 ? top - 5 : top + h + 14, v.toFixed(3), LABEL_ATTRS)
    }
    draw(b.ratio, cx - barW - 2, '#3b6fb6')
    draw(b.paired, cx + 2, '#9dbbe3')
    if (Number.isFinite(b.lo) && Number.isFinite(b.hi)) {
      // next to the bar whose spread it is
      const wx = pairedSpread ? cx + barW + 12 : cx - barW - 12
      out.push(
        `<line x1="${wx.toFixed(1)}" x2="${wx.toFixed(1)}" y1="${y(b.lo).toFixed(1)}" y2="${y(b.hi).toFixed(1)}" stroke="#1d3557" stroke-width="1.5"/>`,
        `<line x1="${(wx - 5).toFixed(1)}" x2="${(wx + 5).toFixed(1)}" y1="${y(b.lo).toFixed(1)}" y2="${y(b.lo).toFixed(1)}" stroke="#1d3557" stroke-width="1.5"/>`,
        `<line x1="${(wx - 5).toFixed(1)}" x2="${(wx + 5).toFixed(1)}" y1="${y(b.hi).toFixed(1)}" y2="${y(b.hi).toFixed(1)}" stroke="#1d3557" stroke-width="1.5"/>`,
      )
    }
    text(cx, m.top + ph + 22, b.setup, 'text-anchor="middle" font-weight="bold" fill="#222"')
  })
  // legend
  const ly = H - 22
  const legend: Array<[string, string]> = [
    [`<rect x="0" y="${ly - 10}" width="12" height="12" fill="#3b6fb6"/>`, 'median ÷ median of none'],
    [`<rect x="0" y="${ly - 10}" width="12" height="12" fill="#9dbbe3"/>`, 'paired ratio (median of rounds)'],
    [
      `<line x1="6" x2="6" y1="${ly - 11}" y2="${ly + 2}" stroke="#1d3557" stroke-width="1.5"/>`,
      pairedSpread ? 'min–max of the paired ratios' : 'min–max of runs ÷ median of none',
    ],
  ]
  const shown = [true, bars.some((b) => Number.isFinite(b.paired)), bars.some((b) => Number.isFinite(b.lo))]
  let lx = m.left - 40
  for (const [mark, label] of legend.filter((_, i) => shown[i])) {
    out.push(`<g transform="translate(${lx} 0)">${mark}</g>`)
    text(lx + 17, ly, label, 'font-size="12"')
    lx += 17 + label.length * 7 + 24 // DejaVu Sans at 12 px: about 7 px per character
  }
  out.push('</svg>')
  return out.join('\n') + '\n'
}

// ---- the report ----------------------------------------------------------------------------------------------

function targetsTable(targets: readonly Target[]): string {
  const basis = targets.some((t) => typeof t.basis === 'string')
  return table(
    ['measure', 'target', 'value', 'result', ...(basis ? ['basis'] : [])],
    targets.map((t) => [
      t.measure,
      t.target,
      t.value,
      t.met === null || t.met === undefined ? 'not measured' : t.met ? 'met' : '**missed**',
      ...(basis ? [t.basis ?? ''] : []),
    ]),
    'lllll',
  )
}

function scrapeSection(sc: ScrapeCost): string[] {
  const sizes = sc.sizes ?? []
  const out: string[] = []
  out.push(
    `Exporter labels ${cell(sc.exporter?.labels ?? [])}; ${sc.exporter?.samplesPerPort ?? '?'} sample lines per port ` +
      `(one label set, both directions); ${sc.options?.scrapes ?? '?'} text-format and ${sc.options?.omScrapes ?? '?'} ` +
      'OpenMetrics scrapes per size, back to back, after 2 discarded warm-up scrapes. p99 is nearest-rank: ' +
      `with ${sc.options?.scrapes ?? '?'} scrapes${(sc.options?.scrapes ?? 0) < 100 ? ', the slowest one' : ''}. ` +
      '"first scrape" is the first one after the load, before any warm-up. ' +
      (sc.options?.changed
        ? `"all changed": ${sc.options.changed} more text-format scrapes, each after one more connection to ` +
          'every port, so that every label set changed since the previous scrape (CPU counted during the ' +
          'scrapes only). '
        : '') +
      `Client: ${sc.options?.client === 'fetch' ? 'fetch() (undici)' : 'node:http, the body read into Buffers'}.`,
    '',
    table(
      [
        'target samples',
        'samples',
        'label sets',
        'kernel entries',
        'p50 ms',
        'p99 ms',
        'first scrape ms',
        'CPU ms / scrape',
        'text MB',
        'OpenMetrics p50 / p99 ms',
        'OpenMetrics MB',
        'all changed p50 / p99 ms',
        'all changed CPU ms / scrape',
        'RSS loaded MB',
        'RSS max during scrapes MB',
        'RSS peak (VmHWM) MB',
      ],
      sizes.map((s) => [
        s.target,
        s.samples,
        s.labelSets,
        s.kernelEntries,
        s.text.p50Ms,
        s.text.p99Ms,
        s.firstScrapeMs,
        s.text.cpuMsPerScrape,
        s.text.bytes / 1e6,
        s.openmetrics ? `${num(s.openmetrics.p50Ms)} / ${num(s.openmetrics.p99Ms)}` : null,
        s.openmetrics ? s.openmetrics.bytes / 1e6 : null,
        s.changed ? `${num(s.changed.p50Ms)} / ${num(s.changed.p99Ms)}` : null,
        s.changed ? s.changed.cpuMsPerScrape : null,
        s.rssMb.loaded,
        s.rssMb.maxDuringScrapes,
        Math.max(s.rssMb.peakVmHWM, s.changed?.rssMb.peakVmHWM ?? 0),
      ]),
    ),
  )
  const gen = sizes.filter((s) => s.generation)
  if (gen.length > 0) {
    out.push(
      '',
      `Exporter CPU while the load was generated (every connection counted in the kernel, no JavaScript per ` +
        `event): ${gen.map((s) => `${num(s.generation?.exporterCpuMs ?? NaN)} ms for ${s.ports} connections`).join(', ')}.`,
    )
  }
  const profiled = sizes.filter((s) => s.profile)
  if (profiled.length > 0) {
    const pctOf = (s: ScrapeSize, area: string): number =>
      s.profile?.byArea.find((x) => x.area === area)?.pct ?? 0
    // the areas that are in some size's top 8, largest first (by their largest share)
    const areas = [
      ...new Set(profiled.flatMap((s) => (s.profile?.byArea ?? []).slice(0, 8).map((a) => a.area))),
    ].sort(
      (a, b) => Math.max(...profiled.map((s) => pctOf(s, b))) - Math.max(...profiled.map((s) => pctOf(s, a))),
    )
    out.push(
      '',
      '### Where the scrape time goes',
      '',
      "Self time of the exporter's main thread during text-format scrapes, from V8's sampling profiler " +
        '(a separate, profiled pass of back-to-back scrapes; % of busy time). Native frames count for the ' +
        'JavaScript that called them: `node core (native)` is mostly `writev`, writing the response to the ' +
        'socket; `addon (native)` is the batch read of the kernel map.',
      '',
      table(
        ['area', ...profiled.map((s) => `${s.target} samples %`)],
        areas.map((a) => [a, ...profiled.map((s) => pctOf(s, a))]),
        'l',
      ),
      '',
      'Inclusive time of named functions (% of busy time; `collect` covers reading and projecting the kernel ' +
        'map, `snapshot` the aggregator, `renderSet` rendering label sets whose series changed, `chunks` the ' +
        "connection families' lines, `render` the other families, `metrics` prom-client's process metrics):",
      '',
      table(
        ['function', ...profiled.map((s) => `${s.target} samples %`)],
        (profiled[0]?.profile?.inclusive ?? []).map((f) => [
          f.fn,
          ...profiled.map((s) => s.profile?.inclusive.find((x) => x.fn === f.fn)?.pct ?? 0),
        ]),
        'l',
      ),
    )
    const mem = profiled.filter((s) => s.profile?.memory)
    if (mem.length > 0) {
      out.push(
        '',
        'Memory of the profiled pass at its peak (process.memoryUsage() polled every 10 ms, MB):',
        '',
        table(
          ['', ...mem.map((s) => `${s.target} samples`)],
          [
            ['rss', ...mem.map((s) => s.profile?.memory?.peakMb['rss'])],
            ['V8 heap used', ...mem.map((s) => s.profile?.memory?.peakMb['heapUsed'])],
            ['  old space', ...mem.map((s) => s.profile?.memory?.heapSpacesAtPeakMb['old_space']?.used)],
            [
              '  large objects',
              ...mem.map(
                (s) =>
                  (s.profile?.memory?.heapSpacesAtPeakMb['large_object_space']?.used ?? 0) +
                  (s.profile?.memory?.heapSpacesAtPeakMb['new_large_object_space']?.used ?? 0),
              ),
            ],
            ['array buffers', ...mem.map((s) => s.profile?.memory?.peakMb['arrayBuffers'])],
          ],
          'l',
        ),
      )
    }
  }
  return out
}

export function buildReport(
  overhead: Overhead | undefined,
  overheadNote: string | undefined,
  scrape: ScrapeCost | undefined,
  scrapeNote: string | undefined,
  svgName: string | undefined,
): string {
  const out: string[] = ['# Benchmark results', '']
  const runs = [
    overhead ? `overhead: ${overhead.started ?? 'time unknown'}` : undefined,
    scrape ? `scrape cost: ${scrape.started ?? 'time unknown'}` : undefined,
  ].filter((x) => x !== undefined)
  const host = scrape?.host
  out.push(
    `Runs: ${runs.length > 0 ? runs.join('; ') : 'none'}.` +
      (host
        ? ` Host: ${cell(host['cpus'])} CPUs (${cell(host['cpuModel'])}), kernel ${cell(host['kernel'])}, Node ${cell(host['node'])}.`
        : ''),
    '',
  )
  for (const note of [overheadNote, scrapeNote]) if (note) out.push(`> ${note}.`, '')

  out.push('## Targets', '')
  const targets = [...(overhead?.targets ?? []), ...(scrape?.targets ?? [])]
  out.push(targets.length > 0 ? targetsTable(targets) : 'No results to check targets against.', '')

  if (overhead) {
    const conn = overhead.connCpuUs ?? {}
    const order = setupOrder(overhead)
    if (Object.keys(conn).length > 0) {
      out.push(
        '## Cost per connection',
        '',
        'Generator CPU per connection (connect, accept and close, both ends). "ratio to none" is the ' +
          'ratio of medians; "paired ratio" the median over rounds of this setup ÷ none of the same round ' +
          '(min to max in brackets); "paired Δ" the same for the difference.',
        '',
        table(
          ['setup', 'median µs', 'min µs', 'max µs', 'ratio to none', 'paired ratio', 'paired Δ µs'],
          order
            .filter((s) => conn[s])
            .map((s) => {
              const c = conn[s] ?? {}
              return [s, c.median, c.min, c.max, c.ratioToNone, c.pairedRatio, c.pairedDelta]
            }),
        ),
        '',
      )
      if (svgName) out.push(`![CPU per connection relative to no tracing](${svgName})`, '')
    }
    const parts: Array<[string, string, unknown]> = [
      ['Throughput', 'connections per second', overhead.throughputConnPerSec],
      ['Syscall overhead', 'ns per system call', overhead.syscallNs],
      ['Exactness', 'events generated and counted', overhead.exactness],
      ['Startup', '', overhead.startup],
    ]
    for (const [title, what, v] of parts) {
      if (v === undefined) continue
      out.push(`## ${title}`, '', ...(what ? [`(${what})`, ''] : []), generic(v, 'setup'), '')
    }
  }
  if (scrape) {
    out.push('## Scrape cost', '', ...scrapeSection(scrape), '')
  }
  return out.join('\n')
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      overhead: { type: 'string', default: path.join(RESULTS, 'overhead.json') },
      scrape: { type: 'string', default: path.join(RESULTS, 'scrape-cost.json') },
      'out-dir': { type: 'string', default: RESULTS },
      print: { type: 'boolean', default: false },
    },
    strict: true,
  })
  const outDir = path.resolve(values['out-dir'])
  const o = readJson<Overhead>(path.resolve(values.overhead))
  const s = readJson<ScrapeCost>(path.resolve(values.scrape))
  let svgName: string | undefined
  const conn = o.data?.connCpuUs
  if (conn && Object.keys(conn).length > 0) {
    const order = setupOrder(o.data)
    svgName = 'cost-ratios.svg'
    writeFileSync(path.join(outDir, svgName), costRatiosSvg(conn, order))
  }
  const md = buildReport(o.data, o.note, s.data, s.note, svgName)
  const mdFile = path.join(outDir, 'latest.md')
  await writeFormatted(mdFile, md)
  console.error(`wrote ${path.relative(process.cwd(), mdFile)}${svgName ? ` and ${svgName}` : ''}`)
  if (values.print) process.stdout.write(readFileSync(mdFile, 'utf8'))
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err)
  process.exit(1)
})
