// All benchmarks, then the report: `npm run bench` = node --import tsx bench/run.ts [--quick]
//
// Runs bench/overhead.ts, then bench/scrape-cost.ts, each as a child process (--quick is passed on), then
// bench/report.ts, and prints bench/results/latest.md on stdout. The benchmarks' own output goes to
// stderr, so `npm run -s bench > report.md` keeps only the report. A benchmark that fails does not stop
// the others; the report then says its results are missing or stale, and the exit status is 1.
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'

import { packageRoot } from '../src/kernel/paths.js'

const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false } }, strict: true })
const quick = values.quick ? ['--quick'] : []
const bench = (name: string): string => path.join(packageRoot, 'bench', name)

let current: ReturnType<typeof spawn> | undefined
let interrupted = false
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    interrupted = true
    // the child cleans up after itself on SIGTERM; wait for it, then stop (main() checks `interrupted`)
    if (current?.pid !== undefined && current.exitCode === null) current.kill('SIGTERM')
    else process.exit(1)
  })
}

function runStep(script: string, args: readonly string[]): Promise<number> {
  return new Promise((resolve) => {
    const t0 = Date.now()
    console.error(`\n=== ${path.relative(packageRoot, script)} ${args.join(' ')}`)
    const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
      cwd: packageRoot,
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    current = child
    child.stdout.pipe(process.stderr)
    child.once('error', (err) => {
      console.error(`cannot run ${script}: ${err.message}`)
      resolve(1)
    })
    child.once('exit', (code, signal) => {
      current = undefined
      const status = code ?? 1
      console.error(
        `=== ${path.basename(script)}: ${status === 0 ? 'done' : `failed (${signal ?? `exit ${status}`})`} ` +
          `in ${((Date.now() - t0) / 1000).toFixed(0)} s`,
      )
      resolve(status)
    })
  })
}

async function main(): Promise<number> {
  let failed = 0
  for (const name of ['overhead.ts', 'scrape-cost.ts']) {
    const script = bench(name)
    if (!existsSync(script)) {
      console.error(`=== ${name}: missing, skipped`)
      failed++
      continue
    }
    if ((await runStep(script, quick)) !== 0) failed++
    if (interrupted) return 1
  }
  if ((await runStep(bench('report.ts'), [])) !== 0) return 1
  process.stdout.write(readFileSync(path.join(packageRoot, 'bench', 'results', 'latest.md'), 'utf8'))
  return failed > 0 ? 1 : 0
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err instanceof Error ? (err.stack ?? err.message) : err)
    process.exit(1)
  },
)
