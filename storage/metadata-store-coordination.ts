/**
 * The metadata store over the fabric's coordination store (`fabric/coord/store.ts`): each call is
 * one operation on the key's register, submitted through this node's store. A store timeout, whose
 * outcome is unknown, becomes {@link MetadataTimeoutError}, as the file system expects.
 *
 *   const metadata = coordinationMetadataStore(node.store, { timeoutMs: 5000 })
 *   const fs = createFileSystem({ metadata, bricks, clock, wallClock, random, sleep })
 */

import type { Operation, OperationResult } from '../fabric/coord/register.ts'
import { operationTimeoutMsDefault, type Store } from '../fabric/coord/store.ts'
import { StoreOverloadedError, StoreTimeoutError } from '../fabric/errors.ts'
import { MetadataTimeoutError } from './errors.ts'
import type { MetadataResult, MetadataStore } from './metadata-store.ts'

export interface CoordinationMetadataOptions {
  /** Per operation; default the store's own default. */
  timeoutMs?: number
}

export function coordinationMetadataStore(
  store: Store,
  options: CoordinationMetadataOptions = {},
): MetadataStore {
  const timeoutMs = options.timeoutMs ?? operationTimeoutMsDefault

  function submit(key: string, operation: Operation, signal?: AbortSignal): Promise<MetadataResult> {
    return new Promise((resolve, reject) => {
      signal?.throwIfAborted()
      store.submit(key, operation, { timeoutMs }, (outcome) => {
        if (outcome.ok) return resolve(resultOf(outcome.result))
        const error = outcome.error
        // Overloaded means not applied, but callers treat both the same way: read, then retry.
        if (error instanceof StoreTimeoutError || error instanceof StoreOverloadedError)
          reject(new MetadataTimeoutError(key, error.message))
        else reject(error)
      })
    })
  }

  return {
    get: (key, callOptions) => submit(key, { kind: 'get' }, callOptions?.signal),
    put: (key, value, callOptions) => submit(key, { kind: 'put', value }, callOptions?.signal),
    cas: (key, expectedVersion, value, callOptions) =>
      submit(key, { kind: 'cas', expectedVersion, value }, callOptions?.signal),
  }
}

function resultOf(result: OperationResult): MetadataResult {
  return { ok: result.ok, version: result.version, value: result.value }
}
