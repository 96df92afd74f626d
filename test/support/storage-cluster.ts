/**
 * Several storage nodes in one process, connected by the in-process brick network, with disk or
 * memory block stores, for tests and benchmarks. Nodes can be killed, restarted (disk stores keep
 * their bricks) and added.
 */

import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { sleep, systemClock, wallClockMs } from '../../fabric/platform.ts'
import { type BlockStore, createMemoryBlockStore, type MemoryBlockStore } from '../../storage/block-store.ts'
import { diskBrickPath, openDiskBlockStore } from '../../storage/block-store-disk.ts'
import type { CID } from '../../storage/brick.ts'
import { type BrickNode, createBrickNode } from '../../storage/brick-node.ts'
import { createInProcessBrickNetwork, type InProcessBrickNetwork } from '../../storage/brick-peers.ts'
import type { Clock, Sleep } from '../../storage/platform-types.ts'
import { createMemoryReplicaCounts, type ReplicaCounts } from '../../storage/replica-counts.ts'
import { openDiskReplicaCounts } from '../../storage/replica-counts-disk.ts'

export const realClock: Clock = systemClock
export const realWallClock: Clock = { now: wallClockMs }
export const realSleep: Sleep = sleep

export interface StorageClusterOptions {
  nodeIds: readonly string[]
  /** A directory to keep each node's bricks in (`<root>/<node>`); memory stores when absent. */
  root?: string
  replicaCount?: number
  syncWrites?: boolean
}

export interface StorageCluster {
  network: InProcessBrickNetwork
  nodes: Map<string, BrickNode>
  node(id: string): BrickNode
  add(id: string): Promise<BrickNode>
  kill(id: string): Promise<void>
  /** Starts a killed node again over the same bricks (disk) and announces them. */
  restart(id: string): Promise<BrickNode>
  /** Overwrites a node's copy of a brick behind its store's back. */
  damage(id: string, cid: CID, bytes: Uint8Array): void
  /** Live holders per the provider records. */
  holders(cid: CID): string[]
  /** Runs repair on every live node until a pass copies nothing. */
  repairAll(): Promise<number>
  /** Runs rebalancing on every live node until no node moves anything. */
  rebalanceAll(options?: { bytesMax?: number }): Promise<number>
  close(): Promise<void>
}

export async function createStorageCluster(options: StorageClusterOptions): Promise<StorageCluster> {
  const network = createInProcessBrickNetwork()
  const nodes = new Map<string, BrickNode>()
  const memoryStores = new Map<string, MemoryBlockStore>()
  const memoryReplicaCounts = new Map<string, ReplicaCounts>()

  async function openReplicaCounts(id: string): Promise<ReplicaCounts> {
    if (options.root !== undefined)
      return openDiskReplicaCounts({ directory: join(options.root, `${id}-replica-counts`) })
    let counts = memoryReplicaCounts.get(id)
    if (counts === undefined) {
      counts = createMemoryReplicaCounts()
      memoryReplicaCounts.set(id, counts)
    }
    return counts
  }

  async function openStore(id: string): Promise<BlockStore> {
    if (options.root !== undefined)
      return openDiskBlockStore({
        directory: join(options.root, id),
        syncWrites: options.syncWrites ?? false,
        label: id,
      })
    let store = memoryStores.get(id)
    if (store === undefined) {
      store = createMemoryBlockStore({ label: id })
      memoryStores.set(id, store)
    }
    return store
  }

  async function start(id: string): Promise<BrickNode> {
    const store = await openStore(id)
    const node = createBrickNode(
      {
        store,
        connect: (handler) => network.join(id, handler),
        clock: realClock,
        sleep: realSleep,
        replicaCounts: await openReplicaCounts(id),
      },
      { replicaCount: options.replicaCount },
    )
    nodes.set(id, node)
    await node.announceAll()
    return node
  }

  for (const id of options.nodeIds) await start(id)

  const cluster: StorageCluster = {
    network,
    nodes,
    node(id) {
      const node = nodes.get(id)
      if (node === undefined || !network.isLive(id)) throw new Error(`node ${id} is not running`)
      return node
    },
    add: start,
    async kill(id) {
      network.kill(id)
      // A disk store is closed as a dying process would leave it; a memory store stays (its node is simply unreachable).
      if (options.root !== undefined) await nodes.get(id)?.store.close()
    },
    restart: start,
    damage(id, cid, bytes) {
      if (options.root !== undefined) writeFileSync(diskBrickPath(join(options.root, id), cid), bytes)
      else memoryStores.get(id)!.damage(cid, bytes)
    },
    holders(cid) {
      return network.providers(cid).filter((id) => network.isLive(id))
    },
    async repairAll() {
      let total = 0
      for (let pass = 0; pass < 10; pass++) {
        let added = 0
        for (const id of network.liveNodes()) {
          const report = await nodes.get(id)!.repair({ bytesPerSecond: Number.POSITIVE_INFINITY })
          added += report.replicasAdded + report.localCopiesRestored
        }
        total += added
        if (added === 0) return total
      }
      throw new Error('repair did not settle within 10 passes')
    },
    async rebalanceAll(rebalanceOptions = {}) {
      let total = 0
      const cursors = new Map<string, string | undefined>()
      for (let pass = 0; pass < 1000; pass++) {
        let moved = 0
        let unfinished = false
        for (const id of network.liveNodes()) {
          const report = await nodes.get(id)!.rebalance({
            bytesPerSecond: Number.POSITIVE_INFINITY,
            bytesMax: rebalanceOptions.bytesMax,
            cursor: cursors.get(id),
          })
          cursors.set(id, report.done ? undefined : report.cursor)
          moved += report.moved
          if (!report.done) unfinished = true
        }
        total += moved
        if (moved === 0 && !unfinished) return total
      }
      throw new Error('rebalancing did not settle within 1000 passes')
    },
    async close() {
      for (const id of network.liveNodes()) await cluster.kill(id)
    },
  }
  return cluster
}
