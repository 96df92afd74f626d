/**
 * File-system clients over an in-process storage cluster: one shared metadata store (the
 * coordination store's stand-in) and one client per storage node.
 */

import { createFileSystem, type FileSystem } from '../../storage/file-system.ts'
import { createMemoryMetadataStore, type MemoryMetadataStore } from '../../storage/metadata-store.ts'
import {
  createStorageCluster,
  realClock,
  realSleep,
  realWallClock,
  type StorageCluster,
} from './storage-cluster.ts'
import { testRandom } from './storage-random.ts'

export interface FileSystemCluster {
  cluster: StorageCluster
  metadata: MemoryMetadataStore
  /** A client on the given storage node (created on first use, with its own descriptors and view of open files). */
  client(node: string): FileSystem
  newClient(node: string): FileSystem
}

export async function createFileSystemCluster(options: {
  nodeIds: readonly string[]
  seed: number
  chunkBytes?: number
  replicaCount?: number
  root?: string
  syncWrites?: boolean
}): Promise<FileSystemCluster> {
  const cluster = await createStorageCluster({
    nodeIds: options.nodeIds,
    replicaCount: options.replicaCount,
    root: options.root,
    syncWrites: options.syncWrites,
  })
  const metadata = createMemoryMetadataStore()
  const random = testRandom(options.seed * 7919 + 1)
  const clients = new Map<string, FileSystem>()
  function newClient(node: string): FileSystem {
    return createFileSystem(
      {
        metadata,
        bricks: {
          put: (bytes, putOptions) => cluster.node(node).put(bytes, putOptions),
          get: (cid, getOptions) => cluster.node(node).get(cid, getOptions),
        },
        clock: realClock,
        wallClock: realWallClock,
        random: testRandom(Math.floor(random.next() * 2 ** 31)),
        sleep: realSleep,
      },
      { chunkBytes: options.chunkBytes },
    )
  }
  return {
    cluster,
    metadata,
    client(node) {
      let client = clients.get(node)
      if (client === undefined) {
        client = newClient(node)
        clients.set(node, client)
      }
      return client
    },
    newClient,
  }
}
