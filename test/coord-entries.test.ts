/**
 * Registers of named entries (fabric/coord/entries.ts, the `entry-cas` and `entry-get` operations of
 * fabric/coord/register.ts): each entry has its own version, writers of different entries of one key
 * do not fail each other, a stale entry version fails, the whole map stays within the register's size
 * limit, and entry writes queued on one key go in one store round, not one each.
 */

import { describe, expect, test } from 'vitest'
import { decodeEntries, encodeEntries, entryNameBytesMax, utf8BytesAtMost } from '../fabric/coord/entries.ts'
import { applyOperation, emptyRegister, type Operation, valueBytesMax } from '../fabric/coord/register.ts'
import { InvalidArgumentError } from '../fabric/errors.ts'
import { isOperation } from '../fabric/net/validate.ts'
import { seedBanner } from '../fabric/sim/simulator.ts'
import { entryKey, runStoreScenario } from '../fabric/sim/workload.ts'
import { threeStores } from './support/three-stores.ts'

const bytes = (text: string) => new TextEncoder().encode(text)

function applyAll(operations: Operation[]) {
  let state = emptyRegister
  const results = operations.map((operation) => {
    const applied = applyOperation(state, operation, false)
    state = applied.state
    return applied.result
  })
  return { state, results }
}

describe('UTF-8 length bound', () => {
  test('counts the bytes a string takes, however its characters are written', () => {
    expect(utf8BytesAtMost('x'.repeat(512), 512)).toBe(true)
    expect(utf8BytesAtMost('x'.repeat(513), 512)).toBe(false)
    // 2, 3 and 4 bytes a character: short strings whose bytes pass the bound.
    expect(utf8BytesAtMost('ü'.repeat(257), 512)).toBe(false)
    expect(utf8BytesAtMost('ü'.repeat(256), 512)).toBe(true)
    expect(utf8BytesAtMost('€'.repeat(171), 512)).toBe(false)
    expect(utf8BytesAtMost('𝄞'.repeat(128), 512)).toBe(true)
    expect(utf8BytesAtMost('𝄞'.repeat(129), 512)).toBe(false)
  })
})

describe('register of entries', () => {
  test('each entry has its own version; writers of different entries do not fail each other', () => {
    const { state, results } = applyAll([
      { kind: 'entry-cas', entry: 'a', expectedVersion: 0, value: bytes('a1') },
      { kind: 'entry-cas', entry: 'b', expectedVersion: 0, value: bytes('b1') },
      { kind: 'entry-cas', entry: 'a', expectedVersion: 1, value: bytes('a2') },
      { kind: 'entry-get', entry: 'b' },
      { kind: 'entry-get', entry: 'c' },
    ])
    expect(results.map((result) => [result.ok, result.version])).toEqual([
      [true, 1],
      [true, 2],
      [true, 3],
      [true, 2],
      [true, 0],
    ])
    expect(results[3]!.value).toEqual(bytes('b1'))
    expect(results[4]!.value).toBeNull()
    const entries = decodeEntries(state.value)!
    expect([...entries.keys()].sort()).toEqual(['a', 'b'])
    expect(entries.get('a')).toEqual({ version: 3, value: bytes('a2') })
  })

  test('a stale entry version fails and leaves the register as it was, showing the current entry', () => {
    const { state } = applyAll([
      { kind: 'entry-cas', entry: 'a', expectedVersion: 0, value: bytes('a1') },
      { kind: 'entry-cas', entry: 'a', expectedVersion: 1, value: bytes('a2') },
    ])
    const stale = applyOperation(
      state,
      { kind: 'entry-cas', entry: 'a', expectedVersion: 1, value: bytes('x') },
      false,
    )
    expect(stale.state).toBe(state)
    expect(stale.result).toMatchObject({ ok: false, version: 2, value: bytes('a2') })
    const create = applyOperation(
      state,
      { kind: 'entry-cas', entry: 'a', expectedVersion: 0, value: bytes('x') },
      false,
    )
    expect(create.result.ok).toBe(false)
  })

  test('a delete removes the entry; written again, it never repeats a version', () => {
    const { state, results } = applyAll([
      { kind: 'entry-cas', entry: 'a', expectedVersion: 0, value: bytes('a1') },
      { kind: 'entry-cas', entry: 'a', expectedVersion: 1, value: null },
      { kind: 'entry-get', entry: 'a' },
      { kind: 'entry-cas', entry: 'a', expectedVersion: 0, value: bytes('a3') },
    ])
    expect(results[1]).toMatchObject({ ok: true, version: 0, value: null })
    expect(results[2]).toMatchObject({ ok: true, version: 0 })
    expect(results[3]).toMatchObject({ ok: true, version: 3 })
    // The last entry deleted leaves no value at all, as a register never written.
    const emptied = applyOperation(
      state,
      { kind: 'entry-cas', entry: 'a', expectedVersion: 3, value: null },
      false,
    )
    expect(emptied.state.value).toBeNull()
  })

  test('an entry write that would take the map over the size limit is refused, the register unchanged', () => {
    const big = new Uint8Array(40 * 1024)
    const { state } = applyAll([{ kind: 'entry-cas', entry: 'a', expectedVersion: 0, value: big }])
    const refused = applyOperation(
      state,
      { kind: 'entry-cas', entry: 'b', expectedVersion: 0, value: big },
      false,
    )
    expect(refused.result).toMatchObject({ ok: false, version: 0, refused: 'too-large' })
    expect(refused.state).toBe(state)
    // Replacing the large entry with a small one fits.
    const replaced = applyOperation(
      state,
      { kind: 'entry-cas', entry: 'a', expectedVersion: 1, value: bytes('s') },
      false,
    )
    expect(replaced.result.ok).toBe(true)
    expect(replaced.state.value!.length).toBeLessThan(valueBytesMax)
  })

  test('entry operations on a register that holds a plain value are refused', () => {
    const plain = applyOperation(emptyRegister, { kind: 'put', value: bytes('plain') }, false).state
    const refused = applyOperation(
      plain,
      { kind: 'entry-cas', entry: 'a', expectedVersion: 0, value: bytes('x') },
      false,
    )
    expect(refused.result).toMatchObject({ ok: false, refused: 'not-entries' })
    expect(refused.state).toBe(plain)
  })

  test('malformed maps decode to null, not to a partial map', () => {
    const encoded = encodeEntries(new Map([['a', { version: 1, value: bytes('xyz') }]]))
    expect(decodeEntries(encoded)?.get('a')?.version).toBe(1)
    expect(decodeEntries(encoded.slice(0, encoded.length - 1))).toBeNull()
    const padded = new Uint8Array(encoded.length + 1)
    padded.set(encoded)
    expect(decodeEntries(padded)).toBeNull()
    expect(decodeEntries(bytes('plain'))).toBeNull()
  })

  test('hostile entry operations from the network are refused by shape', () => {
    expect(isOperation({ kind: 'entry-cas', entry: 'a', expectedVersion: 0, value: null })).toBe(true)
    expect(isOperation({ kind: 'entry-cas', entry: '', expectedVersion: 0, value: null })).toBe(false)
    expect(
      isOperation({
        kind: 'entry-cas',
        entry: 'x'.repeat(entryNameBytesMax + 1),
        expectedVersion: 0,
        value: null,
      }),
    ).toBe(false)
    expect(isOperation({ kind: 'entry-cas', entry: 'a', expectedVersion: -1, value: null })).toBe(false)
    expect(isOperation({ kind: 'entry-cas', entry: 'a', expectedVersion: 0, value: 'text' })).toBe(false)
    expect(isOperation({ kind: 'entry-get', entry: 7 })).toBe(false)
  })
})

describe('entry writes through the store', () => {
  test('50 entry writes submitted in one turn take a few rounds, not 50, and all apply', () => {
    const cluster = threeStores()
    // The first operation on the key runs the prepare round; the rest then skip it.
    cluster.submit('n0', 'bucket', { kind: 'entry-get', entry: 'x' })
    cluster.deliver()
    cluster.sent.clear()
    const outcomes = Array.from({ length: 50 }, (_, index) =>
      cluster.submit('n0', 'bucket', {
        kind: 'entry-cas',
        entry: `t${index}`,
        expectedVersion: 0,
        value: bytes(`record ${index}`),
      }),
    )
    cluster.deliver()
    expect(outcomes.every((list) => list.length === 1 && list[0]!.ok && list[0]!.result.ok)).toBe(true)
    // One accept to each of 3 replicas per round: 50 writes in at most 2 rounds (64 requests per batch).
    expect(cluster.sent.get('accept') ?? 0).toBeLessThanOrEqual(2 * 3)
    const read = cluster.submit('n1', 'bucket', { kind: 'get' })
    cluster.settle(read)
    const entries = decodeEntries(read[0]!.ok ? read[0]!.result.value : null)!
    expect(entries.size).toBe(50)
  })

  test('writes of different entries of one key from two proposers both apply; a stale one fails', () => {
    const cluster = threeStores()
    const first = cluster.submit('n0', 'bucket', {
      kind: 'entry-cas',
      entry: 'a',
      expectedVersion: 0,
      value: bytes('a'),
    })
    const second = cluster.submit('n1', 'bucket', {
      kind: 'entry-cas',
      entry: 'b',
      expectedVersion: 0,
      value: bytes('b'),
    })
    cluster.settle(first, second)
    expect(first[0]).toMatchObject({ ok: true, result: { ok: true } })
    expect(second[0]).toMatchObject({ ok: true, result: { ok: true } })
    const versionOfA = first[0]!.ok ? first[0]!.result.version : -1
    const stale = cluster.submit('n2', 'bucket', {
      kind: 'entry-cas',
      entry: 'a',
      expectedVersion: versionOfA - 1,
      value: bytes('x'),
    })
    cluster.settle(stale)
    expect(stale[0]).toMatchObject({
      ok: true,
      result: { ok: false, version: versionOfA, value: bytes('a') },
    })
  })

  test('bad entry operations are refused with a named error', () => {
    const cluster = threeStores()
    expect(() => cluster.submit('n0', 'bucket', { kind: 'entry-get', entry: '' })).toThrow(
      InvalidArgumentError,
    )
    expect(() =>
      cluster.submit('n0', 'bucket', { kind: 'entry-cas', entry: 'a', expectedVersion: 0.5, value: null }),
    ).toThrow(InvalidArgumentError)
  })
})

describe('entry operations under faults', () => {
  // Crashes, restarts, partitions and message loss (fabric/sim/workload.ts), a third of the data
  // operations on entries of one register: every key's history, the register of entries included,
  // must be linearizable with the register's rules as the model.
  test('histories with entry writes are linearizable', () => {
    const only = process.env.SEED === undefined ? undefined : Number(process.env.SEED)
    const last = process.env.FABRIC_SOAK === '1' ? 40 : 4
    for (let seed = 1; seed <= last; seed++) {
      if (only !== undefined && seed !== only) continue
      const report = runStoreScenario({ seed, entryShare: 0.34 })
      const entryOperations = report.history.filter((operation) => operation.key === entryKey)
      expect(entryOperations.filter((operation) => operation.result?.ok).length).toBeGreaterThan(20)
      if (report.violations.length > 0)
        expect.fail(
          `${seedBanner(seed, 'test/coord-entries.test.ts', 'histories with entry writes are linearizable')}\n${report.violations[0]!.slice(0, 2000)}`,
        )
    }
  }, 300_000)
})
