/**
 * The browser-storage test page: a browser node in the page (`fabric/net/browser-node.ts`) with
 * the cluster file system and its brick cache (`storage/browser-storage.ts`). The test drives it
 * through `window.fabricBrowserStorage` with `page.evaluate`; bytes travel back as hex digests
 * and sizes, so that nothing large crosses the DevTools protocol.
 */

/// <reference lib="dom" />

import { type BrowserNode, startBrowserNode } from '../../fabric/net/browser-node.ts'
import { brickCid } from '../../storage/brick.ts'
import {
  openIndexedDbBrickCache,
  type PersistentBrickCache,
  type PersistentBrickCacheStats,
} from '../../storage/brick-cache-indexeddb.ts'
import {
  type BrowserStorage,
  type BrowserStorageCounters,
  startBrowserStorage,
} from '../../storage/browser-storage.ts'

export interface JoinReport {
  peerId: string
  /** Live members of kind server, as the page sees them. */
  liveServers: number
  storageServers: number
}

export interface ReadReport {
  size: number
  /** SHA-256 of the bytes read, hex. */
  sha256: string
  /** From the open to the last byte, in the page. */
  elapsedMs: number
  counters: BrowserStorageCounters
}

/** An error as the test sees it: its class name, code and message. */
export interface PageError {
  name: string
  code: string | undefined
  message: string
}

export interface BrowserStorageApi {
  join(options: {
    bootstrap: string[]
    clusterKey?: string
    joinTimeoutMs?: number
    cacheBytesMax?: number
    /** Replicas of the bricks the page writes (on servers); default 3. */
    replicaCount?: number
    /** Keep bricks in IndexedDB too (database {@link persistentCacheTestDatabase}). */
    persistentCache?: boolean
  }): Promise<JoinReport>
  /** Tries to join and returns the error it failed with (null when it joined, and leaves again). */
  joinError(options: {
    bootstrap: string[]
    clusterKey?: string
    joinTimeoutMs?: number
  }): Promise<PageError | null>
  read(path: string): Promise<ReadReport>
  write(path: string, text: string): Promise<BrowserStorageCounters>
  counters(): BrowserStorageCounters
  leave(): Promise<void>
  /** Flips a byte in every brick kept in IndexedDB, as a damaged or tampered profile would; returns how many. */
  damagePersistentCache(): Promise<number>
  /** Deletes the IndexedDB database. */
  clearPersistentCache(): Promise<void>
  /**
   * In a database of its own with a 300-byte limit: puts bricks a, b, c of 100 bytes, reads a,
   * puts d, then reopens the database; says which bricks it holds then, and its stats.
   */
  persistentEvictionCheck(): Promise<{
    held: string[]
    stats: PersistentBrickCacheStats
    reopened: PersistentBrickCacheStats
  }>
}

export const persistentCacheTestDatabase = 'fabric-brick-cache-test'

declare global {
  interface Window {
    fabricBrowserStorage: BrowserStorageApi
  }
}

let node: BrowserNode | undefined
let storage: BrowserStorage | undefined
let persistent: PersistentBrickCache | undefined

function requestDone<T>(request: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result)
    request.onerror = () => reject(request.error)
  })
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>))
  return [...digest].map((byte) => byte.toString(16).padStart(2, '0')).join('')
}

function opened(): BrowserStorage {
  if (storage === undefined) throw new Error('join first')
  return storage
}

window.fabricBrowserStorage = {
  async join(options) {
    node = await startBrowserNode(options)
    persistent = options.persistentCache
      ? await openIndexedDbBrickCache({ databaseName: persistentCacheTestDatabase })
      : undefined
    storage = await startBrowserStorage(node, {
      cacheBytesMax: options.cacheBytesMax,
      replicaCount: options.replicaCount,
      persistentCache: persistent,
    })
    return {
      peerId: node.peerId,
      liveServers: node.membership.liveServers().length,
      storageServers: storage.storageServers().length,
    }
  },
  async joinError(options) {
    try {
      const joined = await startBrowserNode(options)
      await joined.stop()
      return null
    } catch (error) {
      const { name, message } = error as Error
      return { name: error?.constructor?.name ?? name, code: (error as { code?: string }).code, message }
    }
  },
  async read(path) {
    const startedMs = performance.now()
    const bytes = await opened().fileSystem.readFile(path)
    const elapsedMs = performance.now() - startedMs
    return { size: bytes.length, sha256: await sha256Hex(bytes), elapsedMs, counters: opened().counters() }
  },
  async write(path, text) {
    await opened().fileSystem.writeFile(path, new TextEncoder().encode(text))
    return opened().counters()
  },
  counters: () => opened().counters(),
  async leave() {
    await storage?.stop()
    await node?.stop()
    persistent?.close()
    storage = undefined
    node = undefined
    persistent = undefined
  },
  async damagePersistentCache() {
    const database = await requestDone(indexedDB.open(persistentCacheTestDatabase))
    try {
      const bricks = database.transaction('bricks', 'readwrite').objectStore('bricks')
      const keys = await requestDone(bricks.getAllKeys())
      for (const key of keys) {
        const transaction = database.transaction('bricks', 'readwrite')
        const store = transaction.objectStore('bricks')
        const bytes = (await requestDone(store.get(key))) as Uint8Array
        bytes[0] = bytes[0]! ^ 0xff
        await requestDone(store.put(bytes, key))
      }
      return keys.length
    } finally {
      database.close()
    }
  },
  async clearPersistentCache() {
    await requestDone(indexedDB.deleteDatabase(persistentCacheTestDatabase))
  },
  async persistentEvictionCheck() {
    const databaseName = `${persistentCacheTestDatabase}-eviction`
    await requestDone(indexedDB.deleteDatabase(databaseName))
    const bricks = await Promise.all(
      ['a', 'b', 'c', 'd'].map(async (name, index) => {
        const bytes = new Uint8Array(100).fill(index + 1)
        return { name, bytes, cid: await brickCid(bytes) }
      }),
    )
    const [a, b, c, d] = bricks as [
      (typeof bricks)[0],
      (typeof bricks)[0],
      (typeof bricks)[0],
      (typeof bricks)[0],
    ]
    const cache = await openIndexedDbBrickCache({ databaseName, bytesMax: 300 })
    for (const brick of [a, b, c]) await cache.put(brick.cid, brick.bytes)
    await cache.get(a.cid)
    await cache.put(d.cid, d.bytes)
    const stats = cache.stats()
    cache.close()
    const reopened = await openIndexedDbBrickCache({ databaseName, bytesMax: 300 })
    const held: string[] = []
    for (const brick of bricks) if ((await reopened.get(brick.cid)) !== undefined) held.push(brick.name)
    const reopenedStats = reopened.stats()
    reopened.close()
    await requestDone(indexedDB.deleteDatabase(databaseName))
    return { held, stats, reopened: reopenedStats }
  },
}
