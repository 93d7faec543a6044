// The exporter's own metric families: its build, its programs and hooks, the kernel's counters of
// what it could not count, its label-set bookkeeping, its config reloads, the capabilities it holds
// and the names of the network namespaces.
import os from 'node:os'
import { capabilityNames, threadCapabilities } from '../host/capabilities.js'
import type { ProgramStatus } from '../kernel/binding.js'
import { version } from '../kernel/paths.js'
import type { KernelState } from '../kernel/pinned-state.js'
import type { HookStatus, KernelStats } from '../kernel/tracer.js'
import type { MetricFamily, Sample } from './exposition.js'

/** The reloads of one config file (SIGHUP), behind its reloads_total and last_reload_* metrics. */
export class ReloadCounter {
  success = 0
  failure = 0
  lastSuccess = true
  /** seconds since the epoch: the last success, or the start */
  lastSuccessTime = Date.now() / 1000

  record(ok: boolean): void {
    if (ok) {
      this.success++
      this.lastSuccessTime = Date.now() / 1000
    } else {
      this.failure++
    }
    this.lastSuccess = ok
  }
}

/** A reloaded file's `<prefix>_reloads_total` and `<prefix>_last_reload_successful`. */
export function reloadFamilies(
  prefix: string,
  what: string,
  r: Pick<ReloadCounter, 'success' | 'failure' | 'lastSuccess'>,
): MetricFamily[] {
  return [
    {
      name: `${prefix}_reloads_total`,
      help: `${what} reloads (SIGHUP), by result.`,
      type: 'counter',
      samples: [
        { labels: [['result', 'success']], value: r.success },
        { labels: [['result', 'failure']], value: r.failure },
      ],
    },
    {
      name: `${prefix}_last_reload_successful`,
      help: `Whether the last ${what.toLowerCase()} reload succeeded (1) or failed (0).`,
      type: 'gauge',
      samples: [{ labels: [], value: r.lastSuccess ? 1 : 0 }],
    },
  ]
}

/** What the self-metrics are computed from, read at one scrape. */
interface SelfState {
  /** the kernel's counters, summed over CPUs */
  stats: KernelStats
  /** label sets with their own series now, and folded into the overflow series */
  admitted: number
  folded: number
  /** label sets folded and expired since start */
  foldedTotal: number
  expiredTotal: number
  libbpfVersion: string
  programs: readonly ProgramStatus[]
  recursionMisses: ReadonlyArray<{ name: string; misses: bigint }>
  hooks: readonly HookStatus[]
  kernelState: KernelState
  reloads: { success: number; failure: number; lastSuccess: boolean; lastSuccessTime: number }
  /** ms since the epoch */
  startedAt: number
  /** netns inode -> name */
  netnsNames: ReadonlyMap<number, string>
}

/** The capabilities the process holds now: any thread's, read from /proc/self/task at each scrape. */
export async function capabilityFamily(): Promise<MetricFamily> {
  let effective = 0n
  let permitted = 0n
  // a self-metric that cannot be read leaves the family empty rather than failing the scrape
  for (const t of await threadCapabilities('self').catch(() => [])) {
    effective |= t.effective
    permitted |= t.permitted
  }
  const samples = (set: string, mask: bigint): Sample[] =>
    capabilityNames(mask).map((c) => ({
      labels: [
        ['set', set],
        ['capability', c],
      ],
      value: 1,
    }))
  return {
    name: 'tcptracer_capability_info',
    help: 'Capabilities the exporter process holds now (in any thread), by set: effective and permitted. After startup only the ones it still uses are left (--capabilities.keep).',
    type: 'info',
    samples: [...samples('effective', effective), ...samples('permitted', permitted)],
  }
}

/** The self-metric families, in the order /metrics shows them. */
export function selfFamilies(s: SelfState): MetricFamily[] {
  const { stats } = s
  const n = Number
  return [
    {
      name: 'tcptracer_build_info',
      help: 'Build information: the exporter version, the libbpf it runs with and the kernel release.',
      type: 'info',
      samples: [
        {
          labels: [
            ['version', version],
            ['libbpf_version', s.libbpfVersion],
            ['kernel', os.release()],
          ],
          value: 1,
        },
      ],
    },
    {
      name: 'tcptracer_program_attached',
      help: 'Whether each BPF program is attached (1) or not (0), and to which hook.',
      type: 'gauge',
      samples: s.programs.map((p) => ({
        labels: [
          ['program', p.name],
          ['hook', p.section],
        ],
        value: p.attached ? 1 : 0,
      })),
    },
    {
      name: 'tcptracer_program_recursion_misses_total',
      help: 'Runs of each BPF program the kernel skipped because the program was already running on that CPU (an event lost unless handle_set_state_nested handled it).',
      type: 'counter',
      samples: s.recursionMisses.map((p) => ({ labels: [['program', p.name]], value: n(p.misses) })),
    },
    {
      name: 'tcptracer_hook_info',
      help: 'How each part of the tracer is hooked into the kernel: hook="state" is the connection state backbone, hook="accept" attributes accepts (fexit, kprobe, syscall or listener).',
      type: 'info',
      samples: s.hooks.map((h) => ({
        labels: [
          ['hook', h.hook],
          ['mode', h.mode],
        ],
        value: 1,
      })),
    },
    {
      name: 'tcptracer_kernel_state_info',
      help: 'Where the kernel state (counters, open connections, listeners) lives: origin="restored" when this run took it over from the previous one, "new" when pinned by this run, "unpinned" when it ends with this process (a restart resets the counters); path is its bpffs directory.',
      type: 'info',
      samples: [
        {
          labels: [
            ['origin', s.kernelState.origin],
            ['path', s.kernelState.path],
          ],
          value: 1,
        },
      ],
    },
    {
      name: 'tcptracer_events_lost_total',
      help: 'Per-event records the kernel could not put in the ring buffer (only while events are consumed).',
      type: 'counter',
      samples: [{ labels: [], value: n(stats.eventsLost) }],
    },
    {
      name: 'tcptracer_kernel_map_update_failures_total',
      help: 'Kernel map updates that failed: state = per-connection or listener state (that connection is not counted), aggregates = the aggregation map was full (counted in the overflow series instead).',
      type: 'counter',
      samples: [
        { labels: [['map', 'state']], value: n(stats.mapUpdateFailed) },
        { labels: [['map', 'aggregates']], value: n(stats.aggregationFull) },
      ],
    },
    {
      name: 'tcptracer_unattributed_total',
      help: 'Connections whose owning process could not be determined: accept = listener owner unknown (listener mode), or never returned by an accept the hook sees (syscall mode: io_uring accepts; every mode: closed while still queued); connect = connect() began before the exporter started.',
      type: 'counter',
      samples: [
        { labels: [['kind', 'accept']], value: n(stats.acceptUnattributed) },
        { labels: [['kind', 'connect']], value: n(stats.connectUnattributed) },
      ],
    },
    {
      name: 'tcptracer_unseen_total',
      help: "State changes the kernel never ran the BPF programs for, found later and counted then: close = a counted connection's close, found when a new socket reused its memory or by the walk before each scrape (in tcptracer_closes_total, not in the lifetime histogram or the byte counters); connect = an outbound connection's establishment, found at its close (connect and close counted then, lifetime from connect()).",
      type: 'counter',
      samples: [
        { labels: [['kind', 'close']], value: n(stats.closeUnseen) },
        { labels: [['kind', 'connect']], value: n(stats.connectUnseen) },
      ],
    },
    {
      name: 'tcptracer_label_sets_dropped_total',
      help: 'Label sets folded into the __overflow__ series because limits.max_label_sets was reached.',
      type: 'counter',
      samples: [{ labels: [], value: s.foldedTotal }],
    },
    {
      name: 'tcptracer_label_sets_expired_total',
      help: 'Label sets removed after limits.idle_expiry without activity and with no open connection.',
      type: 'counter',
      samples: [{ labels: [], value: s.expiredTotal }],
    },
    {
      name: 'tcptracer_label_sets',
      help: 'Label sets tracked now: admitted have their own series, folded are counted in __overflow__.',
      type: 'gauge',
      samples: [
        { labels: [['state', 'admitted']], value: s.admitted },
        { labels: [['state', 'folded']], value: s.folded },
      ],
    },
    ...reloadFamilies('tcptracer_config', 'Config', s.reloads),
    {
      name: 'tcptracer_config_last_reload_success_timestamp_seconds',
      help: 'Time of the last successful config load, in seconds since the epoch.',
      type: 'gauge',
      samples: [{ labels: [], value: s.reloads.lastSuccessTime }],
    },
    {
      name: 'tcptracer_start_time_seconds',
      help: 'Time the exporter started, in seconds since the epoch.',
      type: 'gauge',
      samples: [{ labels: [], value: s.startedAt / 1000 }],
    },
    {
      name: 'tcptracer_netns_info',
      help: 'Names of network namespaces: ip netns names and container:<id>; join on netns.',
      type: 'info',
      samples: [...s.netnsNames].map(([ino, name]) => ({
        labels: [
          ['netns', String(ino)],
          ['name', name],
        ],
        value: 1,
      })),
    },
  ]
}
