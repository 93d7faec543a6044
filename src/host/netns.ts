// Names for the optional `netns` label.
//
// Events carry the inode of the network namespace. Namespaces get a name from `ip netns` (bind mounts of
// the nsfs file under /run/netns) or, failing that, from the container whose processes live in them.

import { readdir, readFile, readlink, stat } from 'node:fs/promises'
import path from 'node:path'

import { nameFromCgroupPath } from './cgroups.js'
import { mapChunked, optional, parseNsLink } from './procfs.js'

interface NetnsNameOptions {
  /** directory of `ip netns` bind mounts, default '/run/netns' */
  runNetns?: string
  /** default '/proc' */
  procRoot?: string
  /**
   * Accepted for symmetry with DiscoverOptions; unused, since container ids are read from the cgroup path
   * text in /proc/<pid>/cgroup and need no access to the cgroup mount.
   */
  cgroupRoot?: string
}

/** How many processes (and /run/netns entries) are inspected concurrently. */
const PID_CONCURRENCY = 64
const DEC_RE = /^\d+$/
const SHORT_CONTAINER_ID_RE = /^[0-9a-f]{12}$/

/** `ip netns` names by netns inode; when several names share a namespace the alphabetically first wins. */
async function ipNetnsNames(runNetns: string): Promise<Map<number, string>> {
  const names = ((await optional(readdir(runNetns))) ?? []).sort()
  const inodes = await mapChunked(names, PID_CONCURRENCY, async (name) => {
    const st = await optional(stat(path.join(runNetns, name)))
    return st === undefined || st.isDirectory() ? undefined : st.ino
  })
  const out = new Map<number, string>()
  for (const [i, ino] of inodes.entries()) {
    const name = names[i]
    if (ino !== undefined && name !== undefined && !out.has(ino)) out.set(ino, name)
  }
  return out
}

function cgroupV2Path(text: string): string | undefined {
  const line = text.split('\n').find((l) => l.startsWith('0::'))
  return line?.slice(3).replace(/\r$/, '')
}

/**
 * `container:<id12>` names by netns inode, for namespaces other than pid 1's. Several containers sharing a
 * namespace (a Kubernetes pod) are named after the one with the lowest pid, normally the sandbox. When
 * pid 1's namespace cannot be read nothing is named, rather than risk naming the host namespace after a
 * host-network container.
 */
async function containerNetnsNames(procRoot: string): Promise<Map<number, string>> {
  const out = new Map<number, string>()
  const hostLink = await optional(readlink(path.join(procRoot, '1', 'ns', 'net')))
  const hostNetns = hostLink === undefined ? undefined : parseNsLink(hostLink)
  if (hostNetns === undefined) return out

  const pids = ((await optional(readdir(procRoot))) ?? [])
    .filter((name) => DEC_RE.test(name))
    .map(Number)
    .sort((a, b) => a - b)

  // Chunks are consumed in pid order, so the lowest pid with a container id names its namespace.
  for (let i = 0; i < pids.length; i += PID_CONCURRENCY) {
    const found = await Promise.all(
      pids.slice(i, i + PID_CONCURRENCY).map(async (pid) => {
        const dir = path.join(procRoot, String(pid))
        const link = await optional(readlink(path.join(dir, 'ns', 'net')))
        const netns = link === undefined ? undefined : parseNsLink(link)
        if (netns === undefined || netns === hostNetns || out.has(netns)) return undefined
        const text = await optional(readFile(path.join(dir, 'cgroup'), 'utf8'))
        const cgroupPath = text === undefined ? undefined : cgroupV2Path(text)
        if (cgroupPath === undefined) return undefined
        const name = nameFromCgroupPath(cgroupPath)
        return SHORT_CONTAINER_ID_RE.test(name) ? { netns, name: `container:${name}` } : undefined
      }),
    )
    for (const f of found) if (f !== undefined && !out.has(f.netns)) out.set(f.netns, f.name)
  }
  return out
}

/**
 * Names for network namespace inodes: `ip netns` names (from runNetns) and `container:<id12>` for
 * namespaces of containerised processes (from procRoot); ip netns names win. Missing directories and
 * vanished processes are tolerated: whatever could be read is returned.
 */
export async function netnsNames(opts: NetnsNameOptions = {}): Promise<Map<number, string>> {
  const [ipNames, containerNames] = await Promise.all([
    ipNetnsNames(opts.runNetns ?? '/run/netns'),
    containerNetnsNames(opts.procRoot ?? '/proc'),
  ])
  const out = new Map(containerNames)
  for (const [ino, name] of ipNames) out.set(ino, name)
  return out
}
