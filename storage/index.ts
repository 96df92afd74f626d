/**
 * Storage: one shared, redundant file system made of every node's disk.
 *
 * Two kinds of state, kept in two places:
 *
 * - **Bricks** (`brick.ts`, `block-store*.ts`, `brick-node.ts`): immutable blocks named by their
 *   CIDv1 (raw, sha2-256). Each node keeps its bricks in a block store under its data dir; every
 *   write and every read checks the hash, and a copy that fails is dropped and fetched again from
 *   another replica. Each brick lives on r distinct nodes (default 3): the writing node plus
 *   nodes chosen by stripe (`placement.ts`). `repair.ts` brings bricks back to r after a node is
 *   lost; `rebalance.ts` moves bricks to a node that joined, at a limited rate, resumably. A file
 *   may ask for its own replica count (`open(path, 'w', { replicaCount: 5 })`); every holder of its
 *   bricks remembers it (`replica-counts.ts`), so repair keeps that many.
 *   Nodes reach each other through `BrickPeers` (`brick-peers.ts`): over libp2p
 *   (`/fabric/bricks/1`, DHT provider records; `brick-peers-libp2p.ts`) in the product, an
 *   in-process network in tests.
 * - **Metadata** (`metadata-store.ts`, `metadata-transactions.ts`, `records.ts`): names,
 *   directories and file heads, as keys of the coordination store (linearizable registers with
 *   compare-and-swap; `metadata-store-coordination.ts` adapts the fabric's store). Changes of one
 *   key are a CAS; rmdir and rename between directories are multi-key transactions.
 *
 * A file (`file-system.ts`) is a manifest brick (`manifest.ts`) listing its chunk bricks (1 MiB
 * by default); chunks are striped over the nodes and read and written in parallel. The file
 * system has **close-to-open consistency**, like NFS: what a client writes becomes visible to
 * other clients when it closes the file (or calls fsync), to opens that come after; within one
 * client, all descriptors share one view. Two writers of one file are serialized at close: the
 * later close replays its own writes on top of the earlier one's. Namespace changes (create,
 * mkdir, unlink, rmdir, rename) are atomic and visible at once. Directories keep their entries in
 * their metadata value up to 24 KiB and beyond that in a listing brick that each change rewrites.
 *
 * Every `fabric node` runs `startNodeStorage` (`node-storage.ts`): disk block store under its data
 * dir, libp2p peers, the file system over the coordination store, background repair and
 * rebalancing, and the `/fabric/fs/1` service (`file-service.ts`) that `fabric fs` uses through
 * `connectFileClient` (`file-client.ts`):
 *
 *   const storage = await startNodeStorage(fabricNode, { dataDirectory: './n1' })
 *   await storage.fileSystem.writeFile('/hello.txt', new TextEncoder().encode('hi\n'))
 *
 * What it wires, piece by piece (tests do the same with in-process pieces, see
 * `test/support/storage-cluster.ts`):
 *
 *   import { sleep, systemClock, systemRandom, wallClockMs } from '../fabric/platform.ts'
 *   import { coordinationMetadataStore, createBrickNode, createFileSystem, openDiskBlockStore, openDiskReplicaCounts } from './index.ts'
 *
 *   const store = await openDiskBlockStore({ directory: join(dataDir, 'bricks') })
 *   const replicaCounts = await openDiskReplicaCounts({ directory: join(dataDir, 'replica-counts') })
 *   const bricks = createBrickNode({ store, replicaCounts, connect: (handler) => peersOverLibp2p(handler), clock: systemClock, sleep })
 *   const fs = createFileSystem({
 *     metadata: coordinationMetadataStore(fabricNode.store),
 *     bricks,
 *     clock: systemClock,
 *     wallClock: { now: wallClockMs },
 *     random: systemRandom,
 *     sleep,
 *   })
 *   const fd = await fs.open('/results/out.txt', 'w')
 *   await fs.write(fd, new TextEncoder().encode('hello\n'))
 *   await fs.close(fd)                     // visible cluster-wide from here
 *   setInterval(() => bricks.repair(), 60_000)
 *
 * A browser node (`fabric/net/browser-node.ts`) runs `startBrowserStorage` (`browser-storage.ts`):
 * the same file system, its metadata through the servers' store as a client, and every brick it
 * reads kept in a bounded LRU cache (`brick-cache.ts`), and optionally in IndexedDB
 * (`brick-cache-indexeddb.ts`). It never holds a replica, never announces
 * a brick, and servers never list it as a storage node, so repair and replica counts ignore it.
 *
 * Errors are named classes in `errors.ts`; file-system calls throw `FileSystemError` with a POSIX
 * `code` (ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, EBADF, EINVAL, ...).
 */

export {
  type BlockStore,
  type BlockStoreStats,
  createMemoryBlockStore,
  type MemoryBlockStore,
} from './block-store.ts'
export { diskBrickPath, openDiskBlockStore } from './block-store-disk.ts'
export { brickBytesMax, brickCid, type CID, parseBrickCid, verifyBrick } from './brick.ts'
export {
  type BrickCache,
  type BrickCacheStats,
  brickCacheBytesMaxDefault,
  createBrickCache,
} from './brick-cache.ts'
export {
  openIndexedDbBrickCache,
  type PersistentBrickCache,
  persistentCacheBytesMaxDefault,
} from './brick-cache-indexeddb.ts'
export { type BrickNode, type BrickNodeComponents, createBrickNode } from './brick-node.ts'
export {
  type BrickPeers,
  type BrickRequestHandler,
  createInProcessBrickNetwork,
  type InProcessBrickNetwork,
} from './brick-peers.ts'
export {
  type BrowserStorage,
  type BrowserStorageCounters,
  type BrowserStorageOptions,
  startBrowserStorage,
} from './browser-storage.ts'
export * from './errors.ts'
export { connectFileClient, type FileClient, type FileClientOptions } from './file-client.ts'
export {
  chunkBytesDefault,
  createFileSystem,
  type DirectoryListingEntry,
  type FileSystem,
  type FileSystemComponents,
  type FileSystemOptions,
  type OpenFlags,
  type OpenOptions,
  type Stat,
  type Whence,
} from './file-system.ts'
export { createMemoryMetadataStore, type MetadataResult, type MetadataStore } from './metadata-store.ts'
export { coordinationMetadataStore } from './metadata-store-coordination.ts'
export { type NodeStorage, type NodeStorageOptions, startNodeStorage } from './node-storage.ts'
export { replicaCountDefault } from './placement.ts'
export { type RebalanceReport, rebalanceBytesPerSecondDefault } from './rebalance.ts'
export { type RepairReport, repairBytesPerSecondDefault } from './repair.ts'
export { createMemoryReplicaCounts, type ReplicaCounts, replicaCountMax } from './replica-counts.ts'
export { openDiskReplicaCounts } from './replica-counts-disk.ts'
