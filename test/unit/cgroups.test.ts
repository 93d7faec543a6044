import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, statSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'

import { CgroupResolver, containerIdFromCgroupPath, nameFromCgroupPath } from '../../src/host/cgroups.js'
import type { CgroupFs } from '../../src/host/cgroups.js'

const ID = '3f4e1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f'
const ID12 = ID.slice(0, 12)
const ID2 = 'a'.repeat(32) + 'b'.repeat(32)
const UID = '7c1f0e55_2b8a_4f1e_9d3c_0a1b2c3d4e5f'
const UID_DASH = '7c1f0e55-2b8a-4f1e-9d3c-0a1b2c3d4e5f'

test('nameFromCgroupPath', async (t) => {
  const cases: Array<[string, string]> = [
    ['/', '/'],
    // docker
    [`/system.slice/docker-${ID}.scope`, ID12],
    [`/docker/${ID}`, ID12],
    // containerd / CRI, systemd and cgroupfs drivers
    [
      `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID}.slice/cri-containerd-${ID}.scope`,
      ID12,
    ],
    [`/kubepods/besteffort/pod${UID_DASH}/${ID}`, ID12],
    [`/kubepods/pod${UID_DASH}/${ID}`, ID12],
    // cri-o
    [`/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID}.slice/crio-${ID}.scope`, ID12],
    // podman, rootful and rootless (with a nested cgroup inside the container)
    [`/machine.slice/libpod-${ID}.scope`, ID12],
    [`/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-${ID}.scope/container`, ID12],
    // units inside a container: the container wins; the innermost container wins
    [`/system.slice/docker-${ID}.scope/system.slice/nginx.service`, ID12],
    [`/docker/${ID2}/docker/${ID}`, ID12],
    // a cgroup namespace boundary seen from outside
    [`/../../system.slice/docker-${ID}.scope`, ID12],
    // systemd units
    ['/system.slice/nginx.service', 'nginx.service'],
    ['/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service', 'foo.service'],
    ['/user.slice/user-1000.slice/session-3.scope', 'session-3.scope'],
    ['/system.slice/systemd-journald-dev-log.socket', 'systemd-journald-dev-log.socket'],
    ['/system.slice/home.mount', 'home.mount'],
    ['/system.slice/dev-sda2.swap', 'dev-sda2.swap'],
    ['/system.slice/getty@tty1.service', 'getty@tty1.service'],
    ['/user.slice/user-1000.slice/user@1000.service/app.slice', 'user@1000.service'],
    ['/system.slice/foo.service/delegated/child', 'foo.service'],
    // conmon scopes are not the container itself
    [`/machine.slice/libpod-conmon-${ID}.scope`, `libpod-conmon-${ID}.scope`],
    [`/system.slice/crio-conmon-${ID}.scope`, `crio-conmon-${ID}.scope`],
    // prefixes that look like containers but are not: plain scopes
    ['/system.slice/docker-xyz.scope', 'docker-xyz.scope'],
    [`/system.slice/docker-${ID.slice(1)}.scope`, `docker-${ID.slice(1)}.scope`],
    // anything else: the full path
    ['/system.slice', '/system.slice'],
    ['/user.slice/user-1000.slice', '/user.slice/user-1000.slice'],
    ['/kubepods/besteffort/pod1', '/kubepods/besteffort/pod1'],
    ['/mygroup/sub', '/mygroup/sub'],
    [`/docker/${ID.slice(1)}`, `/docker/${ID.slice(1)}`],
    [`/docker/${ID}0`, `/docker/${ID}0`],
    [`/docker/${ID.toUpperCase()}`, `/docker/${ID.toUpperCase()}`],
    [`/system.slice/docker-${ID}.scope.bak`, `/system.slice/docker-${ID}.scope.bak`],
    ['/system.slice/.service', '/system.slice/.service'],
    ['/system.slice/nginx.service.d', '/system.slice/nginx.service.d'],
    ['/system.slice/nginx.slice', '/system.slice/nginx.slice'],
    ['/../..', '/../..'],
    ['//', '//'],
    ['', ''],
    ['garbage with spaces', 'garbage with spaces'],
  ]
  for (const [input, want] of cases) {
    await t.test(JSON.stringify(input), () => {
      assert.equal(nameFromCgroupPath(input), want)
    })
  }
})

test('containerIdFromCgroupPath', () => {
  assert.equal(containerIdFromCgroupPath(`/system.slice/docker-${ID}.scope`), ID)
  assert.equal(containerIdFromCgroupPath(`/kubepods/besteffort/pod${UID_DASH}/${ID}`), ID)
  assert.equal(containerIdFromCgroupPath('/system.slice/nginx.service'), undefined)
  assert.equal(containerIdFromCgroupPath('/'), undefined)
})

async function withTempDir(t: { after: (fn: () => Promise<void>) => void }, prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix))
  t.after(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** A cgroup2-like fixture tree: directories with a few control files, cgroup.controllers at the root. */
async function makeCgroupTree(root: string, dirs: readonly string[]): Promise<void> {
  await writeFile(path.join(root, 'cgroup.controllers'), 'cpu io memory pids\n')
  for (const d of dirs) {
    await mkdir(path.join(root, d), { recursive: true })
    await writeFile(path.join(root, d, 'cgroup.procs'), '')
  }
}

const ino = (root: string, rel: string): bigint => statSync(path.join(root, rel), { bigint: true }).ino

class FakeClock {
  t = 10_000
  now = (): number => this.t
}

/** Wraps node:fs/promises, counting walks (stat of the root) and letting tests interfere. */
function spyFs(
  root: string,
  hooks: {
    afterReaddir?: (dir: string) => Promise<void>
    readdirError?: (dir: string) => string | undefined
    statError?: (file: string) => string | undefined
  } = {},
): CgroupFs & { walks: number } {
  const fail = (code: string, p: string): never => {
    throw Object.assign(new Error(`${code}: ${p}`), { code })
  }
  const spy = {
    walks: 0,
    async readdir(dir: string, options: { withFileTypes: true }) {
      const code = hooks.readdirError?.(dir)
      if (code !== undefined) fail(code, dir)
      const entries = await readdir(dir, options)
      await hooks.afterReaddir?.(dir)
      return entries
    },
    async stat(file: string, options: { bigint: true }) {
      if (file === root) spy.walks++
      const code = hooks.statError?.(file)
      if (code !== undefined) fail(code, file)
      return stat(file, options)
    },
  }
  return spy
}

const TREE = [
  'system.slice/nginx.service',
  `system.slice/docker-${ID}.scope`,
  `kubepods/besteffort/pod${UID_DASH}/${ID2}`,
  'user.slice/user-1000.slice/session-3.scope',
  'user.slice/user-1000.slice/user@1000.service/app.slice/foo.service',
]

test('CgroupResolver resolves a fixture tree', async (t) => {
  const root = await withTempDir(t, 'cgroups-tree-')
  await makeCgroupTree(root, TREE)
  const clock = new FakeClock()
  const r = new CgroupResolver({ cgroupRoot: root, now: clock.now })
  assert.equal(r.supported, true)
  assert.equal(r.size, 0)

  await r.refresh()
  assert.equal(r.lastError, undefined)
  const want: Array<[string, string]> = [
    ['.', '/'],
    ['system.slice', '/system.slice'],
    ['system.slice/nginx.service', 'nginx.service'],
    [`system.slice/docker-${ID}.scope`, ID12],
    ['kubepods', '/kubepods'],
    [`kubepods/besteffort/pod${UID_DASH}`, `/kubepods/besteffort/pod${UID_DASH}`],
    [`kubepods/besteffort/pod${UID_DASH}/${ID2}`, ID2.slice(0, 12)],
    ['user.slice/user-1000.slice', '/user.slice/user-1000.slice'],
    ['user.slice/user-1000.slice/session-3.scope', 'session-3.scope'],
    ['user.slice/user-1000.slice/user@1000.service', 'user@1000.service'],
    ['user.slice/user-1000.slice/user@1000.service/app.slice/foo.service', 'foo.service'],
  ]
  for (const [rel, name] of want) assert.equal(r.resolve(ino(root, rel)), name, rel)
  // root + system.slice(3) + kubepods(4) + user.slice(6)
  assert.equal(r.size, 14)
  // files are not cgroups
  assert.equal(r.resolve(ino(root, 'cgroup.controllers')), '')
  assert.equal(r.resolve(0n), '')
  assert.equal(r.resolve(2n ** 63n), '')
})

test('CgroupResolver: explicit refresh picks up a new cgroup', async (t) => {
  const root = await withTempDir(t, 'cgroups-new-')
  await makeCgroupTree(root, TREE)
  const clock = new FakeClock()
  const r = new CgroupResolver({ cgroupRoot: root, now: clock.now })
  await r.refresh()
  await mkdir(path.join(root, 'system.slice', 'redis.service'))
  const id = ino(root, 'system.slice/redis.service')
  // No time has passed: the miss does not trigger a refresh.
  assert.equal(r.resolve(id), '')
  await r.whenIdle()
  assert.equal(r.resolve(id), '')
  await r.refresh()
  assert.equal(r.resolve(id), 'redis.service')
  // A removed cgroup disappears with the next refresh.
  await rm(path.join(root, 'system.slice', 'redis.service'), { recursive: true })
  await r.refresh()
  assert.equal(r.resolve(id), '')
})

test('CgroupResolver: a miss refreshes at most once per second, never concurrently', async (t) => {
  const root = await withTempDir(t, 'cgroups-rate-')
  await makeCgroupTree(root, TREE)
  const clock = new FakeClock()
  const fs = spyFs(root)
  const r = new CgroupResolver({ cgroupRoot: root, now: clock.now, fs })

  // The first miss ever refreshes immediately; further misses meanwhile join nothing new.
  const nginx = ino(root, 'system.slice/nginx.service')
  assert.equal(r.resolve(nginx), '')
  assert.equal(r.resolve(nginx), '')
  assert.equal(r.resolve(123n), '')
  await r.whenIdle()
  assert.equal(fs.walks, 1)
  assert.equal(r.resolve(nginx), 'nginx.service')

  await mkdir(path.join(root, 'system.slice', 'a.service'))
  const a = ino(root, 'system.slice/a.service')
  clock.t += 999
  assert.equal(r.resolve(a), '')
  await r.whenIdle()
  assert.equal(fs.walks, 1)

  clock.t += 1
  assert.equal(r.resolve(a), '')
  // A second miss while the refresh runs (even after more time passes) does not start another one.
  clock.t += 5000
  assert.equal(r.resolve(a), '')
  assert.equal(r.resolve(a), '')
  await r.whenIdle()
  assert.equal(fs.walks, 2)
  assert.equal(r.resolve(a), 'a.service')

  // The interval counts from the start of the last refresh, explicit ones included.
  await mkdir(path.join(root, 'system.slice', 'b.service'))
  const b = ino(root, 'system.slice/b.service')
  clock.t += 2000
  await r.refresh()
  assert.equal(fs.walks, 3)
  await mkdir(path.join(root, 'system.slice', 'c.service'))
  const c = ino(root, 'system.slice/c.service')
  clock.t += 500
  assert.equal(r.resolve(c), '')
  await r.whenIdle()
  assert.equal(fs.walks, 3)
  assert.equal(r.resolve(b), 'b.service')

  // Concurrent explicit refreshes share one walk.
  clock.t += 10
  await Promise.all([r.refresh(), r.refresh(), r.refresh()])
  assert.equal(fs.walks, 4)
  assert.equal(r.resolve(c), 'c.service')
  // 0n never triggers a refresh.
  clock.t += 10_000
  assert.equal(r.resolve(0n), '')
  await r.whenIdle()
  assert.equal(fs.walks, 4)
})

test('CgroupResolver tolerates cgroups vanishing or unreadable mid-walk', async (t) => {
  const root = await withTempDir(t, 'cgroups-vanish-')
  await makeCgroupTree(root, [
    'system.slice/gone.service/child',
    'system.slice/stays.service',
    'system.slice/stat-enoent.service',
    'locked.slice/hidden.service',
    'kubepods/pod1/deep',
  ])
  const gone = ino(root, 'system.slice/gone.service')
  const goneChild = ino(root, 'system.slice/gone.service/child')
  const locked = ino(root, 'locked.slice')
  const hidden = ino(root, 'locked.slice/hidden.service')
  const pod1 = ino(root, 'kubepods/pod1')
  const deep = ino(root, 'kubepods/pod1/deep')
  const fs = spyFs(root, {
    // gone.service is listed by its parent, then removed before the walk reaches it.
    afterReaddir: async (dir) => {
      if (dir === path.join(root, 'system.slice')) {
        await rm(path.join(root, 'system.slice', 'gone.service'), { recursive: true })
      }
    },
    readdirError: (dir) => {
      if (dir === path.join(root, 'locked.slice')) return 'EACCES'
      // removed between stat and readdir
      if (dir === path.join(root, 'kubepods', 'pod1')) return 'ENOENT'
      return undefined
    },
    statError: (file) => (file.endsWith('stat-enoent.service') ? 'ENOENT' : undefined),
  })
  const r = new CgroupResolver({ cgroupRoot: root, now: new FakeClock().now, fs })
  await r.refresh()
  assert.equal(r.lastError, undefined)
  assert.equal(r.resolve(gone), '')
  assert.equal(r.resolve(goneChild), '')
  assert.equal(r.resolve(ino(root, 'system.slice/stays.service')), 'stays.service')
  assert.equal(r.resolve(ino(root, 'system.slice/stat-enoent.service')), '')
  // An unreadable directory is still known itself; only its subtree is lost.
  assert.equal(r.resolve(locked), '/locked.slice')
  assert.equal(r.resolve(hidden), '')
  assert.equal(r.resolve(pod1), '/kubepods/pod1')
  assert.equal(r.resolve(deep), '')
  await r.whenIdle()
})

test('CgroupResolver: a failing root keeps the previous map and records the error', async (t) => {
  const root = await withTempDir(t, 'cgroups-fail-')
  await makeCgroupTree(root, ['system.slice/nginx.service'])
  let failWith: string | undefined
  const fs = spyFs(root, { readdirError: (dir) => (dir === root ? failWith : undefined) })
  const clock = new FakeClock()
  const r = new CgroupResolver({ cgroupRoot: root, now: clock.now, fs })
  await r.refresh()
  const nginx = ino(root, 'system.slice/nginx.service')
  assert.equal(r.resolve(nginx), 'nginx.service')

  failWith = 'EIO'
  await assert.rejects(r.refresh(), { code: 'EIO' })
  assert.equal((r.lastError as NodeJS.ErrnoException).code, 'EIO')
  assert.equal(r.resolve(nginx), 'nginx.service')

  // A systemic error below the root fails the walk too.
  failWith = undefined
  const fs2 = spyFs(root, { statError: (file) => (file.endsWith('nginx.service') ? 'EMFILE' : undefined) })
  const r2 = new CgroupResolver({ cgroupRoot: root, now: clock.now, fs: fs2 })
  await assert.rejects(r2.refresh(), { code: 'EMFILE' })
  assert.equal(r2.size, 0)

  // Background refreshes swallow the error (no unhandled rejection) but record it.
  failWith = 'EIO'
  r.lastError = undefined
  clock.t += 1000
  assert.equal(r.resolve(42n), '')
  await r.whenIdle()
  assert.equal((r.lastError as NodeJS.ErrnoException | undefined)?.code, 'EIO')
  assert.equal(r.resolve(nginx), 'nginx.service')

  // The next successful refresh clears it.
  failWith = undefined
  await r.refresh()
  assert.equal(r.lastError, undefined)
})

test('CgroupResolver bounds the map to maxEntries, shallow cgroups first', async (t) => {
  const root = await withTempDir(t, 'cgroups-max-')
  await makeCgroupTree(root, ['a.slice/deep.service', 'b.slice/deep.service', 'c.slice'])
  const r = new CgroupResolver({ cgroupRoot: root, maxEntries: 3, now: new FakeClock().now })
  await r.refresh()
  assert.equal(r.size, 3)
  assert.equal(r.resolve(ino(root, '.')), '/')
  assert.equal(r.resolve(ino(root, 'a.slice')), '/a.slice')
  assert.equal(r.resolve(ino(root, 'b.slice')), '/b.slice')
  assert.equal(r.resolve(ino(root, 'c.slice')), '')
  await r.whenIdle()

  const none = new CgroupResolver({ cgroupRoot: root, maxEntries: 0 })
  await none.refresh()
  assert.equal(none.size, 0)
})

test('CgroupResolver on a root that is not cgroup v2', async (t) => {
  const root = await withTempDir(t, 'cgroups-v1-')
  await mkdir(path.join(root, 'system.slice', 'nginx.service'), { recursive: true })
  const fs = spyFs(root)
  const r = new CgroupResolver({ cgroupRoot: root, now: new FakeClock().now, fs })
  assert.equal(r.supported, false)
  await r.refresh()
  assert.equal(r.resolve(ino(root, '.')), '')
  assert.equal(r.resolve(ino(root, 'system.slice/nginx.service')), '')
  await r.whenIdle()
  assert.equal(fs.walks, 0)
  assert.equal(r.size, 0)

  const missing = new CgroupResolver({ cgroupRoot: path.join(root, 'does-not-exist') })
  assert.equal(missing.supported, false)
  await missing.refresh()
  assert.equal(missing.resolve(1n), '')
})

test('CgroupResolver: real cgroup2 mount resolves our own cgroup', async (t) => {
  const root = ['/sys/fs/cgroup', '/sys/fs/cgroup/unified'].find((d) =>
    existsSync(path.join(d, 'cgroup.controllers')),
  )
  const line = (await readFile('/proc/self/cgroup', 'utf8')).split('\n').find((l) => l.startsWith('0::'))
  const rel = line?.slice(3)
  if (root === undefined || rel === undefined || !rel.startsWith('/') || rel.includes('..')) {
    console.log('skipping: no cgroup2 mount, or our cgroup is outside it')
    t.skip('no usable cgroup2 mount')
    return
  }
  const r = new CgroupResolver({ cgroupRoot: root })
  assert.equal(r.supported, true)
  await r.refresh()
  assert.equal(r.lastError, undefined)
  const id = statSync(path.join(root, rel), { bigint: true }).ino
  assert.equal(r.resolve(id), nameFromCgroupPath(rel))
})
