import { test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises'
import { statSync } from 'node:fs'
import net from 'node:net'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'

import { discoverListeners, parseNsLink, parseProcNetTcp, parseSocketLink } from '../../src/host/procfs.js'
import { AF_INET, AF_INET6, type ListenerOwner } from '../../src/kernel/abi.js'

const TCP_HEADER =
  '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode'
const TCP6_HEADER =
  '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode'

const REAL_TCP = [
  TCP_HEADER,
  '   0: 3500007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 21187 1 0000000000000000 100 0 0 10 5',
  '   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 24113 1 0000000000000000 100 0 0 10 0',
  '   2: 0F02000A:0016 0202000A:D2A4 01 00000000:00000000 02:0009F8E6 00000000     0        0 31415 4 0000000000000000 20 4 29 10 -1',
  '   3: 0100007F:9C40 0100007F:1F90 06 00000000:00000000 03:00001771 00000000     0        0 0 3 0000000000000000',
  '',
].join('\n')

const REAL_TCP6 = [
  TCP6_HEADER,
  '   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 22001 1 0000000000000000 100 0 0 10 0',
  '   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:C350 01 00000000:00000000 00:00000000 00000000  1000        0 22002 1 0000000000000000 20 4 30 10 -1',
  '   2: 0000000000000000FFFF00000100007F:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 22003 1 0000000000000000 100 0 0 10 0',
  '',
].join('\n')

test('parseProcNetTcp', async (t) => {
  type Brief = Array<{ localPort: number; state: number; inode: number }>
  const cases: Array<{ name: string; text: string; want: Brief }> = [
    { name: 'empty', text: '', want: [] },
    { name: 'header only', text: TCP_HEADER + '\n', want: [] },
    {
      name: 'ipv4 listen, established, time-wait',
      text: REAL_TCP,
      want: [
        { localPort: 53, state: 0x0a, inode: 21187 },
        { localPort: 22, state: 0x0a, inode: 24113 },
        { localPort: 22, state: 0x01, inode: 31415 },
        { localPort: 40000, state: 0x06, inode: 0 },
      ],
    },
    {
      name: 'ipv6 incl. v4-mapped',
      text: REAL_TCP6,
      want: [
        { localPort: 80, state: 0x0a, inode: 22001 },
        { localPort: 8080, state: 0x01, inode: 22002 },
        { localPort: 9090, state: 0x0a, inode: 22003 },
      ],
    },
    {
      name: 'malformed lines are skipped',
      text: [
        TCP_HEADER,
        'garbage',
        '   0: 0100007F 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1 1',
        '   1: 0100007F:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 2 1',
        '   2: 0100007F:0050 00000000:0000 XYZ 00000000:00000000 00:00000000 00000000 0 0 3 1',
        '   3: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 notanum 1',
        '   4: 0100007F:0050 00000000:0000 0A',
        'x5: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 5 1',
        '   6: 0100007F:0051 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 6 1',
      ].join('\n'),
      want: [{ localPort: 81, state: 0x0a, inode: 6 }],
    },
    {
      name: 'CRLF and no header',
      text: '   0: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 77 1\r\n',
      want: [{ localPort: 443, state: 0x0a, inode: 77 }],
    },
  ]
  for (const c of cases) {
    await t.test(c.name, () => {
      const rows = parseProcNetTcp(c.text).map(({ localPort, state, inode }) => ({ localPort, state, inode }))
      assert.deepEqual(rows, c.want)
    })
  }
})

test('parseProcNetTcp: addresses in network byte order', () => {
  const [v4] = parseProcNetTcp(
    '   0: 0100007F:1F90 0200007F:D431 01 00000000:00000000 00:00000000 00000000 0 0 9 1\n',
  )
  assert.ok(v4)
  assert.deepEqual([...v4.localAddr], [127, 0, 0, 1])
  assert.deepEqual([...v4.remoteAddr], [127, 0, 0, 2])
  assert.equal(v4.localPort, 8080)
  assert.equal(v4.remotePort, 0xd431)
  // ::1 and ::ffff:10.0.0.1 as tcp6 prints them (each 32-bit word in host order)
  const [v6] = parseProcNetTcp(
    '   0: 00000000000000000000000001000000:0050 0000000000000000FFFF00000100000A:C350 01 00000000:00000000 00:00000000 00000000 0 0 9 1\n',
  )
  assert.ok(v6)
  assert.deepEqual([...v6.localAddr], [...Array<number>(15).fill(0), 1])
  assert.deepEqual([...v6.remoteAddr], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1])
})

test('parseNsLink', async (t) => {
  const cases: Array<[string, number | undefined]> = [
    ['net:[4026531840]', 4026531840],
    ['net:[1]', 1],
    ['net:[4026531840]\n', 4026531840],
    ['mnt:[4026531840]', undefined],
    ['net:[]', undefined],
    ['net:[12a]', undefined],
    ['net:4026531840', undefined],
    ['socket:[4026531840]', undefined],
    ['', undefined],
  ]
  for (const [input, want] of cases) {
    await t.test(JSON.stringify(input), () => {
      assert.equal(parseNsLink(input), want)
    })
  }
})

test('parseSocketLink', async (t) => {
  const cases: Array<[string, number | undefined]> = [
    ['socket:[12345]', 12345],
    ['socket:[0]', 0],
    ['pipe:[12345]', undefined],
    ['anon_inode:[eventfd]', undefined],
    ['/dev/null', undefined],
    ['socket:[]', undefined],
    ['socket:[-1]', undefined],
    ['socket:[99999999999999999999]', undefined],
  ]
  for (const [input, want] of cases) {
    await t.test(JSON.stringify(input), () => {
      assert.equal(parseSocketLink(input), want)
    })
  }
})

interface FakeProc {
  netns?: number
  sockets?: number[]
  otherFds?: string[]
  comm?: string
  cgroup?: string
  tcp?: string
  tcp6?: string
}

async function writeFakeProc(root: string, pid: string, p: FakeProc): Promise<void> {
  const dir = path.join(root, pid)
  await mkdir(dir, { recursive: true })
  if (p.netns !== undefined) {
    await mkdir(path.join(dir, 'ns'))
    await symlink(`net:[${p.netns}]`, path.join(dir, 'ns', 'net'))
  }
  if (p.sockets !== undefined || p.otherFds !== undefined) {
    await mkdir(path.join(dir, 'fd'))
    const targets = [...(p.otherFds ?? []), ...(p.sockets ?? []).map((s) => `socket:[${s}]`)]
    for (const [i, target] of targets.entries()) await symlink(target, path.join(dir, 'fd', String(i)))
  }
  if (p.comm !== undefined) await writeFile(path.join(dir, 'comm'), p.comm + '\n')
  if (p.cgroup !== undefined) await writeFile(path.join(dir, 'cgroup'), p.cgroup)
  if (p.tcp !== undefined || p.tcp6 !== undefined) await mkdir(path.join(dir, 'net'))
  if (p.tcp !== undefined) await writeFile(path.join(dir, 'net', 'tcp'), p.tcp)
  if (p.tcp6 !== undefined) await writeFile(path.join(dir, 'net', 'tcp6'), p.tcp6)
}

function row(sl: number, addrHex: string, port: number, st: number, inode: number): string {
  const hex = (n: number, w: number): string => n.toString(16).toUpperCase().padStart(w, '0')
  const rem = '0'.repeat(addrHex.length) + ':0000'
  return `  ${String(sl).padStart(2)}: ${addrHex}:${hex(port, 4)} ${rem} ${hex(st, 2)} 00000000:00000000 00:00000000 00000000     0        0 ${inode} 1 0000000000000000 100 0 0 10 0`
}

const V4_ANY = '00000000'
const V4_LO = '0100007F'
const V6_ANY = '0'.repeat(32)

async function withTempDir(t: { after: (fn: () => Promise<void>) => void }, prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix))
  t.after(() => rm(dir, { recursive: true, force: true }))
  return dir
}

test('discoverListeners on a fixture tree', async (t) => {
  const tmp = await withTempDir(t, 'procfs-test-')
  const procRoot = path.join(tmp, 'proc')
  const cgroupRoot = path.join(tmp, 'cgroup')
  await mkdir(procRoot)
  await mkdir(path.join(cgroupRoot, 'system.slice', 'foo.service'), { recursive: true })
  await mkdir(path.join(cgroupRoot, 'system.slice', 'bar.service'), { recursive: true })
  await mkdir(path.join(cgroupRoot, 'kubepods', 'pod1'), { recursive: true })
  const ino = (rel: string): bigint => statSync(path.join(cgroupRoot, rel), { bigint: true }).ino

  const HOST_NS = 4026531840
  const CONT_NS = 4026532500

  const hostTcp = [
    TCP_HEADER,
    row(0, V4_ANY, 22, 0x0a, 1001), // sshd
    row(1, V4_LO, 8080, 0x0a, 1002), // forked server, shared by 300/301
    row(2, V4_ANY, 9000, 0x0a, 1003), // SO_REUSEPORT, held by 500
    row(3, V4_ANY, 9000, 0x0a, 1004), // SO_REUSEPORT, held by 400 -> wins (lower pid)
    row(4, V4_LO, 7000, 0x0a, 1005), // nobody holds it visibly
    row(5, '0F02000A', 22, 0x01, 1006), // established, ignored
    row(6, V4_ANY, 6000, 0x0a, 1007), // held by 150 (no comm: skipped) and 160
    '   7: broken line',
    '',
  ].join('\n')
  const hostTcp6 = [TCP6_HEADER, row(0, V6_ANY, 22, 0x0a, 2001), row(1, V6_ANY, 443, 0x01, 2002), ''].join(
    '\n',
  )
  const contTcp = [TCP_HEADER, row(0, V4_ANY, 80, 0x0a, 3001), row(1, V4_ANY, 81, 0x0a, 3002), ''].join('\n')

  const host = { netns: HOST_NS, tcp: hostTcp, tcp6: hostTcp6 }
  await writeFakeProc(procRoot, '100', {
    ...host,
    sockets: [1001, 2001, 1006],
    otherFds: ['/dev/null', 'pipe:[55]', 'anon_inode:[eventfd]'],
    comm: 'sshd',
    cgroup: '0::/system.slice/foo.service\n',
  })
  // fork after listen: both hold 1002, lowest pid (300) must be chosen even though 301 is listed too
  await writeFakeProc(procRoot, '301', {
    ...host,
    sockets: [1002],
    comm: 'server-worker',
    cgroup: '0::/system.slice/bar.service\n',
  })
  await writeFakeProc(procRoot, '300', {
    ...host,
    sockets: [1002, 1002],
    comm: 'server',
    cgroup: '0::/system.slice/bar.service\n',
  })
  await writeFakeProc(procRoot, '400', { ...host, sockets: [1004], comm: 'rp-a', cgroup: '0::/\n' })
  await writeFakeProc(procRoot, '500', { ...host, sockets: [1003], comm: 'rp-b', cgroup: '0::/\n' })
  // process whose comm/cgroup vanished: skipped, next holder used
  await writeFakeProc(procRoot, '150', { ...host, sockets: [1007] })
  await writeFakeProc(procRoot, '160', {
    ...host,
    sockets: [1007],
    comm: 'with spaces  in comm',
    cgroup: '12:pids:/foo\n0::/gone.slice\n',
  })
  // container netns with only tcp (IPv6 disabled: no tcp6 file)
  await writeFakeProc(procRoot, '1000', {
    netns: CONT_NS,
    tcp: contTcp,
    sockets: [3001],
    comm: 'nginx',
    cgroup: '0::/kubepods/pod1\n',
  })
  // same netns, shares 3001 with 1000, alone on 3002; its cgroup is outside our cgroup namespace -> 0n
  await writeFakeProc(procRoot, '1001', {
    netns: CONT_NS,
    tcp: contTcp,
    sockets: [3001, 3002],
    comm: 'nginx-child',
    cgroup: '0::/../../elsewhere\n',
  })
  // pid dir with missing files: skipped silently
  await writeFakeProc(procRoot, '200', { comm: 'half-dead' })
  await writeFakeProc(procRoot, '201', { netns: HOST_NS })
  await writeFakeProc(procRoot, '202', { netns: HOST_NS, sockets: [9999] })
  // non-numeric entries are ignored (even if they look like processes)
  await writeFakeProc(procRoot, 'self', { ...host, sockets: [1005], comm: 'self', cgroup: '0::/\n' })
  await writeFakeProc(procRoot, '12abc', { ...host, sockets: [1005], comm: 'bad', cgroup: '0::/\n' })
  await writeFile(path.join(procRoot, 'uptime'), '1.00 2.00\n')
  await symlink('100', path.join(procRoot, 'thread-self'))

  const got = await discoverListeners({ procRoot, cgroupRoot })

  const want: ListenerOwner[] = [
    {
      netns: HOST_NS,
      family: AF_INET,
      port: 22,
      pid: 100,
      comm: 'sshd',
      cgroupId: ino('system.slice/foo.service'),
    },
    { netns: HOST_NS, family: AF_INET, port: 6000, pid: 160, comm: 'with spaces  in comm', cgroupId: 0n },
    {
      netns: HOST_NS,
      family: AF_INET,
      port: 8080,
      pid: 300,
      comm: 'server',
      cgroupId: ino('system.slice/bar.service'),
    },
    { netns: HOST_NS, family: AF_INET, port: 9000, pid: 400, comm: 'rp-a', cgroupId: ino('.') },
    {
      netns: HOST_NS,
      family: AF_INET6,
      port: 22,
      pid: 100,
      comm: 'sshd',
      cgroupId: ino('system.slice/foo.service'),
    },
    { netns: CONT_NS, family: AF_INET, port: 80, pid: 1000, comm: 'nginx', cgroupId: ino('kubepods/pod1') },
    { netns: CONT_NS, family: AF_INET, port: 81, pid: 1001, comm: 'nginx-child', cgroupId: 0n },
  ]
  assert.deepEqual(got, want)
  assert.notEqual(want[0]?.cgroupId, 0n)
})

test('discoverListeners: defaults cgroupRoot and tolerates an empty proc root', async (t) => {
  const tmp = await withTempDir(t, 'procfs-empty-')
  assert.deepEqual(await discoverListeners({ procRoot: tmp }), [])
})

test('discoverListeners: real /proc sees our own listening socket', async (t) => {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())))
  const { port } = server.address() as AddressInfo

  const comm = (await readFile('/proc/self/comm', 'utf8')).replace(/\n$/, '')
  const netns = parseNsLink(await readlink('/proc/self/ns/net'))
  assert.ok(netns !== undefined)

  const owners = await discoverListeners()
  const mine = owners.find((o) => o.netns === netns && o.family === AF_INET && o.port === port)
  assert.ok(mine, `no listener found for 127.0.0.1:${port}`)
  assert.equal(mine.pid, process.pid)
  assert.equal(mine.comm, comm)
  assert.equal(typeof mine.cgroupId, 'bigint')
})
