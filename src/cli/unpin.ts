// `tcptracer-exporter unpin`: remove the kernel state a stopped exporter left pinned in bpffs.
import { parseFlags, UsageError } from './args.js'
import { DEFAULT_PIN_PATH, unpinAll, type Unpinned } from '../kernel/pinned-state.js'

const UNPIN_HELP = `Usage: tcptracer-exporter unpin [--bpf.pin-path=DIR]

Remove the kernel state the exporter pinned in bpffs (default "${DEFAULT_PIN_PATH}"): its
programs detach and its counters are freed once no running exporter holds them. Run it after
stopping the exporter for good (scripts/install.sh --uninstall does). Where DIR is a mount point
(the host's directory mounted into a container), its contents go and DIR itself stays, empty.
`

/** \`tcptracer-exporter unpin\`: remove the pinned kernel state. */
export function runUnpin(argv: string[]): number {
  const values = parseFlags(argv, {
    'bpf.pin-path': { type: 'string', default: DEFAULT_PIN_PATH },
    help: { type: 'boolean', short: 'h', default: false },
  })
  if (values.help) {
    process.stdout.write(UNPIN_HELP)
    return 0
  }
  const dir = values['bpf.pin-path']
  if (!dir.startsWith('/')) throw new UsageError(`--bpf.pin-path must be an absolute path, got "${dir}"`)
  let result: Unpinned
  try {
    result = unpinAll(dir)
  } catch (e) {
    process.stderr.write(`tcptracer-exporter unpin: ${(e as Error).message}\n`)
    return 1
  }
  const lines = result.removed.map((d) => `removed ${d}\n`)
  if (lines.length === 0) lines.push(`${dir}: nothing pinned\n`)
  if (result.kept !== undefined) lines.push(`${result.kept}\n`)
  process.stdout.write(lines.join(''))
  return 0
}
