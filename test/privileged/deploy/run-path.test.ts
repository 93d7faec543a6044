// The README's run command on a fresh Debian machine: `sudo ./scripts/run.sh`, from a clone of the
// repository, on a machine that has only what the README asks for (Debian with Node.js 20), installs
// what building and running need and nothing the tests need, builds, and starts the exporter; a second
// start with an up-to-date build rebuilds nothing and takes a few seconds.
//
// The machine is a clean Debian bookworm root made by `mmdebstrap --variant=minbase` (debian-root.ts,
// cached like the image build test's roots), holding nothing else but Node.js 20 and its npm as a
// distribution's nodejs package lays them out (/usr/bin/node, /usr/include/node,
// /usr/lib/node_modules/npm: Debian's own nodejs is older than 20), and libatomic1, which that package
// depends on (node links it). Into it goes a fresh `git clone` of the repository this test runs in: its
// committed HEAD, not the working tree. Every command runs as root with chroot in a mount namespace of
// its own, with the host's network (apt-get and npm reach the Debian mirror and the npm registry for
// real; npm's download cache is shared with the image build test, as it holds only packages checked
// against package-lock.json) and the host's kernel: the daemon loads its BPF programs for real.
//
// What the packages are is read from scripts/setup.sh, never listed here: the run list (`packages=`)
// must be exactly what the run command marks as installed by hand, and no package of the test list
// (`packages+=` and `optional+=` under --test) may be installed at all.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import { packageRoot } from '../../../src/kernel/paths.js'
import {
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
  removeWorkDir,
  requirements,
  run,
  start,
  tail,
} from '../debian-root.js'
import { TIME_SCALE } from '../harness.js'

/** The oldest Node.js the README's run command supports ("with Node.js 20 or newer"). */
const NODE_MAJOR = 20
/** What the machine has beyond minbase and its nodejs: that package's one dependency outside minbase. */
const BASE_EXTRAS = ['libatomic1']
/** Where the clone is, in the root. */
const CLONE = '/root/tcptracer-exporter'
/** A second start with an up-to-date build: "serving in a few seconds"; generous for a loaded machine. */
const SECOND_START_S = 15

/** The host's tools this test uses, and the Debian packages that have them. */
const TOOLS: Record<string, string> = {
  mmdebstrap: 'mmdebstrap',
  chroot: 'coreutils',
  unshare: 'util-linux',
  mount: 'mount',
  tar: 'tar',
  git: 'git',
}

/** setup.sh's bold "==>" lines' escape sequences */
const ANSI = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g')

/** The names in a bash array assignment of scripts/setup.sh: `name=(...)` or `name+=(...)`. */
function setupList(text: string, assign: string): string[] {
  const re = new RegExp(`^\\s*${assign.replace(/[+]/g, '\\+')}\\(([^)]*)\\)`, 'm')
  const m = re.exec(text)
  assert.ok(m?.[1] !== undefined, `scripts/setup.sh has ${assign}(...)`)
  return m[1]
    .split(/\s+/)
    .filter((w) => w !== '')
    .sort()
}

/** A TCP port free on loopback now (the chroot shares the host's network namespace). */
async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => (a && typeof a === 'object' ? resolve(a.port) : reject(new Error('no port'))))
    })
  })
}

const { skip } = requirements(TOOLS, 'the run path test')

describe("the README's run command on a fresh Debian machine with Node.js 20", { skip }, () => {
  /** scripts/setup.sh's run list, and what it adds with --test (the clone's setup.sh: what runs) */
  let runList: string[]
  let testOnly: string[]
  let work: string | undefined
  let root: string
  let clone: string
  let node: NodeDist
  let version: string
  const notes: string[] = []
  const ca = extraCa()
  // the environment of a root shell on that machine, with the host's proxy settings (and the CA of a
  // proxy that intercepts TLS, as npm there would need it configured)
  const env: NodeJS.ProcessEnv = {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: '/root',
    LOGNAME: 'root',
    USER: 'root',
    ...proxyEnv(),
    ...(ca ? { NODE_EXTRA_CA_CERTS: ca[1] } : {}),
  }
  const npmCache = path.join(CACHE, 'npm')
  /** what --version prints first: the name and the clone's version */
  const versionLine = (): RegExp => new RegExp(`^tcptracer-exporter ${version.replace(/\./g, '\\.')} `, 'm')
  const inClone = (): InRoot => ({
    root,
    cwd: CLONE,
    binds: [[npmCache, '/root/.npm'], ...(ca ? [ca] : [])],
  })
  /** The names of the packages installed in the root, and those of them marked installed by hand. */
  const packages = async (): Promise<{ installed: Set<string>; manual: Set<string> }> => {
    const q = await mustRun(
      'dpkg-query',
      inRoot({ root, cwd: '/' }, ['dpkg-query', '-W', `-f=\${Package} \${db:Status-Status}\\n`]),
      env,
      60_000,
    )
    const installed = new Set(
      q.output
        .split('\n')
        .map((l) => l.split(' '))
        .filter(([, s]) => s === 'installed')
        .map(([p]) => p!.replace(/:.*$/, '')),
    )
    const m = await mustRun(
      'apt-mark showmanual',
      inRoot({ root, cwd: '/' }, ['apt-mark', 'showmanual']),
      env,
      60_000,
    )
    const manual = new Set(
      m.output
        .split('\n')
        .map((l) => l.trim().replace(/:.*$/, ''))
        .filter((l) => l !== ''),
    )
    return { installed, manual }
  }

  before(
    () => {
      work = newWorkDir()
      const dist = nodeDist(NODE_MAJOR)
      if (dist.note) notes.push(dist.note)
      node = dist.node
      mkdirSync(npmCache, { recursive: true })
      notes.push(`Node ${node.version} and npm ${node.npmVersion} from the npm registry, at /usr`)
      root = path.join(work, 'root')
      // the committed tree, as a clone of this repository has it (a clone of its HEAD)
      clone = path.join(work, 'clone')
      execFileSync('git', ['clone', '--quiet', '--no-hardlinks', packageRoot, clone], {
        stdio: ['ignore', 'ignore', 'pipe'],
      })
      const head = execFileSync('git', ['-C', clone, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' })
      notes.push(`a clone of ${head.trim()}`)
      version = (JSON.parse(readFileSync(path.join(clone, 'package.json'), 'utf8')) as { version: string })
        .version
      const setupText = readFileSync(path.join(clone, 'scripts', 'setup.sh'), 'utf8')
      runList = setupList(setupText, 'packages=')
      testOnly = [...setupList(setupText, 'packages+='), ...setupList(setupText, 'optional+=')].sort()
      assert.ok(runList.includes('clang') && testOnly.includes('prometheus'), 'the lists read from setup.sh')
    },
    { timeout: 600_000 },
  )

  after(() => removeWorkDir(work))

  test(
    'first run.sh --version: installs exactly the run list, none of the test list, builds, prints the version',
    { timeout: 2_400_000 },
    async (t) => {
      await newRoot(t, root, 'fresh', BASE_EXTRAS, node, '/usr')
      execFileSync('mv', ['-T', clone, path.join(root, CLONE)])
      for (const n of notes) t.diagnostic(n)
      const v = await run(inRoot(inClone(), ['node', '--version']), env, 60_000)
      assert.equal(v.code, 0, v.output)
      assert.ok(v.output.startsWith(`v${NODE_MAJOR}.`), v.output)

      const before = await packages()
      const r = await run(inRoot(inClone(), ['scripts/run.sh', '--version']), env, 1_800_000)
      t.diagnostic(`first run.sh --version: ${r.seconds.toFixed(0)} s`)
      for (const l of r.output
        .split('\n')
        .filter((x) => /^(==>|\s+(BPF|GYP|CXX|TSC)\s)/.test(x.replace(ANSI, '')))) {
        t.diagnostic(`  ${l.replace(ANSI, '')}`)
      }
      assert.equal(r.code, 0, `run.sh --version failed; its output ends:\n${tail(r.output)}`)
      assert.match(r.output, versionLine(), `prints ${version}`)

      const now = await packages()
      const newManual = [...now.manual].filter((p) => !before.manual.has(p)).sort()
      const newInstalled = [...now.installed].filter((p) => !before.installed.has(p)).sort()
      t.diagnostic(`installed by hand: ${newManual.join(' ')}`)
      t.diagnostic(`installed in all (${newInstalled.length}): ${newInstalled.join(' ')}`)
      assert.deepEqual(
        newManual,
        runList.filter((p) => !before.installed.has(p)),
        "what run.sh installs by name is setup.sh's run list",
      )
      for (const p of runList) assert.ok(now.installed.has(p), `${p} installed`)
      const leaked = testOnly.filter((p) => now.installed.has(p))
      assert.deepEqual(leaked, [], 'no package of the test list is installed')
      t.diagnostic(`none of the test list installed: ${testOnly.join(' ')}`)

      for (const f of ['dist/src/cli.js', '.output/tcptracer.bpf.o', 'addon/build/Release/tcptracer.node']) {
        assert.ok(existsSync(path.join(root, CLONE, f)), `${f} built`)
      }
      assert.ok(!existsSync(path.join(root, CLONE, 'test', 'helpers', 'bin')), 'no test helpers built')
    },
  )

  test(
    `second run.sh --version: no apt-get, no npm ci, nothing rebuilt, under ${SECOND_START_S} s`,
    { timeout: 300_000 },
    async (t) => {
      assert.ok(existsSync(path.join(root, CLONE, 'dist')), 'the first run built the product')
      const r = await run(inRoot(inClone(), ['scripts/run.sh', '--version']), env, 120_000)
      assert.equal(r.code, 0, r.output)
      t.diagnostic(`second run.sh --version: ${r.seconds.toFixed(1)} s`)
      const out = r.output.replace(ANSI, '')
      assert.match(out, versionLine())
      assert.doesNotMatch(out, /^\s+(BPF|GYP|CXX|TSC)\s/m, 'nothing rebuilt')
      assert.doesNotMatch(out, /^==> (apt-get|npm ci)/m, 'nothing installed')
      assert.ok(r.seconds < SECOND_START_S * TIME_SCALE, `${r.seconds} s: ${out}`)
    },
  )

  test(
    'run.sh starts the exporter, unpinned: it serves /metrics and /readyz, and Ctrl-C detaches and exits 0',
    { timeout: 300_000 },
    async (t) => {
      assert.ok(existsSync(path.join(root, CLONE, 'dist')), 'the first run built the product')
      const port = await freePort()
      const url = `http://127.0.0.1:${port}`
      const t0 = Date.now()
      const daemon = start(
        inRoot(inClone(), ['scripts/run.sh', `--web.listen-address=127.0.0.1:${port}`, '--log.format=json']),
        env,
      )
      const state = { exited: false }
      daemon.exited.then(
        () => {
          state.exited = true
        },
        () => {},
      )
      try {
        const deadline = Date.now() + 120_000 * TIME_SCALE
        while (!state.exited && Date.now() < deadline && !daemon.output().includes('serving metrics')) {
          await new Promise((resolve) => setTimeout(resolve, 200))
        }
        assert.ok(daemon.output().includes('serving metrics'), `serving metrics: ${tail(daemon.output())}`)
        t.diagnostic(`run.sh serving ${((Date.now() - t0) / 1000).toFixed(1)} s after the start`)
        const metrics = await (await fetch(`${url}/metrics`)).text()
        assert.match(
          metrics,
          new RegExp(`^tcptracer_build_info\\{[^}]*version="${version.replace(/\./g, '\\.')}"`, 'm'),
        )
        const res = await fetch(`${url}/readyz`)
        const ready = (await res.json()) as {
          status: string
          programs: Array<{ name: string; attached: boolean }>
          kernelState?: { origin: string; path: string; onExit: string }
        }
        assert.equal(res.status, 200, JSON.stringify(ready))
        assert.equal(ready.status, 'ready')
        assert.ok(
          ready.programs.some((p) => p.attached),
          `its BPF programs attached: ${JSON.stringify(ready.programs)}`,
        )
        assert.equal(ready.kernelState?.origin, 'unpinned', JSON.stringify(ready))
        assert.equal(ready.kernelState.path, '')
        assert.match(ready.kernelState.onExit, /^detach/)
      } finally {
        if (!state.exited) process.kill(daemon.child.pid!, 'SIGINT')
      }
      const { code } = await daemon.exited
      assert.equal(code, 0, `Ctrl-C exits 0: ${tail(daemon.output())}`)
      assert.match(daemon.output(), /"msg":"detached, exiting"/)
    },
  )
})
