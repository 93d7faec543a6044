// The DaemonSet's pinned state on the real kernel, set up the way the kubelet and the container runtime
// set it up, with the commands, users and capabilities read from deploy/kubernetes: the kubelet's
// hostPath directory (root's, mode 0755), the init container's command as root with only its
// capabilities, the exporter as its container runs it pinning through a bind mount of that bpffs
// directory, the pod that replaces it taking the state over, and the unpin DaemonSet's command.
// Each "container" is a process in a mount namespace of its own, with the node's directory bind-mounted
// on a temporary mount point in place of the manifests' mount path (which the host does not have).
import assert from 'node:assert/strict'
import { spawnSync, type SpawnSyncReturns } from 'node:child_process'
import { chmodSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet'
import type { ISecurityContext } from 'kubernetes-models/v1/SecurityContext'
import { parse as parseYaml } from 'yaml'
import { packageRoot } from '../../../src/kernel/paths.js'
import { DEFAULT_PIN_PATH } from '../../../src/kernel/pinned-state.js'
import {
  CLI,
  exchange,
  fixture,
  type Netns,
  privileged,
  scrape,
  startDaemon,
  TIME_SCALE,
  valueOf,
  type Daemon,
  type ScrapedSample,
} from '../harness.js'

const { skip } = privileged()

/** The ids of the programs whose links are pinned under dir (bpftool). */
function pinnedPrograms(dir: string): number[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.parentPath.includes(`${path.sep}links${path.sep}`))
    .map((e) => {
      const p = path.join(e.parentPath, e.name)
      const r = spawnSync('bpftool', ['--json', 'link', 'show', 'pinned', p], { encoding: 'utf8' })
      assert.equal(r.status, 0, `bpftool link show pinned ${p}: ${r.stderr}`)
      return (JSON.parse(r.stdout) as { prog_id: number }).prog_id
    })
}

function programExists(id: number): boolean {
  return spawnSync('bpftool', ['prog', 'show', 'id', String(id)]).status === 0
}

function daemonSet(file: string): DaemonSet {
  return new DaemonSet(parseYaml(readFileSync(path.join(packageRoot, 'deploy', 'kubernetes', file), 'utf8')))
}

const exporterDs = daemonSet('daemonset.yaml')
const unpinDs = daemonSet('unpin/daemonset.yaml')
const pod = exporterDs.spec?.template.spec
const exporter = pod?.containers.find((c) => c.name === 'tcptracer-exporter')
const init = pod?.initContainers?.find((c) => c.name === 'bpf-state-owner')
const unpin = unpinDs.spec?.template.spec?.initContainers?.find((c) => c.name === 'unpin')
const pinVolume = pod?.volumes?.find((v) => v.hostPath?.path === DEFAULT_PIN_PATH)
const mountPath = exporter?.volumeMounts?.find((m) => m.name === pinVolume?.name)?.mountPath ?? ''

/**
 * setpriv for a container's securityContext: its user and group, only its added capabilities (the
 * bounding set; for a non-root user also the ambient set, as the image's file capabilities give them
 * to node), and no_new_privs for allowPrivilegeEscalation: false.
 */
function asContainer(sc: ISecurityContext | undefined): string[] {
  assert.ok(sc?.runAsUser !== undefined, 'the container names its user')
  assert.deepEqual(sc.capabilities?.drop, ['ALL'])
  const added = (sc.capabilities?.add ?? []).map((c) => `+${c.toLowerCase()}`)
  const caps = ['-all', ...added].join(',')
  return [
    'setpriv',
    `--reuid=${sc.runAsUser}`,
    `--regid=${sc.runAsGroup ?? sc.runAsUser}`,
    '--clear-groups',
    `--bounding-set=${caps}`,
    `--inh-caps=${caps}`,
    ...(sc.runAsUser === 0 ? [] : [`--ambient-caps=${caps}`]),
    ...(sc.allowPrivilegeEscalation === false ? ['--no-new-privs'] : []),
    '--',
  ]
}

describe("Kubernetes: the DaemonSet's pinned state, the kubelet's way", { skip }, () => {
  const hostPin = `/sys/fs/bpf/tt-k8s-${process.pid}`
  const fx = fixture('tt-k8s-', { ns: `tt-k8s-${process.pid}` })
  let ns: Netns
  let dir: string
  let mountPoint: string
  let config: string
  const daemons: Daemon[] = []

  /** A process in a mount namespace of its own, with the node's directory mounted on mountPoint. */
  const withMount = (): string[] => [
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
  ]
  /** The manifest's arguments, with mountPoint in place of the mount path. */
  const local = (args: readonly string[]): string[] =>
    args.map((a) => (a === mountPath ? mountPoint : a.replace(`=${mountPath}`, `=${mountPoint}`)))
  const run = (argv: string[]): SpawnSyncReturns<string> =>
    spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 30_000 })
  /** The init container's command. */
  const runInit = (): SpawnSyncReturns<string> =>
    run([...withMount(), ...asContainer(init?.securityContext), ...local(init?.command ?? [])])
  const owner = (): [number, number, number] => {
    const st = statSync(hostPin)
    return [st.uid, st.gid, st.mode & 0o7777]
  }
  const stateOf = (s: ScrapedSample[]): Record<string, string> | undefined =>
    s.find((x) => x.name === 'tcptracer_kernel_state_info')?.labels

  before(() => {
    assert.ok(exporter && init && unpin && pinVolume, 'the manifests have what this test reads')
    assert.ok(mountPath.startsWith('/'), 'the exporter mounts the pin directory')
    ns = fx.ns
    dir = fx.dir
    chmodSync(dir, 0o755) // the exporter's user reaches the mount point through it
    mountPoint = path.join(dir, 'pin')
    mkdirSync(mountPoint)
    config = path.join(dir, 'config.yml')
    writeFileSync(config, `filters:\n  netns: [${ns.inode}]\n`, { mode: 0o644 })
    rmSync(hostPin, { recursive: true, force: true })
  })
  after(async () => {
    for (const d of daemons) if (d.proc.child.exitCode === null) await d.stop('SIGKILL')
    spawnSync(process.execPath, [CLI, 'unpin', `--bpf.pin-path=${hostPin}`])
    rmSync(hostPin, { recursive: true, force: true })
  })

  test("the init container makes the kubelet's directory the exporter's, with CAP_CHOWN only, every time", () => {
    const uid = exporter?.securityContext?.runAsUser
    const gid = exporter?.securityContext?.runAsGroup
    // hostPath type DirectoryOrCreate: the kubelet creates it root's, mode 0755
    mkdirSync(hostPin, { mode: 0o755 })
    assert.deepEqual(owner(), [0, 0, 0o755])
    const first = runInit()
    assert.equal(first.status, 0, `the init container: ${first.stderr}`)
    assert.deepEqual(owner(), [uid, gid, 0o700])
    // the next pod on the node finds it the exporter's already
    const again = runInit()
    assert.equal(again.status, 0, `the next pod's init container: ${again.stderr}`)
    assert.deepEqual(owner(), [uid, gid, 0o700])

    // Why not `install -d -o UID -g GID -m 0700`: it chowns first, then cannot chmod a directory it no
    // longer owns without CAP_FOWNER, and leaves it half done (the exporter's, still 0755)...
    rmSync(hostPin, { recursive: true })
    mkdirSync(hostPin, { mode: 0o755 })
    const install = run([
      ...withMount(),
      ...asContainer(init?.securityContext),
      'install',
      '-d',
      '-o',
      String(uid),
      '-g',
      String(gid),
      '-m',
      '0700',
      mountPoint,
    ])
    assert.notEqual(install.status, 0, 'install -d with CAP_CHOWN only')
    assert.match(install.stderr, /Operation not permitted/)
    assert.deepEqual(owner(), [uid, gid, 0o755])
    // ...from which the init container's command recovers too
    const fixed = runInit()
    assert.equal(fixed.status, 0, fixed.stderr)
    assert.deepEqual(owner(), [uid, gid, 0o700])
  })

  test('the exporter, as its container runs it, pins there; the pod that replaces it takes the state over', async () => {
    assert.deepEqual(owner().slice(0, 2), [
      exporter?.securityContext?.runAsUser,
      exporter?.securityContext?.runAsGroup,
    ])
    // the container's args, with this test's config and the harness's port
    const args = local(
      (exporter?.args ?? [])
        .slice(1)
        .filter((a) => !a.startsWith('--config.file=') && !a.startsWith('--web.listen-address=')),
    )
    assert.ok(
      args.includes(`--bpf.pin-path=${mountPoint}`),
      `the exporter pins in its mount: ${args.join(' ')}`,
    )
    const prefix = [...withMount(), ...asContainer(exporter?.securityContext)]
    const start = async (): Promise<Daemon> => {
      const d = await startDaemon([...args, `--config.file=${config}`], process.env, { prefix })
      daemons.push(d)
      return d
    }
    const counts = (s: ScrapedSample[]): number[] => [
      valueOf(s, 'tcptracer_connects_total', { comm: 'tt-k8s-cli' }) ?? 0,
      valueOf(s, 'tcptracer_accepts_total', { comm: 'tt-k8s-srv' }) ?? 0,
      valueOf(s, 'tcptracer_closes_total', { comm: 'tt-k8s-srv', direction: 'inbound' }) ?? 0,
      valueOf(s, 'tcptracer_connection_received_bytes_total', { comm: 'tt-k8s-srv', direction: 'inbound' }) ??
        0,
    ]
    const load = { serverComm: 'tt-k8s-srv', clientComm: 'tt-k8s-cli', send: 16 }

    const d1 = await start()
    const status = readFileSync(`/proc/${d1.proc.child.pid}/status`, 'utf8')
    assert.match(status, new RegExp(`^Uid:\\s+${exporter?.securityContext?.runAsUser}\\s`, 'm'))
    const first = (await scrape(d1)).samples
    assert.equal(stateOf(first)?.['origin'], 'new', `pinned: ${d1.proc.stderr}`)
    assert.match(stateOf(first)?.['path'] ?? '', new RegExp(`^${mountPoint}/v\\d+-[0-9a-f]+$`))
    assert.equal(readdirSync(hostPin).length, 1, "the state is in the node's directory")
    await exchange(ns, { ...load, n: 4 })
    assert.deepEqual(counts((await scrape(d1)).samples), [4, 4, 4, 64])

    // a rollout: the old pod stops, connections go on, the new pod starts
    assert.equal(await d1.stop('SIGTERM'), 0)
    await exchange(ns, { ...load, n: 2 })
    const d2 = await start()
    const second = (await scrape(d2)).samples
    assert.equal(stateOf(second)?.['origin'], 'restored', `taken over: ${d2.proc.stderr}`)
    assert.deepEqual(counts(second), [6, 6, 6, 96], 'counters continue, nothing missed meanwhile')
    assert.equal(await d2.stop('SIGTERM'), 0)
  })

  test("the unpin DaemonSet's init container removes the state from the node, and the programs go", async () => {
    assert.equal(readdirSync(hostPin).length, 1, 'the state the previous test left')
    const programs = pinnedPrograms(hostPin)
    assert.ok(programs.length >= 2 && programs.every(programExists), 'its programs are loaded and pinned')
    const r = run([
      ...withMount(),
      ...asContainer(unpin?.securityContext),
      process.execPath,
      CLI,
      ...local(unpin?.args ?? []),
    ])
    assert.equal(r.status, 0, r.stderr)
    assert.match(r.stdout, new RegExp(`^removed ${mountPoint}/v\\d+-[0-9a-f]+$`, 'm'))
    assert.match(r.stdout, /stays, empty/)
    assert.deepEqual(readdirSync(hostPin), [], "the node's directory is empty")
    const deadline = Date.now() + 5000 * TIME_SCALE
    while (programs.some(programExists) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    assert.deepEqual(programs.filter(programExists), [], 'the programs are freed')
  })
})
