// Real TCP connections to many distinct ports, for label-set cardinality in the exporter's kernel map.
//
//   node --import tsx bench/lib/port-load.ts --first-port P --ports N [--per-port C] [--batch B] [--send BYTES]
//
// Listens on 127.0.0.1 ports P .. P+N-1, B ports at a time: each batch opens its listeners, makes C
// connections to each port (sending BYTES, then closing), waits until the server side has read every one
// to EOF and closed it, then closes the listeners. Run it inside a network namespace (ip netns exec): with
// the `port` label every port is one label set, both directions of it in this one process. Prints one JSON
// line: {"ports":N,"connections":N*C,"accepted":N*C,"bytesReceived":...,"wallMs":...}.
import net from 'node:net'
import { parseArgs } from 'node:util'

const BATCH_TIMEOUT_MS = 60_000

function int(name: string, v: string, min: number, max: number): number {
  const n = Number(v)
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new RangeError(`--${name} must be an integer from ${min} to ${max}, got ${v}`)
  }
  return n
}

const { values } = parseArgs({
  options: {
    'first-port': { type: 'string' },
    ports: { type: 'string' },
    'per-port': { type: 'string', default: '1' },
    batch: { type: 'string', default: '500' },
    send: { type: 'string', default: '100' },
  },
  strict: true,
})
if (values['first-port'] === undefined || values.ports === undefined) {
  throw new Error('usage: port-load.ts --first-port P --ports N [--per-port C] [--batch B] [--send BYTES]')
}
const firstPort = int('first-port', values['first-port'], 1, 65535)
const ports = int('ports', values.ports, 1, 65535 - firstPort + 1)
const perPort = int('per-port', values['per-port'], 1, 1000)
const batchSize = int('batch', values.batch, 1, 5000)
const payload = Buffer.alloc(int('send', values.send, 0, 1 << 20), 0x61)

let accepted = 0
let bytesReceived = 0

function listen(port: number): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((sock) => {
      sock.on('data', (d: Buffer) => {
        bytesReceived += d.length
      })
      sock.on('error', () => {})
      sock.on('close', () => {
        accepted++
      })
    })
    server.once('error', reject)
    server.listen({ host: '127.0.0.1', port, backlog: 1024 }, () => resolve(server))
  })
}

function connectOnce(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port }, () => {
      sock.end(payload)
    })
    sock.on('data', () => {})
    sock.once('error', reject)
    sock.once('close', (hadError) => {
      if (!hadError) resolve()
    })
  })
}

function closeServer(s: net.Server): Promise<void> {
  return new Promise((resolve) => s.close(() => resolve()))
}

async function withTimeout<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: no result after ${BATCH_TIMEOUT_MS} ms`)),
      BATCH_TIMEOUT_MS,
    )
  })
  try {
    return await Promise.race([p, timeout])
  } finally {
    clearTimeout(timer)
  }
}

async function main(): Promise<void> {
  const t0 = performance.now()
  let connections = 0
  for (let from = firstPort; from < firstPort + ports; from += batchSize) {
    const batch: number[] = []
    for (let p = from; p < Math.min(from + batchSize, firstPort + ports); p++) batch.push(p)
    const servers = await withTimeout(Promise.all(batch.map(listen)), `listening on ports ${from}..`)
    const want = accepted + batch.length * perPort
    for (let i = 0; i < perPort; i++) {
      await withTimeout(Promise.all(batch.map(connectOnce)), `connecting to ports ${from}..`)
      connections += batch.length
    }
    // the server side sees EOF and closes on its own; wait for that before closing the listeners
    const deadline = Date.now() + BATCH_TIMEOUT_MS
    for (;;) {
      const left = want - accepted
      if (left <= 0) break
      if (Date.now() > deadline) throw new Error(`ports ${from}..: ${left} connections never closed`)
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
    await Promise.all(servers.map(closeServer))
  }
  const wallMs = performance.now() - t0
  console.log(JSON.stringify({ ports, connections, accepted, bytesReceived, wallMs: Math.round(wallMs) }))
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err)
  process.exit(1)
})
