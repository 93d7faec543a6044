#!/usr/bin/env node
// tcptracer-exporter: entry point and subcommand dispatch.
import { UsageError } from './cli/args.js'
import { isBpfError, loadBinding } from './kernel/binding.js'
import { BtfFileError } from './kernel/btf.js'
import { version } from './kernel/paths.js'
import { runCheckConfig } from './cli/check-config.js'
import { runDaemon } from './cli/run.js'
import { runUnpin } from './cli/unpin.js'
import { runTrace } from './cli/trace.js'

const HELP = `Usage: tcptracer-exporter [command] [options]

Commands:
  run            serve Prometheus metrics (the default when no command is given)
  trace          print TCP connect, accept and close events live (like BCC's tcptracer)
  check-config   validate a config file (--config.file=FILE)
  unpin          remove the kernel state a stopped exporter left pinned in bpffs

Options:
  -h, --help      show this help (and \`tcptracer-exporter <command> --help\`)
      --version   print version information

Examples:
  sudo tcptracer-exporter --web.listen-address=:19427 --config.file=/etc/tcptracer-exporter.yml
  sudo tcptracer-exporter trace --json -p 1234
  tcptracer-exporter check-config --config.file=config.example.yml
`

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  switch (cmd) {
    case 'run':
      return await runDaemon(rest)
    case 'check-config':
      return await runCheckConfig(rest)
    case 'trace':
      return await runTrace(rest)
    case 'unpin':
      return runUnpin(rest)
    case '--version':
    case 'version': {
      let libbpf = 'unavailable (addon not built)'
      try {
        libbpf = loadBinding().libbpfVersion()
      } catch {}
      process.stdout.write(`tcptracer-exporter ${version} (libbpf ${libbpf}, node ${process.version})\n`)
      return 0
    }
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(HELP)
      return 0
    default:
      // no command, or flags only: the daemon
      if (cmd === undefined || cmd.startsWith('--')) return await runDaemon(argv)
      throw new UsageError(`unknown command "${cmd}"`)
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (e: unknown) => {
    if (e instanceof UsageError) {
      process.stderr.write(`tcptracer-exporter: ${e.message}\nRun "tcptracer-exporter --help" for usage.\n`)
      process.exitCode = 2
    } else if (e instanceof BtfFileError) {
      process.stderr.write(`tcptracer-exporter: ${e.message}\n`)
      process.exitCode = 2
    } else if (isBpfError(e)) {
      process.stderr.write(`tcptracer-exporter: ${e.message}\n`)
      process.exitCode = 1
    } else {
      process.stderr.write(`tcptracer-exporter: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`)
      process.exitCode = 1
    }
  },
)
