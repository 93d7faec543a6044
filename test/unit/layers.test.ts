// The layer rule of src/ (docs/architecture.md), as `npm run lint` enforces it: a lower layer never
// imports an upper one. The expectations are written out here, apart from eslint.config.js, so that a
// change to either shows up as a failure.
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import path from 'node:path'

import { packageRoot } from '../../src/kernel/paths.js'

/** What each folder of src/ may import, top layer first. */
const MAY_IMPORT: Record<string, readonly string[]> = {
  cli: ['exporter', 'http', 'metrics', 'kernel', 'host', 'config'],
  exporter: ['http', 'metrics', 'kernel', 'host', 'config'],
  http: ['metrics', 'kernel', 'host', 'config'],
  metrics: ['kernel', 'host', 'config'],
  host: ['kernel'],
  config: ['kernel'],
  kernel: [],
}
const FOLDERS = Object.keys(MAY_IMPORT)

/**
 * ESLint runs in a child process, as `npm run lint` runs it (not under this test's TypeScript loader): it
 * lints each text as if it were that file of src/, then, with `tree`, the real src/. Only the layer rule's
 * complaints come back.
 */
const LINT = `
import { readFileSync } from 'node:fs'
import { ESLint } from 'eslint'
const { texts, tree } = JSON.parse(readFileSync(0, 'utf8'))
const eslint = new ESLint({ cwd: process.cwd() })
const layer = (ms) =>
  ms.filter((m) => m.ruleId === 'no-restricted-imports' || m.ruleId === 'no-restricted-syntax')
    .map((m) => m.line + ': ' + m.message)
const out = { texts: [], tree: [] }
for (const t of texts) out.texts.push(layer((await eslint.lintText(t.code, { filePath: t.filePath }))[0].messages))
if (tree) out.tree = (await eslint.lintFiles(['src'])).map((r) => ({ file: r.filePath, errors: layer(r.messages) }))
process.stdout.write(JSON.stringify(out))
`

interface LintOutput {
  texts: string[][]
  tree: Array<{ file: string; errors: string[] }>
}

function lint(texts: Array<{ file: string; code: string }>, tree = false): LintOutput {
  const input = JSON.stringify({
    texts: texts.map((t) => ({ filePath: path.join(packageRoot, 'src', t.file), code: t.code })),
    tree,
  })
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', LINT], {
    cwd: packageRoot,
    input,
    encoding: 'utf8',
    maxBuffer: 16 << 20,
  })
  return JSON.parse(out) as LintOutput
}

describe('layers', () => {
  test('an upward import fails lint, in every folder, in both import forms and as a type', () => {
    const cases: Array<{ file: string; code: string; what: string }> = []
    for (const from of FOLDERS) {
      for (const to of FOLDERS.filter((f) => f !== from && !MAY_IMPORT[from]!.includes(f))) {
        cases.push({
          what: `${from} -> ${to}`,
          file: `${from}/upward.ts`,
          code:
            `import { x } from '../${to}/anything.js'\n` +
            `import type { T } from '../${to}/types.js'\n` +
            `export { y } from '../${to}/other.js'\n` +
            'export const z: T = x\n',
        })
      }
    }
    assert.ok(cases.length >= 20, `${cases.length} upward pairs`)
    const { texts } = lint(cases)
    cases.forEach((c, i) => {
      const errors = texts[i]!
      assert.equal(errors.length, 3, `${c.what}: ${errors.join('; ')}`)
      const want = new RegExp(`^\\d+: .* src/${c.file.split('/')[0]}/ may import only from`)
      for (const e of errors) assert.match(e, want)
    })
  })

  test('an import the layers allow passes', () => {
    const cases: Array<{ file: string; code: string; what: string }> = []
    for (const from of FOLDERS) {
      for (const to of [from, ...MAY_IMPORT[from]!]) {
        const spec = to === from ? './anything.js' : `../${to}/anything.js`
        cases.push({
          what: `${from} -> ${to}`,
          file: `${from}/fine.ts`,
          code: `import { x } from '${spec}'\nexport const z = x\n`,
        })
      }
    }
    cases.push({
      what: 'entry point',
      file: 'cli.ts',
      code: "import { runDaemon } from './cli/run.js'\nexport { runDaemon }\n",
    })
    const { texts } = lint(cases)
    cases.forEach((c, i) => assert.deepEqual(texts[i], [], c.what))
  })

  test('nothing imports the entry point, and import() is refused', () => {
    const { texts } = lint([
      { file: 'cli/again.ts', code: "import '../cli.js'\n" },
      { file: 'kernel/again.ts', code: "import '../cli.js'\n" },
      { file: 'exporter/dynamic.ts', code: "export const m = import('./exporter.js')\n" },
    ])
    assert.deepEqual(
      texts.map((t) => t.length),
      [1, 1, 1],
    )
  })

  test('the source tree keeps the layers', () => {
    const { tree } = lint([], true)
    assert.ok(tree.length >= 20, `linted ${tree.length} files`)
    const broken = tree.flatMap((r) => r.errors.map((e) => `${path.relative(packageRoot, r.file)}:${e}`))
    assert.deepEqual(broken, [])
  })
})
