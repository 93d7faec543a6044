// The Grafana dashboard and the alerting rules against the real thing: the exporter on the real kernel,
// a workload with known process names in a namespace this test creates, and a real Prometheus scraping
// the exporter as job "tcptracer". Every panel query of deploy/grafana/tcptracer-exporter.json must return
// data carrying the labels its legend names, and every rule of deploy/prometheus/rules.yml must load and
// evaluate cleanly.
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { describe, test } from 'node:test'
import { parse } from 'yaml'
import { packageRoot } from '../../../src/kernel/paths.js'
import { fixture, inNetns, JsonProcess, privileged, runClient, startDaemon, startServer } from '../harness.js'
import { Prometheus, sleep, until, type Series } from '../prometheus.js'

const { skip } = privileged()

const DASHBOARD = path.join(packageRoot, 'deploy', 'grafana', 'tcptracer-exporter.json')
const RULES = path.join(packageRoot, 'deploy', 'prometheus', 'rules.yml')

/** Process names of the workload. */
const CLI = 'tt-dash-cli'
const SRV = 'tt-dash-srv'
const HOLD = 'tt-dash-hold'
const HSRV = 'tt-dash-hsrv'
/** connections (and refused attempts) after the warm-up */
const N = 40

interface Target {
  refId: string
  expr: string
  legendFormat?: string
  format?: string
  instant?: boolean
}
interface Panel {
  type: string
  title: string
  targets?: Target[]
  panels?: Panel[]
}
interface Dashboard {
  panels: Panel[]
  templating: { list: Array<{ name: string; type: string; definition?: string }> }
}

/** Every panel, nested ones (collapsed rows) included, but not the rows themselves. */
function panelsOf(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [...(p.type === 'row' ? [] : [p]), ...panelsOf(p.panels ?? [])])
}

/** Labels a legend format names: {{comm}} {{direction}} → comm, direction. */
function legendLabels(legend: string | undefined): string[] {
  return [...(legend ?? '').matchAll(/\{\{\s*(\w+)\s*\}\}/g)].map((m) => m[1]!)
}

describe('the Grafana dashboard and the alerting rules on a real Prometheus', { skip }, () => {
  const fx = fixture('tt-dashboard-', { ns: `tt-dash-${process.pid}` })

  test('every panel query returns data with its legend labels; every rule loads and evaluates', async () => {
    const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard
    const cfg = path.join(fx.dir, 'config.yml')
    writeFileSync(cfg, `filters:\n  netns: [${fx.ns.inode}]\n`)
    const d = await startDaemon([`--config.file=${cfg}`])
    const background: JsonProcess[] = []
    let prom: Prometheus | undefined
    try {
      prom = await Prometheus.start(d, [RULES])
      const p = prom
      const instance = `127.0.0.1:${d.port}`
      await until('the exporter target to be up', 20000, async () =>
        (await p.value(`up{job="tcptracer", instance="${instance}"}`)) === 1 ? true : undefined,
      )

      // --- the workload ---
      const server = await startServer(fx.ns, ['--comm', SRV, '--forever'])
      background.push(server.proc)
      const connect = (args: string[]): Promise<unknown> =>
        runClient(fx.ns, ['--comm', CLI, '--addr', '127.0.0.1', ...args])
      // warm-up: the label sets exist in Prometheus before the counted load, so rate() sees all of it
      await connect(['--port', String(server.port), '--send', '100'])
      await connect(['--port', '1'])
      await until('the warm-up in Prometheus', 20000, async () => {
        const q = `count_over_time(tcptracer_connect_failures_total{job="tcptracer", comm="${CLI}", reason="refused"}[1m])`
        return ((await p.value(q)) ?? 0) >= 2 ? true : undefined
      })
      // a connection held open (active > 0 on both ends) while the dashboard is checked
      const hsrv = await startServer(fx.ns, ['--comm', HSRV, '--count', '1'])
      background.push(hsrv.proc)
      const holder = inNetns(fx.ns, [
        'client',
        '--comm',
        HOLD,
        '--addr',
        '127.0.0.1',
        '--port',
        String(hsrv.port),
        '--send',
        '10',
        '--hold-ms',
        '120000',
      ])
      background.push(holder)
      await holder.until(
        () => holder.lines.some((l) => l['event'] === 'connected'),
        10000,
        'the held connection',
      )
      // the counted load: N connections with 1000 bytes each, and N refused attempts
      await connect(['--port', String(server.port), '--count', String(N), '--send', '1000'])
      const refused = (await connect(['--port', '1', '--count', String(N)])) as Array<Record<string, unknown>>
      assert.equal(refused.filter((l) => l['event'] === 'failed').length, N)

      const sel = `job="tcptracer", netns="${fx.ns.inode}"`
      for (const [q, want] of [
        [`sum(tcptracer_connects_total{${sel}, comm="${CLI}"})`, N + 1],
        [`sum(tcptracer_connect_failures_total{${sel}, comm="${CLI}", reason="refused"})`, N + 1],
        [`sum(tcptracer_accepts_total{${sel}, comm="${SRV}"})`, N + 1],
        [`sum(tcptracer_active_connections{${sel}, comm=~"${HOLD}|${HSRV}"})`, 2],
      ] as const) {
        await until(`${q} == ${want}`, 20000, async () => ((await p.value(q)) === want ? true : undefined))
      }
      // two more scrapes after the load
      await sleep(2500)

      // --- the dashboard's variables ---
      const vars = Object.fromEntries(dashboard.templating.list.map((v) => [v.name, v]))
      const subst = (s: string): string =>
        s
          .replaceAll('$__rate_interval', '1m')
          .replaceAll('$__interval', '15s')
          .replace(/\$job\b/g, 'tcptracer')
          .replace(/\$instance\b/g, instance.replaceAll('.', '\\\\.'))
          .replace(/\$netns\b/g, '.*')
          .replace(/\$comm\b/g, '.*')
      const labelValues = async (name: string): Promise<string[]> => {
        const def = vars[name]?.definition ?? ''
        const m = /^label_values\((.*), *(\w+)\)$/.exec(def)
        assert.ok(m?.[1] && m[2], `variable ${name}: ${def}`)
        return await p.api<string[]>(`/api/v1/label/${m[2]}/values`, { 'match[]': subst(m[1]) })
      }
      assert.equal(vars['datasource']?.type, 'datasource')
      assert.ok((await labelValues('job')).includes('tcptracer'), 'variable job offers tcptracer')
      assert.ok((await labelValues('instance')).includes(instance), 'variable instance offers the exporter')
      assert.ok(
        (await labelValues('netns')).includes(String(fx.ns.inode)),
        'variable netns offers the namespace',
      )
      const comms = await labelValues('comm')
      for (const c of [CLI, SRV, HOLD, HSRV]) {
        assert.ok(comms.includes(c), `variable comm offers ${c}: ${comms}`)
      }

      // --- every panel target ---
      const results = new Map<string, Series[]>()
      let checked = 0
      for (const panel of panelsOf(dashboard.panels)) {
        assert.ok(panel.targets && panel.targets.length > 0, `${panel.title} has targets`)
        for (const t of panel.targets) {
          const expr = subst(t.expr)
          assert.doesNotMatch(expr.replaceAll('"$1"', ''), /\$/, `${panel.title}: every variable substituted`)
          const what = `${panel.title} ${t.refId}: ${expr}`
          const range = t.format === 'heatmap' || expr.includes('histogram_quantile')
          const series = range ? await p.queryRange(expr, 60, 2) : await p.query(expr)
          assert.ok(series.length > 0, `${what}: no data`)
          for (const label of legendLabels(t.legendFormat)) {
            for (const s of series) {
              assert.ok(
                label in s.metric,
                `${what}: legend {{${label}}} but a series lacks it: ${JSON.stringify(s.metric)}`,
              )
            }
          }
          results.set(`${panel.title}/${t.refId}`, series)
          checked++
        }
      }
      assert.ok(checked >= 30, `${checked} targets checked`)

      // --- the workload shows where it should ---
      const get = (key: string): Series[] => {
        const r = results.get(key)
        assert.ok(r, `panel target ${key} exists`)
        return r
      }
      const val = (s: Series | undefined): number => Number(s?.value?.[1] ?? NaN)
      const find = (key: string, labels: Record<string, string>): Series | undefined =>
        get(key).find((s) => Object.entries(labels).every(([k, v]) => s.metric[k] === v))
      const positive = (key: string, labels: Record<string, string>): void => {
        const v = val(find(key, labels))
        assert.ok(v > 0, `${key} ${JSON.stringify(labels)}: ${v} in ${JSON.stringify(get(key))}`)
      }
      positive('Connects/s by process/A', { comm: CLI })
      positive('Accepts/s by process/A', { comm: SRV })
      positive('Closes/s by process/A', { comm: CLI, direction: 'outbound' })
      positive('Closes/s by process/A', { comm: SRV, direction: 'inbound' })
      assert.equal(val(find('Active connections by process/A', { comm: HOLD, direction: 'outbound' })), 1)
      assert.equal(val(find('Active connections by process/A', { comm: HSRV, direction: 'inbound' })), 1)
      positive('Connect failures/s by process and reason/A', { comm: CLI, reason: 'refused' })
      positive('Connect failures/s by reason/A', { reason: 'refused' })
      const ratio = val(find('Connect failure ratio by process/A', { comm: CLI }))
      assert.ok(
        ratio > 0.4 && ratio < 0.6,
        `failure ratio of ${CLI}: ${ratio} (as many refused as connected)`,
      )
      positive('Bytes/s by process/A', { comm: CLI })
      positive('Bytes/s by process/B', { comm: SRV })
      // namespace panels show the ip netns name from tcptracer_netns_info
      for (const key of [
        'Connects/s by namespace/A',
        'Accepts/s by namespace/A',
        'Closes/s by namespace/A',
      ]) {
        positive(key, { name: fx.ns.name, netns: String(fx.ns.inode) })
      }
      assert.equal(val(find('Active connections by namespace/A', { name: fx.ns.name })), 2)
      const heat = get('Connection lifetime/A')
      assert.ok(
        heat.some((s) => s.metric['le'] === '+Inf' && (s.values ?? []).some(([, v]) => Number(v) > 0)),
        `the heatmap's +Inf bucket counts the closed connections: ${JSON.stringify(heat)}`,
      )
      const p99 = get('Connection lifetime quantiles/C')
      assert.ok(
        p99.some((s) => (s.values ?? []).some(([, v]) => Number.isFinite(Number(v)))),
        `a finite p99 lifetime: ${JSON.stringify(p99)}`,
      )
      assert.equal(val(find('Up/A', { instance })), 1)
      assert.equal(val(find('BPF programs attached/A', { program: 'handle_set_state' })), 1)

      // --- the rules: loaded, healthy, and the failure ratio alert sees the refused connects ---
      const ruleFile = parse(readFileSync(RULES, 'utf8')) as {
        groups: Array<{ name: string; rules: Array<{ alert?: string; record?: string }> }>
      }
      const names = ruleFile.groups.flatMap((g) => g.rules.map((r) => r.alert ?? r.record ?? ''))
      type Rule = { name: string; health: string; lastError?: string; type: string }
      const loaded = await until('every rule evaluated', 20000, async () => {
        const data = await p.api<{ groups: Array<{ name: string; rules: Rule[] }> }>('/api/v1/rules', {})
        const rules = data.groups.flatMap((g) => g.rules)
        return rules.length === names.length && rules.every((r) => r.health !== 'unknown') ? data : undefined
      })
      assert.deepEqual(
        loaded.groups.map((g) => g.name),
        ruleFile.groups.map((g) => g.name),
      )
      for (const r of loaded.groups.flatMap((g) => g.rules)) {
        assert.equal(r.health, 'ok', `rule ${r.name}: ${r.lastError ?? ''}`)
      }
      assert.deepEqual(loaded.groups.flatMap((g) => g.rules.map((r) => r.name)).sort(), [...names].sort())

      type Alert = { labels: Record<string, string>; state: string }
      const named = (alerts: Alert[], name: string): Alert[] =>
        alerts.filter((a) => a.labels['alertname'] === name)
      const alerts = await until(
        'TcptracerConnectFailureRatioHigh pending for the workload',
        20000,
        async () => {
          const data = await p.api<{ alerts: Alert[] }>('/api/v1/alerts', {})
          return named(data.alerts, 'TcptracerConnectFailureRatioHigh').some(
            (a) => a.labels['comm'] === CLI && a.labels['instance'] === instance && a.state === 'pending',
          ) && named(data.alerts, 'TcptracerKernelStateUnpinned').length > 0
            ? data.alerts
            : undefined
        },
      )
      // the daemon runs unpinned (the harness's default), which the unpinned-state alert sees
      assert.deepEqual(
        named(alerts, 'TcptracerKernelStateUnpinned').map((a) => [a.labels, a.state]),
        [
          [
            {
              alertname: 'TcptracerKernelStateUnpinned',
              instance,
              job: 'tcptracer',
              origin: 'unpinned',
              severity: 'info',
            },
            'pending',
          ],
        ],
      )
      const others = alerts.filter(
        (a) =>
          a.labels['alertname'] !== 'TcptracerConnectFailureRatioHigh' &&
          a.labels['alertname'] !== 'TcptracerKernelStateUnpinned',
      )
      assert.deepEqual(others, [], 'no other alert is active')
    } finally {
      for (const b of background) {
        if (b.child.exitCode === null && b.child.signalCode === null) b.child.kill('SIGTERM')
      }
      await Promise.all(background.map(async (b) => await b.exited))
      await prom?.stop()
      assert.equal(await d.stop('SIGTERM'), 0, 'the daemon exits 0 on SIGTERM')
    }
  })
})
