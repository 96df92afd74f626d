/**
 * Where thread records live in the store, and the one way to read and write them.
 *
 * A thread costs two store writes of its own (the claim that creates its record, its end record),
 * and each is a Paxos round. To make them share rounds, the records of a thread's children live as
 * entries of shared registers (fabric/coord/entries.ts): the children that thread P spawned at call
 * sequences c are entries named by their tid in the register `threads/<pid>/<P>/<floor(c /
 * bucketCallSequences)>`. A spawn batch is consecutive call sequences, so the claims of a batch's
 * children on one node, and end records written together, are one round per bucket (the store's
 * proposer batches the requests queued on one key). The main thread (tid `0`) has a register of its
 * own, `threads/<pid>/main`. Any reader finds a record from the tid alone: the parent and the call
 * sequence are in the tid.
 *
 * Entries stay small so a bucket never outgrows its register: a thread whose arg is larger than
 * `entryArgBytesMax` keeps its record on a key of its own, `thread/<pid>/<tid>` (decided when the
 * record is created, from the arg, which never changes: a record lives where it was created;
 * readers look in the bucket first, then there), and a result or error larger than
 * `entryOutcomeBytesMax` goes to `result/<pid>/<tid>`, written before the record that points to it.
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

/** Call sequences per bucket register: consecutive spawns of one thread share a register. */
export const bucketCallSequences = 16
/** A thread whose arg is larger keeps its record on a key of its own. */
export const entryArgBytesMax = 1024
/** A result plus error larger than this goes to a key of its own (`result/<pid>/<tid>`). */
export const entryOutcomeBytesMax = 1024
/**
 * The largest record entry: with `bucketCallSequences` of them a bucket stays well inside the
 * register's 64 KiB. A larger one is a bug (the bounds above keep records far below it).
 */
export const entryBytesMax = 3 * 1024

/** A record entry whose result and error live at `result/<pid>/<tid>`. */
interface StoredRecord extends ThreadRecord {
  outcomeStored?: true
}

interface StoredOutcome {
  result: Uint8Array | null
  error: string | null
}

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false } as never)
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true } as never)

export const threadRecordKeys = {
  /** The register of entries that holds thread `tid`'s record (unless it has its own key). */
  bucket(pid: string, tid: string): string {
    const parent = parentThreadId(tid)
    if (parent === null) return `threads/${pid}/main`
    const callSequence = Number(tid.slice(parent.length + 1))
    if (!Number.isSafeInteger(callSequence) || callSequence < 0)
      throw new InvalidArgumentError(`thread id ${tid} does not end in a call sequence`)
    return `threads/${pid}/${parent}/${Math.floor(callSequence / bucketCallSequences)}`
  },
  /** The key of its own of a thread created with a large arg. */
  own: (pid: string, tid: string) => keys.thread(pid, tid),
  outcome: (pid: string, tid: string) => `result/${pid}/${tid}`,
}

export class ThreadRecords {
  private readonly store: CoordinationClient

  constructor(store: CoordinationClient) {
    this.store = store
  }

  /** The record of thread `tid` (value null, version 0: none). Rejects when the store does not answer. */
  async get(pid: string, tid: string): Promise<Register> {
    const entry = await this.store.entryGet(threadRecordKeys.bucket(pid, tid), tid)
    if (entry.value !== null) return this.resolve(pid, tid, entry)
    const own = await this.store.get(threadRecordKeys.own(pid, tid))
    return own.value === null ? entry : own
  }

  /**
   * Writes thread `tid`'s record `value` (an encoded ThreadRecord) if its version is
   * `expectedVersion` (0: creates it). The result shows the record as it is after (its version, and
   * for a failed write the record another wrote).
   */
  async cas(pid: string, tid: string, expectedVersion: number, value: Uint8Array): Promise<Register> {
    const record = decodeThread(value)
    if (record.pid !== pid || record.tid !== tid)
      throw new InvalidArgumentError(`record of ${record.pid}/${record.tid} written as ${pid}/${tid}`)
    if (record.arg.length > entryArgBytesMax) {
      const written = await this.store.cas(threadRecordKeys.own(pid, tid), expectedVersion, value)
      return written
    }
    let stored: Uint8Array = value
    const outcomeBytes = (record.result?.length ?? 0) + (record.error?.length ?? 0)
    if (outcomeBytes > entryOutcomeBytesMax) {
      // The outcome first: a reader that finds the record pointing to it finds it.
      const outcome: StoredOutcome = { result: record.result, error: record.error }
      await this.store.put(threadRecordKeys.outcome(pid, tid), encoder.encode(outcome) as Uint8Array)
      stored = encodeRecord({ ...record, result: null, error: null, outcomeStored: true } as StoredRecord)
    }
    if (stored.length > entryBytesMax)
      throw new InvalidArgumentError(
        `thread record of ${pid}/${tid} takes ${stored.length} bytes, more than ${entryBytesMax}`,
      )
    const written = await this.store.entryCas(threadRecordKeys.bucket(pid, tid), tid, expectedVersion, stored)
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
    const buckets = new Set(tids.map((tid) => threadRecordKeys.bucket(pid, tid)))
    for (const key of buckets) void this.store.entryGet(key, 'prefetch').catch(() => undefined)
  }

  /** A record entry as written: its outcome fetched back in when it lives apart. */
  private async resolve(pid: string, tid: string, entry: Register): Promise<Register> {
    const stored = decodeThread(entry.value!) as StoredRecord
    if (stored.outcomeStored !== true) return entry
    const read = await this.store.get(threadRecordKeys.outcome(pid, tid))
    if (read.value === null) throw new Error(`the outcome of thread ${tid} of ${pid} is missing`)
    const outcome = decoder.decode(read.value) as StoredOutcome
    const { outcomeStored: _, ...record } = stored
    return { ...entry, value: encodeRecord({ ...record, result: outcome.result, error: outcome.error }) }
  }
}
