/**
 * The browser adapter for a persistent brick cache: a page's bricks in IndexedDB, so that a
 * reload, or the next visit, reads them without a transfer. Bounded in bytes, least recently used
 * out first. Whatever comes back from it is checked against its hash by the caller
 * (`browser-storage.ts`) before use: the disk under a browser profile is no more trusted than a
 * server's. Like the memory cache, it is a cache and never a replica.
 *
 * Two object stores: `bricks` (CID -> bytes) and `entries` (CID -> size and last use), so that
 * opening reads only the small entries, not the bytes. "Last use" is a counter that goes on from
 * its largest stored value, not a clock.
 *
 *   const persistent = await openIndexedDbBrickCache({ bytesMax: 256 * 1024 * 1024 })
 *   const storage = await startBrowserStorage(node, { persistentCache: persistent })
 */

/// <reference lib="dom" />

import type { CID } from './brick.ts'
import { PersistentCacheError, StorageArgumentError } from './errors.ts'

/** Bytes of bricks a page keeps in IndexedDB by default. */
export const persistentCacheBytesMaxDefault = 256 * 1024 * 1024
export const persistentCacheDatabaseDefault = 'fabric-brick-cache'
const databaseVersion = 1
const bricksStore = 'bricks'
const entriesStore = 'entries'

export interface PersistentBrickCacheStats {
  bricks: number
  bytes: number
  bytesMax: number
  /** Bricks deleted to make room since it was opened. */
  evicted: number
}

/** A cache of bricks that outlives the page; asynchronous, unlike the memory cache. */
export interface PersistentBrickCache {
  /** The stored bytes (unchecked: the caller verifies them), or undefined. */
  get(cid: CID): Promise<Uint8Array | undefined>
  /** Keeps `bytes`, deleting the least recently used bricks beyond the limit; a brick larger than the limit is not kept. */
  put(cid: CID, bytes: Uint8Array): Promise<void>
  delete(cid: CID): Promise<boolean>
  stats(): PersistentBrickCacheStats
  close(): void
}

export interface IndexedDbBrickCacheOptions {
  /** Default {@link persistentCacheDatabaseDefault}; two caches with one name share their bricks. */
  databaseName?: string
  /** Default {@link persistentCacheBytesMaxDefault}. */
  bytesMax?: number
  /** Default the page's `indexedDB`. */
  indexedDB?: IDBFactory
}

interface Entry {
  cid: string
  size: number
  usedAt: number
}

function done<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result)
    request.onerror = () =>
      reject(new PersistentCacheError(`IndexedDB: ${request.error?.message ?? 'failed'}`))
  })
}

function committed(transaction: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    transaction.oncomplete = () => resolve()
    const fail = () =>
      reject(new PersistentCacheError(`IndexedDB: ${transaction.error?.message ?? 'transaction aborted'}`))
    transaction.onerror = fail
    transaction.onabort = fail
  })
}

export async function openIndexedDbBrickCache(
  options: IndexedDbBrickCacheOptions = {},
): Promise<PersistentBrickCache> {
  const factory = options.indexedDB ?? (globalThis as { indexedDB?: IDBFactory }).indexedDB
  if (factory === undefined) throw new PersistentCacheError('IndexedDB is not available here')
  const bytesMax = options.bytesMax ?? persistentCacheBytesMaxDefault
  if (!Number.isSafeInteger(bytesMax) || bytesMax < 0)
    throw new StorageArgumentError(
      `Expected the persistent cache's bytesMax to be a whole number from 0 up, got ${bytesMax}`,
    )
  const opening = factory.open(options.databaseName ?? persistentCacheDatabaseDefault, databaseVersion)
  opening.onupgradeneeded = () => {
    const database = opening.result
    if (!database.objectStoreNames.contains(bricksStore)) database.createObjectStore(bricksStore)
    if (!database.objectStoreNames.contains(entriesStore))
      database.createObjectStore(entriesStore, { keyPath: 'cid' })
  }
  const database = await done(opening)

  /** Every entry, by CID; in order of last use (the first is the least recently used). */
  const entries = new Map<string, Entry>()
  const stored = (await done(
    database.transaction(entriesStore, 'readonly').objectStore(entriesStore).getAll(),
  )) as Entry[]
  stored.sort((a, b) => a.usedAt - b.usedAt)
  let bytes = 0
  let nextUse = 1
  for (const entry of stored) {
    if (
      typeof entry?.cid !== 'string' ||
      !Number.isSafeInteger(entry.size) ||
      !Number.isSafeInteger(entry.usedAt)
    )
      continue
    entries.set(entry.cid, entry)
    bytes += entry.size
    nextUse = Math.max(nextUse, entry.usedAt + 1)
  }
  let evicted = 0

  function touch(key: string, size: number): Entry {
    entries.delete(key)
    const entry = { cid: key, size, usedAt: nextUse++ }
    entries.set(key, entry)
    return entry
  }

  async function remove(keys: readonly string[]): Promise<void> {
    if (keys.length === 0) return
    const transaction = database.transaction([bricksStore, entriesStore], 'readwrite')
    for (const key of keys) {
      transaction.objectStore(bricksStore).delete(key)
      transaction.objectStore(entriesStore).delete(key)
    }
    await committed(transaction)
  }

  return {
    async get(cid) {
      const key = cid.toString()
      const entry = entries.get(key)
      if (entry === undefined) return undefined
      const transaction = database.transaction([bricksStore, entriesStore], 'readwrite')
      const value = await done(transaction.objectStore(bricksStore).get(key))
      if (!(value instanceof Uint8Array)) {
        // Gone from under us (cleared by the user, or another tab evicted it).
        entries.delete(key)
        bytes -= entry.size
        transaction.objectStore(entriesStore).delete(key)
        await committed(transaction)
        return undefined
      }
      transaction.objectStore(entriesStore).put(touch(key, entry.size))
      await committed(transaction)
      return value
    },
    async put(cid, value) {
      const key = cid.toString()
      if (value.length > bytesMax) return
      const previous = entries.get(key)
      if (previous !== undefined) bytes -= previous.size
      const victims: string[] = []
      for (const [victim, entry] of entries) {
        if (bytes + value.length <= bytesMax) break
        if (victim === key) continue
        victims.push(victim)
        bytes -= entry.size
      }
      for (const victim of victims) entries.delete(victim)
      evicted += victims.length
      bytes += value.length
      const entry = touch(key, value.length)
      const transaction = database.transaction([bricksStore, entriesStore], 'readwrite')
      for (const victim of victims) {
        transaction.objectStore(bricksStore).delete(victim)
        transaction.objectStore(entriesStore).delete(victim)
      }
      // A view is cloned with its whole buffer: store just the brick's bytes.
      const exact =
        value.byteOffset === 0 && value.byteLength === value.buffer.byteLength ? value : value.slice()
      transaction.objectStore(bricksStore).put(exact, key)
      transaction.objectStore(entriesStore).put(entry)
      await committed(transaction)
    },
    async delete(cid) {
      const key = cid.toString()
      const entry = entries.get(key)
      if (entry === undefined) return false
      entries.delete(key)
      bytes -= entry.size
      await remove([key])
      return true
    },
    stats: () => ({ bricks: entries.size, bytes, bytesMax, evicted }),
    close: () => database.close(),
  }
}
