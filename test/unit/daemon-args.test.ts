import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { UsageError } from '../../src/cli/args.js'
import { parseConfig } from '../../src/config/config.js'
import { DEFAULT_LISTEN_ADDRESS, parseListenAddress, parseRunArgs } from '../../src/cli/run.js'
import { restartOnlyChanges } from '../../src/exporter/exporter.js'

/** Asserts that fn throws a UsageError whose message matches every pattern. */
function throwsUsage(fn: () => unknown, ...patterns: RegExp[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof UsageError, `expected a UsageError, got ${String(e)}`)
    assert.equal(e.name, 'UsageError')
    for (const p of patterns) assert.match(e.message, p)
    return true
  })
}

describe('parseListenAddress', () => {
  const good: Array<[string, { host: string; port: number }]> = [
    [':19427', { host: '::', port: 19427 }],
    ['127.0.0.1:80', { host: '127.0.0.1', port: 80 }],
    ['0.0.0.0:19427', { host: '0.0.0.0', port: 19427 }],
    ['[::1]:9', { host: '::1', port: 9 }],
    ['[::]:19427', { host: '::', port: 19427 }],
    ['[fe80::1]:65535', { host: 'fe80::1', port: 65535 }],
    ['[::ffff:127.0.0.1]:8080', { host: '::ffff:127.0.0.1', port: 8080 }],
    ['localhost:1', { host: 'localhost', port: 1 }],
    [':0', { host: '::', port: 0 }],
  ]
  for (const [addr, want] of good) {
    test(JSON.stringify(addr), () => {
      assert.deepEqual(parseListenAddress(addr), want)
    })
  }

  const bad = [
    '',
    '19427',
    ':',
    ':65536',
    ':99999',
    '[::1]',
    '::1:80',
    'a:b:c:1',
    ':-1',
    '[]:1',
    'host:port',
    ':123456',
  ]
  for (const addr of bad) {
    test(`${JSON.stringify(addr)} is rejected`, () => {
      throwsUsage(
        () => parseListenAddress(addr),
        /--web\.listen-address/,
        new RegExp(`got "${addr.replace(/[[\]]/g, '\\$&')}"`),
      )
    })
  }

  test('the default address is all interfaces', () => {
    assert.deepEqual(parseListenAddress(DEFAULT_LISTEN_ADDRESS), { host: '::', port: 19427 })
  })
})

describe('parseRunArgs', () => {
  test('defaults', () => {
    assert.deepEqual(parseRunArgs([]), {
      listenAddress: ':19427',
      host: '::',
      port: 19427,
      telemetryPath: '/metrics',
      configFile: undefined,
      webConfigFile: undefined,
      maxRequests: 40,
      logLevel: 'info',
      logFormat: 'auto',
      // not pinned unless asked: a plain start detaches everything at exit
      pinPath: undefined,
      capabilitiesKeep: { kind: 'auto' },
      help: false,
    })
  })

  test('every flag, in both --flag=value and --flag value forms', () => {
    assert.deepEqual(
      parseRunArgs([
        '--web.listen-address=[::1]:9100',
        '--web.telemetry-path',
        '/prom/metrics',
        '--config.file=/etc/tcptracer-exporter.yml',
        '--web.config.file',
        '/etc/tcptracer-exporter/web.yml',
        '--web.max-requests=7',
        '--log.level',
        'debug',
        '--log.format=json',
        '--bpf.pin-path',
        '/sys/fs/bpf/other',
        '--capabilities.keep',
        'cap_sys_ptrace,cap_net_bind_service',
      ]),
      {
        listenAddress: '[::1]:9100',
        host: '::1',
        port: 9100,
        telemetryPath: '/prom/metrics',
        configFile: '/etc/tcptracer-exporter.yml',
        webConfigFile: '/etc/tcptracer-exporter/web.yml',
        maxRequests: 7,
        logLevel: 'debug',
        logFormat: 'json',
        pinPath: '/sys/fs/bpf/other',
        capabilitiesKeep: { kind: 'list', mask: (1n << 19n) | (1n << 10n) },
        help: false,
      },
    )
    assert.equal(parseRunArgs(['--bpf.pin-path=']).pinPath, undefined, 'empty: not pinned')
    assert.equal(parseRunArgs(['-h']).help, true)
    assert.equal(parseRunArgs(['--help']).help, true)
  })

  test('--bpf.pin-path must be absolute or empty', () => {
    assert.throws(
      () => parseRunArgs(['--bpf.pin-path=relative/dir']),
      /--bpf\.pin-path must be an absolute path in bpffs, or "" to turn pinning off; got "relative\/dir"/,
    )
  })

  test('every log level and format is accepted', () => {
    for (const level of ['trace', 'debug', 'info', 'warn', 'error', 'fatal']) {
      assert.equal(parseRunArgs([`--log.level=${level}`]).logLevel, level)
    }
    for (const format of ['json', 'pretty', 'auto']) {
      assert.equal(parseRunArgs([`--log.format=${format}`]).logFormat, format)
    }
  })

  test('bad --log.level', () => {
    throwsUsage(() => parseRunArgs(['--log.level=verbose']), /--log\.level/, /"verbose"/)
    throwsUsage(() => parseRunArgs(['--log.level=INFO']), /--log\.level/)
    throwsUsage(() => parseRunArgs(['--log.level=']), /--log\.level/)
  })

  test('--web.max-requests: 0 disables the limit; negatives and words are refused', () => {
    assert.equal(parseRunArgs(['--web.max-requests=0']).maxRequests, 0)
    assert.equal(parseRunArgs(['--web.max-requests', '1000000']).maxRequests, 1_000_000)
    for (const bad of ['-1', 'many', '', '1.5', '1000001']) {
      throwsUsage(() => parseRunArgs([`--web.max-requests=${bad}`]), /--web\.max-requests/)
    }
  })

  test('bad --log.format', () => {
    throwsUsage(() => parseRunArgs(['--log.format=xml']), /--log\.format/, /"xml"/)
    throwsUsage(() => parseRunArgs(['--log.format=logfmt']), /--log\.format/)
  })

  test('bad --web.telemetry-path', () => {
    for (const path of ['metrics', '/', '/healthz', '/readyz', '', '/a b', '/metrics?x=1', '/metrics#x']) {
      throwsUsage(
        () => parseRunArgs([`--web.telemetry-path=${path}`]),
        /--web\.telemetry-path/,
        new RegExp(`got "${path.replace(/[?#]/g, '\\$&')}"`),
      )
    }
  })

  test('good --web.telemetry-path values', () => {
    for (const path of ['/metrics', '/m', '/prom/metrics', '/metrics-v1.0', '/_/x~y']) {
      assert.equal(parseRunArgs([`--web.telemetry-path=${path}`]).telemetryPath, path)
    }
  })

  test('bad --web.listen-address', () => {
    throwsUsage(() => parseRunArgs(['--web.listen-address=19427']), /--web\.listen-address/, /"19427"/)
  })

  test('unknown flags, positionals and missing values', () => {
    throwsUsage(() => parseRunArgs(['--bogus']), /--bogus/)
    throwsUsage(() => parseRunArgs(['--web.listen-adress=:1']), /--web\.listen-adress/)
    throwsUsage(() => parseRunArgs(['extra']), /extra/)
    throwsUsage(() => parseRunArgs(['--log.level']), /--log\.level/)
    throwsUsage(() => parseRunArgs(['--help=yes']), /--help/)
  })
})

describe('restartOnlyChanges', () => {
  const config = (yaml: string): ReturnType<typeof parseConfig> => parseConfig(yaml, 'test.yml')
  const base = config('')

  test('nothing changed', () => {
    assert.deepEqual(restartOnlyChanges(base, config('')), [])
    assert.deepEqual(restartOnlyChanges(base, base), [])
  })

  test('settings that apply on reload are not listed', () => {
    const next = config(`
labels: [comm, pid]
limits:
  max_label_sets: 5
  idle_expiry: 1m
filters:
  netns: [4026531840]
  ports: [443]
  comm:
    include: [curl]
    exclude: [sshd]
`)
    assert.deepEqual(restartOnlyChanges(base, next), [])
  })

  test('each restart-only setting', () => {
    const cases: Array<[string, string]> = [
      ['accept_mode: syscall', 'accept_mode'],
      ['btf_path: /boot/vmlinux.btf', 'btf_path'],
      ['limits: {max_connections: 2048}', 'limits.max_connections'],
      ['limits: {max_kernel_label_sets: 4096}', 'limits.max_kernel_label_sets'],
      ['histogram: {buckets_seconds: [0.1, 1, 10]}', 'histogram.buckets_seconds'],
    ]
    for (const [yaml, setting] of cases) {
      assert.deepEqual(restartOnlyChanges(base, config(yaml)), [setting], yaml)
      assert.deepEqual(restartOnlyChanges(config(yaml), base), [setting], `${yaml}, reversed`)
    }
  })

  test('all of them, in a stable order', () => {
    const next = config(`
accept_mode: syscall
btf_path: /boot/vmlinux.btf
labels: [comm]
limits:
  max_connections: 2048
  max_kernel_label_sets: 4096
  max_label_sets: 7
histogram:
  buckets_seconds: [0.5]
`)
    assert.deepEqual(restartOnlyChanges(base, next), [
      'accept_mode',
      'btf_path',
      'limits.max_connections',
      'limits.max_kernel_label_sets',
      'histogram.buckets_seconds',
    ])
  })

  test('buckets compare by value', () => {
    const a = config('histogram: {buckets_seconds: [0.1, 1, 10]}')
    assert.deepEqual(restartOnlyChanges(a, config('histogram: {buckets_seconds: [0.10, 1.0, 1e1]}')), [])
    assert.deepEqual(restartOnlyChanges(a, config('histogram: {buckets_seconds: [0.1, 1]}')), [
      'histogram.buckets_seconds',
    ])
    assert.deepEqual(restartOnlyChanges(a, config('histogram: {buckets_seconds: [0.1, 1, 10, 20]}')), [
      'histogram.buckets_seconds',
    ])
  })
})
