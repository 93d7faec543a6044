import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { statSync } from 'node:fs'
import { link, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'

import { netnsNames } from '../../src/host/netns.js'

const hex64 = (c: string): string => c.repeat(64)
const ID_A = hex64('a')
const ID_B = hex64('b')
const ID_C = hex64('c')
const ID_D = hex64('d')
const ID_E = hex64('e')

async function withTempDir(t: { after: (fn: () => Promise<void>) => void }, prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix))
  t.after(() => rm(dir, { recursive: true, force: true }))
  return dir
}

async function writeFakeProc(
  procRoot: string,
  pid: string,
  p: { netns?: number | string; cgroup?: string },
): Promise<void> {
  const dir = path.join(procRoot, pid)
  await mkdir(dir, { recursive: true })
  if (p.netns !== undefined) {
    await mkdir(path.join(dir, 'ns'))
    await symlink(typeof p.netns === 'number' ? `net:[${p.netns}]` : p.netns, path.join(dir, 'ns', 'net'))
  }
  if (p.cgroup !== undefined) await writeFile(path.join(dir, 'cgroup'), p.cgroup)
}

const HOST_NS = 4026531840
const POD_NS = 4026532001
const SVC_NS = 4026532002
const PODMAN_NS = 4026532003
const V1_NS = 4026532004
const MANY_NS = 4026532005

test('netnsNames on a fixture tree', async (t) => {
  const tmp = await withTempDir(t, 'netns-test-')
  const runNetns = path.join(tmp, 'run-netns')
  const procRoot = path.join(tmp, 'proc')
  await mkdir(runNetns)
  await mkdir(procRoot)

  // ip netns: regular files stand in for the nsfs bind mounts; their inode is the "netns inode".
  await writeFile(path.join(runNetns, 'blue'), '')
  await writeFile(path.join(runNetns, 'red'), '')
  await link(path.join(runNetns, 'red'), path.join(runNetns, 'crimson')) // same namespace, two names
  await mkdir(path.join(runNetns, 'not-a-netns'))
  const blue = statSync(path.join(runNetns, 'blue')).ino
  const red = statSync(path.join(runNetns, 'red')).ino
  const notNs = statSync(path.join(runNetns, 'not-a-netns')).ino

  await writeFakeProc(procRoot, '1', { netns: HOST_NS, cgroup: '0::/init.scope\n' })
  // host-network container: the host namespace is never named after it
  await writeFakeProc(procRoot, '50', {
    netns: HOST_NS,
    cgroup: `0::/system.slice/docker-${ID_E}.scope\n`,
  })
  // a container inside an `ip netns` namespace: the ip netns name wins
  await writeFakeProc(procRoot, '60', { netns: blue, cgroup: `0::/system.slice/docker-${ID_E}.scope\n` })
  // a pod: sandbox (lowest pid) and app container share the namespace; v1 lines before 0::
  await writeFakeProc(procRoot, '301', {
    netns: POD_NS,
    cgroup: `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/cri-containerd-${ID_B}.scope\n`,
  })
  await writeFakeProc(procRoot, '300', {
    netns: POD_NS,
    cgroup: `12:pids:/kubepods/besteffort/podx/${ID_A}\r\n0::/kubepods/besteffort/podx/${ID_A}\r\n`,
  })
  // a namespace whose processes are not in a container
  await writeFakeProc(procRoot, '400', { netns: SVC_NS, cgroup: '0::/system.slice/nginx.service\n' })
  // vanished before its cgroup was read, then a live sibling
  await writeFakeProc(procRoot, '500', { netns: PODMAN_NS })
  await writeFakeProc(procRoot, '501', {
    netns: PODMAN_NS,
    cgroup: `0::/machine.slice/libpod-${ID_C}.scope\n`,
  })
  // cgroup v1 only: no 0:: line
  await writeFakeProc(procRoot, '600', { netns: V1_NS, cgroup: `4:memory:/docker/${ID_D}\n` })
  // half-dead or odd processes
  await writeFakeProc(procRoot, '700', { cgroup: `0::/docker/${ID_D}\n` })
  await writeFakeProc(procRoot, '701', { netns: 'mnt:[4026532999]', cgroup: `0::/docker/${ID_D}\n` })
  await writeFakeProc(procRoot, '702', {})
  // non-numeric entries are ignored
  await writeFakeProc(procRoot, 'self', { netns: SVC_NS, cgroup: `0::/docker/${ID_D}\n` })
  await writeFile(path.join(procRoot, 'uptime'), '1.00 2.00\n')
  // more than one chunk of pids in one namespace: the first with a container id is in a later chunk
  for (let pid = 1000; pid < 1150; pid++) {
    const cgroup =
      pid < 1130
        ? '0::/user.slice/user-1000.slice/session-3.scope\n'
        : `0::/docker/${hex64(String(pid % 10))}\n`
    await writeFakeProc(procRoot, String(pid), { netns: MANY_NS, cgroup })
  }

  const got = await netnsNames({ runNetns, procRoot, cgroupRoot: path.join(tmp, 'unused') })
  const want = new Map<number, string>([
    [blue, 'blue'],
    [red, 'crimson'],
    [POD_NS, `container:${ID_A.slice(0, 12)}`],
    [PODMAN_NS, `container:${ID_C.slice(0, 12)}`],
    [MANY_NS, `container:${'0'.repeat(12)}`],
  ])
  assert.deepEqual(new Map([...got].sort(([a], [b]) => a - b)), new Map([...want].sort(([a], [b]) => a - b)))
  assert.equal(got.has(HOST_NS), false)
  assert.equal(got.has(notNs), false)
})

test('netnsNames: without pid 1 only ip netns names are returned', async (t) => {
  const tmp = await withTempDir(t, 'netns-nopid1-')
  const runNetns = path.join(tmp, 'run-netns')
  const procRoot = path.join(tmp, 'proc')
  await mkdir(runNetns)
  await writeFile(path.join(runNetns, 'green'), '')
  await writeFakeProc(procRoot, '100', { netns: POD_NS, cgroup: `0::/docker/${ID_A}\n` })
  const green = statSync(path.join(runNetns, 'green')).ino
  assert.deepEqual(await netnsNames({ runNetns, procRoot }), new Map([[green, 'green']]))
})

test('netnsNames: missing directories give an empty map', async (t) => {
  const tmp = await withTempDir(t, 'netns-missing-')
  const got = await netnsNames({ runNetns: path.join(tmp, 'no-run'), procRoot: path.join(tmp, 'no-proc') })
  assert.deepEqual(got, new Map())
})

test('netnsNames: real `ip netns add` is named', async (t) => {
  if (process.getuid?.() !== 0) {
    console.log('skipping real ip netns test: not root')
    t.skip('not root')
    return
  }
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' })
  } catch {
    console.log('skipping real ip netns test: `ip` not found')
    t.skip('no ip')
    return
  }
  const name = `tt-names-${process.pid}`
  execFileSync('ip', ['netns', 'add', name], { stdio: 'inherit' })
  try {
    const ino = statSync(path.join('/run/netns', name)).ino
    const got = await netnsNames()
    assert.equal(got.get(ino), name)
  } finally {
    execFileSync('ip', ['netns', 'delete', name], { stdio: 'inherit' })
  }
})
