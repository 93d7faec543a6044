import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { UsageError } from '../../src/cli/args.js'
import {
  CAP_BPF,
  CAP_SYS_ADMIN,
  CAP_SYS_PTRACE,
  CAPABILITY_NAMES,
  capabilityNames,
  capabilityNumber,
  capBit,
  dropCapabilities,
  formatKeep,
  keepPlan,
  parseStatusCapabilities,
  type CapabilityBinding,
} from '../../src/host/capabilities.js'
import { parseKeep, parseRunArgs } from '../../src/cli/run.js'

const bits = (...caps: number[]): bigint => caps.reduce((m, c) => m | capBit(c), 0n)
/** What the systemd unit grants: CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH. */
const UNIT = bits(39, 38, 19, 2)
/** Root on the CI machines: everything but CAP_SYS_RESOURCE. */
const ROOT = ((1n << 41n) - 1n) & ~capBit(24)

describe('capability names', () => {
  test('the table follows include/uapi/linux/capability.h', () => {
    assert.equal(CAPABILITY_NAMES.length, 41)
    const known: Array<[number, string]> = [
      [0, 'cap_chown'],
      [2, 'cap_dac_read_search'],
      [8, 'cap_setpcap'],
      [10, 'cap_net_bind_service'],
      [19, 'cap_sys_ptrace'],
      [21, 'cap_sys_admin'],
      [24, 'cap_sys_resource'],
      [38, 'cap_perfmon'],
      [39, 'cap_bpf'],
      [40, 'cap_checkpoint_restore'],
    ]
    for (const [n, name] of known) assert.equal(CAPABILITY_NAMES[n], name)
    assert.equal(CAP_SYS_PTRACE, 19)
    assert.equal(CAP_SYS_ADMIN, 21)
    assert.equal(CAP_BPF, 39)
  })

  test('masks to names and back', () => {
    assert.deepEqual(capabilityNames(UNIT), [
      'cap_dac_read_search',
      'cap_sys_ptrace',
      'cap_perfmon',
      'cap_bpf',
    ])
    assert.deepEqual(capabilityNames(0n), [])
    assert.deepEqual(capabilityNames(capBit(45)), ['cap_45'])
    assert.equal(capabilityNames(ROOT).length, 40)
    for (const spelling of ['cap_sys_ptrace', 'CAP_SYS_PTRACE', 'sys_ptrace', ' Sys_Ptrace ']) {
      assert.equal(capabilityNumber(spelling), 19, spelling)
    }
    assert.equal(capabilityNumber('cap_sys_pterodactyl'), undefined)
  })
})

describe('--capabilities.keep', () => {
  test('auto, all, none and lists', () => {
    assert.deepEqual(parseKeep('auto'), { kind: 'auto' })
    assert.deepEqual(parseKeep('ALL'), { kind: 'all' })
    assert.deepEqual(parseKeep('none'), { kind: 'list', mask: 0n })
    assert.deepEqual(parseKeep('cap_sys_ptrace'), { kind: 'list', mask: bits(19) })
    assert.deepEqual(parseKeep('CAP_NET_BIND_SERVICE, sys_ptrace'), { kind: 'list', mask: bits(10, 19) })
    assert.equal(
      formatKeep(parseKeep('sys_ptrace,cap_net_bind_service')),
      'cap_net_bind_service,cap_sys_ptrace',
    )
    assert.equal(formatKeep(parseKeep('none')), 'none')
    assert.equal(formatKeep(parseKeep('auto')), 'auto')
  })

  test('an unknown capability or an empty item is a usage error naming it', () => {
    for (const [raw, bad] of [
      ['cap_sys_pterodactyl', 'cap_sys_pterodactyl'],
      ['cap_bpf,,cap_perfmon', ''],
      ['', ''],
      ['auto,cap_bpf', 'auto'],
    ] as const) {
      assert.throws(
        () => parseKeep(raw),
        (e: unknown) =>
          e instanceof UsageError &&
          e.message.includes(`"${bad}" is not a capability`) &&
          e.message.includes('cap_sys_ptrace'),
        raw,
      )
    }
  })

  test('the run flag: auto by default, parsed and checked', () => {
    assert.deepEqual(parseRunArgs([]).capabilitiesKeep, { kind: 'auto' })
    assert.deepEqual(parseRunArgs(['--capabilities.keep=none']).capabilitiesKeep, { kind: 'list', mask: 0n })
    assert.deepEqual(parseRunArgs(['--capabilities.keep=all']).capabilitiesKeep, { kind: 'all' })
    assert.throws(() => parseRunArgs(['--capabilities.keep=cap_root']), UsageError)
  })
})

describe('keepPlan', () => {
  test('auto keeps cap_sys_ptrace only, and only if held', () => {
    for (const held of [ROOT, UNIT]) {
      const p = keepPlan({ kind: 'auto' }, held, false)
      assert.equal(p.mask, bits(19))
      assert.deepEqual(Object.keys(p.reasons), ['cap_sys_ptrace'])
      assert.match(p.reasons['cap_sys_ptrace'] ?? '', /ns\/net/)
    }
    assert.equal(keepPlan({ kind: 'auto' }, bits(39, 38), false).mask, 0n)
  })

  test('on kernels that gate bpf() on open maps, cap_bpf is kept whatever the list says; else cap_sys_admin', () => {
    assert.equal(keepPlan({ kind: 'auto' }, UNIT, true).mask, bits(19, 39))
    assert.equal(keepPlan({ kind: 'list', mask: 0n }, ROOT, true).mask, bits(39))
    assert.match(keepPlan({ kind: 'list', mask: 0n }, ROOT, true).reasons['cap_bpf'] ?? '', /5\.19/)
    // a pre-5.8 style grant: CAP_SYS_ADMIN and no CAP_BPF
    assert.equal(keepPlan({ kind: 'auto' }, bits(21, 19), true).mask, bits(19, 21))
    // already kept by the list: nothing added
    assert.equal(keepPlan({ kind: 'list', mask: bits(21) }, ROOT, true).mask, bits(21))
  })

  test('a list keeps what it names and is held', () => {
    assert.equal(keepPlan({ kind: 'list', mask: bits(10, 19) }, ROOT, false).mask, bits(10, 19))
    assert.equal(keepPlan({ kind: 'list', mask: bits(10, 19) }, UNIT, false).mask, bits(19))
    assert.equal(keepPlan({ kind: 'list', mask: 0n }, ROOT, false).mask, 0n)
  })
})

describe('dropCapabilities', () => {
  class FakeBinding implements CapabilityBinding {
    calls: bigint[] = []
    constructor(
      private readonly gate: boolean,
      private readonly bounding: boolean,
    ) {}

    bpfNeedsCapability(): boolean {
      return this.gate
    }

    dropCapabilities(keep: bigint): {
      before: bigint
      after: bigint
      boundingDropped: boolean
      threads: number
    } {
      this.calls.push(keep)
      return { before: UNIT, after: UNIT & keep, boundingDropped: this.bounding, threads: 11 }
    }
  }

  test('auto: asks the addon for the plan and reports what was kept and removed', () => {
    const b = new FakeBinding(false, false)
    const r = dropCapabilities(b, { kind: 'auto' }, UNIT)
    assert.deepEqual(b.calls, [bits(19)])
    assert.deepEqual(r.status, {
      keep: 'auto',
      dropped: true,
      kept: ['cap_sys_ptrace'],
      removed: ['cap_dac_read_search', 'cap_perfmon', 'cap_bpf'],
      boundingSetReduced: false,
    })
    assert.equal(r.threads, 11)
    assert.deepEqual(Object.keys(r.reasons), ['cap_sys_ptrace'])
  })

  test('none on a gated kernel still keeps cap_bpf', () => {
    const b = new FakeBinding(true, true)
    const r = dropCapabilities(b, { kind: 'list', mask: 0n }, UNIT)
    assert.deepEqual(b.calls, [bits(39)])
    assert.deepEqual(r.status.kept, ['cap_bpf'])
    assert.equal(r.status.keep, 'none')
    assert.equal(r.status.boundingSetReduced, true)
  })

  test('all: nothing is dropped and the addon is not called', () => {
    const b = new FakeBinding(false, false)
    const r = dropCapabilities(b, { kind: 'all' }, UNIT)
    assert.deepEqual(b.calls, [])
    assert.deepEqual(r.status, {
      keep: 'all',
      dropped: false,
      kept: ['cap_dac_read_search', 'cap_sys_ptrace', 'cap_perfmon', 'cap_bpf'],
      removed: [],
      boundingSetReduced: false,
    })
  })

  test('a failure of the addon propagates', () => {
    const b = new FakeBinding(false, false)
    b.dropCapabilities = () => {
      throw Object.assign(new Error('drop capabilities: thread failed: Operation not permitted'), {
        name: 'BpfError',
      })
    }
    assert.throws(() => dropCapabilities(b, { kind: 'auto' }, UNIT), /Operation not permitted/)
  })
})

describe('parseStatusCapabilities', () => {
  test('a /proc/PID/task/TID/status file', () => {
    const text = [
      'Name:\tnode',
      'Umask:\t0022',
      'State:\tS (sleeping)',
      'NoNewPrivs:\t1',
      'CapInh:\t0000000000000000',
      'CapPrm:\t0000000000080000',
      'CapEff:\t0000000000080000',
      'CapBnd:\t000000c000080004',
      'CapAmb:\t0000000000000000',
      'Seccomp:\t2',
      '',
    ].join('\n')
    assert.deepEqual(parseStatusCapabilities(text), {
      comm: 'node',
      inheritable: 0n,
      permitted: bits(19),
      effective: bits(19),
      bounding: UNIT,
      ambient: 0n,
      noNewPrivs: true,
    })
    assert.throws(() => parseStatusCapabilities('Name:\tnode\n'), /CapInh/)
  })
})
