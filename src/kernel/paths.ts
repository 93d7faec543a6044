// Where the build puts the addon and the BPF object, relative to the package root.
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

function findRoot(start: string): string {
  let dir = start
  for (;;) {
    const pkg = path.join(dir, 'package.json')
    if (existsSync(pkg)) {
      const { name } = JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }
      if (name === 'tcptracer-exporter') return dir
    }
    const parent = path.dirname(dir)
    if (parent === dir) throw new Error(`cannot find the tcptracer-exporter package root above ${start}`)
    dir = parent
  }
}

export const packageRoot = findRoot(path.dirname(fileURLToPath(import.meta.url)))
export const addonPath = path.join(packageRoot, 'addon', 'build', 'Release', 'tcptracer.node')
export const bpfObjectPath = path.join(packageRoot, '.output', 'tcptracer.bpf.o')

export const version: string = (
  JSON.parse(readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as { version: string }
).version
