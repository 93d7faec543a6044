// deploy/: the Prometheus scrape config, alerting rules and their unit tests pass promtool; the Grafana
// dashboard is what its generator writes, and every query in it uses only documented metrics, the
// dashboard's job/instance filters and $__rate_interval.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { parse } from 'yaml'
import { dashboard, render, type Panel } from '../../deploy/grafana/dashboard.js'
import { packageRoot } from '../../src/kernel/paths.js'

const PROM_DIR = path.join(packageRoot, 'deploy', 'prometheus')
const RULES = path.join(PROM_DIR, 'rules.yml')
const SCRAPE = path.join(PROM_DIR, 'scrape.yml')
/** Grafana's reference to the dashboard's data source variable. */
const DATASOURCE = '$' + '{datasource}'
const DASHBOARD = path.join(packageRoot, 'deploy', 'grafana', 'tcptracer-exporter.json')

/** promtool, or why these tests skip: a missing promtool fails under CI=true. */
function promtoolAvailable(): false | string {
  const r = spawnSync('promtool', ['--version'], { encoding: 'utf8' })
  if (r.status === 0) return false
  const why = 'promtool is not installed (apt-get install prometheus)'
  if (process.env['CI'] === 'true') throw new Error(`${why}, and CI=true forbids skipping these tests`)
  console.warn(`\n*** SKIPPING PROMTOOL TESTS: ${why} ***\n`)
  return why
}

function promtool(args: string[]): void {
  const r = spawnSync('promtool', args, { encoding: 'utf8', cwd: packageRoot })
  assert.equal(r.status, 0, `promtool ${args.join(' ')} exited with ${r.status}:\n${r.stdout}${r.stderr}`)
}

describe('deploy/prometheus with promtool', { skip: promtoolAvailable() }, () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tt-deploy-'))
  after(() => rmSync(dir, { recursive: true, force: true }))

  test('rules.yml passes promtool check rules', () => {
    promtool(['check', 'rules', RULES])
  })

  test('rules.test.yml: every alert fires when it should and only then', () => {
    promtool(['test', 'rules', path.join(PROM_DIR, 'rules.test.yml')])
  })

  test('scrape.yml, with rules.yml loaded, passes promtool check config', () => {
    const cfg = path.join(dir, 'prometheus.yml')
    writeFileSync(cfg, `${readFileSync(SCRAPE, 'utf8')}\nrule_files:\n  - ${JSON.stringify(RULES)}\n`)
    promtool(['check', 'config', cfg])
  })

  test('the commented Kubernetes variant in scrape.yml is a valid config too', (t) => {
    const lines = readFileSync(SCRAPE, 'utf8').split('\n')
    const start = lines.findIndex((l) => /^ {2}# - job_name: tcptracer$/.test(l))
    assert.ok(start > 0, 'scrape.yml has a commented "- job_name: tcptracer" block')
    const block: string[] = []
    for (const l of lines.slice(start)) {
      if (!l.startsWith('  # ')) break
      block.push('  ' + l.slice(4))
    }
    const text = `scrape_configs:\n${block.join('\n')}\n`
    const job = (parse(text) as { scrape_configs: Array<Record<string, unknown>> }).scrape_configs[0]!
    assert.equal(job['job_name'], 'tcptracer')
    assert.equal(job['scrape_interval'], '15s')
    assert.deepEqual(job['kubernetes_sd_configs'], [{ role: 'pod' }])
    const keep = (job['relabel_configs'] as Array<Record<string, unknown>>).filter(
      (r) => r['action'] === 'keep',
    )
    assert.deepEqual(keep, [
      {
        source_labels: ['__meta_kubernetes_pod_label_app_kubernetes_io_name'],
        regex: 'tcptracer-exporter',
        action: 'keep',
      },
      { source_labels: ['__meta_kubernetes_pod_container_port_name'], regex: 'metrics', action: 'keep' },
    ])

    const cfg = path.join(dir, 'kubernetes.yml')
    writeFileSync(cfg, text)
    const r = spawnSync('promtool', ['check', 'config', cfg], { encoding: 'utf8' })
    if (r.status !== 0 && /field kubernetes_sd_configs not found/.test(r.stdout + r.stderr)) {
      // Debian's prometheus package is built without Kubernetes service discovery
      t.skip('this promtool has no Kubernetes service discovery')
      return
    }
    assert.equal(r.status, 0, `promtool check config (Kubernetes variant):\n${r.stdout}${r.stderr}`)
  })
})

interface RuleFile {
  groups: Array<{ name: string; rules: Array<Record<string, unknown>> }>
}

test('rules.yml: the tcptracer-exporter group; every alert has for, severity, summary, description', () => {
  const rules = parse(readFileSync(RULES, 'utf8')) as RuleFile
  const group = rules.groups.find((g) => g.name === 'tcptracer-exporter')
  assert.ok(group, 'group tcptracer-exporter')
  const alerts = group.rules.filter((r) => 'alert' in r)
  assert.deepEqual(alerts.map((r) => r['alert']).sort(), [
    'TcptracerCardinalityOverflow',
    'TcptracerConnectFailureRatioHigh',
    'TcptracerEventsLost',
    'TcptracerExporterDown',
    'TcptracerKernelMapFull',
    'TcptracerKernelStateUnpinned',
    'TcptracerProgramNotAttached',
  ])
  for (const r of alerts) {
    const name = String(r['alert'])
    assert.match(String(r['for']), /^\d+[smh]$/, `${name}: for`)
    const labels = r['labels'] as Record<string, string>
    // info: nothing is wrong with the counts now (TcptracerKernelStateUnpinned)
    assert.match(labels['severity'] ?? '', /^(info|warning|critical)$/, `${name}: severity`)
    const ann = r['annotations'] as Record<string, string>
    assert.ok(ann['summary'], `${name}: summary`)
    assert.match(ann['description'] ?? '', /Runbook:/, `${name}: description with a runbook hint`)
    assert.match(String(r['expr']), /job="tcptracer"/, `${name}: selects job="tcptracer"`)
  }
  // the rule tests cover every alert
  const tests = readFileSync(path.join(PROM_DIR, 'rules.test.yml'), 'utf8')
  for (const r of alerts) assert.match(tests, new RegExp(`alertname: ${String(r['alert'])}\\n`))
})

// ---- the dashboard, statically ----

/** Metric names documented in docs/metrics.md's tables, with a histogram's series names. */
function documentedMetrics(): Set<string> {
  const out = new Set<string>()
  const doc = readFileSync(path.join(packageRoot, 'docs', 'metrics.md'), 'utf8')
  for (const line of doc.split('\n')) {
    const m = /^\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*([a-z ()]+?)\s*\|/.exec(line)
    if (!m?.[1] || !m[2]) continue
    out.add(m[1])
    if (m[2] === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) out.add(m[1] + suffix)
  }
  return out
}

/** Connection metrics (docs/metrics.md, "Connection metrics"): they carry comm and netns. */
function connectionMetrics(): Set<string> {
  const doc = readFileSync(path.join(packageRoot, 'docs', 'metrics.md'), 'utf8')
  const section = doc.slice(doc.indexOf('## Connection metrics'), doc.indexOf('### Labels'))
  const out = new Set<string>()
  for (const m of section.matchAll(/^\|\s*`([a-z_]+)`\s*\|\s*([a-z]+)\s*\|/gm)) {
    out.add(m[1]!)
    if (m[2] === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) out.add(m[1] + suffix)
  }
  return out
}

const LIST_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right'])
const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan'])

/** The index just past the string literal that starts at i. */
function skipString(e: string, i: number): number {
  const quote = e[i]
  let j = i + 1
  while (j < e.length && e[j] !== quote) j += e[j] === '\\' ? 2 : 1
  return j + 1
}

/** The index just past the bracket that closes the one at i (strings inside are skipped). */
function skipGroup(e: string, i: number, open: string, close: string): number {
  let depth = 0
  let j = i
  while (j < e.length) {
    const ch = e[j]!
    if (ch === '"' || ch === "'" || ch === '`') {
      j = skipString(e, j)
      continue
    }
    if (ch === open) depth++
    if (ch === close && --depth === 0) return j + 1
    j++
  }
  return j
}

/** Each vector selector of a PromQL expression: its metric name ('' if none) and its `{...}` matchers. */
function selectors(e: string): Array<{ metric: string; matchers: string }> {
  const out: Array<{ metric: string; matchers: string }> = []
  let i = 0
  while (i < e.length) {
    const ch = e[i]!
    if (ch === '"' || ch === "'" || ch === '`') {
      i = skipString(e, i)
    } else if (ch === '[') {
      i = skipGroup(e, i, '[', ']')
    } else if (ch === '{') {
      const end = skipGroup(e, i, '{', '}')
      out.push({ metric: '', matchers: e.slice(i, end) })
      i = end
    } else if (/[0-9.]/.test(ch)) {
      i += /^[0-9.][0-9a-zA-Z._]*/.exec(e.slice(i))![0].length
    } else if (/[a-zA-Z_:]/.test(ch)) {
      const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(e.slice(i))![0]
      let j = i + name.length
      while (e[j] === ' ' || e[j] === '\n') j++
      if (/^(by|without)\b/.test(e.slice(j))) {
        i = j // an aggregation operator, its label list is skipped next
      } else if (LIST_KEYWORDS.has(name) && e[j] === '(') {
        i = skipGroup(e, j, '(', ')')
      } else if (KEYWORDS.has(name.toLowerCase()) || e[j] === '(') {
        i = j // an operator or a function
      } else if (e[j] === '{') {
        const end = skipGroup(e, j, '{', '}')
        out.push({ metric: name, matchers: e.slice(j, end) })
        i = end
      } else {
        out.push({ metric: name, matchers: '' })
        i = j
      }
    } else {
      i++
    }
  }
  return out
}

/** Every panel, rows' nested panels included. */
function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])])
}

describe('deploy/grafana/tcptracer-exporter.json', () => {
  const json = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
    schemaVersion: number
    panels: Panel[]
    templating: { list: Array<Record<string, unknown>> }
  }
  const panels = allPanels(json.panels).filter((p) => p.type !== 'row')
  const targets = panels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, ...t })))

  test('is what deploy/grafana/dashboard.ts generates, formatted', async () => {
    assert.deepEqual(
      json,
      JSON.parse(JSON.stringify(dashboard())),
      'run: node --import tsx deploy/grafana/dashboard.ts',
    )
    assert.equal(readFileSync(DASHBOARD, 'utf8'), await render())
  })

  test('schema, unique panel ids, every panel on the Prometheus data source variable', () => {
    assert.ok(json.schemaVersion >= 36 && json.schemaVersion <= 41, `schemaVersion ${json.schemaVersion}`)
    const ids = allPanels(json.panels).map((p) => p.id)
    assert.equal(new Set(ids).size, ids.length, 'panel ids are unique')
    assert.ok(panels.length >= 20, `${panels.length} panels`)
    for (const p of panels) {
      assert.deepEqual(p.datasource, { type: 'prometheus', uid: DATASOURCE }, p.title)
      assert.ok(p.gridPos.x + p.gridPos.w <= 24, `${p.title} fits the grid`)
    }
  })

  test('the datasource, job and instance variables (and netns, comm)', () => {
    const v = Object.fromEntries(json.templating.list.map((x) => [x['name'], x]))
    assert.equal(v['datasource']?.['type'], 'datasource')
    assert.equal(v['datasource']?.['query'], 'prometheus')
    assert.equal(v['job']?.['definition'], 'label_values(tcptracer_build_info, job)')
    assert.equal(v['instance']?.['definition'], 'label_values(tcptracer_build_info{job="$job"}, instance)')
    for (const name of ['instance', 'netns', 'comm']) {
      assert.equal(v[name]?.['multi'], true, `${name} is multi-value`)
      assert.equal(v[name]?.['allValue'], '.*', `${name}: All is .*`)
    }
  })

  test('every panel has targets, each with an expression and a unique refId', () => {
    for (const p of panels) {
      assert.ok(p.targets && p.targets.length > 0, `${p.title} has targets`)
      const refs = p.targets.map((t) => t.refId)
      assert.equal(new Set(refs).size, refs.length, `${p.title}: refIds are unique`)
      for (const t of p.targets) assert.ok(t.expr.trim() !== '', `${p.title} ${t.refId} has an expression`)
    }
  })

  test('every query uses only documented metrics, filtered on job and instance', () => {
    const documented = documentedMetrics()
    const connection = connectionMetrics()
    assert.ok(documented.has('tcptracer_connects_total') && documented.has('tcptracer_netns_info'))
    assert.ok(
      connection.has('tcptracer_connection_duration_seconds_bucket') &&
        !connection.has('tcptracer_netns_info'),
    )
    const variableQueries = json.templating.list
      .filter((x) => x['type'] === 'query')
      .map((x) => {
        const def = String(x['definition'])
        const m = /^label_values\((.*), *(\w+)\)$/.exec(def)
        assert.ok(m?.[1], `variable ${String(x['name'])}: ${def} is label_values(selector, label)`)
        return { panel: `variable ${String(x['name'])}`, expr: m[1] }
      })
    for (const t of [...targets, ...variableQueries]) {
      const sels = selectors(t.expr)
      assert.ok(sels.length > 0, `${t.panel}: ${t.expr} selects something`)
      for (const { metric, matchers } of sels) {
        const what = `${t.panel}: ${metric} in ${t.expr}`
        assert.ok(
          documented.has(metric) || metric === 'up' || metric.startsWith('process_'),
          `${what}: undocumented metric`,
        )
        if (t.panel.startsWith('variable ') && metric === 'tcptracer_build_info') continue
        assert.match(matchers, /\bjob="\$job"/, `${what}: filters on job`)
        assert.match(matchers, /\binstance=~"\$instance"/, `${what}: filters on instance`)
        if (connection.has(metric) && !t.panel.startsWith('variable ')) {
          assert.match(matchers, /\bnetns=~"\$netns"/, `${what}: filters on netns`)
          assert.match(matchers, /\bcomm=~"\$comm"/, `${what}: filters on comm`)
        }
      }
    }
  })

  test('rate() and increase() always use $__rate_interval', () => {
    for (const t of targets) {
      const calls = t.expr.match(/\b(rate|irate|increase|delta|idelta|\w+_over_time)\s*\(/g) ?? []
      const ranges = t.expr.match(/\[[^\]]*\]/g) ?? []
      for (const r of ranges) assert.equal(r, '[$__rate_interval]', `${t.panel}: ${t.expr}`)
      assert.equal(ranges.length, calls.length, `${t.panel}: each range function has its range: ${t.expr}`)
      assert.doesNotMatch(
        t.expr,
        /\b(irate|delta|idelta)\s*\(/,
        `${t.panel}: counters go through rate/increase`,
      )
    }
    assert.ok(targets.some((t) => t.expr.includes('[$__rate_interval]')))
  })

  test('heatmap targets are in heatmap format, legends name only labels the query keeps', () => {
    for (const p of panels.filter((x) => x.type === 'heatmap')) {
      for (const t of p.targets ?? []) {
        assert.equal(t.format, 'heatmap', p.title)
        assert.match(t.expr, /\bby \(le\)/, p.title)
      }
    }
    for (const t of targets) {
      const by = /^sum by \(([^)]*)\)/.exec(t.expr)?.[1]
      if (by === undefined) continue
      const kept = new Set(by.split(',').map((l) => l.trim()))
      for (const [, label] of t.legendFormat.matchAll(/\{\{\s*(\w+)\s*\}\}/g)) {
        assert.ok(kept.has(label!) || label === 'name', `${t.panel}: legend {{${label}}} but by (${by})`)
      }
    }
  })
})

test('the PromQL selector scanner used above', () => {
  assert.deepEqual(
    selectors(
      'sum by (comm, le) (rate(a_total{job="$job", x=~"}"}[$__rate_interval])) / on (instance) group_left (name) b or label_replace(c{}, "name", "$1", "netns", "(.*)") > 0.5 and time() - d offset 5m',
    ),
    [
      { metric: 'a_total', matchers: '{job="$job", x=~"}"}' },
      { metric: 'b', matchers: '' },
      { metric: 'c', matchers: '{}' },
      { metric: 'd', matchers: '' },
    ],
  )
})
