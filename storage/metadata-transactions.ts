/**
 * Atomic changes of one or several metadata keys, built on the registers' compare-and-swap alone.
 *
 * A change of one key is a read and a CAS, retried on conflict. A change of several keys (rmdir,
 * rename between directories) is a small transaction in the style of Percolator:
 *
 * 1. write a transaction record `pending` under a fresh key;
 * 2. lock every key of the transaction by CAS from the version read, the lock holding the old data,
 *    the new data and the transaction record's key;
 * 3. CAS the record from `pending` to `committed`: this single write is the commit point;
 * 4. replace each lock by the new data.
 *
 * A reader that meets a lock reads the transaction record: committed means the new data, anything
 * else the old. A writer that meets a lock finishes the job, rolling the key forward or back; if
 * the record has stayed `pending` for {@link transactionTimeoutMs} of the writer's own clock (its
 * owner is presumably dead) it first aborts it by CAS `pending` -> `aborted`. The owner's commit
 * CAS then fails, and it rolls back and retries. Keys are locked in sorted order and a transaction
 * that loses a CAS aborts itself instead of waiting, so transactions never deadlock.
 *
 * Stored values therefore carry an envelope (`{ f: 1, d: data, l?: lock }`); `data` null means the
 * key holds nothing. Transaction records stay in the store after use.
 *
 *   const transactions = createMetadataTransactions({ metadata, clock, random, sleep }, { prefix: 'fs/default/' })
 *   await transactions.transact(['a', 'b'], (views) => ({ writes: new Map([['a', null], ['b', views.get('a')!.data]]), result: undefined }))
 */

import type { AbortOptions } from './block-store.ts'
import { equalBytes } from './brick.ts'
import { decodeCbor, encodeCbor, isRecord, ownBytes } from './cbor.ts'
import { MetadataTimeoutError, StorageArgumentError, StorageError, StorageFormatError } from './errors.ts'
import { type MetadataStore, metadataValueBytesMax } from './metadata-store.ts'
import type { Clock, Random, Sleep } from './platform-types.ts'

/** How long a writer waits on another transaction's lock before it aborts that transaction. */
export const transactionTimeoutMs = 5000
/** Attempts of one change before it gives up with {@link MetadataContentionError}. */
export const conflictRetriesMax = 100
/** Longest pause between attempts. */
export const backoffMsMax = 50
/** Retries of one store operation that timed out with an unknown outcome. */
export const ambiguousRetriesMax = 5
/** Keys one transaction may change. */
export const transactionKeysMax = 8
/** Largest data a key may hold, so that a locked value (old and new data together) fits the store's value limit. */
export const transactionDataBytesMax = Math.floor((metadataValueBytesMax - 1024) / 2)
/** Pending transactions whose age this node tracks while it waits on their locks. */
export const pendingTransactionsTrackedMax = 1024

const envelopeFormat = 1

export interface Versioned {
  /** The register version this view was read at. */
  version: number
  /** The key's data; null when it holds nothing. */
  data: Uint8Array | null
}

export interface TransactionOutcome<T> {
  /** New data per key (null empties the key); keys not listed keep their data. */
  writes?: ReadonlyMap<string, Uint8Array | null>
  result: T
}

export type ChangeFunction<T> = (
  views: ReadonlyMap<string, Versioned>,
) => TransactionOutcome<T> | Promise<TransactionOutcome<T>>

/** A change function throws this to be run again on fresh views (it counts as a conflict). */
export class RetryTransaction extends Error {
  constructor(reason: string) {
    super(`retry: ${reason}`)
    this.name = 'RetryTransaction'
  }
}

/** A change kept losing to concurrent changes of the same keys. */
export class MetadataContentionError extends StorageError {
  constructor(keys: readonly string[], attempts: number) {
    super(
      'METADATA_CONTENTION',
      `gave up after ${attempts} attempts to change ${keys.join(', ')}: other writers kept changing them; retry later`,
    )
  }
}

export interface MetadataTransactionsComponents {
  metadata: MetadataStore
  /** A monotonic clock: only this node's own waiting is measured with it. */
  clock: Clock
  random: Random
  sleep: Sleep
}

export interface MetadataTransactionsOptions {
  /** Transaction records are written under `<prefix>tx/<id>`. */
  prefix: string
  transactionTimeoutMs?: number
}

export interface MetadataTransactions {
  /** The key's committed data (a pending transaction's changes are not visible). */
  read(key: string, options?: AbortOptions): Promise<Versioned>
  /** Runs `change` on fresh views of `keys` and applies its writes to all of them atomically, retrying on conflict. */
  transact<T>(keys: readonly string[], change: ChangeFunction<T>, options?: AbortOptions): Promise<T>
}

interface Lock {
  tx: string
  next: Uint8Array | null
}

interface Envelope {
  data: Uint8Array | null
  lock: Lock | null
}

type TransactionState = 'pending' | 'committed' | 'aborted'

function encodeEnvelope(envelope: Envelope): Uint8Array {
  const value: Record<string, unknown> = { f: envelopeFormat, d: envelope.data }
  if (envelope.lock !== null) value.l = { t: envelope.lock.tx, n: envelope.lock.next }
  return encodeCbor(value)
}

function decodeEnvelope(bytes: Uint8Array, key: string): Envelope {
  const what = `metadata value of "${key}"`
  const value = decodeCbor(bytes, what, metadataValueBytesMax)
  if (!isRecord(value)) throw new StorageFormatError(what, 'not a map')
  if (value.f !== envelopeFormat) throw new StorageFormatError(what, `unknown format ${String(value.f)}`)
  const data = dataOf(value.d, what)
  if (value.l === undefined) return { data, lock: null }
  const lock = value.l
  if (!isRecord(lock) || typeof lock.t !== 'string') throw new StorageFormatError(what, 'malformed lock')
  return { data, lock: { tx: lock.t, next: dataOf(lock.n, what) } }
}

function dataOf(value: unknown, what: string): Uint8Array | null {
  if (value === null || value === undefined) return null
  if (!(value instanceof Uint8Array)) throw new StorageFormatError(what, 'data is not a byte string')
  return ownBytes(value)
}

function encodeTransaction(state: TransactionState, keys: readonly string[]): Uint8Array {
  return encodeCbor({ f: envelopeFormat, s: state, k: keys })
}

function decodeTransactionState(bytes: Uint8Array | null, key: string): TransactionState {
  // A lock is only written after its record, so a missing record means nothing can commit: treat as aborted.
  if (bytes === null) return 'aborted'
  const what = `transaction record "${key}"`
  const value = decodeCbor(bytes, what, metadataValueBytesMax)
  if (!isRecord(value) || value.f !== envelopeFormat) throw new StorageFormatError(what, 'unknown format')
  if (value.s !== 'pending' && value.s !== 'committed' && value.s !== 'aborted')
    throw new StorageFormatError(what, `unknown state ${String(value.s)}`)
  return value.s
}

export function createMetadataTransactions(
  components: MetadataTransactionsComponents,
  options: MetadataTransactionsOptions,
): MetadataTransactions {
  const { metadata, clock, random, sleep } = components
  const timeoutMs = options.transactionTimeoutMs ?? transactionTimeoutMs
  const idPrefix = Math.floor(random.next() * 2 ** 48).toString(36)
  let idCounter = 0
  /** When this node first saw each pending transaction, by its own clock. */
  const pendingSince = new Map<string, number>()

  async function get(key: string, callOptions?: AbortOptions) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await metadata.get(key, callOptions)
      } catch (error) {
        if (!(error instanceof MetadataTimeoutError) || attempt >= ambiguousRetriesMax) throw error
      }
    }
  }

  /** CAS whose outcome is known even when the store timed out: a read tells whether it applied. */
  async function casKnown(
    key: string,
    expectedVersion: number,
    value: Uint8Array,
    callOptions?: AbortOptions,
  ): Promise<{ ok: boolean; version: number }> {
    for (let attempt = 0; ; attempt++) {
      try {
        const result = await metadata.cas(key, expectedVersion, value, callOptions)
        return { ok: result.ok, version: result.version }
      } catch (error) {
        if (!(error instanceof MetadataTimeoutError) || attempt >= ambiguousRetriesMax) throw error
      }
      const now = await get(key, callOptions)
      // Our bytes are there: it applied (or someone wrote the very same bytes, which is the same state).
      if (now.value !== null && equalBytes(now.value, value)) return { ok: true, version: now.version }
      if (now.version !== expectedVersion) return { ok: false, version: now.version }
    }
  }

  async function readRaw(
    key: string,
    callOptions?: AbortOptions,
  ): Promise<{ version: number; envelope: Envelope }> {
    const result = await get(key, callOptions)
    if (result.value === null) return { version: result.version, envelope: { data: null, lock: null } }
    return { version: result.version, envelope: decodeEnvelope(result.value, key) }
  }

  async function transactionState(txKey: string, callOptions?: AbortOptions) {
    const result = await get(txKey, callOptions)
    return { version: result.version, state: decodeTransactionState(result.value, txKey) }
  }

  async function backoff(attempt: number, callOptions?: AbortOptions): Promise<void> {
    const ceiling = Math.min(backoffMsMax, 2 ** Math.min(attempt, 10))
    await sleep(random.next() * ceiling, callOptions?.signal)
  }

  /** Makes progress on the transaction that locks `key`: roll forward, roll back, abort it when stale, or wait. */
  async function settleLock(
    key: string,
    raw: { version: number; envelope: Envelope },
    attempt: number,
    callOptions?: AbortOptions,
  ): Promise<void> {
    const lock = raw.envelope.lock!
    const tx = await transactionState(lock.tx, callOptions)
    if (tx.state === 'pending') {
      const now = clock.now()
      const since = pendingSince.get(lock.tx) ?? now
      pendingSince.set(lock.tx, since)
      if (pendingSince.size > pendingTransactionsTrackedMax)
        pendingSince.delete(pendingSince.keys().next().value!)
      if (now - since < timeoutMs) return backoff(attempt, callOptions)
      await casKnown(lock.tx, tx.version, encodeTransaction('aborted', []), callOptions)
      return
    }
    pendingSince.delete(lock.tx)
    const data = tx.state === 'committed' ? lock.next : raw.envelope.data
    await casKnown(key, raw.version, encodeEnvelope({ data, lock: null }), callOptions)
  }

  async function readForWrite(key: string, callOptions?: AbortOptions): Promise<Versioned> {
    for (let attempt = 0; ; attempt++) {
      callOptions?.signal?.throwIfAborted()
      const raw = await readRaw(key, callOptions)
      if (raw.envelope.lock === null) return { version: raw.version, data: raw.envelope.data }
      await settleLock(key, raw, attempt, callOptions)
    }
  }

  function checkData(key: string, data: Uint8Array | null): void {
    if (data !== null && data.length > transactionDataBytesMax)
      throw new StorageArgumentError(
        `Expected at most ${transactionDataBytesMax} bytes of data for "${key}", got ${data.length}`,
      )
  }

  async function commitMany(
    keys: readonly string[],
    views: ReadonlyMap<string, Versioned>,
    writes: ReadonlyMap<string, Uint8Array | null>,
    callOptions?: AbortOptions,
  ): Promise<boolean> {
    const txKey = `${options.prefix}tx/${idPrefix}.${(idCounter++).toString(36)}`
    const created = await casKnown(txKey, 0, encodeTransaction('pending', keys), callOptions)
    if (!created.ok) throw new Error(`invariant: fresh transaction key ${txKey} already existed`)
    const locked: Array<{ key: string; version: number; old: Uint8Array | null; next: Uint8Array | null }> =
      []
    let allLocked = true
    for (const key of keys) {
      const view = views.get(key)!
      const next = writes.has(key) ? writes.get(key)! : view.data
      const result = await casKnown(
        key,
        view.version,
        encodeEnvelope({ data: view.data, lock: { tx: txKey, next } }),
        callOptions,
      )
      if (!result.ok) {
        allLocked = false
        break
      }
      locked.push({ key, version: result.version, old: view.data, next })
    }
    let committed = false
    if (allLocked)
      committed = (await casKnown(txKey, 1, encodeTransaction('committed', keys), callOptions)).ok
    // Not committed: abort (unless another writer already did) so that nobody rolls our locks forward.
    else await casKnown(txKey, 1, encodeTransaction('aborted', keys), callOptions)
    for (const entry of locked) {
      const data = committed ? entry.next : entry.old
      // Losing this CAS means another writer already settled the key the same way.
      await casKnown(entry.key, entry.version, encodeEnvelope({ data, lock: null }), callOptions)
    }
    return committed
  }

  return {
    async read(key, callOptions) {
      const raw = await readRaw(key, callOptions)
      const lock = raw.envelope.lock
      if (lock === null) return { version: raw.version, data: raw.envelope.data }
      const tx = await transactionState(lock.tx, callOptions)
      return { version: raw.version, data: tx.state === 'committed' ? lock.next : raw.envelope.data }
    },

    async transact(keys, change, callOptions) {
      const sorted = [...new Set(keys)].sort()
      if (sorted.length === 0 || sorted.length > transactionKeysMax)
        throw new StorageArgumentError(`Expected 1 to ${transactionKeysMax} keys, got ${sorted.length}`)
      for (let attempt = 0; attempt < conflictRetriesMax; attempt++) {
        if (attempt > 0) await backoff(attempt, callOptions)
        const views = new Map<string, Versioned>()
        await Promise.all(sorted.map(async (key) => views.set(key, await readForWrite(key, callOptions))))
        let outcome: TransactionOutcome<Awaited<ReturnType<typeof change>>['result']>
        try {
          outcome = await change(views)
        } catch (error) {
          if (error instanceof RetryTransaction) continue
          throw error
        }
        const writes = outcome.writes ?? new Map()
        if (writes.size === 0) return outcome.result
        for (const [key, data] of writes) {
          if (!views.has(key))
            throw new StorageArgumentError(`a transaction wrote "${key}", which it did not name`)
          checkData(key, data)
        }
        if (sorted.length === 1) {
          const key = sorted[0]!
          const result = await casKnown(
            key,
            views.get(key)!.version,
            encodeEnvelope({ data: writes.get(key)!, lock: null }),
            callOptions,
          )
          if (result.ok) return outcome.result
          continue
        }
        if (await commitMany(sorted, views, writes, callOptions)) return outcome.result
      }
      throw new MetadataContentionError(sorted, conflictRetriesMax)
    },
  }
}
