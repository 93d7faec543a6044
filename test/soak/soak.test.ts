// Soak: the real daemon under ten minutes (TCPTRACER_SOAK_SECONDS) of connection churn. Process
// names come and go, so label sets are created and expire the whole time; the config is reloaded
// every minute; /metrics is scraped every second, the way Prometheus would. It checks that after a
// warm-up the daemon's RSS grows by at most 5 %, and that no count is lost: for every series, the last
// value scraped before it expired, summed, equals what the generator did.
//
//   sudo npm run test:soak                          # 10 minutes
//   sudo TCPTRACER_SOAK_SECONDS=120 npm run test:soak
//
// Not part of `npm test` (the CI budget goes to the VM kernel matrix); needs root.
import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { after, before, describe, test } from 'node:test'
import {
  type Daemon,
  inNetns,
  Netns,
  parseExposition,
  privileged,
  startDaemon,
} from '../privileged/harness.js'

const gate = privileged()
const SECONDS = Number(process.env['TCPTRACER_SOAK_SECONDS'] ?? 600)
/** distinct client names cycled through; each is idle for a while between uses, and expires */
const NAMES = 400
const PER_ROUND = 200
const IDLE_EXPIRY_S = 20

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!m?.[1]) throw new Error(`no VmRSS for ${pid}`)
  return Number(m[1])
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length

describe(`soak: ${SECONDS} s of churn`, { skip: gate.skip, timeout: (SECONDS + 300) * 1000 }, () => {
  let ns: Netns
  let dir: string
  let config: string
  let d: Daemon

  before(async () => {
    ns = new Netns(`tt-soak-${process.pid}`)
    dir = mkdtempSync(path.join(tmpdir(), 'tt-soak-'))
    config = path.join(dir, 'config.yml')
    const write = (extra: string): void =>
      writeFileSync(
        config,
        `filters:\n  netns: [${ns.inode}]\nlimits:\n  idle_expiry: ${IDLE_EXPIRY_S}s\n  max_label_sets: 5000\n${extra}`,
      )
    write('')
    d = await startDaemon([`--config.file=${config}`])
  })
  after(async () => {
    if (d.proc.child.exitCode === null) await d.stop()
    ns.delete()
    rmSync(dir, { recursive: true, force: true })
  })

  test('RSS stays flat after warm-up and every connection is counted', async () => {
    const pid = d.proc.child.pid!
    const start = Date.now()
    const end = start + SECONDS * 1000
    const warmupEnd = start + Math.min(120, SECONDS / 5) * 1000
    const rss: Array<{ t: number; kib: number }> = []
    /** series id -> last value seen; a series that disappears (expired) moves its value to retired */
    const last = new Map<string, number>()
    const retired = new Map<string, number>()
    let seriesSeen = 0
    let scrapes = 0
    let reloads = 0
    let generated = { connected: 0, accepted: 0 }
    let failures = 0

    const scrapeOnce = async (): Promise<void> => {
      const res = await fetch(`${d.url}/metrics`)
      assert.equal(res.status, 200)
      const now = new Map<string, number>()
      for (const s of parseExposition(await res.text())) {
        if (
          !['tcptracer_connects_total', 'tcptracer_accepts_total', 'tcptracer_closes_total'].includes(s.name)
        ) {
          continue
        }
        if (s.labels['netns'] !== String(ns.inode)) continue
        now.set(`${s.name}${JSON.stringify(s.labels)}`, s.value)
      }
      for (const [k, v] of last) {
        if (!now.has(k)) retired.set(k, (retired.get(k) ?? 0) + v)
      }
      for (const k of now.keys()) if (!last.has(k)) seriesSeen++
      last.clear()
      for (const [k, v] of now) last.set(k, v)
      scrapes++
    }
    const total = (name: string, direction?: string): number =>
      [...last, ...retired]
        .filter(([k]) => k.startsWith(`${name}{`) && (!direction || k.includes(`"direction":"${direction}"`)))
        .reduce((a, [, v]) => a + v, 0)

    const scraper = (async () => {
      while (Date.now() < end) {
        await scrapeOnce()
        await new Promise((resolve) => setTimeout(resolve, 1000))
      }
    })()
    const sampler = (async () => {
      while (Date.now() < end) {
        rss.push({ t: Date.now(), kib: rssKiB(pid) })
        await new Promise((resolve) => setTimeout(resolve, 5000))
      }
    })()
    const reloader = (async () => {
      while (Date.now() + 60_000 < end) {
        await new Promise((resolve) => setTimeout(resolve, 60_000))
        d.proc.child.kill('SIGHUP')
        reloads++
      }
    })()

    // churn: rounds of PER_ROUND connections, each round under the next client name
    let round = 0
    while (Date.now() < end) {
      const name = `soak-${round % NAMES}`
      const load = inNetns(ns, [
        'pair',
        '--comm',
        'soak-main',
        '--comm-server',
        'soak-srv',
        '--comm-client',
        name,
        '--count',
        String(PER_ROUND),
        '--send',
        '16',
      ])
      const code = await load.exited
      assert.equal(code, 0, load.stderr)
      const done = load.lines.find((l) => l['event'] === 'done')!
      generated = {
        connected: generated.connected + (done['connected'] as number),
        accepted: generated.accepted + (done['accepted'] as number),
      }
      failures += done['failed'] as number
      round++
      // a moderate rate: churn, not saturation
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    await Promise.all([scraper, sampler, reloader])

    // the last connections settle (final ACKs), then one more scrape
    const settle = Date.now() + 15_000
    do {
      await new Promise((resolve) => setTimeout(resolve, 500))
      await scrapeOnce()
    } while (
      Date.now() < settle &&
      (total('tcptracer_closes_total', 'outbound') < generated.connected ||
        total('tcptracer_closes_total', 'inbound') < generated.accepted)
    )

    const after = rss.filter((r) => r.t >= warmupEnd)
    const minute = Math.max(1, Math.round(60_000 / 5000))
    const baseline = mean(after.slice(0, minute).map((r) => r.kib))
    const final = mean(after.slice(-minute).map((r) => r.kib))
    const growth = final / baseline - 1
    const report = {
      seconds: SECONDS,
      rounds: round,
      connections: generated.connected,
      failedConnects: failures,
      scrapes,
      reloads,
      seriesSeen,
      rssKiB: {
        start: rss[0]?.kib,
        baselineAfterWarmup: Math.round(baseline),
        final: Math.round(final),
        max: Math.max(...rss.map((r) => r.kib)),
      },
      growthPercent: Math.round(growth * 1000) / 10,
      counted: {
        connects: total('tcptracer_connects_total'),
        accepts: total('tcptracer_accepts_total'),
        closesOutbound: total('tcptracer_closes_total', 'outbound'),
        closesInbound: total('tcptracer_closes_total', 'inbound'),
      },
    }
    process.stdout.write(`# soak result: ${JSON.stringify(report)}\n`)
    if (process.env['TCPTRACER_SOAK_REPORT']) {
      writeFileSync(process.env['TCPTRACER_SOAK_REPORT'], `${JSON.stringify(report, null, 2)}\n`)
    }

    assert.equal(failures, 0, 'no connect failed')
    assert.ok(seriesSeen > NAMES, `label sets churned: ${seriesSeen} series seen`)
    assert.equal(report.counted.connects, generated.connected, 'every connect counted')
    assert.equal(report.counted.accepts, generated.accepted, 'every accept counted')
    assert.equal(report.counted.closesOutbound, generated.connected, 'every outbound close counted')
    assert.equal(report.counted.closesInbound, generated.accepted, 'every inbound close counted')
    assert.ok(growth <= 0.05, `RSS grew ${report.growthPercent} % after warm-up (limit 5 %)`)
    assert.equal(await d.stop(), 0)
  })
})
