// The pinned kernel state's naming and planning, without the kernel: the state id, and what happens
// where there is no bpffs.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { describe, test } from 'node:test'
import { loadBinding } from '../../src/kernel/binding.js'
import { linksDir, newGeneration, planPinnedState, stateId, unpinAll } from '../../src/kernel/pinned-state.js'

const real = loadBinding()
const binding = {
  layout: real.layout,
  constants: { STATE_VERSION: 1, STAT_MAX: 5 },
} as unknown as Parameters<typeof stateId>[0]
const shape = { maxConnections: 65536, maxKernelLabelSets: 65536, bucketsSeconds: [0.1, 1, 10] }

describe('stateId', () => {
  test('names the state version and is stable for the same layout and settings', () => {
    const id = stateId(binding, shape)
    assert.match(id, /^v1-[0-9a-f]{16}$/)
    assert.equal(stateId(binding, { ...shape, bucketsSeconds: [0.1, 1, 10] }), id)
  })

  test('changes with every setting that sizes or shapes the maps, and with the layout', () => {
    const id = stateId(binding, shape)
    const others = [
      stateId(binding, { ...shape, maxConnections: 131072 }),
      stateId(binding, { ...shape, maxKernelLabelSets: 1024 }),
      stateId(binding, { ...shape, bucketsSeconds: [0.1, 1, 100] }),
      stateId(
        {
          ...binding,
          layout: { ...binding.layout, aggValue: { ...binding.layout.aggValue, size: 368 } },
        } as typeof binding,
        shape,
      ),
      stateId({ ...binding, constants: { ...binding.constants, STAT_MAX: 6 } } as typeof binding, shape),
    ]
    assert.equal(new Set([id, ...others]).size, others.length + 1)
    const v2 = stateId(
      { ...binding, constants: { ...binding.constants, STATE_VERSION: 2 } } as typeof binding,
      shape,
    )
    assert.match(v2, /^v2-/)
  })

  test("this build's records have the id of the first pinned states: an upgrade takes over their state", () => {
    // The id digests the records in one fixed form, whatever shape the addon's layout object has. A
    // change of this id means a daemon cannot take over the state an earlier build pinned: make it
    // only with a change of the records themselves (and STATE_VERSION where their meaning changes).
    const defaults = {
      maxConnections: 65536,
      maxKernelLabelSets: 16384,
      bucketsSeconds: [0.001, 0.01, 1, 10],
    }
    assert.equal(stateId(real, defaults), 'v2-6b7aa2b0a4f60687')
  })
})

describe('planPinnedState and unpinAll outside bpffs', () => {
  test('a directory that is not on bpffs is reported, with the fix, and nothing is created', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'tt-state-'))
    try {
      const plan = planPinnedState(path.join(dir, 'pins'), 'v1-0123456789abcdef')
      assert.ok('unavailable' in plan)
      assert.match(
        plan.unavailable,
        /is not on a BPF filesystem \(mount one: mount -t bpf bpf \/sys\/fs\/bpf/,
      )
      writeFileSync(path.join(dir, 'keep'), 'x')
      assert.throws(() => unpinAll(dir), /is not on a BPF filesystem: refusing to remove it/)
      assert.deepEqual(
        unpinAll(path.join(dir, 'missing')),
        { removed: [] },
        'a missing directory: nothing to do',
      )
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

  test('generations are non-zero and name their link directory in fixed-width hex', () => {
    const seen = new Set<bigint>()
    for (let i = 0; i < 100; i++) seen.add(newGeneration())
    assert.equal(seen.size, 100)
    assert.ok(![...seen].includes(0n))
    assert.equal(linksDir({ dir: '/sys/fs/bpf/x/v1-a' }, 0xabcn), '/sys/fs/bpf/x/v1-a/links/0000000000000abc')
  })
})
