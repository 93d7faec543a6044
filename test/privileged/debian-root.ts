// Clean Debian roots, and commands run in them as a container runtime would run them, without one: made
// by `mmdebstrap --variant=minbase` with exactly the packages asked for (cached as tarballs under CACHE,
// keyed by their package lists), unpacked fresh for each run, with a Node.js from the npm registry
// (node-lts.ts), and entered with chroot in a mount namespace of its own per command, so no mount
// outlives the command whatever happens to the test. Shared by deploy/image-build.test.ts (the container
// image, built step by step) and deploy/run-path.test.ts (the README's run command on a fresh machine).
import assert from 'node:assert/strict'
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import path from 'node:path'
import type { TestContext } from 'node:test'
import { privileged, TIME_SCALE } from './harness.js'
import { bundledNpmVersion, fetchNode, fetchNpm, nodeVersion } from './node-lts.js'

/** The cached roots, npm's download cache, and each run's work directory (run-<pid>-*). */
export const CACHE = '/var/cache/tcptracer-exporter/image-build'
export const SUITE = 'bookworm'
// the sources of the Debian images the node images are built on
export const SOURCES = [
  'deb http://deb.debian.org/debian bookworm main',
  'deb http://deb.debian.org/debian bookworm-updates main',
  'deb http://deb.debian.org/debian-security bookworm-security main',
]

/** Bump to rebuild every cached root. */
export const ROOT_FORMAT = 1

/**
 * The CA certificates the host's Node adds (NODE_EXTRA_CA_CERTS), for a network whose proxy intercepts
 * TLS: [the host's file, where the build's RUN steps see it], where `RUN --mount=type=secret` puts one.
 */
export function extraCa(): [string, string] | undefined {
  const f = process.env['NODE_EXTRA_CA_CERTS']
  return f && existsSync(f) ? [f, '/run/secrets/node-extra-ca-certs'] : undefined
}

/**
 * The host's proxy settings, which Docker gives a build's RUN steps too (its predefined proxy build
 * arguments, set from the client's proxy configuration).
 */
export function proxyEnv(): Record<string, string> {
  const names = ['http_proxy', 'https_proxy', 'ftp_proxy', 'no_proxy', 'all_proxy']
  return Object.fromEntries(
    [...names, ...names.map((n) => n.toUpperCase())].flatMap((n) => {
      const v = process.env[n]
      return v ? [[n, v]] : []
    }),
  )
}

// ---------------------------------------------------------------------------------------------------------
// Processes: each in a process group of its own, killed with it on timeout or when the file ends.

export const groups = new Set<number>()

export function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL')
  } catch {
    // gone already
  }
}

export interface Started {
  child: ChildProcess
  /** stdout and stderr as they came, the last megabyte */
  output: () => string
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

export function start(argv: string[], env: NodeJS.ProcessEnv, cwd?: string): Started {
  const child = spawn(argv[0]!, argv.slice(1), {
    env,
    cwd,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  const add = (d: Buffer): void => {
    out += d.toString()
    if (out.length > 2_000_000) out = out.slice(-1_000_000)
  }
  child.stdout!.on('data', add)
  child.stderr!.on('data', add)
  if (child.pid) groups.add(child.pid)
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('error', (e) => {
      out += `\n${e.message}`
    })
    child.on('close', (code, signal) => {
      if (child.pid) groups.delete(child.pid)
      resolve({ code, signal })
    })
  })
  return { child, output: () => out, exited }
}

export interface Ran {
  code: number | null
  output: string
  seconds: number
}

export async function run(argv: string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Ran> {
  const t0 = Date.now()
  const p = start(argv, env)
  const timer = setTimeout(() => {
    if (p.child.pid) killGroup(p.child.pid)
  }, timeoutMs * TIME_SCALE)
  const { code, signal } = await p.exited
  clearTimeout(timer)
  const seconds = (Date.now() - t0) / 1000
  const killed = signal
    ? `\n[ended by ${signal}${signal === 'SIGKILL' ? `: timed out after ${seconds} s` : ''}]`
    : ''
  return { code, output: p.output() + killed, seconds }
}

/** The last lines of an output, for an error message. */
export function tail(s: string, lines = 60): string {
  const all = s.trimEnd().split('\n')
  return (all.length > lines ? [`[... ${all.length - lines} lines before]`] : [])
    .concat(all.slice(-lines))
    .join('\n')
    .slice(-8000)
}

export async function mustRun(
  what: string,
  argv: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<Ran> {
  const r = await run(argv, env, timeoutMs)
  if (r.code !== 0) {
    throw new Error(
      `${what} failed (exit ${r.code}) after ${r.seconds} s; its output ends:\n${tail(r.output)}`,
    )
  }
  return r
}

/** Quoted for sh. */
export const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`

// ---------------------------------------------------------------------------------------------------------
// Roots, and commands in them.

/** The mount points of this machine's mount namespace that are dir or under it. */
export function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .map((m) => m.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((m) => m === dir || m.startsWith(`${dir}/`))
}

/** Remove a directory tree that may be a root; never into a mount (there should be none). */
export function removeTree(dir: string): void {
  execFileSync('rm', ['-rf', '--one-file-system', '--', dir])
}

export interface AsUser {
  uid: number
  gid: number
  /** the bounding set, as `docker run --cap-drop=ALL --cap-add=...` leaves it */
  caps: string[]
}

/** setpriv's arguments for a process as Docker starts one for a USER: no groups beyond its own. */
export function asUserArgs(u: AsUser): string[] {
  const bounding = ['-all', ...u.caps.map((c) => `+${c}`)].join(',')
  return [
    'setpriv',
    `--reuid=${u.uid}`,
    `--regid=${u.gid}`,
    '--clear-groups',
    '--inh-caps=-all',
    `--bounding-set=${bounding}`,
    '--',
  ]
}

export interface InRoot {
  root: string
  /** the working directory, in the root */
  cwd: string
  /** host directories mounted into the root: [host, in the root] */
  binds?: Array<[string, string]> | undefined
  /** a network namespace of its own, only loopback, up */
  net?: boolean
  as?: AsUser
}

/**
 * argv run in a root as a container's process: in a mount namespace of its own (gone with the process,
 * so nothing is left mounted whatever happens), with /proc, a read-only sysfs, the basic device nodes, a
 * /dev/shm, the host's /etc/resolv.conf and /etc/hosts as a container runtime provides them, umask 022.
 */
export function inRoot(o: InRoot, argv: string[]): string[] {
  const r = o.root
  const script = [
    'set -e',
    `mount -t proc proc ${q(`${r}/proc`)}`,
    `mount -t sysfs -o ro,nosuid,nodev,noexec sysfs ${q(`${r}/sys`)}`,
    `for d in null zero full random urandom tty; do`,
    `  [ -e ${q(r)}/dev/$d ] || : >${q(r)}/dev/$d`,
    `  mount --bind /dev/$d ${q(r)}/dev/$d`,
    'done',
    `mkdir -p ${q(`${r}/dev/shm`)}`,
    `mount -t tmpfs -o nosuid,nodev,mode=1777 shm ${q(`${r}/dev/shm`)}`,
    `mount --bind /etc/resolv.conf ${q(`${r}/etc/resolv.conf`)}`,
    `mount --bind /etc/hosts ${q(`${r}/etc/hosts`)}`,
    ...(o.binds ?? []).flatMap(([host, inside]) => [
      statSync(host).isDirectory()
        ? `mkdir -p ${q(path.join(r, inside))}`
        : `mkdir -p ${q(path.join(r, path.dirname(inside)))}; : >>${q(path.join(r, inside))}`,
      `mount --bind ${q(host)} ${q(path.join(r, inside))}`,
    ]),
    ...(o.net ? ['ip link set lo up'] : []),
    'umask 022',
    `exec chroot ${q(r)} /bin/sh -c 'cd "$0" && exec "$@"' "$@"`,
  ].join('\n')
  return [
    'unshare',
    '--mount',
    '--propagation',
    'private',
    ...(o.net ? ['--net'] : []),
    '--',
    'sh',
    '-c',
    script,
    'sh',
    o.cwd,
    ...(o.as ? asUserArgs(o.as) : []),
    ...argv,
  ]
}

/**
 * A tarball of a minbase bookworm root with these packages (and what they depend on, no recommends, as
 * `apt-get install --no-install-recommends`), made once per package list.
 */
export async function debianTarball(t: TestContext, kind: string, packages: string[]): Promise<string> {
  const list = [...new Set(packages)].sort()
  const key = createHash('sha256')
    .update(JSON.stringify({ ROOT_FORMAT, SUITE, SOURCES, variant: 'minbase', list }))
    .digest('hex')
    .slice(0, 16)
  const tarball = path.join(CACHE, `${kind}-${key}.tar`)
  if (existsSync(tarball)) {
    t.diagnostic(`${kind} root: cached ${path.basename(tarball)} (${list.join(' ')})`)
    return tarball
  }
  const tmp = path.join(CACHE, `${kind}-${key}.tmp-${process.pid}.tar`)
  try {
    const r = await mustRun(
      `mmdebstrap of the ${kind} root (${list.join(' ')})`,
      [
        'mmdebstrap',
        '--variant=minbase',
        `--include=${list.join(',')}`,
        '--aptopt=Acquire::Retries "3"',
        SUITE,
        tmp,
        ...SOURCES,
      ],
      process.env,
      900_000,
    )
    renameSync(tmp, tarball)
    t.diagnostic(`${kind} root: mmdebstrap ${r.seconds.toFixed(0)} s (${list.join(' ')})`)
  } finally {
    rmSync(tmp, { force: true })
  }
  // the roots of earlier package lists
  for (const f of readdirSync(CACHE)) {
    if (
      f.startsWith(`${kind}-`) &&
      f.endsWith('.tar') &&
      f !== path.basename(tarball) &&
      !f.includes('.tmp-')
    ) {
      rmSync(path.join(CACHE, f), { force: true })
    }
  }
  return tarball
}

export interface NodeDist {
  /** the node-<platform>-<arch> package's directory: bin/node, include/node, share */
  dir: string
  version: string
  /** the npm package's directory */
  npm: string
  npmVersion: string
}

/**
 * Node.js and npm under prefix in the root: /usr/local as the node images have them, /usr as a
 * distribution's nodejs package has them (bin/node, include/node, lib/node_modules/npm).
 */
export function installNode(root: string, node: NodeDist, prefix = '/usr/local'): void {
  const local = path.join(root, prefix)
  for (const sub of ['bin', 'include', 'share']) {
    if (!existsSync(path.join(node.dir, sub))) continue
    mkdirSync(path.join(local, sub), { recursive: true })
    execFileSync('cp', [
      '-dR',
      '--preserve=mode,timestamps',
      `${path.join(node.dir, sub)}/.`,
      path.join(local, sub),
    ])
  }
  mkdirSync(path.join(local, 'lib', 'node_modules'), { recursive: true })
  execFileSync('cp', [
    '-dR',
    '--preserve=mode,timestamps',
    node.npm,
    path.join(local, 'lib', 'node_modules', 'npm'),
  ])
  for (const b of ['npm', 'npx']) {
    rmSync(path.join(local, 'bin', b), { force: true })
    symlinkSync(`../lib/node_modules/npm/bin/${b}-cli.js`, path.join(local, 'bin', b))
  }
}

/** A fresh root from a cached tarball, with what a container runtime mounts over and the base's Node. */
export async function newRoot(
  t: TestContext,
  dir: string,
  kind: string,
  packages: string[],
  node: NodeDist,
  nodePrefix = '/usr/local',
): Promise<void> {
  const tarball = await debianTarball(t, kind, packages)
  mkdirSync(dir)
  const x = await mustRun(
    `unpacking ${tarball}`,
    ['tar', '-C', dir, '--numeric-owner', '--xattrs', '--xattrs-include=*', '-xpf', tarball],
    process.env,
    300_000,
  )
  // regular files, for the runtime's mounts over them (a symbolic link there could lead out of the root)
  for (const f of ['resolv.conf', 'hosts']) {
    rmSync(path.join(dir, 'etc', f), { force: true })
    writeFileSync(path.join(dir, 'etc', f), '')
  }
  installNode(dir, node, nodePrefix)
  t.diagnostic(
    `${kind} root: unpacked in ${x.seconds.toFixed(0)} s, Node ${node.version} and npm ${node.npmVersion}`,
  )
}

/**
 * privileged(), and the host tools a test uses (tool: the Debian package that has it): missing ones fail
 * under CI=true, and skip loudly elsewhere.
 */
export function requirements(tools: Record<string, string>, what: string): { skip: false | string } {
  const { skip } = privileged()
  if (skip) return { skip }
  const missing = Object.keys(tools).filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0)
  if (missing.length === 0) return { skip: false }
  const debs = [...new Set(missing.map((t) => tools[t]!))].join(' ')
  const why = `${what} needs ${missing.join(', ')} (apt-get install ${debs})`
  if (process.env['CI'] === 'true') throw new Error(`${why}, and CI=true forbids skipping it`)
  process.stderr.write(`\n*** SKIPPING ${what.toUpperCase()}: ${why}. ***\n\n`)
  return { skip: why }
}

/**
 * A work directory of this run under CACHE (run-<pid>-*), after removing those that runs killed before
 * their cleanup left behind (never into a mount: there are none).
 */
export function newWorkDir(): string {
  mkdirSync(CACHE, { recursive: true, mode: 0o755 })
  for (const d of readdirSync(CACHE)) {
    const pid = Number((/^run-(\d+)-/.exec(d) ?? /\.tmp-(\d+)\.tar$/.exec(d))?.[1] ?? 0)
    if (!pid || pid === process.pid) continue
    try {
      process.kill(pid, 0)
      continue // still running
    } catch {
      // gone
    }
    if (mountsUnder(path.join(CACHE, d)).length === 0) removeTree(path.join(CACHE, d))
  }
  return mkdtempSync(path.join(CACHE, `run-${process.pid}-`))
}

/**
 * The end of a run: kill what it left running, remove its work directory. Every mount was made in a
 * namespace that ended with its process, so none can be left there: throws if one was.
 */
export function removeWorkDir(work: string | undefined): void {
  for (const pid of groups) killGroup(pid)
  if (!work) return
  const left = mountsUnder(work)
  for (const m of left.reverse()) spawnSync('umount', ['-l', m])
  removeTree(work)
  assert.deepEqual(left, [], 'mounts left behind in the roots')
}

/**
 * The newest Node.js `major` and the npm its release bundles, from the npm registry (node-lts.ts), and
 * a note when the release names no npm (npm@latest then).
 */
export function nodeDist(major: number): { node: NodeDist; note?: string } {
  const bin = fetchNode(major)
  const npmVersion = bundledNpmVersion(bin)
  const npm = fetchNpm(npmVersion ?? 'latest')
  const npmPkg = JSON.parse(readFileSync(path.join(npm, 'package.json'), 'utf8')) as { version: string }
  const node = {
    dir: path.dirname(path.dirname(bin)),
    version: nodeVersion(bin),
    npm,
    npmVersion: npmPkg.version,
  }
  return npmVersion
    ? { node }
    : { node, note: "the Node package's CHANGELOG names no npm version: npm@latest instead" }
}
