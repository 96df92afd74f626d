/**
 * A node's local bricks: the block-store interface, which the disk store (`block-store-disk.ts`)
 * and the memory store below implement, both held to the one compliance suite in
 * `test/support/storage-block-store-compliance.ts`.
 *
 * Every store checks a brick's hash when it is written and again on every read. A read that finds
 * a copy not matching its name drops the copy and throws {@link BrickCorruptError}, so the caller
 * fetches another replica and puts the good bytes back.
 *
 *   const store = createMemoryBlockStore()
 *   const cid = await brickCid(bytes)
 *   await store.put(cid, bytes)          // true: it was new here
 *   const same = await store.get(cid)    // verified bytes, or undefined when absent
 */

import { brickCid, type CID, isBrickCid, verifyBrick } from './brick.ts'
import { BrickCorruptError, StorageArgumentError } from './errors.ts'

export interface BlockStoreStats {
  bricks: number
  bytes: number
}

export interface AbortOptions {
  signal?: AbortSignal
}

export interface BlockStore {
  /** Checks `bytes` against `cid` and stores them. Resolves true when this store did not hold the brick before. */
  put(cid: CID, bytes: Uint8Array, options?: AbortOptions): Promise<boolean>
  /**
   * The brick's bytes, checked against its name, or undefined when this store does not hold it.
   * A copy that fails the check is deleted and the call throws {@link BrickCorruptError}.
   */
  get(cid: CID, options?: AbortOptions): Promise<Uint8Array | undefined>
  has(cid: CID, options?: AbortOptions): Promise<boolean>
  /** Resolves true when the brick was here. */
  delete(cid: CID, options?: AbortOptions): Promise<boolean>
  /** Every brick held, in no particular order; bricks added or deleted meanwhile may or may not appear. */
  list(options?: AbortOptions): AsyncIterable<CID>
  stats(): BlockStoreStats
  close(): Promise<void>
}

export function assertBrickCid(cid: CID): void {
  if (!isBrickCid(cid)) throw new StorageArgumentError(`Expected a CIDv1 raw sha2-256 brick name, got ${cid}`)
}

export interface MemoryBlockStore extends BlockStore {
  /** For tests: replaces the stored bytes of a brick without any check, as a failing disk would. */
  damage(cid: CID, bytes: Uint8Array): void
}

export interface MemoryBlockStoreOptions {
  /** Named in errors about corrupt copies; default "memory". */
  label?: string
}

/** A block store in memory, for tests, caches and browser nodes without IndexedDB. */
export function createMemoryBlockStore(options: MemoryBlockStoreOptions = {}): MemoryBlockStore {
  const label = options.label ?? 'memory'
  const bricks = new Map<string, { cid: CID; bytes: Uint8Array }>()
  let bytesTotal = 0
  let closed = false

  function checkOpen(): void {
    if (closed) throw new StorageArgumentError(`block store ${label} is closed`)
  }

  return {
    async put(cid, bytes, options) {
      checkOpen()
      options?.signal?.throwIfAborted()
      assertBrickCid(cid)
      await verifyBrick(cid, bytes, `a write to ${label}`)
      const key = cid.toString()
      if (bricks.has(key)) return false
      bricks.set(key, { cid, bytes: bytes.slice() })
      bytesTotal += bytes.length
      return true
    },
    async get(cid, options) {
      checkOpen()
      options?.signal?.throwIfAborted()
      assertBrickCid(cid)
      const key = cid.toString()
      const entry = bricks.get(key)
      if (entry === undefined) return undefined
      try {
        await verifyBrick(cid, entry.bytes, label)
      } catch (error) {
        if (error instanceof BrickCorruptError && bricks.get(key) === entry) {
          bricks.delete(key)
          bytesTotal -= entry.bytes.length
        }
        throw error
      }
      return entry.bytes.slice()
    },
    async has(cid) {
      checkOpen()
      assertBrickCid(cid)
      return bricks.has(cid.toString())
    },
    async delete(cid) {
      checkOpen()
      assertBrickCid(cid)
      const key = cid.toString()
      const entry = bricks.get(key)
      if (entry === undefined) return false
      bricks.delete(key)
      bytesTotal -= entry.bytes.length
      return true
    },
    async *list(options) {
      checkOpen()
      for (const entry of [...bricks.values()]) {
        options?.signal?.throwIfAborted()
        yield entry.cid
      }
    },
    stats: () => ({ bricks: bricks.size, bytes: bytesTotal }),
    async close() {
      closed = true
    },
    damage(cid, bytes) {
      const key = cid.toString()
      const entry = bricks.get(key)
      if (entry === undefined) throw new StorageArgumentError(`brick ${key} is not in ${label}`)
      bytesTotal += bytes.length - entry.bytes.length
      bricks.set(key, { cid, bytes: bytes.slice() })
    },
  }
}

/** Stores `bytes` in `store` under their CID and returns it. */
export async function putBrick(store: BlockStore, bytes: Uint8Array, options?: AbortOptions): Promise<CID> {
  const cid = await brickCid(bytes)
  await store.put(cid, bytes, options)
  return cid
}
