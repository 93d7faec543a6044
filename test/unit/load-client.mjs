// A load generator for the HTTP overload tests, run as its own process so that its work does not show in
// the event-loop delay the test measures in the server's process. Argument: one JSON object
// { mode, port, ... }; prints one JSON object with what it saw. Every loop is bounded in count and time,
// and it talks to 127.0.0.1 only.
import http from 'node:http'
import net from 'node:net'

const args = JSON.parse(process.argv[2] ?? '{}')
const HOST = '127.0.0.1'

/** GET on a fresh connection: status, body and milliseconds; errors are returned, not thrown. */
function get(path, timeoutMs = 10_000) {
  return new Promise((resolve) => {
    const t0 = performance.now()
    const req = http.get({ host: HOST, port: args.port, path, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, body, ms: performance.now() - t0 }))
      // a response cut off by the server (its response deadline) ends in 'close' without 'end', and the
      // request sees no error: report it instead of waiting for the hard stop
      res.on('close', () => {
        if (!res.complete) resolve({ error: `cut after ${body.length} bytes`, ms: performance.now() - t0 })
      })
    })
    req.setTimeout(timeoutMs, () => req.destroy(new Error('client timeout')))
    req.on('error', (err) => resolve({ error: err.code ?? err.message, ms: performance.now() - t0 }))
  })
}

/** `n` concurrent GETs of `path`; the bodies of the 200s are grouped so the caller can compare them. */
async function scrapes() {
  const res = await Promise.all(Array.from({ length: args.n }, () => get(args.path)))
  const statuses = {}
  const bodies = {}
  const refusals = new Set()
  let maxMs = 0
  // the server's own event-loop delay, where it exposes prom-client's (the maximum since its previous read)
  let loopLagMaxSeconds
  for (const r of res) {
    const lag = /^nodejs_eventloop_lag_max_seconds (\S+)$/m.exec(r.body ?? '')
    if (lag) loopLagMaxSeconds = Math.max(loopLagMaxSeconds ?? 0, Number(lag[1]))
    const key = r.error ?? String(r.status)
    statuses[key] = (statuses[key] ?? 0) + 1
    maxMs = Math.max(maxMs, r.ms)
    if (r.status === 200) {
      // the part before the HTTP side's own self-metrics, which differ from scrape to scrape
      const cut = r.body.indexOf('# HELP tcptracer_http_requests_rejected_total')
      const data = cut < 0 ? r.body : r.body.slice(0, cut)
      bodies[data] = (bodies[data] ?? 0) + 1
    } else if (r.status !== undefined) refusals.add(r.body)
  }
  return {
    statuses,
    distinctBodies: Object.keys(bodies).length,
    bodyBytes: Object.keys(bodies).map((b) => b.length),
    refusals: [...refusals],
    maxMs,
    loopLagMaxSeconds,
  }
}

/**
 * `n` slowloris sockets: each sends a request line and one header, then a byte every `dripMs`, never
 * finishing the headers. Meanwhile /healthz is fetched every 50 ms. Reports when the server closed each
 * socket and what it answered.
 */
async function slowloris() {
  const t0 = performance.now()
  const closes = []
  const answers = new Set()
  const sockets = []
  for (let i = 0; i < args.n; i++) {
    const s = net.connect(args.port, HOST)
    let got = ''
    let drip
    s.on('connect', () => {
      s.write('GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ')
      drip = setInterval(() => s.write('a'), args.dripMs)
    })
    s.on('data', (d) => (got += d))
    s.on('error', () => {})
    s.on('close', () => {
      clearInterval(drip)
      closes.push(performance.now() - t0)
      answers.add(got.split('\r\n')[0] ?? '')
    })
    sockets.push(s)
  }
  const health = []
  const deadline = t0 + args.durationMs
  while (performance.now() < deadline && closes.length < args.n) {
    const r = await get('/healthz', 2000)
    health.push(r.status === 200 ? r.ms : -1)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  for (const s of sockets) s.destroy()
  const ok = health.filter((ms) => ms >= 0)
  return {
    closed: closes.length,
    firstCloseMs: Math.min(...closes),
    lastCloseMs: Math.max(...closes),
    answers: [...answers],
    healthChecks: health.length,
    healthFailures: health.length - ok.length,
    healthMaxMs: Math.max(...ok),
    healthMedianMs: ok.sort((a, b) => a - b)[Math.floor(ok.length / 2)],
  }
}

/** /healthz every `everyMs` for `durationMs`: the slowest answer and the failures. */
async function health() {
  const t0 = performance.now()
  const times = []
  let failures = 0
  while (performance.now() - t0 < args.durationMs) {
    const r = await get('/healthz', 5000)
    if (r.status === 200) times.push(r.ms)
    else failures++
    await new Promise((resolve) => setTimeout(resolve, args.everyMs ?? 20))
  }
  times.sort((a, b) => a - b)
  return {
    checks: times.length + failures,
    failures,
    maxMs: times.at(-1),
    medianMs: times[Math.floor(times.length / 2)],
  }
}

const modes = { scrapes, slowloris, health }
const run = modes[args.mode]
if (!run) throw new Error(`unknown mode ${args.mode}`)
const hardStop = setTimeout(() => {
  process.stdout.write(JSON.stringify({ error: 'load client ran out of time' }))
  process.exit(3)
}, args.maxRunMs ?? 60_000)
process.stdout.write(JSON.stringify(await run()))
clearTimeout(hardStop)
process.exit(0)
