// The image's Node.js, fetched from the npm registry into .cache/ (git-ignored, and kept out of the image's
// build context by .dockerignore), once: the Node binary as the package node-<platform>-<arch>, and, as
// that package carries node alone (bin/node, include/node, share), the npm its release bundles as the
// package npm. Shared by deploy/node-lts.test.ts and deploy/image-build.test.ts.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs'
import path from 'node:path'
import { packageRoot } from '../../src/kernel/paths.js'

export function nodeVersion(bin: string): string {
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim() : ''
}

/**
 * `npm install spec` into the prefix dir, unless `ok(dir)` says it is there already. Installed into a
 * temporary directory and renamed into place, so that an interrupted install is never taken for one.
 */
function cachedInstall(dir: string, spec: string, ok: (prefix: string) => boolean): void {
  if (ok(dir)) return
  mkdirSync(path.dirname(dir), { recursive: true })
  const tmp = mkdtempSync(`${dir}.tmp-`)
  try {
    // npm's own variables (set when the tests run under `npm run`) would point it at this package
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)))
    const args = ['install', '--no-save', '--no-package-lock', '--no-audit', '--no-fund', '--loglevel=error']
    const r = spawnSync('npm', [...args, '--prefix', tmp, spec], {
      encoding: 'utf8',
      env,
      timeout: 240_000,
    })
    assert.equal(r.status, 0, `npm install ${spec} failed: ${r.stderr}${r.error?.message ?? ''}`)
    assert.ok(ok(tmp), `npm install ${spec} did not install what was asked for`)
    chmodSync(tmp, 0o755) // mkdtemp's 0700 would keep unprivileged users of the cache out
    rmSync(dir, { recursive: true, force: true })
    try {
      renameSync(tmp, dir)
    } catch (e) {
      // another run put it there first
      if (!ok(dir)) throw e
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
}

/** The newest Node.js `major` for this platform: the path of its node binary. */
export function fetchNode(major: number): string {
  const name = `node-${process.platform}-${process.arch}`
  const dir = path.join(packageRoot, '.cache', 'node-lts', String(major))
  const bin = (root: string): string => path.join(root, 'node_modules', name, 'bin', 'node')
  cachedInstall(dir, `${name}@^${major}`, (root) => nodeVersion(bin(root)).startsWith(`v${major}.`))
  return bin(dir)
}

/**
 * The npm version the Node.js release of `nodeBin` (a fetchNode result) bundles: the newest
 * "deps: upgrade npm to X.Y.Z" entry of the release line's CHANGELOG, which the package ships beside
 * bin/ (newest release first). undefined when there is none.
 */
export function bundledNpmVersion(nodeBin: string): string | undefined {
  const changelog = path.join(path.dirname(path.dirname(nodeBin)), 'CHANGELOG.md')
  if (!existsSync(changelog)) return undefined
  return /\bupgrade npm to (\d+\.\d+\.\d+)\b/.exec(readFileSync(changelog, 'utf8'))?.[1]
}

/** npm at `version` (a version or a dist-tag): the package's directory, holding bin/npm-cli.js. */
export function fetchNpm(version: string): string {
  const dir = path.join(packageRoot, '.cache', 'npm', version)
  const pkgDir = (root: string): string => path.join(root, 'node_modules', 'npm')
  const installed = (root: string): string | undefined => {
    try {
      return (
        JSON.parse(readFileSync(path.join(pkgDir(root), 'package.json'), 'utf8')) as { version: string }
      ).version
    } catch {
      return undefined
    }
  }
  const exact = /^\d+\.\d+\.\d+$/.test(version)
  cachedInstall(dir, `npm@${version}`, (root) => {
    const v = installed(root)
    return (
      v !== undefined && (!exact || v === version) && existsSync(path.join(pkgDir(root), 'bin', 'npm-cli.js'))
    )
  })
  return pkgDir(dir)
}
