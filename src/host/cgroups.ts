// Names for the optional `cgroup` label.
//
// Events carry the cgroup v2 id of the task (bpf_get_current_cgroup_id()), which is the inode number of
// the cgroup's directory in cgroup2fs. CgroupResolver keeps an inode -> name map built by walking the
// cgroup2 mount; nameFromCgroupPath turns a cgroup path into a short, stable label value.

import { existsSync, readFileSync } from 'node:fs'
import type { BigIntStats, Dirent } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import path from 'node:path'
import { performance } from 'node:perf_hooks'

const HEX64 = '[0-9a-f]{64}'
/** One path element naming a container: runtime-prefixed systemd scopes, or a bare id (cgroupfs driver). */
const CONTAINER_ELEMENT_RE = new RegExp(
  `^(?:(?:docker|cri-containerd|crio|libpod)-(${HEX64})\\.scope|(${HEX64}))$`,
)
/** One path element naming a systemd unit that can own processes. */
const UNIT_ELEMENT_RE = /^[^/]+\.(?:service|socket|scope|mount|swap)$/

/** Length of docker's short container id. */
const SHORT_ID_LENGTH = 12

/**
 * Full 64-hex container id of the innermost container in a cgroup v2 path (docker, containerd/CRI,
 * cri-o, podman/libpod; systemd and cgroupfs drivers), or undefined.
 */
export function containerIdFromCgroupPath(cgroupPath: string): string | undefined {
  const parts = cgroupPath.split('/')
  for (let i = parts.length - 1; i >= 0; i--) {
    const m = CONTAINER_ELEMENT_RE.exec(parts[i] ?? '')
    const id = m?.[1] ?? m?.[2]
    if (id !== undefined) return id
  }
  return undefined
}

/**
 * Short stable name for a cgroup v2 path:
 * - a path containing a container (innermost wins, even with units nested inside it) -> the first 12 hex
 *   chars of the container id;
 * - otherwise the deepest element that is a systemd `.service`, `.socket`, `.scope`, `.mount` or `.swap`
 *   unit -> that element (`/system.slice/nginx.service` -> `nginx.service`);
 * - `/` -> `/`; anything else (slices, hand-made groups, garbage) -> the path unchanged.
 */
export function nameFromCgroupPath(cgroupPath: string): string {
  const id = containerIdFromCgroupPath(cgroupPath)
  if (id !== undefined) return id.slice(0, SHORT_ID_LENGTH)
  const parts = cgroupPath.split('/')
  for (let i = parts.length - 1; i >= 0; i--) {
    const part = parts[i] ?? ''
    if (UNIT_ELEMENT_RE.test(part)) return part
  }
  return cgroupPath
}

/** The subset of node:fs/promises the resolver uses; injectable for tests. */
export interface CgroupFs {
  readdir(dir: string, options: { withFileTypes: true }): Promise<Dirent[]>
  stat(file: string, options: { bigint: true }): Promise<BigIntStats>
}

interface CgroupResolverOptions {
  /** mount point of the cgroup v2 hierarchy, default '/sys/fs/cgroup' */
  cgroupRoot?: string
  /** upper bound on the number of cgroups kept, default 65536 */
  maxEntries?: number
  /** monotonic clock in milliseconds used for rate limiting, default performance.now() */
  now?: () => number
  /** file system access, default node:fs/promises */
  fs?: CgroupFs
}

const DEFAULT_MAX_ENTRIES = 65536
/** A miss in resolve() triggers at most one refresh per this many milliseconds. */
const REFRESH_INTERVAL_MS = 1000
/** How many directories are read concurrently during a walk. */
const DIR_CONCURRENCY = 64
/** A directory vanishing or being unreadable mid-walk only drops that directory (and its subtree). */
const SKIPPABLE_ERRORS = new Set(['ENOENT', 'EACCES', 'EPERM', 'ENOTDIR'])

const defaultFs: CgroupFs = { readdir, stat }

async function skippable<T>(promise: Promise<T>): Promise<T | undefined> {
  try {
    return await promise
  } catch (err) {
    const code = (err as NodeJS.ErrnoException | null)?.code
    if (code !== undefined && SKIPPABLE_ERRORS.has(code)) return undefined
    throw err
  }
}

interface DirVisit {
  /** cgroup path, '/' for the root */
  rel: string
  ino: bigint
  subdirs: string[]
}

/**
 * Maps cgroup v2 ids to names (see nameFromCgroupPath).
 *
 * resolve() is synchronous and only consults the map; a miss returns '' and, at most once per second and
 * never while another refresh is running, starts a background refresh so that cgroups created since the
 * last walk are known shortly after. Errors of such background refreshes are swallowed and kept in
 * lastError. Cgroup ids are never reused by the kernel, so a name, once known, stays correct.
 */
export class CgroupResolver {
  /** error of the most recent failed refresh; cleared by a successful one */
  lastError: unknown = undefined

  readonly #root: string
  readonly #maxEntries: number
  readonly #now: () => number
  readonly #fs: CgroupFs
  readonly #supported: boolean
  #names = new Map<bigint, string>()
  #inflight: Promise<void> | undefined = undefined
  #lastStart = Number.NEGATIVE_INFINITY

  constructor(opts: CgroupResolverOptions = {}) {
    this.#root = opts.cgroupRoot ?? cgroup2Root()
    this.#maxEntries = Math.max(0, opts.maxEntries ?? DEFAULT_MAX_ENTRIES)
    this.#now = opts.now ?? (() => performance.now())
    this.#fs = opts.fs ?? defaultFs
    this.#supported = existsSync(path.join(this.#root, 'cgroup.controllers'))
  }

  /** false when cgroupRoot is not a cgroup v2 mount: resolve() then always returns '' */
  get supported(): boolean {
    return this.#supported
  }

  /** number of cgroups currently known */
  get size(): number {
    return this.#names.size
  }

  /** name of the cgroup with this id, or '' when unknown (0n, the "no cgroup" id, never triggers a refresh) */
  resolve(id: bigint): string {
    if (!this.#supported) return ''
    const name = this.#names.get(id)
    if (name !== undefined) return name
    if (id !== 0n && this.#inflight === undefined && this.#now() - this.#lastStart >= REFRESH_INTERVAL_MS) {
      // The error is recorded in lastError by refresh(); a background refresh must not reject unhandled.
      this.refresh().catch(() => {})
    }
    return ''
  }

  /**
   * Walks the cgroup tree and replaces the map. Joins the running refresh if there is one. Rejects (and
   * keeps the previous map) only when the root itself cannot be read or on systemic errors (EMFILE, ...);
   * subdirectories vanishing or unreadable mid-walk are skipped.
   */
  refresh(): Promise<void> {
    if (!this.#supported) return Promise.resolve()
    if (this.#inflight !== undefined) return this.#inflight
    this.#lastStart = this.#now()
    const run = this.#walk().then(
      (names) => {
        this.#names = names
        this.lastError = undefined
      },
      (err: unknown) => {
        this.lastError = err
        throw err
      },
    )
    const inflight = run.finally(() => {
      this.#inflight = undefined
    })
    this.#inflight = inflight
    return inflight
  }

  /** resolves once no refresh is running (never rejects) */
  async whenIdle(): Promise<void> {
    while (this.#inflight !== undefined) await this.#inflight.catch(() => {})
  }

  async #visit(rel: string): Promise<DirVisit | undefined> {
    const dir = rel === '/' ? this.#root : path.join(this.#root, rel)
    const [st, entries] = await Promise.all([
      skippable(this.#fs.stat(dir, { bigint: true })),
      skippable(this.#fs.readdir(dir, { withFileTypes: true })),
    ])
    if (st === undefined) return undefined
    const subdirs = (entries ?? [])
      .filter((e) => e.isDirectory())
      .map((e) => e.name)
      .sort()
      .map((name) => (rel === '/' ? `/${name}` : `${rel}/${name}`))
    return { rel, ino: st.ino, subdirs }
  }

  async #walk(): Promise<Map<bigint, string>> {
    const names = new Map<bigint, string>()
    // The root must be readable: an empty map from a failed walk would be worse than the previous one.
    const [st, entries] = await Promise.all([
      this.#fs.stat(this.#root, { bigint: true }),
      this.#fs.readdir(this.#root, { withFileTypes: true }),
    ])
    if (names.size < this.#maxEntries) names.set(st.ino, '/')
    let level = entries
      .filter((e) => e.isDirectory())
      .map((e) => `/${e.name}`)
      .sort()
    // Breadth first, so that when maxEntries cuts the walk short the shallower (broader) cgroups are kept.
    while (level.length > 0 && names.size < this.#maxEntries) {
      const next: string[] = []
      for (let i = 0; i < level.length && names.size < this.#maxEntries; i += DIR_CONCURRENCY) {
        const visits = await Promise.all(level.slice(i, i + DIR_CONCURRENCY).map((rel) => this.#visit(rel)))
        for (const v of visits) {
          if (v === undefined) continue
          if (names.size < this.#maxEntries) names.set(v.ino, nameFromCgroupPath(v.rel))
          for (const sub of v.subdirs) next.push(sub)
        }
      }
      level = next
    }
    return names
  }
}

/**
 * Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on
 * hybrid ones. Falls back to /sys/fs/cgroup.
 */
export function cgroup2Root(mounts = '/proc/self/mounts'): string {
  try {
    for (const line of readFileSync(mounts, 'utf8').split('\n')) {
      const [, mountPoint, type] = line.split(' ')
      if (type === 'cgroup2' && mountPoint) return mountPoint.replace(/\\040/g, ' ')
    }
  } catch {
    // no /proc: the default below
  }
  return '/sys/fs/cgroup'
}
