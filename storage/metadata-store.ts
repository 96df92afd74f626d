/**
 * What storage needs of the coordination store: linearizable registers, one per key, with get, put
 * and compare-and-swap on a version. `version` counts the successful writes of a key (0 = never
 * written), as in `fabric/coord/register.ts`. The node adapts its coordination-store client to this
 * interface; tests use {@link createMemoryMetadataStore}.
 *
 *   const metadata = createMemoryMetadataStore()
 *   const first = await metadata.cas('fs/default/i/root', 0, bytes)   // { ok: true, version: 1, value: bytes }
 *   const again = await metadata.cas('fs/default/i/root', 0, bytes)   // { ok: false, version: 1, value: bytes }
 *
 * An operation that times out throws {@link MetadataTimeoutError}: it may or may not have taken
 * effect, and callers find out by reading.
 */

import { keyBytesMax, valueBytesMax } from '../fabric/coord/store.ts'
import type { AbortOptions } from './block-store.ts'
import { utf8Length } from './cbor.ts'
import { MetadataTimeoutError, StorageArgumentError } from './errors.ts'
import type { Random } from './platform-types.ts'

/** Longest key, in UTF-8 bytes: the coordination store's limit. */
export const metadataKeyBytesMax = keyBytesMax
/** Largest value: the coordination store's limit. */
export const metadataValueBytesMax = valueBytesMax

/** A register's state after an operation; `ok` says whether a put or cas applied. */
export interface MetadataResult {
  ok: boolean
  version: number
  value: Uint8Array | null
}

export interface MetadataStore {
  get(key: string, options?: AbortOptions): Promise<MetadataResult>
  put(key: string, value: Uint8Array, options?: AbortOptions): Promise<MetadataResult>
  /** Writes `value` only when the key's version is `expectedVersion`; otherwise returns `ok: false` and the current state. */
  cas(
    key: string,
    expectedVersion: number,
    value: Uint8Array,
    options?: AbortOptions,
  ): Promise<MetadataResult>
}

/** Checks a key and value against the store's limits, with errors that say which limit. */
export function validateMetadata(key: string, value?: Uint8Array): void {
  if (typeof key !== 'string' || key.length === 0 || utf8Length(key) > metadataKeyBytesMax)
    throw new StorageArgumentError(
      `Expected a metadata key of 1 to ${metadataKeyBytesMax} bytes, got "${key}"`,
    )
  if (value !== undefined && (!(value instanceof Uint8Array) || value.length > metadataValueBytesMax))
    throw new StorageArgumentError(
      `Expected a metadata value of at most ${metadataValueBytesMax} bytes, got ${value?.length ?? typeof value}`,
    )
}

export interface MemoryMetadataStoreOptions {
  /**
   * Fault injection for tests: each write fails with {@link MetadataTimeoutError} with this
   * probability, half of the time after it applied and half before.
   */
  faults?: { random: Random; timeoutProbability: number }
}

export interface MemoryMetadataStore extends MetadataStore {
  /** Operations served so far. */
  operationCount(): number
  /** Every key and its state, for tests that inspect the store. */
  entries(): Array<[string, { version: number; value: Uint8Array }]>
}

/** Registers in memory: linearizable because every operation is one synchronous step. */
export function createMemoryMetadataStore(options: MemoryMetadataStoreOptions = {}): MemoryMetadataStore {
  const registers = new Map<string, { version: number; value: Uint8Array }>()
  let operations = 0

  function state(key: string): MetadataResult {
    const register = registers.get(key)
    return register === undefined
      ? { ok: true, version: 0, value: null }
      : { ok: true, version: register.version, value: register.value.slice() }
  }

  function write(key: string, expectedVersion: number | undefined, value: Uint8Array): MetadataResult {
    validateMetadata(key, value)
    operations++
    // One draw decides whether this write fails, and whether before or after it applies.
    const faults = options.faults
    const draw = faults === undefined ? 1 : faults.random.next()
    const fails = faults !== undefined && draw < faults.timeoutProbability
    const failsAfter = fails && draw < faults.timeoutProbability / 2
    if (fails && !failsAfter) throw new MetadataTimeoutError(key, 'injected fault before applying')
    const current = registers.get(key)
    const version = current?.version ?? 0
    if (expectedVersion !== undefined && expectedVersion !== version) return { ...state(key), ok: false }
    registers.set(key, { version: version + 1, value: value.slice() })
    if (failsAfter) throw new MetadataTimeoutError(key, 'injected fault after applying')
    return state(key)
  }

  return {
    async get(key, callOptions) {
      callOptions?.signal?.throwIfAborted()
      validateMetadata(key)
      operations++
      return state(key)
    },
    async put(key, value, callOptions) {
      callOptions?.signal?.throwIfAborted()
      return write(key, undefined, value)
    },
    async cas(key, expectedVersion, value, callOptions) {
      callOptions?.signal?.throwIfAborted()
      if (!Number.isInteger(expectedVersion) || expectedVersion < 0)
        throw new StorageArgumentError(
          `Expected expectedVersion to be an integer >= 0, got ${expectedVersion}`,
        )
      return write(key, expectedVersion, value)
    },
    operationCount: () => operations,
    entries: () => [...registers].map(([key, register]) => [key, { ...register }]),
  }
}
