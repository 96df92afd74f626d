/**
 * Storage in a browser node: the cluster file system, with every brick the page reads kept in a
 * bounded cache (`brick-cache.ts`), and optionally in IndexedDB across reloads
 * (`brick-cache-indexeddb.ts`), so that reading a file again costs no transfer.
 *
 * A browser is never a replica. It holds no block store, never announces a brick, and the servers
 * never list it among the storage nodes (`brick-peers-libp2p.ts` lists live members of kind
 * `server` only), so replica counts, repair and rebalancing see only servers: a brick whose other
 * copies sit in browser caches is still under-replicated and is repaired. Reads find the holders
 * among the live servers (provider records, then each server directly), fetch from one in stripe
 * order, and check the bytes against the brick's hash before they are used or cached; a bad copy
 * is skipped for the next holder. Writes put each brick on r live servers, none on the page.
 * Metadata (names, directories, file heads) goes through the servers' coordination store as a
 * client (`metadata-store-client.ts`). The cache answers other nodes that ask the page for a brick
 * on `/fabric/bricks/1`, though none asks in practice: nobody is told the page holds anything.
 *
 *   const node = await startBrowserNode({ bootstrap: [wsAddress], clusterKey })
 *   const storage = await startBrowserStorage(node, { cacheBytesMax: 64 * 1024 * 1024 })
 *   const bytes = await storage.fileSystem.readFile('/data/input.csv')   // again: from the cache
 *   storage.counters()   // { bricksFetched, cacheHits, ... }
 */

import type { BrowserNode } from '../fabric/net/browser-node.ts'
import { sleep, systemClock, systemRandom, wallClockMs } from '../fabric/platform.ts'
import { brickCid, type CID, verifyBrick } from './brick.ts'
import {
  type BrickCache,
  type BrickCacheStats,
  brickCacheBytesMaxDefault,
  createBrickCache,
} from './brick-cache.ts'
import type { PersistentBrickCache } from './brick-cache-indexeddb.ts'
import type { BrickPeers, BrickRequestHandler } from './brick-peers.ts'
import { type Libp2pBrickNetwork, startLibp2pBrickNetwork } from './brick-peers-libp2p.ts'
import {
  BrickCorruptError,
  BrickPeerUnreachableError,
  BrickUnavailableError,
  InsufficientReplicasError,
  StorageArgumentError,
} from './errors.ts'
import type { ChunkBricks } from './file-image.ts'
import { createFileSystem, type FileSystem, type FileSystemOptions } from './file-system.ts'
import { clientMetadataStore } from './metadata-store-client.ts'
import { readOrder, replicaCandidates, replicaCountDefault, requiredReplicas } from './placement.ts'
import { checkReplicaCount } from './replica-counts.ts'

/** How long a browser waits for its first storage server (probed after membership admits it) before a read gives up. */
export const storageServersWaitMs = 10_000
/** Pause between looks at the storage server list while waiting for the first one. */
const storageServersPollMs = 50

export interface BrowserStorageOptions {
  /** Most bytes of bricks kept in the page; default {@link brickCacheBytesMaxDefault}. */
  cacheBytesMax?: number
  /**
   * A second tier that outlives the page (`openIndexedDbBrickCache`, `brick-cache-indexeddb.ts`):
   * asked after the memory cache, its bricks checked against their hash like any copy.
   */
  persistentCache?: PersistentBrickCache
  /** Replicas per brick this page writes; default 3 (on servers). */
  replicaCount?: number
  fileSystem?: FileSystemOptions
  log?: (line: string) => void
}

export interface BrowserStorageCounters {
  /** Bricks fetched from server nodes (each one checked against its hash). */
  bricksFetched: number
  bytesFetched: number
  /** Reads of a brick answered by the memory cache. */
  cacheHits: number
  /** Reads of a brick answered by the persistent cache (after the memory cache missed). */
  persistentHits: number
  /** Writes to or reads from the persistent cache that failed (the read went on without it). */
  persistentFailures: number
  /** Reads of a brick the cache did not hold. */
  cacheMisses: number
  /** Copies from a server or the persistent cache that did not match their hash (skipped; a persisted one deleted). */
  corruptCopiesSkipped: number
  /** Bricks this page wrote to servers. */
  bricksWritten: number
  cache: BrickCacheStats
}

export interface BrowserStorage {
  /** The cluster file system (close-to-open consistency, see `file-system.ts`). */
  fileSystem: FileSystem
  cache: BrickCache
  network: Libp2pBrickNetwork
  /** The page's view of the storage servers (it announces nothing through it; tests play a page that does). */
  peers: BrickPeers
  /** Storage servers this page knows to be live (never the page itself). */
  storageServers(): string[]
  counters(): BrowserStorageCounters
  stop(): Promise<void>
}

export async function startBrowserStorage(
  node: BrowserNode,
  options: BrowserStorageOptions = {},
): Promise<BrowserStorage> {
  const log = options.log ?? (() => {})
  const replicaCount = options.replicaCount ?? replicaCountDefault
  checkReplicaCount(replicaCount)
  const cache = createBrickCache({ bytesMax: options.cacheBytesMax ?? brickCacheBytesMaxDefault })
  const counters = {
    bricksFetched: 0,
    bytesFetched: 0,
    cacheHits: 0,
    persistentHits: 0,
    persistentFailures: 0,
    cacheMisses: 0,
    corruptCopiesSkipped: 0,
    bricksWritten: 0,
  }
  const network = await startLibp2pBrickNetwork({ node, hasLocal: async (cid) => cache.has(cid), log })
  // What the page answers on /fabric/bricks/1: its cache, read-only. It never takes a replica.
  const handler: BrickRequestHandler = {
    fetch: async (cid) => cache.get(cid),
    async store(cid) {
      throw new StorageArgumentError(
        `a browser node holds no replicas; brick ${cid} belongs on a server node`,
      )
    },
    drop: async (cid) => cache.delete(cid),
    stats: async () => ({ bricks: cache.stats().bricks, bytes: cache.stats().bytes }),
  }
  const peers: BrickPeers = network.connect(handler)
  const self = peers.self

  /** The live storage servers: the brick network never lists a browser node, this page included. */
  function storageServers(): string[] {
    return [...peers.liveNodes()]
  }

  async function someStorageServers(signal?: AbortSignal): Promise<string[]> {
    const deadline = systemClock.now() + storageServersWaitMs
    let servers = storageServers()
    while (servers.length === 0 && systemClock.now() < deadline) {
      await sleep(storageServersPollMs, signal)
      servers = storageServers()
    }
    return servers
  }

  /** A verified copy from the persistent cache; a copy that fails its hash is deleted there. */
  async function fromPersistentCache(cid: CID): Promise<Uint8Array | undefined> {
    const persistent = options.persistentCache
    if (persistent === undefined) return undefined
    let bytes: Uint8Array | undefined
    try {
      bytes = await persistent.get(cid)
    } catch (error) {
      counters.persistentFailures++
      log(`storage: the persistent brick cache failed: ${(error as Error).message}`)
      return undefined
    }
    if (bytes === undefined) return undefined
    try {
      await verifyBrick(cid, bytes, 'the persistent brick cache')
      return bytes
    } catch (error) {
      if (!(error instanceof BrickCorruptError)) throw error
      counters.corruptCopiesSkipped++
      await persistent.delete(cid).catch(() => {})
      return undefined
    }
  }

  /** Keeps a verified brick across reloads too; a full quota or a failing IndexedDB only costs the next visit a transfer. */
  async function toPersistentCache(cid: CID, bytes: Uint8Array): Promise<void> {
    try {
      await options.persistentCache?.put(cid, bytes)
    } catch (error) {
      counters.persistentFailures++
      log(`storage: the persistent brick cache failed: ${(error as Error).message}`)
    }
  }

  async function get(cid: CID, callOptions: { stripe: number; signal?: AbortSignal }): Promise<Uint8Array> {
    const cached = cache.get(cid)
    if (cached !== undefined) {
      counters.cacheHits++
      return cached
    }
    const persisted = await fromPersistentCache(cid)
    if (persisted !== undefined) {
      counters.persistentHits++
      cache.put(cid, persisted)
      return persisted
    }
    counters.cacheMisses++
    const { signal } = callOptions
    await someStorageServers(signal)
    const holders = await peers.findProviders(cid, { signal })
    const tried: string[] = []
    for (const holder of readOrder(self, holders, callOptions.stripe)) {
      tried.push(holder)
      let bytes: Uint8Array | undefined
      try {
        bytes = await peers.fetch(holder, cid, { signal })
      } catch (error) {
        signal?.throwIfAborted()
        if (error instanceof BrickPeerUnreachableError) continue
        throw error
      }
      if (bytes === undefined) continue
      try {
        await verifyBrick(cid, bytes, `node ${holder}`)
      } catch (error) {
        if (!(error instanceof BrickCorruptError)) throw error
        counters.corruptCopiesSkipped++
        continue
      }
      counters.bricksFetched++
      counters.bytesFetched += bytes.length
      cache.put(cid, bytes)
      await toPersistentCache(cid, bytes)
      return bytes
    }
    throw new BrickUnavailableError(cid.toString(), tried)
  }

  async function put(
    bytes: Uint8Array,
    callOptions: { stripe: number; replicaCount?: number; signal?: AbortSignal },
  ): Promise<CID> {
    const wanted = callOptions.replicaCount ?? replicaCount
    checkReplicaCount(wanted)
    const cid = await brickCid(bytes)
    const { signal } = callOptions
    const servers = await someStorageServers(signal)
    const required = requiredReplicas(wanted, servers.length)
    // `self` is not among the candidates' live nodes, so every replica goes to a server.
    const candidates = replicaCandidates({ self, live: servers, count: required, stripe: callOptions.stripe })
    let placed = 0
    for (const server of candidates) {
      if (placed >= required) break
      try {
        await peers.store(server, cid, bytes, { signal, replicaCount: callOptions.replicaCount })
        placed++
      } catch (error) {
        signal?.throwIfAborted()
        if (!(error instanceof BrickPeerUnreachableError)) throw error
      }
    }
    if (placed < required || servers.length === 0)
      throw new InsufficientReplicasError(cid.toString(), placed, Math.max(required, 1))
    counters.bricksWritten++
    // The writer's buffer is the writer's: the cache keeps its own copy.
    cache.put(cid, bytes.slice())
    await toPersistentCache(cid, bytes)
    return cid
  }

  const bricks: ChunkBricks = { get, put }
  const fileSystem = createFileSystem(
    {
      metadata: clientMetadataStore(node.client),
      bricks,
      clock: systemClock,
      wallClock: { now: wallClockMs },
      random: systemRandom,
      sleep,
    },
    options.fileSystem,
  )

  let stopped = false
  return {
    fileSystem,
    cache,
    network,
    peers,
    storageServers,
    counters: () => ({ ...counters, cache: cache.stats() }),
    async stop() {
      if (stopped) return
      stopped = true
      await fileSystem.closeAll().catch(() => {})
      await network.stop()
    },
  }
}
