/**
 * A storage node: its local block store, plus replication over the other nodes.
 *
 * - `put` stores a brick on r distinct live nodes (this node first, then the stripe's nodes) and
 *   fails unless it reached min(r, live nodes) of them.
 * - `get` reads the local copy when there is one, and otherwise the holders in stripe order; every
 *   copy is checked against its hash, a bad one is skipped, and a bad local copy is dropped and
 *   replaced by the good bytes as soon as they arrive (read repair).
 * - `handler` answers the other nodes; a copy that turns out corrupt when another node asks for it
 *   is dropped, withdrawn, and fetched back by the next `repair`.
 * - `repair` and `rebalance` (see `repair.ts`, `rebalance.ts`) keep r replicas per brick and an
 *   even spread as nodes come and go.
 *
 *   const node = createBrickNode({ store, connect: (handler) => network.join('node-a', handler) })
 *   const cid = await node.put(bytes, { stripe: 7 })
 *   const same = await node.get(cid, { stripe: 7 })
 */

import type { AbortOptions, BlockStore } from './block-store.ts'
import { brickCid, type CID, verifyBrick } from './brick.ts'
import type { BrickPeers, BrickRequestHandler, StoreBrickOptions } from './brick-peers.ts'
import {
  BrickCorruptError,
  BrickPeerUnreachableError,
  BrickUnavailableError,
  InsufficientReplicasError,
} from './errors.ts'
import { readLocalCopy } from './local-copy.ts'
import {
  readOrder,
  replicaCandidates,
  replicaCountDefault,
  requiredReplicas,
  stripeOfCid,
} from './placement.ts'
import type { Clock, NodeId, Sleep } from './platform-types.ts'
import { type RebalanceOptions, type RebalanceReport, rebalanceStep } from './rebalance.ts'
import { type RepairOptions, type RepairReport, repairScan } from './repair.ts'
import { checkReplicaCount, createMemoryReplicaCounts, type ReplicaCounts } from './replica-counts.ts'

/** Bricks whose corrupt local copy waits to be fetched back; beyond this the oldest are left to the other holders' repair. */
export const damagedBricksMax = 10_000

export interface BrickNodeComponents {
  store: BlockStore
  /** Registers this node's request handler on the network and returns its view of the other nodes. */
  connect(handler: BrickRequestHandler): BrickPeers
  /** For rate limits in rebalancing. */
  clock: Clock
  sleep: Sleep
  /** Where this node remembers the bricks that ask for other than the default replica count; in memory when absent. */
  replicaCounts?: ReplicaCounts
}

export interface BrickNodeOptions {
  /** Replicas per brick, on distinct nodes. Default {@link replicaCountDefault}. */
  replicaCount?: number
}

export interface PutOptions extends AbortOptions {
  /** The stripe number that places this brick (a file uses seed + chunk index); default from the CID. */
  stripe?: number
  /** Replicas of this brick; default the node's `replicaCount`. */
  replicaCount?: number
}

export interface GetOptions extends AbortOptions {
  /** The stripe number the brick was written with, to spread reads over holders; default from the CID. */
  stripe?: number
}

export interface BrickNodeCounters {
  /** Copies, local or remote, found not to match their hash. */
  corruptCopiesDetected: number
  /** Local copies put back from another replica after they were found corrupt. */
  localCopiesRestored: number
  /** Bricks read from another node. */
  remoteReads: number
}

export interface BrickNode {
  readonly self: NodeId
  readonly store: BlockStore
  readonly peers: BrickPeers
  readonly replicaCount: number
  readonly handler: BrickRequestHandler
  put(bytes: Uint8Array, options?: PutOptions): Promise<CID>
  get(cid: CID, options?: GetOptions): Promise<Uint8Array>
  /** Announces every local brick; a restarted node calls it so the others find its copies again. */
  announceAll(options?: AbortOptions): Promise<number>
  /** One pass of repair: fetches back dropped local copies, then brings under-replicated local bricks back to r. */
  repair(options?: RepairOptions): Promise<RepairReport>
  /** One pass of rebalancing: moves bricks from this node to emptier ones. Call again with the returned cursor to resume. */
  rebalance(options?: RebalanceOptions): Promise<RebalanceReport>
  /** Holders of a brick that are live now, from provider records. */
  liveHolders(cid: CID, options?: AbortOptions): Promise<NodeId[]>
  counters(): BrickNodeCounters
}

export function createBrickNode(components: BrickNodeComponents, options: BrickNodeOptions = {}): BrickNode {
  const { store, clock, sleep } = components
  const replicaCounts = components.replicaCounts ?? createMemoryReplicaCounts()
  const replicaCount = options.replicaCount ?? replicaCountDefault
  checkReplicaCount(replicaCount)
  const counters: BrickNodeCounters = { corruptCopiesDetected: 0, localCopiesRestored: 0, remoteReads: 0 }
  /** Local copies dropped as corrupt: CID string -> CID. */
  const damaged = new Map<string, CID>()

  function noteDamaged(cid: CID): void {
    counters.corruptCopiesDetected++
    damaged.delete(cid.toString())
    damaged.set(cid.toString(), cid)
    if (damaged.size > damagedBricksMax) damaged.delete(damaged.keys().next().value!)
  }

  const handler: BrickRequestHandler = {
    async fetch(cid, callOptions) {
      const local = await readLocalCopy(store, peers, cid, callOptions)
      if (local.corrupt) noteDamaged(cid)
      return local.bytes
    },
    async store(cid, bytes, callOptions) {
      const created = await store.put(cid, bytes, callOptions)
      await rememberReplicaCount(cid, callOptions?.replicaCount)
      damaged.delete(cid.toString())
      await peers.announce(cid, callOptions)
      return created
    },
    async drop(cid, callOptions) {
      const dropped = await store.delete(cid, callOptions)
      await replicaCounts.forget(cid)
      await peers.withdraw(cid, callOptions)
      return dropped
    },
    stats: async () => store.stats(),
  }
  const peers = components.connect(handler)
  const self = peers.self

  async function liveHolders(cid: CID, callOptions?: AbortOptions): Promise<NodeId[]> {
    const live = new Set(peers.liveNodes())
    return (await peers.findProviders(cid, callOptions)).filter((node) => live.has(node))
  }

  async function rememberReplicaCount(cid: CID, count: number | undefined): Promise<void> {
    if (count !== undefined && count !== replicaCount) await replicaCounts.raise(cid, count)
  }

  async function storeLocally(cid: CID, bytes: Uint8Array, callOptions?: StoreBrickOptions): Promise<void> {
    await store.put(cid, bytes, callOptions)
    await rememberReplicaCount(cid, callOptions?.replicaCount)
    damaged.delete(cid.toString())
    await peers.announce(cid, callOptions)
  }

  /** Places `bytes` on nodes from `candidates` until `required` hold it; returns the nodes that do. */
  async function placeReplicas(
    cid: CID,
    bytes: Uint8Array,
    candidates: readonly NodeId[],
    required: number,
    callOptions?: StoreBrickOptions,
  ): Promise<NodeId[]> {
    const placed: NodeId[] = []
    let next = 0
    async function placeOne(): Promise<void> {
      while (placed.length < required && next < candidates.length) {
        const node = candidates[next++]!
        try {
          if (node === self) await storeLocally(cid, bytes, callOptions)
          else await peers.store(node, cid, bytes, callOptions)
          placed.push(node)
          return
        } catch (error) {
          callOptions?.signal?.throwIfAborted()
          if (!(error instanceof BrickPeerUnreachableError)) throw error
        }
      }
    }
    await Promise.all(Array.from({ length: required }, placeOne))
    return placed
  }

  async function put(bytes: Uint8Array, callOptions: PutOptions = {}): Promise<CID> {
    const wanted = callOptions.replicaCount ?? replicaCount
    checkReplicaCount(wanted)
    const cid = await brickCid(bytes)
    const live = peers.liveNodes()
    const required = requiredReplicas(wanted, live.length)
    const stripe = callOptions.stripe ?? stripeOfCid(cid)
    const candidates = replicaCandidates({ self, live, count: required, stripe })
    const placed = await placeReplicas(cid, bytes, candidates, required, {
      signal: callOptions.signal,
      replicaCount: callOptions.replicaCount,
    })
    if (placed.length < required) throw new InsufficientReplicasError(cid.toString(), placed.length, required)
    return cid
  }

  async function get(cid: CID, callOptions: GetOptions = {}): Promise<Uint8Array> {
    const local = await readLocalCopy(store, peers, cid, callOptions)
    if (local.bytes !== undefined) return local.bytes
    const localCopyLost = local.corrupt
    if (localCopyLost) noteDamaged(cid)
    const stripe = callOptions.stripe ?? stripeOfCid(cid)
    const holders = (await liveHolders(cid, callOptions)).filter((node) => node !== self)
    const tried: NodeId[] = localCopyLost ? [`${self} (corrupt)`] : []
    for (const node of readOrder(self, holders, stripe)) {
      callOptions.signal?.throwIfAborted()
      let bytes: Uint8Array | undefined
      try {
        bytes = await peers.fetch(node, cid, callOptions)
      } catch (error) {
        if (!(error instanceof BrickPeerUnreachableError)) throw error
        tried.push(`${node} (unreachable)`)
        continue
      }
      if (bytes === undefined) {
        tried.push(`${node} (missing)`)
        continue
      }
      try {
        await verifyBrick(cid, bytes, node)
      } catch (error) {
        if (!(error instanceof BrickCorruptError)) throw error
        counters.corruptCopiesDetected++
        tried.push(`${node} (corrupt)`)
        continue
      }
      counters.remoteReads++
      if (localCopyLost) {
        await storeLocally(cid, bytes, callOptions)
        counters.localCopiesRestored++
      }
      return bytes
    }
    throw new BrickUnavailableError(cid.toString(), tried)
  }

  async function restoreDamaged(callOptions?: AbortOptions): Promise<number> {
    let restored = 0
    for (const [key, cid] of [...damaged]) {
      callOptions?.signal?.throwIfAborted()
      if (!damaged.has(key)) continue
      try {
        const bytes = await get(cid, callOptions)
        if (!(await store.has(cid))) await storeLocally(cid, bytes, callOptions)
        damaged.delete(key)
        counters.localCopiesRestored++
        restored++
      } catch (error) {
        if (!(error instanceof BrickUnavailableError)) throw error
      }
    }
    return restored
  }

  return {
    self,
    store,
    peers,
    replicaCount,
    handler,
    put,
    get,
    async announceAll(callOptions) {
      let count = 0
      for await (const cid of store.list(callOptions)) {
        await peers.announce(cid, callOptions)
        count++
      }
      return count
    },
    async repair(repairOptions = {}) {
      const restored = await restoreDamaged(repairOptions)
      const report = await repairScan(
        { store, peers, replicaCount, replicaCounts, clock, sleep },
        repairOptions,
      )
      return { ...report, localCopiesRestored: restored }
    },
    rebalance: (rebalanceOptions = {}) =>
      rebalanceStep({ store, peers, replicaCount, replicaCounts, clock, sleep }, rebalanceOptions),
    liveHolders,
    counters: () => ({ ...counters }),
  }
}
