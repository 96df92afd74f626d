/**
 * Where thread records live in the store, and the one way to read and write them.
 *
 * A thread costs two store writes of its own (the claim that creates its record, its end record),
 * and each is a Paxos round. So that they can share rounds, the records of a thread's children live
 * as entries of shared registers (fabric/coord/entries.ts): the children that thread P spawned at
 * call sequences c are entries named by their tid in the register `threads/<pid>/<P>/<floor(c /
 * width)>`, the width being `bucketCallSequences`. A spawn batch is consecutive call sequences, so
 * the claims of a batch's children on one node, and end records written together, can go in one
 * round per register (the store's proposer batches the requests queued on one key). The main thread
 * (tid `0`) has a register of its own, `threads/<pid>/main`. Any reader finds a record from the tid
 * alone: the parent and the call sequence are in the tid.
 *
 * The width is 1 for now, one record per register as before: measured on 3 local node processes,
 * wider registers cost more than they saved (see `bucketCallSequences`).
 *
 * Entries stay small so a register never outgrows its 64 KiB: a thread whose arg is larger than
 * `entryArgBytesMax` keeps its record on a key of its own, `thread/<pid>/<tid>` (decided when the
 * record is created, from the arg, which never changes: a record lives where it was created;
 * readers look in the register of entries first, then there), and a result and error larger than
 * `entryOutcomeBytesMax` go to `result/<pid>/<tid>/<epoch>`, written before the record that points to them.
 *
 * The layer speaks the store's register shape (`Register`, value = the record's encoding, version =
 * the entry's version), so a thread's `version` is its entry's version and a cas on it fails once
 * another incarnation wrote the record.
 *
 *   const records = new ThreadRecords(store)
 *   const read = await records.get(pid, tid)   // { version, value: encoded record | null, ... }
 *   const written = await records.cas(pid, tid, read.version, encodeRecord(next))
 */

import { Decoder, Encoder } from 'cbor-x'
import { InvalidArgumentError } from '../errors.ts'
import { decodeThread, encodeRecord, keys, parentThreadId, type ThreadRecord } from './records.ts'
import type { CoordinationClient, Register } from './services.ts'

/**
 * Call sequences per register of records: consecutive spawns of one thread share a register. A
 * format constant: every node of a cluster must use the same. 1 for now: with 16, the records'
 * writes did not batch (claims and end writes reach the store about one per turn: 1.2 writes per
 * round in a 2,000-thread run), so each round carried a larger register, and the nodes that claim
 * and end the children of one register pre-empted each other's ballots (some 1,500 rejects per
 * run); node CPU per tiny thread rose by about 1 ms.
 */
export const bucketCallSequences = 1
/** The widest register of records the entry bounds below are made for (tests use it). */
export const bucketCallSequencesMax = 16
/** A thread whose arg is larger keeps its record on a key of its own. */
export const entryArgBytesMax = 1024
/** A result plus error larger than this goes to a key of its own (`result/<pid>/<tid>/<epoch>`). */
export const entryOutcomeBytesMax = 1024
/**
 * The largest record entry: with `bucketCallSequencesMax` of them a register stays well inside
 * its 64 KiB. A larger one is a bug (the bounds above keep records far below it).
 */
export const entryBytesMax = 3 * 1024

interface StoredOutcome {
  result: Uint8Array | null
  error: string | null
}

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false } as never)
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true } as never)

export const threadRecordKeys = {
  /** The register of entries that holds thread `tid`'s record (unless it has its own key). */
  bucket(pid: string, tid: string, width = bucketCallSequences): string {
    const parent = parentThreadId(tid)
    if (parent === null) return `threads/${pid}/main`
    const last = tid.slice(parent.length + 1)
    const callSequence = Number(last)
    // An id no spawn makes (a hostile or mistaken start message) gets a register of its own, apart
    // from the numbered buckets.
    if (!/^[0-9]+$/.test(last) || !Number.isSafeInteger(callSequence))
      return `threads/${pid}/${parent}/-${last}`
    return `threads/${pid}/${parent}/${Math.floor(callSequence / width)}`
  },
  /** The key of its own of a thread created with a large arg. */
  own: (pid: string, tid: string) => keys.thread(pid, tid),
  /**
   * Where a large outcome of incarnation `epoch` lives: per epoch, so a stale incarnation whose
   * record write then fails cannot overwrite the outcome the record of the current one points to.
   */
  outcome: (pid: string, tid: string, epoch: number) => `result/${pid}/${tid}/${epoch}`,
  /** The key groups (Store.forget) that hold the records of process `pid`'s threads and their outcomes. */
  groups: (pid: string) => [`threads/${pid}/`, `thread/${pid}/`, `result/${pid}/`],
}

/** What the layer uses of the store (a node's own client, or a remote one in tests and tools). */
export type ThreadRecordStore = Pick<CoordinationClient, 'get' | 'put' | 'cas' | 'entryGet' | 'entryCas'>

export class ThreadRecords {
  private readonly store: ThreadRecordStore
  private readonly width: number

  /** `bucketCallSequences`: another width, for tests and measurements (every node must use the same). */
  constructor(store: ThreadRecordStore, options: { bucketCallSequences?: number } = {}) {
    this.store = store
    this.width = options.bucketCallSequences ?? bucketCallSequences
    if (!Number.isInteger(this.width) || this.width < 1 || this.width > bucketCallSequencesMax)
      throw new InvalidArgumentError(
        `Expected bucketCallSequences to be an integer from 1 to ${bucketCallSequencesMax}, got ${this.width}`,
      )
  }

  private bucket(pid: string, tid: string): string {
    return threadRecordKeys.bucket(pid, tid, this.width)
  }

  /** The record of thread `tid` (value null, version 0: none). Rejects when the store does not answer. */
  async get(pid: string, tid: string): Promise<Register> {
    const entry = await this.store.entryGet(this.bucket(pid, tid), tid)
    if (entry.value !== null) return this.resolve(pid, tid, entry)
    const own = await this.store.get(threadRecordKeys.own(pid, tid))
    return own.value === null ? entry : own
  }

  /**
   * Writes thread `tid`'s record `value` (an encoded ThreadRecord) if its version is
   * `expectedVersion` (0: creates it). The result shows the record as it is after (its version, and
   * for a failed write the record another wrote).
   */
  async cas(
    pid: string,
    tid: string,
    expectedVersion: number,
    value: Uint8Array,
    record: ThreadRecord = decodeThread(value),
  ): Promise<Register> {
    if (record.pid !== pid || record.tid !== tid)
      throw new InvalidArgumentError(`record of ${record.pid}/${record.tid} written as ${pid}/${tid}`)
    return this.write(record, expectedVersion, value)
  }

  /**
   * As `cas`, for the thread the encoded record `value` names; `record` is `value` decoded, when
   * the caller has it (it encoded it), so that it is not decoded again.
   */
  casRecord(
    expectedVersion: number,
    value: Uint8Array,
    record: ThreadRecord = decodeThread(value),
  ): Promise<Register> {
    return this.write(record, expectedVersion, value)
  }

  private async write(record: ThreadRecord, expectedVersion: number, value: Uint8Array): Promise<Register> {
    const { pid, tid } = record
    if (record.arg.length > entryArgBytesMax) {
      const written = await this.store.cas(threadRecordKeys.own(pid, tid), expectedVersion, value)
      return written
    }
    let stored: Uint8Array = value
    const outcomeBytes = (record.result?.length ?? 0) + (record.error?.length ?? 0)
    if (outcomeBytes > entryOutcomeBytesMax) {
      // The outcome first: a reader that finds the record pointing to it finds it.
      const outcome: StoredOutcome = { result: record.result, error: record.error }
      await this.store.put(
        threadRecordKeys.outcome(pid, tid, record.epoch),
        encoder.encode(outcome) as Uint8Array,
      )
      stored = encodeRecord({ ...record, result: null, error: null, outcomeStored: true })
    }
    if (stored.length > entryBytesMax)
      throw new InvalidArgumentError(
        `thread record of ${pid}/${tid} takes ${stored.length} bytes, more than ${entryBytesMax}`,
      )
    const written = await this.store.entryCas(this.bucket(pid, tid), tid, expectedVersion, stored)
    if (written.refused !== undefined)
      throw new Error(`the store refused thread record ${pid}/${tid}: ${written.refused}`)
    if (written.ok) return { ...written, value }
    return written.value === null ? written : this.resolve(pid, tid, written)
  }

  /**
   * Reads the registers that hold these threads' records, one read per register, without waiting:
   * a read of an empty register leaves this node's store proposer a promise on it, so the write
   * that creates a record there takes one round trip instead of two.
   */
  prefetch(pid: string, tids: readonly string[]): void {
    const buckets = new Set(tids.map((tid) => this.bucket(pid, tid)))
    for (const key of buckets) void this.store.entryGet(key, 'prefetch').catch(() => undefined)
  }

  /** A record entry as written: its outcome fetched back in when it lives apart. */
  private async resolve(pid: string, tid: string, entry: Register): Promise<Register> {
    const stored = decodeThread(entry.value!)
    if (stored.outcomeStored !== true) return entry
    const read = await this.store.get(threadRecordKeys.outcome(pid, tid, stored.epoch))
    if (read.value === null) throw new Error(`the outcome of thread ${tid} of ${pid} is missing`)
    const outcome = decoder.decode(read.value) as StoredOutcome
    const { outcomeStored: _, ...record } = stored
    return { ...entry, value: encodeRecord({ ...record, result: outcome.result, error: outcome.error }) }
  }
}
