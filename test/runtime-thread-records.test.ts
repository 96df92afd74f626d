/**
 * Thread records in shared registers (fabric/runtime/thread-records.ts): children of one thread at
 * nearby call sequences share a register, each record with its own version; a record with a large arg
 * lives on its own key, a large result apart, and both are found from the tid alone.
 */

import { describe, expect, test } from 'vitest'
import { decodeEntries } from '../fabric/coord/entries.ts'
import { valueBytesMax } from '../fabric/coord/register.ts'
import { MemoryStore } from '../fabric/runtime/memory-store.ts'
import {
  childThreadId,
  decodeThread,
  encodeRecord,
  recordFormatVersion,
  type ThreadRecord,
} from '../fabric/runtime/records.ts'
import {
  entryArgBytesMax,
  entryBytesMax,
  ThreadRecords,
  threadRecordKeys,
  bucketCallSequencesMax as width,
} from '../fabric/runtime/thread-records.ts'

const pid = 'p1'
/** Bytes as a plain Uint8Array (cbor-x decodes to Node Buffers). */
const plain = (bytes: Uint8Array | null) => (bytes === null ? null : new Uint8Array(bytes))

function record(tid: string, changes: Partial<ThreadRecord> = {}): ThreadRecord {
  return {
    formatVersion: recordFormatVersion,
    pid,
    tid,
    entry: 'worker',
    arg: new Uint8Array([1, 2, 3]),
    state: 'running',
    node: '12D3KooWExampleNodeIdentifierThatIsAboutAsLongAsARealOne00000',
    epoch: 1,
    saveReplicas: [],
    result: null,
    exitCode: null,
    error: null,
    spawnerNode: '12D3KooWExampleNodeIdentifierThatIsAboutAsLongAsARealOne00001',
    ...changes,
  }
}

describe('thread records', () => {
  test('children at nearby call sequences share a register; main has its own; found from the tid alone', async () => {
    const store = new MemoryStore()
    const records = new ThreadRecords(store, { bucketCallSequences: width })
    const children = Array.from({ length: width }, (_, index) => childThreadId('0', index))
    const written = await Promise.all(
      children.map((tid) => records.cas(pid, tid, 0, encodeRecord(record(tid)))),
    )
    expect(written.every((result) => result.ok)).toBe(true)
    await records.cas(pid, '0', 0, encodeRecord(record('0')))
    expect(store.writtenKeys(`threads/${pid}/`).sort()).toEqual([`threads/${pid}/0/0`, `threads/${pid}/main`])
    const next = childThreadId('0', width)
    expect(threadRecordKeys.bucket(pid, next, width)).toBe(`threads/${pid}/0/1`)
    for (const tid of [...children, '0']) {
      const read = await records.get(pid, tid)
      expect(decodeThread(read.value!).tid).toBe(tid)
    }
    expect((await records.get(pid, next)).value).toBeNull()
  })

  test('a claim of one child and the end of another in one register both apply; a stale write fails', async () => {
    const store = new MemoryStore()
    // Two nodes' layers over one store.
    const first = new ThreadRecords(store, { bucketCallSequences: width })
    const second = new ThreadRecords(store, { bucketCallSequences: width })
    expect(threadRecordKeys.bucket(pid, '0.1', width)).toBe(threadRecordKeys.bucket(pid, '0.2', width))
    const [a, b] = [childThreadId('0', 1), childThreadId('0', 2)]
    const createdB = await first.cas(pid, b, 0, encodeRecord(record(b)))
    const [claimA, endB] = await Promise.all([
      first.cas(pid, a, 0, encodeRecord(record(a))),
      second.cas(pid, b, createdB.version, encodeRecord(record(b, { state: 'done', exitCode: 0 }))),
    ])
    expect(claimA.ok && endB.ok).toBe(true)
    expect(decodeThread((await second.get(pid, b)).value!).state).toBe('done')
    // The incarnation that created b writes on its old version: refused, the record another wrote shown.
    const stale = await first.cas(pid, b, createdB.version, encodeRecord(record(b, { epoch: 2 })))
    expect(stale.ok).toBe(false)
    expect(decodeThread(stale.value!).state).toBe('done')
    // A second creation of the same child (a spawn replayed after a restore) fails: it exists.
    const again = await second.cas(pid, a, 0, encodeRecord(record(a, { node: 'other' })))
    expect(again.ok).toBe(false)
    expect(decodeThread(again.value!).node).toBe(record(a).node)
  })

  test('a record with a large arg lives on its own key, is found and written there', async () => {
    const store = new MemoryStore()
    const records = new ThreadRecords(store, { bucketCallSequences: width })
    const tid = childThreadId('0', 3)
    const large = record(tid, { arg: new Uint8Array(entryArgBytesMax + 1).fill(7) })
    const created = await records.cas(pid, tid, 0, encodeRecord(large))
    expect(created.ok).toBe(true)
    expect(store.writtenKeys(`thread/${pid}/`)).toEqual([`thread/${pid}/${tid}`])
    expect(store.writtenKeys(`threads/${pid}/`)).toEqual([])
    const read = await records.get(pid, tid)
    expect(read.version).toBe(created.version)
    expect(plain(decodeThread(read.value!).arg)).toEqual(large.arg)
    const ended = await records.cas(pid, tid, read.version, encodeRecord({ ...large, state: 'done' }))
    expect(ended.ok).toBe(true)
    expect(decodeThread((await records.get(pid, tid)).value!).state).toBe('done')
  })

  test('a large result is kept apart and read back whole; the record entry stays small', async () => {
    const store = new MemoryStore()
    const records = new ThreadRecords(store, { bucketCallSequences: width })
    const tid = childThreadId('0', 4)
    const created = await records.cas(pid, tid, 0, encodeRecord(record(tid)))
    const result = new Uint8Array(20_000).map((_, index) => index % 251)
    const done = encodeRecord(record(tid, { state: 'done', result, exitCode: 0 }))
    const ended = await records.cas(pid, tid, created.version, done)
    expect(ended.ok).toBe(true)
    expect(plain(ended.value)).toEqual(plain(done))
    const read = await records.get(pid, tid)
    // Read back as written, byte for byte (an unconfirmed write is recognised by its bytes).
    expect(plain(read.value)).toEqual(plain(done))
    expect(plain(decodeThread(read.value!).result)).toEqual(result)
    const bucket = await store.get(threadRecordKeys.bucket(pid, tid, width))
    expect(decodeEntries(bucket.value)!.get(tid)!.value.length).toBeLessThan(entryBytesMax)
    // A stale incarnation's large result, whose record write fails, leaves the current one's.
    const stale = await records.cas(
      pid,
      tid,
      created.version,
      encodeRecord(record(tid, { state: 'done', result: new Uint8Array(20_000), exitCode: 0, epoch: 0 })),
    )
    expect(stale.ok).toBe(false)
    expect(plain(decodeThread((await records.get(pid, tid)).value!).result)).toEqual(result)
    // A long error goes apart the same way.
    const failedTid = childThreadId('0', 5)
    const failedCreated = await records.cas(pid, failedTid, 0, encodeRecord(record(failedTid)))
    const error = 'x'.repeat(5000)
    await records.cas(
      pid,
      failedTid,
      failedCreated.version,
      encodeRecord(record(failedTid, { state: 'failed', error })),
    )
    expect(decodeThread((await records.get(pid, failedTid)).value!).error).toBe(error)
  })

  test('a full bucket of records with the largest args and outcomes stays within the register', async () => {
    const store = new MemoryStore()
    const records = new ThreadRecords(store, { bucketCallSequences: width })
    for (let index = 0; index < width; index++) {
      const tid = childThreadId('0', index)
      const big = record(tid, { arg: new Uint8Array(entryArgBytesMax), group: 'g'.repeat(200) })
      const created = await records.cas(pid, tid, 0, encodeRecord(big))
      const ended = await records.cas(
        pid,
        tid,
        created.version,
        encodeRecord({ ...big, state: 'failed', result: new Uint8Array(500), error: 'e'.repeat(500) }),
      )
      expect(ended.ok).toBe(true)
    }
    const bucket = await store.get(threadRecordKeys.bucket(pid, childThreadId('0', 0), width))
    expect(bucket.value!.length).toBeLessThan(valueBytesMax)
  })
})

describe('thread record bytes', () => {
  const node = '12D3KooWHVqRjtuxWUirxR2gYieKyH2xFR7Cxw3urQjWU5X19Cc5'

  test('every field, optional ones present and absent, reads back as written', () => {
    const variants: ThreadRecord[] = [
      record('0.7283', { node, spawnerNode: node, arg: new TextEncoder().encode('7283') }),
      record('0', { state: 'placed', node: '', epoch: 0 }),
      record('0.1.2', {
        state: 'done',
        saveReplicas: [node, 'another-node'],
        result: new Uint8Array(2000).fill(9),
        exitCode: -3,
        group: 'workers/ü',
      }),
      record('0.4', { state: 'failed', error: 'trap: unreachable €', exitCode: 2 ** 31 - 1, epoch: 2 ** 40 }),
      { ...record('0.5', { result: null, error: null }), outcomeStored: true },
    ]
    for (const each of variants) {
      const decoded = decodeThread(encodeRecord(each))
      expect({ ...decoded, arg: plain(decoded.arg), result: plain(decoded.result) }).toStrictEqual(each)
    }
  })

  test("a tiny thread's record takes under 110 bytes (its CBOR map took 279)", () => {
    const tiny = record('0.7283', { node, spawnerNode: node, arg: new TextEncoder().encode('7283') })
    expect(encodeRecord(tiny).length).toBeLessThan(110)
  })

  test('a record written as CBOR, before the binary form, still reads', async () => {
    const { Encoder } = await import('cbor-x')
    const cbor = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false } as never)
    const old = record('0.9', { node })
    const decoded = decodeThread(cbor.encode(old) as Uint8Array)
    expect({ ...decoded, arg: plain(decoded.arg) }).toEqual(old)
  })

  test('malformed bytes and an unknown format version are refused with what was wrong', () => {
    const bytes = encodeRecord(record('0.7', { node }))
    for (let length = 1; length < bytes.length; length++)
      expect(() => decodeThread(bytes.subarray(0, length))).toThrow(/thread record is malformed/)
    const newer = bytes.slice()
    newer[1] = recordFormatVersion + 1
    expect(() => decodeThread(newer)).toThrow(/format version 2; this node reads 1/)
  })
})
