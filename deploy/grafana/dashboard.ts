// Generates tcptracer-exporter.json, the Grafana dashboard for tcptracer-exporter:
//
//   node --import tsx deploy/grafana/dashboard.ts
//
// Edit this file, not the JSON; test/unit/deploy-prometheus.test.ts checks that the two agree and that
// every query uses only documented metrics, the job/instance filters and $__rate_interval.
import { writeFile } from 'node:fs/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'
import * as prettier from 'prettier'

export const OUTPUT = fileURLToPath(new URL('./tcptracer-exporter.json', import.meta.url))

export interface Target {
  refId: string
  datasource: { type: 'prometheus'; uid: string }
  editorMode: 'code'
  expr: string
  legendFormat: string
  range: boolean
  instant: boolean
  format?: 'time_series' | 'table' | 'heatmap'
}

export interface Panel {
  id: number
  type: string
  title: string
  description?: string
  gridPos: { h: number; w: number; x: number; y: number }
  datasource?: { type: 'prometheus'; uid: string }
  targets?: Target[]
  fieldConfig?: unknown
  options?: unknown
  transformations?: unknown[]
  collapsed?: boolean
  panels?: Panel[]
}

/** Every panel and target queries the data source picked in the `datasource` variable. */
const DS = { type: 'prometheus', uid: '$' + '{datasource}' } as const

/** The filter of every query: the dashboard's job and instances. */
const SELF = 'job="$job", instance=~"$instance"'
/** Connection metrics are also filtered on the namespace and process variables. */
const CONN = `${SELF}, netns=~"$netns", comm=~"$comm"`

/** A connection metric selector. */
const c = (metric: string, extra = ''): string => `${metric}{${CONN}${extra === '' ? '' : `, ${extra}`}}`
/** A self-metric selector (no netns or comm labels). */
const s = (metric: string, extra = ''): string => `${metric}{${SELF}${extra === '' ? '' : `, ${extra}`}}`
const rate = (sel: string): string => `rate(${sel}[$__rate_interval])`
const increase = (sel: string): string => `increase(${sel}[$__rate_interval])`

/**
 * Adds a `name` label to a vector aggregated by (instance, netns): the namespace's name from
 * tcptracer_netns_info, or its inode for namespaces without one (the host's, for one).
 */
function withNetnsName(byInstanceNetns: string): string {
  return (
    `(${byInstanceNetns} * on (instance, netns) group_left (name) ${s('tcptracer_netns_info')})` +
    ` or on (instance, netns) label_replace(${byInstanceNetns}, "name", "$1", "netns", "(.*)")`
  )
}

interface TargetSpec {
  expr: string
  legend?: string
  format?: 'table' | 'heatmap'
  instant?: boolean
}

function targets(specs: TargetSpec[]): Target[] {
  return specs.map((t, i) => ({
    refId: String.fromCharCode(65 + i),
    datasource: DS,
    editorMode: 'code',
    expr: t.expr,
    legendFormat: t.legend ?? '__auto',
    range: t.instant !== true,
    instant: t.instant === true,
    ...(t.format === undefined ? {} : { format: t.format }),
  }))
}

interface Override {
  matcher: { id: string; options: string }
  properties: Array<{ id: string; value: unknown }>
}

interface SeriesOptions {
  unit: string
  /** no lower bound of 0 (for series drawn below the axis) */
  signed?: boolean
  bars?: boolean
  stack?: boolean
  overrides?: Override[]
  legendCalcs?: string[]
}

function timeseries(
  title: string,
  description: string,
  t: TargetSpec[],
  o: SeriesOptions,
): Omit<Panel, 'id' | 'gridPos'> {
  return {
    type: 'timeseries',
    title,
    description,
    datasource: DS,
    targets: targets(t),
    fieldConfig: {
      defaults: {
        unit: o.unit,
        ...(o.signed === true ? {} : { min: 0 }),
        color: { mode: 'palette-classic' },
        custom: {
          drawStyle: o.bars === true ? 'bars' : 'line',
          lineWidth: 1,
          fillOpacity: o.bars === true ? 80 : 10,
          gradientMode: 'none',
          showPoints: 'never',
          spanNulls: false,
          axisPlacement: 'auto',
          axisLabel: '',
          stacking: { mode: o.stack === true ? 'normal' : 'none', group: 'A' },
          thresholdsStyle: { mode: 'off' },
        },
        thresholds: { mode: 'absolute', steps: [{ color: 'green', value: null }] },
      },
      overrides: o.overrides ?? [],
    },
    options: {
      legend: {
        showLegend: true,
        displayMode: 'table',
        placement: 'bottom',
        calcs: o.legendCalcs ?? ['mean', 'max', 'lastNotNull'],
        sortBy: 'Mean',
        sortDesc: true,
      },
      tooltip: { mode: 'multi', sort: 'desc' },
    },
  }
}

interface StatOptions {
  unit: string
  decimals?: number
  mappings?: unknown[]
  steps?: Array<{ color: string; value: number | null }>
  graph?: boolean
}

function stat(
  title: string,
  description: string,
  t: TargetSpec[],
  o: StatOptions,
): Omit<Panel, 'id' | 'gridPos'> {
  return {
    type: 'stat',
    title,
    description,
    datasource: DS,
    targets: targets(t),
    fieldConfig: {
      defaults: {
        unit: o.unit,
        ...(o.decimals === undefined ? {} : { decimals: o.decimals }),
        color: { mode: 'thresholds' },
        mappings: o.mappings ?? [],
        thresholds: { mode: 'absolute', steps: o.steps ?? [{ color: 'green', value: null }] },
      },
      overrides: [],
    },
    options: {
      reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
      colorMode: o.steps === undefined && o.mappings === undefined ? 'none' : 'background',
      graphMode: o.graph === false ? 'none' : 'area',
      justifyMode: 'auto',
      orientation: 'auto',
      textMode: 'auto',
      wideLayout: true,
      showPercentChange: false,
    },
  }
}

function table(
  title: string,
  description: string,
  t: TargetSpec[],
  organize: unknown,
): Omit<Panel, 'id' | 'gridPos'> {
  return {
    type: 'table',
    title,
    description,
    datasource: DS,
    targets: targets(t),
    fieldConfig: { defaults: { custom: { align: 'auto', cellOptions: { type: 'auto' } } }, overrides: [] },
    options: { showHeader: true, cellHeight: 'sm', footer: { show: false, reducer: ['sum'], fields: '' } },
    transformations: [{ id: 'organize', options: organize }],
  }
}

function heatmap(title: string, description: string, t: TargetSpec[]): Omit<Panel, 'id' | 'gridPos'> {
  return {
    type: 'heatmap',
    title,
    description,
    datasource: DS,
    targets: targets(t),
    fieldConfig: {
      defaults: {
        custom: {
          hideFrom: { legend: false, tooltip: false, viz: false },
          scaleDistribution: { type: 'linear' },
        },
      },
      overrides: [],
    },
    options: {
      calculate: false,
      cellGap: 1,
      color: {
        mode: 'scheme',
        scheme: 'Oranges',
        scale: 'exponential',
        exponent: 0.5,
        fill: 'dark-orange',
        steps: 64,
        reverse: false,
      },
      exemplars: { color: 'rgba(255,0,255,0.7)' },
      filterValues: { le: 1e-9 },
      legend: { show: true },
      rowsFrame: { layout: 'auto' },
      showValue: 'never',
      tooltip: { mode: 'single', yHistogram: true, showColorScale: false },
      yAxis: { axisPlacement: 'left', reverse: false, unit: 's' },
      cellValues: { unit: 'short' },
    },
  }
}

/** Draw series whose name matches regex below the axis (received bytes, under sent bytes). */
const negativeY = (regex: string): Override => ({
  matcher: { id: 'byRegexp', options: regex },
  properties: [{ id: 'custom.transform', value: 'negative-Y' }],
})

const BOOL_MAPPINGS = (one: string, zero: string, zeroColor: string): unknown[] => [
  {
    type: 'value',
    options: {
      '0': { text: zero, color: zeroColor, index: 1 },
      '1': { text: one, color: 'green', index: 0 },
    },
  },
]

type Cell = Omit<Panel, 'id' | 'gridPos'> & { w: number; h: number }
interface Row {
  title: string
  cells: Cell[]
}
const cell = (w: number, h: number, p: Omit<Panel, 'id' | 'gridPos'>): Cell => ({ ...p, w, h })

/** Process and namespace label values of connection metrics for the legends. */
const COMM_DIR = '{{comm}} {{direction}}'
const NS = '{{name}} ({{instance}})'

function rows(): Row[] {
  const connects = c('tcptracer_connects_total')
  const failures = c('tcptracer_connect_failures_total')
  const accepts = c('tcptracer_accepts_total')
  const closes = c('tcptracer_closes_total')
  const active = c('tcptracer_active_connections')
  const buckets = c('tcptracer_connection_duration_seconds_bucket')
  const sent = c('tcptracer_connection_sent_bytes_total')
  const received = c('tcptracer_connection_received_bytes_total')
  /** connects + failures per second, where there were any; by: '' or 'by (labels) ' */
  const attempts = (by: string): string => `(sum ${by}(${rate(connects)}) + sum ${by}(${rate(failures)})) > 0`
  const quantile = (q: number, by: string): string =>
    `histogram_quantile(${q}, sum by (${by}le) (${rate(buckets)}))`
  const byNs = (sel: string, f = rate): string => withNetnsName(`sum by (instance, netns) (${f(sel)})`)

  return [
    {
      title: 'Overview',
      cells: [
        cell(
          5,
          4,
          stat(
            'Connects/s',
            'Outbound TCP connections established per second.',
            [{ expr: `sum(${rate(connects)})` }],
            {
              unit: 'cps',
            },
          ),
        ),
        cell(
          5,
          4,
          stat(
            'Accepts/s',
            'Inbound TCP connections accepted per second.',
            [{ expr: `sum(${rate(accepts)})` }],
            {
              unit: 'cps',
            },
          ),
        ),
        cell(
          5,
          4,
          stat(
            'Closes/s',
            'Established TCP connections closed per second, both directions.',
            [{ expr: `sum(${rate(closes)})` }],
            { unit: 'cps' },
          ),
        ),
        cell(
          4,
          4,
          stat(
            'Active connections',
            'TCP connections open now, both directions, including those open before the exporter started.',
            [{ expr: `sum(${active})` }],
            { unit: 'short' },
          ),
        ),
        cell(
          5,
          4,
          stat(
            'Connect failure ratio',
            'Failed outbound attempts / (established + failed). Empty while nothing connects.',
            [{ expr: `sum(${rate(failures)}) / (${attempts('')})` }],
            {
              unit: 'percentunit',
              decimals: 1,
              steps: [
                { color: 'green', value: null },
                { color: 'orange', value: 0.05 },
                { color: 'red', value: 0.2 },
              ],
            },
          ),
        ),
      ],
    },
    {
      title: 'By process',
      cells: [
        cell(
          12,
          8,
          timeseries(
            'Connects/s by process',
            'Outbound TCP connections established per second, by the process (comm) that called connect().',
            [{ expr: `sum by (comm) (${rate(connects)})`, legend: '{{comm}}' }],
            { unit: 'cps' },
          ),
        ),
        cell(
          12,
          8,
          timeseries(
            'Accepts/s by process',
            'Inbound TCP connections accepted per second, by the accepting process (in accept_mode listener: the process that called listen()).',
            [{ expr: `sum by (comm) (${rate(accepts)})`, legend: '{{comm}}' }],
            { unit: 'cps' },
          ),
        ),
        cell(
          12,
          8,
          timeseries(
            'Closes/s by process',
            'Established TCP connections closed per second, by owning process and direction.',
            [{ expr: `sum by (comm, direction) (${rate(closes)})`, legend: COMM_DIR }],
            { unit: 'cps' },
          ),
        ),
        cell(
          12,
          8,
          timeseries(
            'Active connections by process',
            'TCP connections open now, by owning process and direction.',
            [{ expr: `sum by (comm, direction) (${active})`, legend: COMM_DIR }],
            { unit: 'short' },
          ),
        ),
      ],
    },
    {
      title: 'By network namespace',
      cells: [
        cell(
          12,
          8,
          timeseries(
            'Connects/s by namespace',
            'Outbound TCP connections established per second, by network namespace: its ip netns or container name from tcptracer_netns_info, else its inode.',
            [{ expr: byNs(connects), legend: NS }],
            { unit: 'cps' },
          ),
        ),
        cell(
          12,
          8,
          timeseries(
            'Accepts/s by namespace',
            'Inbound TCP connections accepted per second, by network namespace (name, else inode).',
            [{ expr: byNs(accepts), legend: NS }],
            { unit: 'cps' },
          ),
        ),
        cell(
          12,
          8,
          timeseries(
            'Closes/s by namespace',
            'Established TCP connections closed per second, both directions, by network namespace (name, else inode).',
            [{ expr: byNs(closes), legend: NS }],
            { unit: 'cps' },
          ),
        ),
        cell(
          12,
          8,
          timeseries(
            'Active connections by namespace',
            'TCP connections open now, both directions, by network namespace (name, else inode).',
            [{ expr: byNs(active, (x) => x), legend: NS }],
            { unit: 'short' },
          ),
        ),
      ],
    },
    {
      title: 'Connect failures',
      cells: [
        cell(
          8,
          8,
          timeseries(
            'Connect failure ratio by process',
            'Failed outbound attempts / (established + failed), by process. Processes that made no attempt are left out.',
            [{ expr: `sum by (comm) (${rate(failures)}) / (${attempts('by (comm) ')})`, legend: '{{comm}}' }],
            { unit: 'percentunit' },
          ),
        ),
        cell(
          8,
          8,
          timeseries(
            'Connect failures/s by reason',
            'refused: RST in answer to the SYN (nothing listens); timeout: SYN retries used up; unreachable: ICMP error; other: e.g. close() while connecting.',
            [{ expr: `sum by (reason) (${rate(failures)})`, legend: '{{reason}}' }],
            { unit: 'cps', stack: true },
          ),
        ),
        cell(
          8,
          8,
          timeseries(
            'Connect failures/s by process and reason',
            'Failed outbound attempts per second, by process and reason; only non-zero series.',
            [{ expr: `sum by (comm, reason) (${rate(failures)}) > 0`, legend: '{{comm}} {{reason}}' }],
            { unit: 'cps' },
          ),
        ),
      ],
    },
    {
      title: 'Connection lifetime',
      cells: [
        cell(
          12,
          9,
          heatmap(
            'Connection lifetime',
            'Closed connections by lifetime (ESTABLISHED to CLOSE), per histogram bucket, both directions.',
            [
              {
                expr: `sum by (le) (${increase(buckets)})`,
                legend: '{{le}}',
                format: 'heatmap',
              },
            ],
          ),
        ),
        cell(
          12,
          9,
          timeseries(
            'Connection lifetime quantiles',
            'p50, p90 and p99 lifetime of the connections that closed, by direction (estimated from the histogram buckets).',
            [
              { expr: quantile(0.5, 'direction, '), legend: 'p50 {{direction}}' },
              { expr: quantile(0.9, 'direction, '), legend: 'p90 {{direction}}' },
              { expr: quantile(0.99, 'direction, '), legend: 'p99 {{direction}}' },
            ],
            { unit: 's' },
          ),
        ),
        cell(
          24,
          8,
          timeseries(
            'p99 connection lifetime by process',
            '99th percentile lifetime of the connections that closed, by owning process and direction.',
            [{ expr: quantile(0.99, 'comm, direction, '), legend: COMM_DIR }],
            { unit: 's' },
          ),
        ),
      ],
    },
    {
      title: 'Traffic',
      cells: [
        cell(
          12,
          8,
          timeseries(
            'Bytes/s by process',
            'Payload bytes sent (up) and received (down), by process. Bytes are counted when a connection closes, so long connections show up at their end.',
            [
              { expr: `sum by (comm) (${rate(sent)})`, legend: '{{comm}} sent' },
              { expr: `sum by (comm) (${rate(received)})`, legend: '{{comm}} received' },
            ],
            { unit: 'Bps', signed: true, overrides: [negativeY('.* received')] },
          ),
        ),
        cell(
          12,
          8,
          timeseries(
            'Bytes/s by namespace',
            'Payload bytes sent (up) and received (down), by network namespace (name, else inode), counted when connections close.',
            [
              { expr: byNs(sent), legend: `${NS} sent` },
              { expr: byNs(received), legend: `${NS} received` },
            ],
            { unit: 'Bps', signed: true, overrides: [negativeY('.* received')] },
          ),
        ),
      ],
    },
    {
      title: 'Exporter health',
      cells: [
        cell(
          6,
          6,
          stat(
            'Up',
            'Whether Prometheus can scrape each exporter.',
            [{ expr: s('up'), legend: '{{instance}}' }],
            {
              unit: 'none',
              graph: false,
              mappings: BOOL_MAPPINGS('UP', 'DOWN', 'red'),
            },
          ),
        ),
        cell(
          10,
          6,
          stat(
            'BPF programs attached',
            'handle_set_state is the backbone: without it nothing is counted. The accept-syscall programs are attached only in accept_mode syscall, so "not attached" is normal for them in listener mode.',
            [{ expr: s('tcptracer_program_attached'), legend: '{{instance}} {{program}}' }],
            { unit: 'none', graph: false, mappings: BOOL_MAPPINGS('attached', 'not attached', 'orange') },
          ),
        ),
        cell(
          8,
          6,
          stat(
            'Uptime',
            'Time since each exporter started.',
            [{ expr: `time() - ${s('tcptracer_start_time_seconds')}`, legend: '{{instance}}' }],
            { unit: 's', graph: false },
          ),
        ),
        cell(
          12,
          8,
          timeseries(
            'Lost and unattributed',
            'Per-event records lost (ring buffer full; trace consumers only), kernel map update failures (state: connections not counted, raise limits.max_connections; aggregates: counted in __overflow__), and connections whose owner is unknown.',
            [
              {
                expr: `sum by (instance) (${increase(s('tcptracer_events_lost_total'))})`,
                legend: '{{instance}} events lost',
              },
              {
                expr: `sum by (instance, map) (${increase(s('tcptracer_kernel_map_update_failures_total'))})`,
                legend: '{{instance}} {{map}} map update failures',
              },
              {
                expr: `sum by (instance, kind) (${increase(s('tcptracer_unattributed_total'))})`,
                legend: '{{instance}} unattributed {{kind}}',
              },
            ],
            { unit: 'short', bars: true, legendCalcs: ['sum', 'max'] },
          ),
        ),
        cell(
          12,
          8,
          timeseries(
            'Label sets',
            'Label sets tracked (admitted: own series; folded: counted in __overflow__ because limits.max_label_sets was reached), and label sets newly folded or expired.',
            [
              {
                expr: `sum by (instance, state) (${s('tcptracer_label_sets')})`,
                legend: '{{instance}} {{state}}',
              },
              {
                expr: `sum by (instance) (${increase(s('tcptracer_label_sets_dropped_total'))})`,
                legend: '{{instance}} newly folded',
              },
              {
                expr: `sum by (instance) (${increase(s('tcptracer_label_sets_expired_total'))})`,
                legend: '{{instance}} expired',
              },
            ],
            { unit: 'short', legendCalcs: ['lastNotNull', 'max'] },
          ),
        ),
        cell(
          8,
          8,
          timeseries(
            'Config reloads',
            'SIGHUP reloads by result, and whether the last one succeeded (a failed reload keeps the previous config).',
            [
              {
                expr: `sum by (instance, result) (${increase(s('tcptracer_config_reloads_total'))})`,
                legend: '{{instance}} {{result}}',
              },
              {
                expr: s('tcptracer_config_last_reload_successful'),
                legend: '{{instance}} last reload successful',
              },
            ],
            { unit: 'short', legendCalcs: ['sum', 'lastNotNull'] },
          ),
        ),
        cell(
          8,
          8,
          timeseries(
            'Exporter CPU',
            'CPU time used by the exporter process, in cores (the BPF programs run in the traced processes and are not included).',
            [{ expr: `sum by (instance) (${rate(s('process_cpu_seconds_total'))})`, legend: '{{instance}}' }],
            { unit: 'percentunit' },
          ),
        ),
        cell(
          8,
          8,
          timeseries(
            'Exporter memory (RSS)',
            'Resident memory of the exporter process.',
            [{ expr: s('process_resident_memory_bytes'), legend: '{{instance}}' }],
            { unit: 'bytes' },
          ),
        ),
        cell(
          12,
          6,
          table(
            'Exporters',
            'Version of each exporter, the libbpf it runs with and the kernel release.',
            [{ expr: s('tcptracer_build_info'), format: 'table', instant: true }],
            {
              excludeByName: { Time: true, Value: true, __name__: true, job: true },
              indexByName: { instance: 0, version: 1, libbpf_version: 2, kernel: 3 },
              renameByName: {},
            },
          ),
        ),
        cell(
          12,
          6,
          table(
            'Named network namespaces',
            'Names of network namespaces (ip netns names, container:<id>) by inode, as the namespace panels show them.',
            [{ expr: s('tcptracer_netns_info'), format: 'table', instant: true }],
            {
              excludeByName: { Time: true, Value: true, __name__: true, job: true },
              indexByName: { instance: 0, name: 1, netns: 2 },
              renameByName: { netns: 'inode' },
            },
          ),
        ),
      ],
    },
  ]
}

/** Lay the rows out on Grafana's 24-column grid, left to right, wrapping; ids in order. */
function layout(rs: Row[]): Panel[] {
  const out: Panel[] = []
  let id = 1
  let y = 0
  for (const r of rs) {
    out.push({
      id: id++,
      type: 'row',
      title: r.title,
      collapsed: false,
      gridPos: { h: 1, w: 24, x: 0, y },
      panels: [],
    })
    y += 1
    let x = 0
    let lineHeight = 0
    for (const { w, h, ...p } of r.cells) {
      if (x + w > 24) {
        y += lineHeight
        x = 0
        lineHeight = 0
      }
      out.push({ id: id++, gridPos: { h, w, x, y }, ...p })
      x += w
      lineHeight = Math.max(lineHeight, h)
    }
    y += lineHeight
  }
  return out
}

function queryVariable(name: string, label: string, query: string, multi: boolean): Record<string, unknown> {
  return {
    type: 'query',
    name,
    label,
    datasource: DS,
    query: { query, refId: 'StandardVariableQuery' },
    definition: query,
    refresh: 2,
    sort: 1,
    regex: '',
    hide: 0,
    multi,
    includeAll: multi,
    ...(multi
      ? { allValue: '.*', current: { selected: true, text: ['All'], value: ['$__all'] } }
      : { current: {} }),
    options: [],
    skipUrlSync: false,
  }
}

export function dashboard(): Record<string, unknown> {
  return {
    annotations: {
      list: [
        {
          builtIn: 1,
          datasource: { type: 'grafana', uid: '-- Grafana --' },
          enable: true,
          hide: true,
          iconColor: 'rgba(0, 211, 255, 1)',
          name: 'Annotations & Alerts',
          type: 'dashboard',
        },
      ],
    },
    description:
      'TCP connects, accepts and closes per process and network namespace, from tcptracer-exporter (eBPF).',
    editable: true,
    fiscalYearStartMonth: 0,
    graphTooltip: 1,
    id: null,
    links: [],
    panels: layout(rows()),
    refresh: '30s',
    schemaVersion: 39,
    tags: ['tcptracer', 'tcp', 'ebpf'],
    templating: {
      list: [
        {
          type: 'datasource',
          name: 'datasource',
          label: 'Data source',
          query: 'prometheus',
          current: {},
          hide: 0,
          includeAll: false,
          multi: false,
          options: [],
          refresh: 1,
          regex: '',
          skipUrlSync: false,
        },
        queryVariable('job', 'Job', 'label_values(tcptracer_build_info, job)', false),
        queryVariable(
          'instance',
          'Instance',
          'label_values(tcptracer_build_info{job="$job"}, instance)',
          true,
        ),
        queryVariable(
          'netns',
          'Namespace (inode)',
          'label_values(tcptracer_active_connections{job="$job", instance=~"$instance"}, netns)',
          true,
        ),
        queryVariable(
          'comm',
          'Process',
          'label_values(tcptracer_active_connections{job="$job", instance=~"$instance"}, comm)',
          true,
        ),
      ],
    },
    time: { from: 'now-1h', to: 'now' },
    timepicker: {},
    timezone: 'browser',
    title: 'tcptracer-exporter',
    uid: 'tcptracer-exporter',
    version: 1,
    weekStart: '',
  }
}

/** The dashboard as committed: JSON formatted with the repository's Prettier settings. */
export async function render(): Promise<string> {
  const options = (await prettier.resolveConfig(OUTPUT)) ?? {}
  return await prettier.format(JSON.stringify(dashboard()), { ...options, filepath: OUTPUT })
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await writeFile(OUTPUT, await render())
  process.stdout.write(`wrote ${OUTPUT}\n`)
}
