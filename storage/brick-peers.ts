/**
 * How a storage node reaches the bricks of other nodes: the `BrickPeers` interface, and an
 * in-process network that connects several storage nodes of one process for tests and for the
 * embedded local cluster. The real implementation (`brick-peers-libp2p.ts`) rides libp2p streams
 * (`/fabric/bricks/1`) and announces holdings as DHT provider records.
 *
 *   const network = createInProcessBrickNetwork()
 *   const peers = network.join('node-a', node.handler)   // node.handler answers other nodes
 *   network.kill('node-a')                               // requests to it now fail; it leaves liveNodes()
 */

import type { AbortOptions, BlockStoreStats } from './block-store.ts'
import type { CID } from './brick.ts'
import { BrickPeerUnreachableError, StorageArgumentError } from './errors.ts'
import type { NodeId } from './platform-types.ts'

export interface StoreBrickOptions extends AbortOptions {
  /** The replicas this brick asks for, when not the cluster default; the holder remembers it. */
  replicaCount?: number
}

/** What a storage node answers to other nodes. */
export interface BrickRequestHandler {
  /** The brick's bytes (checked here, and again by the caller), or undefined when this node does not hold an intact copy. */
  fetch(cid: CID, options?: AbortOptions): Promise<Uint8Array | undefined>
  /** Stores a replica; true when this node did not hold it before. */
  store(cid: CID, bytes: Uint8Array, options?: StoreBrickOptions): Promise<boolean>
  /** Drops this node's replica; true when it had one. */
  drop(cid: CID, options?: AbortOptions): Promise<boolean>
  stats(options?: AbortOptions): Promise<BlockStoreStats>
}

/** One node's view of the other storage nodes. Requests to a node that is down throw {@link BrickPeerUnreachableError}. */
export interface BrickPeers {
  readonly self: NodeId
  /**
   * Server nodes believed live that may hold replicas, this node included when it is one. Browser
   * nodes are never listed: they may cache bricks but never count as replicas.
   */
  liveNodes(): readonly NodeId[]
  fetch(node: NodeId, cid: CID, options?: AbortOptions): Promise<Uint8Array | undefined>
  store(node: NodeId, cid: CID, bytes: Uint8Array, options?: StoreBrickOptions): Promise<boolean>
  drop(node: NodeId, cid: CID, options?: AbortOptions): Promise<boolean>
  stats(node: NodeId, options?: AbortOptions): Promise<BlockStoreStats>
  /**
   * Nodes that announced holding the brick (provider records). The answer may name nodes that are
   * down and miss very recent announcements; callers intersect it with `liveNodes()`.
   */
  findProviders(cid: CID, options?: AbortOptions): Promise<NodeId[]>
  /** Announces that this node holds the brick. */
  announce(cid: CID, options?: AbortOptions): Promise<void>
  /** Withdraws this node's announcement. */
  withdraw(cid: CID, options?: AbortOptions): Promise<void>
}

export interface InProcessBrickNetwork {
  /** Connects a node (again, after a restart) and returns its view of the others. */
  join(node: NodeId, handler: BrickRequestHandler): BrickPeers
  /** The node stops answering and leaves every node's live list; its provider records stay, as in a DHT. */
  kill(node: NodeId): void
  isLive(node: NodeId): boolean
  liveNodes(): NodeId[]
  /** Provider records per node, for tests that check replication. */
  providers(cid: CID): NodeId[]
  /** Bytes copied between nodes so far. */
  bytesTransferred(): number
}

/** A network of storage nodes inside one process; requests are direct calls to the target's handler. */
export function createInProcessBrickNetwork(): InProcessBrickNetwork {
  const handlers = new Map<NodeId, BrickRequestHandler>()
  const live = new Set<NodeId>()
  const providerRecords = new Map<string, Set<NodeId>>()
  let transferred = 0

  function handlerOf(from: NodeId, node: NodeId): BrickRequestHandler {
    if (!live.has(from)) throw new BrickPeerUnreachableError(from, 'this node was stopped')
    const handler = handlers.get(node)
    if (handler === undefined || !live.has(node))
      throw new BrickPeerUnreachableError(node, 'the node is down')
    return handler
  }

  function liveNodes(): NodeId[] {
    return [...live].sort()
  }

  return {
    join(self, handler) {
      if (typeof self !== 'string' || self.length === 0)
        throw new StorageArgumentError('Expected a non-empty node id')
      handlers.set(self, handler)
      live.add(self)
      return {
        self,
        liveNodes,
        async fetch(node, cid, options) {
          const bytes = await handlerOf(self, node).fetch(cid, options)
          if (bytes !== undefined && node !== self) transferred += bytes.length
          // The receiver gets its own copy, as it would off the wire.
          return bytes?.slice()
        },
        async store(node, cid, bytes, options) {
          if (node !== self) transferred += bytes.length
          return handlerOf(self, node).store(cid, bytes.slice(), options)
        },
        drop: async (node, cid, options) => handlerOf(self, node).drop(cid, options),
        stats: async (node, options) => handlerOf(self, node).stats(options),
        async findProviders(cid) {
          handlerOf(self, self)
          return [...(providerRecords.get(cid.toString()) ?? [])].sort()
        },
        async announce(cid) {
          handlerOf(self, self)
          const key = cid.toString()
          let holders = providerRecords.get(key)
          if (holders === undefined) {
            holders = new Set()
            providerRecords.set(key, holders)
          }
          holders.add(self)
        },
        async withdraw(cid) {
          handlerOf(self, self)
          const key = cid.toString()
          const holders = providerRecords.get(key)
          holders?.delete(self)
          if (holders?.size === 0) providerRecords.delete(key)
        },
      }
    },
    kill(node) {
      live.delete(node)
    },
    isLive: (node) => live.has(node),
    liveNodes,
    providers: (cid) => [...(providerRecords.get(cid.toString()) ?? [])].sort(),
    bytesTransferred: () => transferred,
  }
}
