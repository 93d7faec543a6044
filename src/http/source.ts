// What the HTTP side needs from the exporter. The Exporter implements it; the HTTP layer never imports
// the exporter.
import type { CapabilityStatus } from '../host/capabilities.js'
import type { ProgramStatus } from '../kernel/binding.js'
import type { KernelState } from '../kernel/pinned-state.js'
import type { HookStatus } from '../kernel/tracer.js'
import type { MetricFamily } from '../metrics/exposition.js'

export interface MetricsSource {
  collect(): Promise<MetricFamily[]>
  /** undefined when ready */
  notReadyReason(): string | undefined
  readonly programs: readonly ProgramStatus[]
  /** where each part of the tracer is attached, and for accepts what else was tried */
  readonly hooks: readonly HookStatus[]
  /** the capabilities kept and dropped once started; undefined until then */
  readonly capabilities?: CapabilityStatus | undefined
  /** where the kernel state lives, and so what happens to the programs when the exporter exits */
  readonly kernelState?: KernelState | undefined
}
