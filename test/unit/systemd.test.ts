import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { loadBinding } from '../../src/kernel/binding.js'
import { createNotifier, startWatchdog, watchdogIntervalMs } from '../../src/host/systemd.js'

const ENV = { NOTIFY_SOCKET: '/run/systemd/notify' }

function capture(): { sent: string[]; send: (state: string) => boolean } {
  const sent: string[] = []
  return {
    sent,
    send: (state) => {
      sent.push(state)
      return true
    },
  }
}

test('notifier message formats', () => {
  const { sent, send } = capture()
  const n = createNotifier(send, ENV)
  assert.equal(n.enabled, true)
  n.ready()
  n.ready('tracing 12 programs')
  n.status('reloading config')
  n.status('two\nlines')
  n.stopping()
  n.watchdog()
  assert.deepEqual(sent, [
    'READY=1',
    'READY=1\nSTATUS=tracing 12 programs',
    'STATUS=reloading config',
    'STATUS=two lines',
    'STOPPING=1',
    'WATCHDOG=1',
  ])
})

test('reloading() carries CLOCK_MONOTONIC in microseconds', () => {
  const { sent, send } = capture()
  const n = createNotifier(send, ENV)
  const before = process.hrtime.bigint() / 1000n
  n.reloading()
  const after = process.hrtime.bigint() / 1000n
  assert.equal(sent.length, 1)
  const m = /^RELOADING=1\nMONOTONIC_USEC=(\d+)$/.exec(sent[0] ?? '')
  assert.ok(m, `unexpected message ${JSON.stringify(sent[0])}`)
  const usec = BigInt(m[1] ?? '')
  assert.ok(usec >= before && usec <= after, `${usec} not within [${before}, ${after}]`)
})

test('disabled without NOTIFY_SOCKET: every method is a no-op', () => {
  for (const env of [{}, { NOTIFY_SOCKET: '' }]) {
    const { sent, send } = capture()
    const n = createNotifier(send, env)
    assert.equal(n.enabled, false)
    n.ready('x')
    n.status('x')
    n.stopping()
    n.reloading()
    n.watchdog()
    assert.deepEqual(sent, [])
  }
  // the default sender is not even loaded
  const n = createNotifier(undefined, {})
  assert.equal(n.enabled, false)
  n.ready()
})

test('errors from send are reported, never thrown', () => {
  const boom = new Error('sendto failed')
  const failing = (): boolean => {
    throw boom
  }
  const silent = createNotifier(failing, ENV)
  assert.doesNotThrow(() => silent.ready())

  const seen: Array<[unknown, string]> = []
  const reported = createNotifier(failing, ENV, { onError: (err, state) => seen.push([err, state]) })
  assert.doesNotThrow(() => reported.stopping())
  assert.deepEqual(seen, [[boom, 'STOPPING=1']])

  const badHandler = createNotifier(failing, ENV, {
    onError: () => {
      throw new Error('handler broke')
    },
  })
  assert.doesNotThrow(() => badHandler.watchdog())
})

test('watchdogIntervalMs', () => {
  const cases: Array<{ name: string; env: NodeJS.ProcessEnv; pid?: number; want: number | undefined }> = [
    { name: 'unset', env: {}, want: undefined },
    { name: 'empty', env: { WATCHDOG_USEC: '' }, want: undefined },
    { name: 'zero', env: { WATCHDOG_USEC: '0' }, want: undefined },
    { name: 'not a number', env: { WATCHDOG_USEC: 'abc' }, want: undefined },
    { name: 'negative', env: { WATCHDOG_USEC: '-5' }, want: undefined },
    { name: 'fraction', env: { WATCHDOG_USEC: '1.5' }, want: undefined },
    { name: 'huge', env: { WATCHDOG_USEC: '9'.repeat(30) }, want: undefined },
    { name: '30s', env: { WATCHDOG_USEC: '30000000' }, want: 15000 },
    { name: 'tiny is at least 1ms', env: { WATCHDOG_USEC: '1' }, want: 1 },
    { name: 'pid matches', env: { WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, pid: 42, want: 15000 },
    {
      name: 'pid mismatch',
      env: { WATCHDOG_USEC: '30000000', WATCHDOG_PID: '43' },
      pid: 42,
      want: undefined,
    },
    { name: 'pid invalid', env: { WATCHDOG_USEC: '30000000', WATCHDOG_PID: 'x' }, pid: 42, want: undefined },
    { name: 'pid empty', env: { WATCHDOG_USEC: '30000000', WATCHDOG_PID: '' }, pid: 42, want: 15000 },
  ]
  for (const c of cases) {
    assert.equal(watchdogIntervalMs(c.env, c.pid ?? 42), c.want, c.name)
  }
  assert.equal(
    watchdogIntervalMs({ WATCHDOG_USEC: '2000000', WATCHDOG_PID: String(process.pid) }),
    1000,
    'defaults to process.pid',
  )
})

test('startWatchdog pings only while healthy, and stops', async () => {
  const { sent, send } = capture()
  const n = createNotifier(send, ENV)
  let healthy = true
  const stop = startWatchdog(n, 5, () => healthy)
  try {
    await sleep(60)
    assert.ok(sent.length > 0, 'no ping while healthy')
    assert.ok(
      sent.every((s) => s === 'WATCHDOG=1'),
      JSON.stringify(sent),
    )

    healthy = false
    const whileUnhealthy = sent.length
    await sleep(40)
    assert.equal(sent.length, whileUnhealthy, 'pinged while unhealthy')

    healthy = true
    await sleep(40)
    assert.ok(sent.length > whileUnhealthy, 'no ping after recovering')
  } finally {
    stop()
  }
  const afterStop = sent.length
  await sleep(40)
  assert.equal(sent.length, afterStop, 'pinged after stop')
})

test('startWatchdog treats a throwing healthy() as unhealthy', async () => {
  const { sent, send } = capture()
  const stop = startWatchdog(createNotifier(send, ENV), 5, () => {
    throw new Error('probe failed')
  })
  await sleep(30)
  stop()
  assert.deepEqual(sent, [])
})

// The real addon against a real receiver. Node has no AF_UNIX datagram sockets, so python3 binds one,
// prints "bound", then writes the first datagram it receives to stdout verbatim and exits.
const RECEIVER = `
import socket, sys
addr = sys.argv[1]
if addr.startswith('@'):
    addr = '\\0' + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(addr)
s.settimeout(10)
sys.stdout.write('bound\\n')
sys.stdout.flush()
data = s.recv(65536)
sys.stdout.buffer.write(data)
sys.stdout.flush()
`

// Resolves once the socket is bound; `received` settles when python exits. (Wrapped in an object: an
// async function returning a bare promise would wait for it.)
async function startReceiver(address: string): Promise<{ received: Promise<string> }> {
  const child = spawn('python3', ['-c', RECEIVER, address], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d))
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d))
  const done = new Promise<string>((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code) => {
      if (code === 0 && out.startsWith('bound\n')) resolve(out.slice('bound\n'.length))
      else reject(new Error(`python3 receiver exited with ${code}: ${err || out}`))
    })
  })
  const deadline = Date.now() + 10_000
  while (!out.startsWith('bound\n')) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill()
      throw await done.then(
        () => new Error(`receiver never bound: ${out}`),
        (e: unknown) => e,
      )
    }
    await sleep(10)
  }
  return { received: done }
}

async function withNotifySocket<T>(value: string | undefined, fn: () => Promise<T> | T): Promise<T> {
  const saved = process.env['NOTIFY_SOCKET']
  if (value === undefined) delete process.env['NOTIFY_SOCKET']
  else process.env['NOTIFY_SOCKET'] = value
  try {
    return await fn()
  } finally {
    if (saved === undefined) delete process.env['NOTIFY_SOCKET']
    else process.env['NOTIFY_SOCKET'] = saved
  }
}

test('addon sdNotify: path socket', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'tt-notify-'))
  try {
    const sock = path.join(dir, 'notify.sock')
    const { received } = await startReceiver(sock)
    const sent = await withNotifySocket(sock, () => loadBinding().sdNotify('READY=1\nSTATUS=hi'))
    assert.equal(sent, true)
    assert.equal(await received, 'READY=1\nSTATUS=hi')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('addon sdNotify: abstract socket, through createNotifier()', async () => {
  const name = `@tt-notify-${process.pid}`
  const { received } = await startReceiver(name)
  await withNotifySocket(name, () => {
    const errors: unknown[] = []
    const n = createNotifier(undefined, process.env, { onError: (e) => errors.push(e) })
    assert.equal(n.enabled, true)
    n.ready('hi')
    assert.deepEqual(errors, [])
  })
  assert.equal(await received, 'READY=1\nSTATUS=hi')
})

test('addon sdNotify: unset or empty NOTIFY_SOCKET sends nothing', async () => {
  await withNotifySocket(undefined, () => assert.equal(loadBinding().sdNotify('READY=1'), false))
  await withNotifySocket('', () => assert.equal(loadBinding().sdNotify('READY=1'), false))
})

test('addon sdNotify: invalid NOTIFY_SOCKET values throw clear errors', async () => {
  const cases: Array<{ value: string; code: string; message: RegExp }> = [
    { value: 'relative/notify.sock', code: 'EINVAL', message: /neither an absolute path nor an abstract/ },
    { value: '@', code: 'EINVAL', message: /empty abstract socket/ },
    { value: '/' + 'x'.repeat(200), code: 'ENAMETOOLONG', message: /is longer than the 107 bytes/ },
    { value: '@' + 'x'.repeat(200), code: 'ENAMETOOLONG', message: /is longer than the 108 bytes/ },
    {
      value: path.join(os.tmpdir(), `tt-notify-missing-${process.pid}`, 'sock'),
      code: 'ENOENT',
      message: /sendto\(NOTIFY_SOCKET=.*\): No such file or directory/,
    },
  ]
  for (const c of cases) {
    await withNotifySocket(c.value, () =>
      assert.throws(
        () => loadBinding().sdNotify('READY=1'),
        (e: unknown) => {
          assert.ok(e instanceof Error)
          assert.match(e.message, /^sd_notify failed: /)
          assert.match(e.message, c.message)
          const { code, errno, op } = e as Error & { code: string; errno: number; op: string }
          assert.equal(code, c.code, c.value)
          assert.equal(typeof errno, 'number')
          assert.equal(op, 'sd_notify')
          return true
        },
      ),
    )
  }
})

test('addon sdNotify: state must be a string', () => {
  const sdNotify = loadBinding().sdNotify as unknown as (state?: unknown) => boolean
  assert.throws(() => sdNotify(42), TypeError)
})
