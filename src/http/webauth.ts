// Basic authentication against bcrypt hashes (basic_auth_users in the web config).
//
// bcrypt is slow on purpose (about 70-90 ms per check at cost 10 in JavaScript), so:
// - checks run in worker threads, never on the event loop that serves scrapes and /healthz;
// - at most `workers` checks run at once and at most `maxQueued` wait; beyond that a request is refused
//   at once (AuthBusyError, answered 503), so a flood of bad passwords cannot take more than that many cores;
// - a successful check is remembered, keyed by an HMAC of user, hash and password, so a scraper pays for
//   bcrypt once, and a changed password or hash is checked afresh;
// - an unknown user is checked against a configured hash of the highest cost and refused: it takes as long
//   as a wrong password for a known user (give every user the same cost, and the timing tells nothing).
import { createHmac, randomBytes } from 'node:crypto'
import { createRequire } from 'node:module'
import { Worker } from 'node:worker_threads'

import { BCRYPT_RE } from '../config/webconfig.js'

interface CheckRequest {
  id: number
  password: string
  hash: string
}

interface CheckResponse {
  id: number
  ok: boolean
}

/**
 * The worker's code: a CommonJS script, so the same text runs from dist/ and from the TypeScript sources
 * (under tsx), with bcryptjs resolved here, by absolute path.
 */
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads')
const bcrypt = require(${JSON.stringify(createRequire(import.meta.url).resolve('bcryptjs'))})
parentPort.on('message', (m) => {
  let ok = false
  try {
    ok = bcrypt.compareSync(m.password, m.hash)
  } catch {}
  parentPort.postMessage({ id: m.id, ok })
})
`

/** Too many password checks are running or waiting: refuse instead of queueing without bound. */
export class AuthBusyError extends Error {
  override name = 'AuthBusyError'
}

interface Job {
  id: number
  password: string
  hash: string
  resolve: (ok: boolean) => void
  reject: (err: Error) => void
}

interface Slot {
  worker: Worker
  job: Job | undefined
  dead: boolean
}

interface PasswordCheckerOptions {
  /** worker threads, i.e. checks running at once (default 1) */
  workers?: number
  /** checks waiting for a worker before new ones are refused (default 32) */
  maxQueued?: number
}

/** A bounded pool of worker threads running bcrypt comparisons. */
export class PasswordChecker {
  private readonly slots: Slot[] = []
  private readonly queue: Job[] = []
  private readonly size: number
  private readonly maxQueued: number
  private nextId = 1
  private closed = false
  /** checks completed, for tests and metrics */
  completed = 0

  constructor(opts: PasswordCheckerOptions = {}) {
    this.size = Math.max(1, opts.workers ?? 1)
    this.maxQueued = Math.max(0, opts.maxQueued ?? 32)
  }

  /** Checks running now. */
  get running(): number {
    return this.slots.filter((s) => s.job !== undefined).length
  }

  /** Checks waiting for a worker. */
  get queued(): number {
    return this.queue.length
  }

  /** Whether password matches hash. Rejects with AuthBusyError when the pool and its queue are full. */
  async check(password: string, hash: string): Promise<boolean> {
    if (this.closed) throw new Error('password checker is closed')
    return await new Promise<boolean>((resolve, reject) => {
      const job: Job = { id: this.nextId++, password, hash, resolve, reject }
      const free = this.freeSlot()
      if (free) this.run(free, job)
      else if (this.queue.length < this.maxQueued) this.queue.push(job)
      else {
        reject(
          new AuthBusyError(`${this.size + this.maxQueued} password checks are already running or waiting`),
        )
      }
    })
  }

  private freeSlot(): Slot | undefined {
    const idle = this.slots.find((s) => s.job === undefined)
    if (idle) return idle
    if (this.slots.length < this.size) return this.spawn()
    return undefined
  }

  private spawn(): Slot {
    const worker = new Worker(WORKER_SOURCE, { eval: true, execArgv: [] })
    worker.unref()
    const slot: Slot = { worker, job: undefined, dead: false }
    worker.on('message', (m: CheckResponse) => {
      const job = slot.job
      if (!job || job.id !== m.id) return
      slot.job = undefined
      this.completed++
      job.resolve(m.ok)
      this.next(slot)
    })
    const fail = (err: Error): void => {
      // a dead worker: fail its job, replace it, carry on with the queue
      if (slot.dead) return
      slot.dead = true
      const i = this.slots.indexOf(slot)
      if (i >= 0) this.slots.splice(i, 1)
      const job = slot.job
      slot.job = undefined
      job?.reject(err)
      if (!this.closed && this.queue.length > 0) {
        const fresh = this.spawn()
        this.next(fresh)
      }
    }
    worker.on('error', fail)
    worker.on('exit', (code) => {
      if (!this.closed) fail(new Error(`password check worker exited with code ${code}`))
    })
    this.slots.push(slot)
    return slot
  }

  private run(slot: Slot, job: Job): void {
    slot.job = job
    slot.worker.postMessage({ id: job.id, password: job.password, hash: job.hash } satisfies CheckRequest)
  }

  private next(slot: Slot): void {
    const job = this.queue.shift()
    if (job) this.run(slot, job)
  }

  async close(): Promise<void> {
    this.closed = true
    for (const job of this.queue.splice(0)) job.reject(new Error('password checker closed'))
    const slots = this.slots.splice(0)
    for (const s of slots) s.job?.reject(new Error('password checker closed'))
    await Promise.all(slots.map(async (s) => await s.worker.terminate()))
  }
}

export type AuthResult = 'ok' | 'missing' | 'invalid'

/** Parse `Authorization: Basic base64(user:password)`; undefined when absent or malformed. */
export function parseBasicAuth(header: string | undefined): { user: string; password: string } | undefined {
  if (header === undefined) return undefined
  const m = /^Basic[ \t]+([A-Za-z0-9+/]+={0,2})[ \t]*$/i.exec(header)
  if (!m?.[1]) return undefined
  const decoded = Buffer.from(m[1], 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  if (colon < 0) return undefined
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) }
}

const CACHE_MAX = 1024

/** The users of one web config, with a cache of successful checks shared across reloads. */
export class BasicAuth {
  private users: ReadonlyMap<string, string> = new Map()
  private decoy: string | undefined
  private readonly cache = new Map<string, true>()
  private readonly hmacKey = randomBytes(32)

  constructor(
    private readonly checker: PasswordChecker,
    users: ReadonlyMap<string, string>,
  ) {
    this.setUsers(users)
  }

  get enabled(): boolean {
    return this.users.size > 0
  }

  /** Replace the users (a reload). Cached successes stay valid only where user and hash are unchanged. */
  setUsers(users: ReadonlyMap<string, string>): void {
    this.users = users
    let best: string | undefined
    let bestCost = -1
    for (const h of users.values()) {
      const cost = Number(BCRYPT_RE.exec(h)?.[1] ?? 0)
      if (cost > bestCost) {
        best = h
        bestCost = cost
      }
    }
    this.decoy = best
  }

  private key(user: string, hash: string, password: string): string {
    return createHmac('sha256', this.hmacKey)
      .update(`${user.length}:${user}\0${hash}\0`)
      .update(password)
      .digest('base64')
  }

  /** Check an Authorization header. Rejects with AuthBusyError when too many checks are pending. */
  async authenticate(header: string | undefined): Promise<AuthResult> {
    const creds = parseBasicAuth(header)
    if (!creds) return 'missing'
    const hash = this.users.get(creds.user)
    if (hash !== undefined) {
      const k = this.key(creds.user, hash, creds.password)
      if (this.cache.has(k)) return 'ok'
      const ok = await this.checker.check(creds.password, hash)
      // the users may have been reloaded while the check ran: only the hash checked counts
      if (ok && this.users.get(creds.user) === hash) {
        if (this.cache.size >= CACHE_MAX) this.cache.delete(this.cache.keys().next().value!)
        this.cache.set(k, true)
        return 'ok'
      }
      return 'invalid'
    }
    // unknown user: spend the same time as a wrong password, then refuse
    if (this.decoy !== undefined) await this.checker.check(creds.password, this.decoy)
    return 'invalid'
  }
}
