// The container image, checked without Docker: the Dockerfile read statically, then the Node.js LTS it
// names (`FROM node:<major>-bookworm`) fetched from the npm registry and run against the real kernel:
// the exporter, `trace`, and the exporter as the image runs it (non-root, the image's capabilities only,
// its pinned state in a bind mount of a bpffs directory).
import assert from 'node:assert/strict'
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import { DEFAULT_LISTEN_ADDRESS } from '../../../src/cli/run.js'
import { addonPath, bpfObjectPath, packageRoot } from '../../../src/kernel/paths.js'
import {
  aptPackages,
  dockerfileText,
  execForm,
  imageNodeMajor,
  KNOWN,
  labelsOf,
  parseDockerfile,
  parseStages,
  runtimeSpecifics,
  type Stage,
} from '../dockerfile.js'
import {
  CLI,
  type Daemon,
  type Exchange,
  exchange as runExchange,
  expectedEvents,
  fixture,
  identity,
  inNetns,
  JsonProcess,
  type Netns as NetnsT,
  privileged,
  scrape,
  type ScrapedSample,
  sorted,
  startDaemon,
  startServer,
  TIME_SCALE,
  valueOf,
} from '../harness.js'
import { fetchNode, nodeVersion } from '../node-lts.js'

const pkg = JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as {
  name: string
  version: string
  license: string
}

/** The runtime stage's CMD (exec form) and the pin path it passes (`--bpf.pin-path=`). */
function imageCmd(): { cmd: string[]; pinPath: string } {
  const runtime = parseStages(parseDockerfile(dockerfileText)).at(-1)!
  const cmd = runtime.instructions.findLast((i) => i.keyword === 'CMD')
  assert.ok(cmd, 'a CMD')
  const args = execForm(cmd.args)
  const pin = args.find((a) => a.startsWith('--bpf.pin-path='))
  assert.ok(pin, `the CMD pins the kernel state where the README mounts it: ${args.join(' ')}`)
  return { cmd: args, pinPath: pin.slice('--bpf.pin-path='.length) }
}

/**
 * The README's Docker instructions for the pinned state: the `install -d` line that creates the host's
 * directory, and the `-v HOST:CONTAINER` mount of that directory into the container.
 */
function readmeDockerPin(): { install: string[]; hostDir: string; containerDir: string } {
  const readme = readFileSync(path.join(packageRoot, 'README.md'), 'utf8')
  const section = /^### In Docker\n([\s\S]*?)^### /m.exec(readme)?.[1] ?? ''
  const block = /```sh\n([\s\S]*?)```/.exec(section)?.[1] ?? ''
  const install = /^sudo (install -d [^#\n]*?)\s*(?:#.*)?$/m.exec(block)?.[1]
  assert.ok(install, `README "In Docker": a sudo install -d line in the docker run block:\n${block}`)
  const mount = /\s-v\s+(\/sys\/fs\/bpf\/[^:\s]+):(\/[^:\s]+)\s/.exec(block)
  assert.ok(mount?.[1] && mount[2], `README "In Docker": a -v mount of a /sys/fs/bpf directory:\n${block}`)
  return { install: install.split(/\s+/), hostDir: mount[1], containerDir: mount[2] }
}

describe('Dockerfile', () => {
  const ins = parseDockerfile(dockerfileText)
  const stages = parseStages(ins)
  const stage = (name: string): Stage => {
    const s = stages.find((x) => x.name === name)
    assert.ok(s, `a stage named ${name}`)
    return s
  }
  const runs = (s: Stage): string =>
    s.instructions
      .filter((i) => i.keyword === 'RUN')
      .map((i) => i.args)
      .join('\n')
  const workdir = (s: Stage): string => s.instructions.findLast((i) => i.keyword === 'WORKDIR')?.args ?? '/'

  test('every instruction is one Docker knows; a build and a runtime stage on one even (LTS) Node major', () => {
    for (const i of ins) assert.ok(KNOWN.has(i.keyword), `line ${i.line}: unknown instruction ${i.keyword}`)
    assert.deepEqual(
      stages.map((s) => s.name),
      ['build', 'runtime'],
    )
    const major = imageNodeMajor()
    assert.equal(major % 2, 0, 'odd Node majors never become LTS')
    assert.equal(stage('build').base, `node:${major}-bookworm`)
    assert.equal(stage('runtime').base, `node:${major}-bookworm-slim`)
  })

  test('build: the build packages, npm ci, the product build, dev dependencies pruned, a smoke test', () => {
    const b = stage('build')
    const apt = aptPackages(b)
    for (const p of [
      'clang',
      'llvm',
      'libbpf-dev',
      'libelf-dev',
      'zlib1g-dev',
      'make',
      'g++',
      'python3',
      'pkg-config',
    ]) {
      assert.ok(apt.includes(p), `the build stage installs ${p}: ${apt.join(' ')}`)
    }
    const text = runs(b)
    const at = (re: RegExp): number => {
      const m = re.exec(text)
      assert.ok(m, `the build stage runs ${re}`)
      return m.index
    }
    const order = [
      at(/\bnpm ci\b/),
      at(/\bnpm run build\b/),
      at(/\bnpm prune --omit=dev\b/),
      at(/\bnode dist\/src\/cli\.js --version\b/),
    ]
    assert.deepEqual(
      order,
      [...order].sort((x, y) => x - y),
      'npm ci, npm run build, npm prune, --version',
    )
  })

  test('runtime: only runtime libraries, the layout src/kernel/paths.ts expects, non-root, port, health, labels', () => {
    const b = stage('build')
    const r = stage('runtime')
    const apt = aptPackages(r)
    for (const p of ['libbpf1', 'libelf1', 'zlib1g']) assert.ok(apt.includes(p), `the runtime installs ${p}`)
    for (const p of apt) {
      assert.ok(
        !p.endsWith('-dev') && !['clang', 'llvm', 'g++', 'make', 'iproute2'].includes(p),
        `runtime has ${p}`,
      )
    }

    // every artifact lands at the same path under the app directory as under the package root here
    const app = workdir(r)
    const copies = r.instructions
      .filter((i) => i.keyword === 'COPY' && i.args.startsWith('--from=build '))
      .map((i) => {
        const [src, dest] = i.args.split(/\s+/).slice(1)
        return { src: src ?? '', dest: path.posix.resolve(app, dest ?? '') }
      })
    for (const rel of [
      'package.json',
      'node_modules',
      'dist',
      path.relative(packageRoot, addonPath),
      path.relative(packageRoot, bpfObjectPath),
    ]) {
      const src = path.posix.join(workdir(b), rel)
      assert.ok(
        copies.some((c) => c.src.replace(/\/$/, '') === src && c.dest === path.posix.join(app, rel)),
        `COPY --from=build ${src} to ${path.posix.join(app, rel)}: ${JSON.stringify(copies)}`,
      )
    }
    assert.ok(
      r.instructions.some(
        (i) =>
          i.keyword === 'COPY' &&
          /^config\.example\.yml\s+\/etc\/tcptracer-exporter\/config\.yaml$/.test(i.args),
      ),
      'config.example.yml is the default config',
    )

    const entry = r.instructions.findLast((i) => i.keyword === 'ENTRYPOINT')
    assert.ok(entry, 'an ENTRYPOINT')
    assert.deepEqual(execForm(entry.args), ['node', path.posix.join(app, path.relative(packageRoot, CLI))])
    assert.deepEqual(imageCmd().cmd, [
      'run',
      '--config.file=/etc/tcptracer-exporter/config.yaml',
      '--bpf.pin-path=/run/tcptracer-exporter',
    ])

    const user = r.instructions.findLast((i) => i.keyword === 'USER')?.args
    assert.ok(user !== undefined && !/^(root|0)(:|$)/.test(user), `runs as a non-root user: ${user}`)
    const uid = user.split(':')[0]
    assert.match(runs(r), new RegExp(`useradd [^\\n]*--uid ${uid}\\b`), `the image creates uid ${uid}`)

    const port = DEFAULT_LISTEN_ADDRESS.split(':').pop()!
    const exposed = r.instructions.filter((i) => i.keyword === 'EXPOSE').flatMap((i) => i.args.split(/\s+/))
    assert.ok(
      exposed.includes(port) || exposed.includes(`${port}/tcp`),
      `EXPOSE ${port}: ${exposed.join(' ')}`,
    )
    const probe = runtimeSpecifics().health
    assert.equal(probe[0], 'node', 'the health check runs node itself: the slim image has no curl')
    assert.ok(probe.join(' ').includes(`127.0.0.1:${port}/healthz`), probe.join(' '))

    const labels = labelsOf(r)
    assert.equal(labels.get('org.opencontainers.image.title'), pkg.name)
    assert.equal(labels.get('org.opencontainers.image.licenses'), pkg.license)
    assert.equal(
      labels.get('org.opencontainers.image.version'),
      pkg.version,
      'ARG VERSION follows package.json',
    )
    for (const k of ['description', 'source']) assert.ok(labels.has(`org.opencontainers.image.${k}`), k)
  })

  test('node gets the capabilities the documented `docker run` adds, and only those', () => {
    const granted = runtimeSpecifics()
      .caps.map((c) => c.replace(/^cap_/, '').toUpperCase())
      .sort()
    const comments = dockerfileText
      .split('\n')
      .filter((l) => l.trimStart().startsWith('#'))
      .join('\n')
    const added = [...comments.matchAll(/--cap-add=(\w+)/g)].map((m) => m[1]!)
    assert.ok(comments.includes('--cap-drop=ALL'), 'the docker run example drops every other capability')
    assert.deepEqual([...new Set(added)].sort(), granted)
  })

  test("the README's pinned state: a directory for the image's user, mounted where the CMD pins", () => {
    const { install, hostDir, containerDir } = readmeDockerPin()
    const { pinPath } = imageCmd()
    assert.equal(containerDir, pinPath, 'the -v mount lands where the CMD pins')
    // the runtime cannot create a mount point in a container's own sysfs, nor in its /proc or /dev
    assert.ok(!/^\/(sys|proc|dev)(\/|$)/.test(pinPath), `${pinPath}: outside /sys, /proc and /dev`)
    assert.equal(install.at(-1), hostDir, 'install -d creates the directory the -v mount names')
    const user = stage('runtime').instructions.findLast((i) => i.keyword === 'USER')?.args ?? ''
    const [uid, gid] = user.split(':')
    const opt = (flag: string): string | undefined => install[install.indexOf(flag) + 1]
    assert.equal(opt('-o'), uid, "owned by the image's user")
    assert.equal(opt('-g'), gid ?? uid, "and the image's group")
    assert.equal(opt('-m'), '0700')
  })

  test('.dockerignore keeps dependencies, build outputs, the Node cache and .git out of the context', () => {
    const entries = readFileSync(path.join(packageRoot, '.dockerignore'), 'utf8')
      .split('\n')
      .map((l) => l.trim().replace(/^\/|\/$/g, ''))
      .filter((l) => l !== '' && !l.startsWith('#'))
    for (const e of [
      'node_modules',
      'dist',
      '.output',
      'addon/build',
      'test/helpers/bin',
      'bench/results',
      '.cache',
      '.git',
    ]) {
      assert.ok(entries.includes(e), `.dockerignore has ${e}`)
    }
  })
})

const { skip } = privileged()
const SRV = 'tt-lts-srv'
const CLI_COMM = 'tt-lts-cli'

describe(`the project under the image's Node LTS`, { skip }, () => {
  const major = imageNodeMajor()
  const fx = fixture('tt-lts-', { ns: `tt-lts-${process.pid}` })
  let node: string
  let ns: NetnsT
  let dir: string
  const hostPin = `/sys/fs/bpf/tt-lts-${process.pid}`

  before(
    () => {
      node = fetchNode(major)
      ns = fx.ns
      // readable by the unprivileged user of the last test
      dir = fx.dir
      chmodSync(dir, 0o755)
    },
    { timeout: 300_000 },
  )
  after(() => {
    // the pinned state, should the test have stopped before its own unpin
    spawnSync(process.execPath, [CLI, 'unpin', `--bpf.pin-path=${hostPin}`])
  })

  function config(name: string): string {
    const file = path.join(dir, name)
    writeFileSync(file, `filters:\n  netns: [${ns.inode}]\n`, { mode: 0o644 })
    return file
  }

  /** n connections from CLI_COMM to SRV in ns, `send` bytes each. */
  async function exchange(n: number, send: number): Promise<Exchange> {
    return await runExchange(ns, { n, send, serverComm: SRV, clientComm: CLI_COMM })
  }

  function assertExact(s: ScrapedSample[], n: number, send: number): void {
    const cli = { comm: CLI_COMM, netns: String(ns.inode), family: 'ipv4' }
    const srv = { comm: SRV, netns: String(ns.inode), family: 'ipv4' }
    assert.equal(valueOf(s, 'tcptracer_connects_total', cli), n, 'connects')
    assert.equal(valueOf(s, 'tcptracer_accepts_total', srv), n, 'accepts')
    assert.equal(valueOf(s, 'tcptracer_closes_total', { ...cli, direction: 'outbound' }), n, 'client closes')
    assert.equal(valueOf(s, 'tcptracer_closes_total', { ...srv, direction: 'inbound' }), n, 'server closes')
    assert.equal(
      valueOf(s, 'tcptracer_connection_sent_bytes_total', { ...cli, direction: 'outbound' }),
      n * send,
    )
    assert.equal(
      valueOf(s, 'tcptracer_connection_received_bytes_total', { ...srv, direction: 'inbound' }),
      n * send,
    )
  }

  test(`the fetched node is Node ${major}`, () => {
    assert.ok(nodeVersion(node).startsWith(`v${major}.`), `${node}: ${nodeVersion(node)}`)
  })

  test('the exporter counts exactly', async () => {
    const d = await startDaemon([`--config.file=${config('exact.yml')}`], process.env, { node })
    try {
      await exchange(10, 64)
      const s = (await scrape(d)).samples
      assertExact(s, 10, 64)
      assert.equal(valueOf(s, 'tcptracer_build_info', { version: pkg.version }), 1)
      assert.equal(
        valueOf(s, 'nodejs_version_info', { major: String(major) }),
        1,
        'the daemon runs on that node',
      )
    } finally {
      assert.equal(await d.stop('SIGTERM'), 0, 'SIGTERM exits 0')
    }
  })

  test('trace --json prints the banner on stderr, the exact events, and exits 0 on SIGINT', async () => {
    const p = new JsonProcess(
      spawn(node, [CLI, 'trace', '--json', '--netns', String(ns.inode)], { stdio: 'pipe' }),
    )
    let exited = false
    p.exited.then(
      () => {
        exited = true
      },
      () => {},
    )
    await p.until(() => p.stderr.includes('Tracing TCP') || exited, 15000, 'the trace banner')
    assert.ok(p.stderr.includes('Tracing TCP'), `the banner, on stderr: ${p.stderr}`)
    const x = await exchange(3, 10)
    const want = sorted(expectedEvents(x))
    await p.until(() => p.lines.length >= want.length, 10000, `${want.length} events`)
    p.child.kill('SIGINT')
    assert.equal(await p.exited, 0, `trace exits 0 on SIGINT: ${p.stderr}`)
    assert.deepEqual(sorted(p.lines.map(identity)), want)
  })

  test('as the image runs it: uid 10001 with only the capabilities the Dockerfile grants, pinning into the mounted bpffs directory', async () => {
    // The image gives them to node as file capabilities (Docker sets no ambient capabilities); here
    // setpriv gives the same set as ambient capabilities, with nothing else in the bounding set.
    const { health, caps: granted } = runtimeSpecifics()
    const caps = granted.map((c) => `+${c.replace(/^cap_/, '')}`).join(',')
    const asImage = [
      'setpriv',
      '--reuid=10001',
      '--regid=10001',
      '--clear-groups',
      `--inh-caps=-all,${caps}`,
      `--ambient-caps=-all,${caps}`,
      `--bounding-set=-all,${caps}`,
    ]
    // The pinned state as the README sets it up: its `install -d` line makes a bpffs directory (here
    // a test's own) for the image's user, which the container gets as a bind mount where the CMD pins.
    // Here the mount is made in a mount namespace of the daemon's own, on a temporary mount point in
    // place of the CMD's path (which the host does not have).
    const { install } = readmeDockerPin()
    rmSync(hostPin, { recursive: true, force: true })
    execFileSync(install[0]!, [...install.slice(1, -1), hostPin])
    const st = statSync(hostPin)
    assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [10001, 10001, 0o700])
    const mountPoint = path.join(dir, 'pin')
    mkdirSync(mountPoint)
    const prefix = [
      'unshare',
      '--mount',
      '--propagation',
      'private',
      'sh',
      '-ec',
      'mount --bind "$1" "$2"; shift 2; exec "$@"',
      'sh',
      hostPin,
      mountPoint,
      ...asImage,
    ]
    const args = [`--config.file=${config('image.yml')}`, `--bpf.pin-path=${mountPoint}`]
    const stateOf = (s: ScrapedSample[]): Record<string, string> | undefined =>
      s.find((x) => x.name === 'tcptracer_kernel_state_info')?.labels
    // a connection of root's processes, open before the daemon starts: found through /proc
    const old = await startServer(ns, ['--comm', 'tt-lts-old-srv', '--count', '1'])
    const oldClient = inNetns(ns, [
      'client',
      '--comm',
      'tt-lts-old-cli',
      '--addr',
      '127.0.0.1',
      '--port',
      String(old.port),
      '--hold-ms',
      String(3000 * TIME_SCALE),
    ])
    await oldClient.until(
      () => oldClient.lines.some((l) => l['event'] === 'connected'),
      10000,
      'the old connection',
    )
    let d: Daemon | undefined
    try {
      d = await startDaemon(args, process.env, { node, prefix })
      const status = readFileSync(`/proc/${d.proc.child.pid}/status`, 'utf8')
      assert.match(status, /^Uid:\s+10001\s/m)
      const first = (await scrape(d)).samples
      const active = (comm: string, direction: string): number | undefined =>
        valueOf(first, 'tcptracer_active_connections', { comm, netns: String(ns.inode), direction })
      assert.equal(active('tt-lts-old-cli', 'outbound'), 1, 'the older connection is seeded')
      assert.equal(active('tt-lts-old-srv', 'inbound'), 1)
      const state = stateOf(first)
      assert.equal(state?.['origin'], 'new', `pinned into the bind mount: ${d.proc.stderr}`)
      assert.match(state['path'] ?? '', new RegExp(`^${mountPoint}/v\\d+-[0-9a-f]+$`))
      assert.equal(readdirSync(hostPin).length, 1, "the state is in the host's directory")

      await exchange(5, 32)
      assertExact((await scrape(d)).samples, 5, 32)

      // the image's HEALTHCHECK command, pointed at this daemon's port
      const port = d.port
      const [, ...probeArgs] = health.map((a) => a.replace(/127\.0\.0\.1:\d+/, `127.0.0.1:${port}`))
      const probe = spawnSync(node, probeArgs, { encoding: 'utf8', timeout: 10000 * TIME_SCALE })
      assert.equal(probe.status, 0, `the health check passes: ${probe.stderr}`)

      // a new container in its place takes the state over: connections made meanwhile count too
      assert.equal(await d.stop('SIGTERM'), 0, 'SIGTERM exits 0')
      await exchange(3, 32)
      d = await startDaemon(args, process.env, { node, prefix })
      const second = (await scrape(d)).samples
      assert.equal(stateOf(second)?.['origin'], 'restored', `taken over: ${d.proc.stderr}`)
      assertExact(second, 8, 32)
    } finally {
      if (d) assert.equal(await d.stop('SIGTERM'), 0, 'SIGTERM exits 0')
      assert.equal(await oldClient.exited, 0)
      assert.equal(await old.proc.exited, 0)
    }

    // `docker run ... unpin` with the same mount: the state goes, the mount point stays, empty
    const unpin = spawnSync(
      prefix[0]!,
      [...prefix.slice(1), node, CLI, 'unpin', `--bpf.pin-path=${mountPoint}`],
      {
        encoding: 'utf8',
      },
    )
    assert.equal(unpin.status, 0, unpin.stderr)
    assert.match(unpin.stdout, new RegExp(`^removed ${mountPoint}/v\\d+-[0-9a-f]+$`, 'm'))
    assert.match(unpin.stdout, /stays, empty/)
    assert.deepEqual(readdirSync(hostPin), [])
  })

  test('the fetched node is cached: a second fetch installs nothing', () => {
    const t0 = Date.now()
    assert.equal(fetchNode(major), node)
    assert.ok(Date.now() - t0 < 5000, 'no second download')
    assert.ok(existsSync(node))
  })
})
