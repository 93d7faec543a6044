// Hostile input on the real kernel: processes whose names (comm: any 15 bytes but NUL) hold quotes,
// backslashes, newlines, text that looks like exposition syntax, control characters and invalid UTF-8.
// Exact counts per name on /metrics in both formats, promtool, a real Prometheus reading the label
// values back through each format, and `trace` (text and --json) unbroken. Also config files that
// used to crash the daemon on reload.
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import path from 'node:path'
import { describe, test } from 'node:test'
import { Prometheus, until, type Series } from '../prometheus.js'
import {
  CLI,
  fixture,
  JsonProcess,
  parseExposition,
  privileged,
  runClient,
  scrape,
  startDaemon,
  startServer,
  startTrace,
  stopTrace,
  valueOf,
  type Daemon,
  type Json,
  type ScrapedSample,
} from '../harness.js'
import { printable } from '../../../src/cli/trace-format.js'

const { skip } = privileged()

const hex = (s: string): string => Buffer.from(s, 'utf8').toString('hex')
const bytes = (...b: number[]): string => Buffer.from(b).toString('hex')

/** Client names, as the bytes given to prctl(PR_SET_NAME); each makes a different number of connections. */
const CLIENTS: Array<{ what: string; hex: string }> = [
  { what: 'double quotes', hex: hex('say "hi"') },
  { what: 'backslashes', hex: hex('back\\slash\\') },
  { what: 'a newline', hex: hex('new\nline') },
  { what: 'a label injection', hex: hex('a",x="y') },
  { what: 'a sample injection', hex: hex('} 1\n') },
  { what: 'a fake sample line', hex: hex('\nfake_total 9') },
  { what: 'a fake comment', hex: hex('\n# EOF\n') },
  { what: 'CR, tab and an ANSI escape', hex: hex('cr\r\t\x1b[1mX') },
  { what: 'byte 0xff', hex: hex('bad') + bytes(0xff) + hex('byte') },
  { what: 'byte 0xfe (decodes like 0xff)', hex: hex('bad') + bytes(0xfe) + hex('byte') },
  { what: 'a lone continuation byte', hex: bytes(0x80) + hex('cont') },
  { what: 'a UTF-8 sequence the kernel cuts in half', hex: hex('éééééééé') }, // 16 bytes: 15 are kept
  { what: 'a bidi override', hex: hex('evil\u202etxt') },
  { what: 'valid UTF-8', hex: hex('ok 😀 ü') },
]
const SERVER_HEX = hex('srv"\\\n') + bytes(0xff, 0xc3)

/** What the kernel kept of a name (tcpload's comm_hex), as the label value: UTF-8 with U+FFFD. */
const label = (keptHex: string): string => Buffer.from(keptHex, 'hex').toString('utf8')

function promtoolCheck(text: string): void {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' })
  assert.equal(r.status, 0, `promtool check metrics failed:\n${r.stdout}${r.stderr}`)
}

/** Every sample of a family in one namespace, by comm. */
function byComm(
  s: ScrapedSample[],
  name: string,
  netns: number,
  extra: Record<string, string> = {},
): Map<string, number> {
  const out = new Map<string, number>()
  for (const x of s) {
    if (x.name !== name || x.labels['netns'] !== String(netns)) continue
    if (!Object.entries(extra).every(([k, v]) => x.labels[k] === v)) continue
    const c = x.labels['comm'] as string
    assert.ok(!out.has(c), `two ${name} series for comm ${JSON.stringify(c)}`)
    out.set(c, x.value)
  }
  return out
}

function sortedEntries(m: Map<string, number>): Array<[string, number]> {
  return [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
}

/**
 * A proxy in front of the daemon that records the content type of each answer; with `accept` it asks
 * for that format whatever Prometheus's Accept header says.
 */
async function proxy(d: Daemon, accept?: string): Promise<{ server: Server; port: number; types: string[] }> {
  const types: string[] = []
  const server = createServer((req, res) => {
    const headers = { accept: accept ?? req.headers.accept ?? '' }
    fetch(`${d.url}${req.url ?? '/'}`, { headers }).then(
      async (r) => {
        const type = r.headers.get('content-type') ?? ''
        types.push(type)
        res.writeHead(r.status, { 'content-type': type })
        res.end(Buffer.from(await r.arrayBuffer()))
      },
      (e: unknown) => {
        res.writeHead(502)
        res.end(String(e))
      },
    )
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const addr = server.address()
  assert.ok(addr !== null && typeof addr === 'object')
  return { server, port: addr.port, types }
}

/** Query Prometheus until the result, by comm, is `want` (or time out and compare what is there). */
async function promByComm(prom: Prometheus, q: string, want: Map<string, number>): Promise<void> {
  const toMap = (r: Series[]): Map<string, number> =>
    new Map(r.map((x) => [x.metric['comm'] ?? '', Number(x.value?.[1])]))
  const same = (m: Map<string, number>): boolean =>
    m.size === want.size && [...want].every(([k, v]) => m.get(k) === v)
  const got = await until(`${q} by comm`, 30_000, async () => {
    const m = toMap(await prom.query(q))
    return same(m) ? m : undefined
  }).catch(async () => toMap(await prom.query(q)))
  assert.deepEqual(sortedEntries(got), sortedEntries(want), q)
}

describe('hostile process names', { skip }, () => {
  const fx = fixture('tt-hostile-', { ns: `tt-hn-${process.pid}` })

  test('exact counts per name in both formats, promtool, Prometheus by either format, trace text and JSON', async () => {
    const file = path.join(fx.dir, 'names.yml')
    writeFileSync(file, `filters:\n  netns: [${fx.ns.inode}]\n`)
    const d = await startDaemon([`--config.file=${file}`])
    const json = await startTrace(['-N', String(fx.ns.inode)])
    const text = new JsonProcess(
      spawn(process.execPath, [CLI, 'trace', '-N', String(fx.ns.inode)], { stdio: 'pipe' }),
    )
    let textOut = ''
    text.child.stdout!.on('data', (b: Buffer) => {
      textOut += b.toString('utf8')
    })
    try {
      await text.until(() => textOut.includes('Tracing TCP'), 15_000, 'the text trace banner')

      const total = CLIENTS.reduce((n, _c, i) => n + i + 1, 0)
      const server = await startServer(fx.ns, ['--comm-hex', SERVER_HEX, '--count', String(total)])
      const srvListening = server.proc.lines.find((l) => l['event'] === 'listening') as Json
      const srvLabel = label(srvListening['comm_hex'] as string)
      assert.equal(srvLabel, 'srv"\\\n\ufffd\ufffd')

      /** label value -> connections made under it (names that decode alike add up) */
      const want = new Map<string, number>()
      for (const [i, c] of CLIENTS.entries()) {
        const lines = await runClient(fx.ns, [
          '--comm-hex',
          c.hex,
          '--addr',
          '127.0.0.1',
          '--port',
          String(server.port),
          '--count',
          String(i + 1),
        ])
        const done = lines.find((l) => l['event'] === 'done') as Json
        assert.equal(done['connected'], i + 1, c.what)
        const l = label(done['comm_hex'] as string)
        want.set(l, (want.get(l) ?? 0) + i + 1)
      }
      assert.equal(await server.proc.exited, 0)
      // the kernel kept 15 bytes of the 16-byte name, half of the last é; 0xff and 0xfe read the same
      assert.ok(want.has('ééééééé\ufffd'), [...want.keys()].join(' | '))
      assert.equal(want.get('bad\ufffdbyte'), 9 + 10)
      assert.equal(want.size, CLIENTS.length - 1)

      // --- /metrics, text format 0.0.4: promtool, then exact values per label
      const t = await scrape(d)
      promtoolCheck(t.text)
      assert.ok(!t.text.split('\n').some((l) => l.startsWith('fake_total') || l === '} 1' || l === '# EOF'))
      const check = (s: ScrapedSample[], fmt: string): void => {
        assert.deepEqual(
          sortedEntries(byComm(s, 'tcptracer_connects_total', fx.ns.inode)),
          sortedEntries(want),
          fmt,
        )
        assert.deepEqual(
          sortedEntries(byComm(s, 'tcptracer_closes_total', fx.ns.inode, { direction: 'outbound' })),
          sortedEntries(want),
          fmt,
        )
        assert.deepEqual(
          sortedEntries(byComm(s, 'tcptracer_accepts_total', fx.ns.inode)),
          [[srvLabel, total]],
          fmt,
        )
        assert.equal(
          valueOf(s, 'tcptracer_closes_total', { comm: srvLabel, direction: 'inbound' }),
          total,
          fmt,
        )
        for (const [l, n] of want) {
          assert.equal(
            valueOf(s, 'tcptracer_connect_failures_total', {
              comm: l,
              netns: String(fx.ns.inode),
              reason: 'refused',
            }),
            0,
            `${fmt}: ${JSON.stringify(l)}`,
          )
          assert.equal(
            valueOf(s, 'tcptracer_connection_duration_seconds_count', { comm: l, direction: 'outbound' }),
            n,
            `${fmt}: ${JSON.stringify(l)}`,
          )
        }
      }
      check(t.samples, 'text')

      // --- OpenMetrics: the same values; one sample line per sample of the text format
      const res = await fetch(`${d.url}/metrics`, {
        headers: { accept: 'application/openmetrics-text; version=1.0.0' },
      })
      assert.equal(res.status, 200)
      assert.match(res.headers.get('content-type') ?? '', /^application\/openmetrics-text; version=1\.0\.0/)
      const om = await res.text()
      const omLines = om.split('\n')
      // a label value may read "\n# EOF\n": escaped, it is not a line of its own
      assert.deepEqual(
        omLines.flatMap((l, i) => (l === '# EOF' ? [i] : [])),
        [omLines.length - 2],
        'one # EOF line, the last',
      )
      const omSamples = parseExposition(om)
      check(omSamples, 'openmetrics')
      const sampleLines = (x: string, prefix: string): number =>
        x.split('\n').filter((l) => l.startsWith(prefix)).length
      for (const prefix of ['tcptracer_connects_total', 'tcptracer_connection_duration_seconds_bucket']) {
        assert.equal(sampleLines(om, prefix), sampleLines(t.text, prefix), prefix)
      }

      // --- a real Prometheus: the format it prefers (OpenMetrics), then the text format, each through a
      // proxy that records which format the daemon served
      const q = `tcptracer_connects_total{netns="${fx.ns.inode}"}`
      const qa = `tcptracer_accepts_total{netns="${fx.ns.inode}"}`
      for (const [format, accept, type] of [
        ['openmetrics', undefined, 'application/openmetrics-text; version=1.0.0'],
        ['text', 'text/plain;version=0.0.4', 'text/plain; version=0.0.4'],
      ] as const) {
        const px = await proxy(d, accept)
        const prom = await Prometheus.start({ ...d, port: px.port }, [])
        try {
          await promByComm(prom, q, want)
          await promByComm(prom, qa, new Map([[srvLabel, total]]))
          assert.equal(await prom.value('up{job="tcptracer"}'), 1, format)
          assert.ok(px.types.length > 0, format)
          for (const t of px.types) assert.ok(t.startsWith(type), `${format}: served ${t}`)
        } finally {
          await prom.stop()
          px.server.close()
        }
      }

      // --- trace --json: every line is JSON, every comm is the label value
      const events = await stopTrace(json)
      assert.ok(!events.some((e) => 'unparsed' in e), 'every line of --json output is JSON')
      const count = (es: Json[], type: string): Map<string, number> => {
        const m = new Map<string, number>()
        for (const e of es.filter((x) => x['type'] === type)) {
          m.set(e['comm'] as string, (m.get(e['comm'] as string) ?? 0) + 1)
        }
        return m
      }
      assert.deepEqual(sortedEntries(count(events, 'connect')), sortedEntries(want))
      assert.deepEqual(sortedEntries(count(events, 'accept')), [[srvLabel, total]])
      assert.equal(events.filter((e) => e['type'] === 'close').length, 2 * total)

      // --- trace, text: one line per event, the comm escaped in its column, no raw control characters
      text.child.kill('SIGINT')
      assert.equal(await text.exited, 0, text.stderr)
      assert.ok(textOut.endsWith('\n'))
      // eslint-disable-next-line no-control-regex -- what must not be there
      const raw = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/
      assert.doesNotMatch(textOut, raw, 'raw control characters')
      const rows = textOut.split('\n').slice(2, -1)
      assert.equal(rows.length, 4 * total, `${rows.length} rows:\n${rows.join('\n')}`)
      const perLetter = new Map<string, number>()
      for (const row of rows) {
        // T(2) PID(6) COMM: the comm column starts at offset 10
        assert.match(row, /^[CAX] {2}\d+ +/, row)
        const comm = [...want.keys(), srvLabel].find((l) =>
          row.slice(10).startsWith(`${printable(l).padEnd(16)} `),
        )
        assert.ok(comm !== undefined, `no known comm in row: ${row}`)
        const k = `${row[0]} ${comm}`
        perLetter.set(k, (perLetter.get(k) ?? 0) + 1)
      }
      for (const [l, n] of want) {
        assert.equal(perLetter.get(`C ${l}`), n, `C rows for ${JSON.stringify(l)}`)
        assert.equal(perLetter.get(`X ${l}`), n, `X rows for ${JSON.stringify(l)}`)
      }
      assert.equal(perLetter.get(`A ${srvLabel}`), total)
      assert.equal(perLetter.get(`X ${srvLabel}`), total)
    } finally {
      if (text.child.exitCode === null) text.child.kill('SIGKILL')
      if (json.child.exitCode === null) json.child.kill('SIGKILL')
      assert.equal(await d.stop(), 0)
    }
  })
})

describe('hostile config reloads', { skip }, () => {
  const fx = fixture('tt-hostile-cfg-', {})

  test('SIGHUP five times with a file nested 20,000 levels deep: each is refused, the daemon keeps serving', async () => {
    // before the depth check, the third such reload made V8 abort the daemon (docs/reliability.md)
    const file = path.join(fx.dir, 'deep.yml')
    writeFileSync(file, 'labels: [comm]\n')
    const d = await startDaemon([`--config.file=${file}`])
    try {
      writeFileSync(file, `labels: ${'['.repeat(20_000)}${']'.repeat(20_000)}\n`)
      for (let i = 1; i <= 5; i++) {
        d.proc.child.kill('SIGHUP')
        await d.proc.until(
          () => d.logs().filter((l) => String(l['msg']).startsWith('config reload failed')).length >= i,
          10_000,
          `failed reload ${i}`,
        )
      }
      const failed = d.logs().filter((l) => String(l['msg']).startsWith('config reload failed'))
      assert.ok(
        failed.every((l) => String(l['msg']).includes('nested more than 64 levels')),
        JSON.stringify(failed[0]),
      )
      assert.equal((await fetch(`${d.url}/readyz`)).status, 200)
      const s = (await scrape(d)).samples
      assert.equal(valueOf(s, 'tcptracer_config_reloads_total', { result: 'failure' }), 5)
      assert.equal(valueOf(s, 'tcptracer_config_last_reload_successful', {}), 0)
    } finally {
      assert.equal(await d.stop(), 0, d.proc.stderr.slice(-2000))
    }
  })
})
