/**
 * The metadata store over a coordination-store client (`fabric/net/client.ts`): for a node that
 * is not an acceptor and runs no store of its own, a browser node above all. Each call is one
 * operation on the key's register, run by the server node the client sends it to. A timeout or an
 * overload, whose outcome is unknown, becomes {@link MetadataTimeoutError}, as the file system
 * expects (it reads, then retries).
 *
 *   const metadata = clientMetadataStore(browserNode.client, { timeoutMs: 5000 })
 *   const fs = createFileSystem({ metadata, bricks, clock, wallClock, random, sleep })
 */

import type { Operation } from '../fabric/coord/register.ts'
import { operationTimeoutMsDefault } from '../fabric/coord/store.ts'
import { StoreOverloadedError, StoreTimeoutError } from '../fabric/errors.ts'
import type { FabricClient } from '../fabric/net/client.ts'
import { MetadataTimeoutError } from './errors.ts'
import type { MetadataResult, MetadataStore } from './metadata-store.ts'

export interface ClientMetadataOptions {
  /** Per operation; default the store's own default. */
  timeoutMs?: number
}

export function clientMetadataStore(
  client: FabricClient,
  options: ClientMetadataOptions = {},
): MetadataStore {
  const timeoutMs = options.timeoutMs ?? operationTimeoutMsDefault

  async function run(key: string, operation: Operation, signal?: AbortSignal): Promise<MetadataResult> {
    try {
      const result = await client.run(key, operation, { timeoutMs, signal })
      return { ok: result.ok, version: result.version, value: result.value }
    } catch (error) {
      if (error instanceof StoreTimeoutError || error instanceof StoreOverloadedError)
        throw new MetadataTimeoutError(key, error.message)
      throw error
    }
  }

  return {
    get: (key, callOptions) => run(key, { kind: 'get' }, callOptions?.signal),
    put: (key, value, callOptions) => run(key, { kind: 'put', value }, callOptions?.signal),
    cas: (key, expectedVersion, value, callOptions) =>
      run(key, { kind: 'cas', expectedVersion, value }, callOptions?.signal),
  }
}
