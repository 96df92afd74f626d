/**
 * Repair: every node scans its own bricks and brings the under-replicated ones back to r copies.
 *
 * For each local brick the node looks up the live holders (provider records intersected with the
 * live nodes). When there are fewer than min(r, live nodes), the holder with the smallest id among
 * the live holders copies it to new nodes chosen by placement; the other holders leave it, so that
 * a lost node's bricks are copied once rather than by every survivor. The others report the bricks
 * they left (`deferred`, with their rank among the live holders) and check them again a little
 * later with `takeOver`, repairing what is still short themselves: the smallest holder may not have
 * seen the loss at all (it was restarting, or its view of the live nodes was not complete yet).
 * Views of liveness may differ for a moment, so a brick can get a replica too many, never one too
 * few after a completed scan.
 * There is no central list of bricks: a brick whose every holder is lost cannot be repaired, and
 * the read that needs it reports {@link BrickUnavailableError}.
 */

import type { AbortOptions, BlockStore } from './block-store.ts'
import type { CID } from './brick.ts'
import type { BrickPeers } from './brick-peers.ts'
import { forEachLimited } from './concurrency.ts'
import { BrickPeerUnreachableError } from './errors.ts'
import { readLocalCopy } from './local-copy.ts'
import { replicaCandidates, requiredReplicas, stripeOfCid } from './placement.ts'
import type { Clock, Sleep } from './platform-types.ts'
import { createRateLimiter } from './rate-limiter.ts'
import type { ReplicaCounts } from './replica-counts.ts'

/** Bytes per second repair copies by default: high, because until it is done a further loss can lose data. */
export const repairBytesPerSecondDefault = 256 * 1024 * 1024
/** Bricks repaired at once by one node. */
export const repairBricksInFlightMax = 4
/** Under-replicated bricks left to another holder that one scan reports for a later check; beyond this, the periodic scan finds them. */
export const repairDeferredBricksMax = 100_000

export interface RepairOptions extends AbortOptions {
  bytesPerSecond?: number
  /** Check only these bricks (those held here) instead of every local brick. */
  bricks?: readonly CID[]
  /** Repair under-replicated bricks even when a live holder with a smaller id was expected to: it did not. */
  takeOver?: boolean
  onProgress?(progress: { scanned: number; replicasAdded: number }): void
}

export interface RepairReport {
  /** Local bricks looked at. */
  scanned: number
  /** Of those, how many had fewer live replicas than required. */
  underReplicated: number
  /** New replicas written to other nodes by this node. */
  replicasAdded: number
  bytesCopied: number
  /** Under-replicated bricks this node could not bring back to r (not enough live nodes, or the copies failed). */
  stillUnderReplicated: number
  /** Local copies dropped as corrupt and fetched back from another replica. */
  localCopiesRestored: number
  /**
   * Under-replicated bricks left to a live holder with a smaller id, with this node's rank among
   * the live holders (1 = second smallest). Check them again with `takeOver` after a delay that
   * grows with the rank, so that the holders do not all copy at once.
   */
  deferred: { cid: CID; rank: number }[]
}

export interface RepairComponents {
  store: BlockStore
  peers: BrickPeers
  /** The default; bricks listed in `replicaCounts` ask for their own. */
  replicaCount: number
  replicaCounts: ReplicaCounts
  clock: Clock
  sleep: Sleep
}

export async function repairScan(
  components: RepairComponents,
  options: RepairOptions = {},
): Promise<RepairReport> {
  const { store, peers, replicaCount, replicaCounts } = components
  const { signal } = options
  const limiter = createRateLimiter(components, {
    bytesPerSecond: options.bytesPerSecond ?? repairBytesPerSecondDefault,
  })
  const self = peers.self
  const report: RepairReport = {
    scanned: 0,
    underReplicated: 0,
    replicasAdded: 0,
    bytesCopied: 0,
    stillUnderReplicated: 0,
    localCopiesRestored: 0,
    deferred: [],
  }

  async function repairOne(cid: CID): Promise<void> {
    const live = peers.liveNodes()
    const liveSet = new Set(live)
    const holders = (await peers.findProviders(cid, { signal })).filter((node) => liveSet.has(node))
    if (!holders.includes(self)) holders.push(self)
    const wanted = replicaCounts.get(cid)
    const required = requiredReplicas(wanted ?? replicaCount, live.length)
    if (holders.length >= required) return
    report.underReplicated++
    // One holder repairs, the others leave it: the one with the smallest id.
    const rank = [...holders].sort().indexOf(self)
    if (rank > 0 && options.takeOver !== true) {
      if (report.deferred.length < repairDeferredBricksMax) report.deferred.push({ cid, rank })
      return
    }
    // A corrupt copy is dropped; another holder repairs it, and ours is fetched back from there.
    const { bytes } = await readLocalCopy(store, peers, cid, { signal })
    if (bytes === undefined) return
    const candidates = replicaCandidates({
      self,
      live,
      holders,
      count: required - holders.length,
      stripe: stripeOfCid(cid),
    })
    let added = 0
    for (const node of candidates) {
      if (holders.length + added >= required) break
      await limiter.take(bytes.length, signal)
      try {
        await peers.store(node, cid, bytes, { signal, replicaCount: wanted })
        added++
        report.bytesCopied += bytes.length
      } catch (error) {
        if (!(error instanceof BrickPeerUnreachableError)) throw error
      }
    }
    report.replicasAdded += added
    if (holders.length + added < required) report.stillUnderReplicated++
  }

  async function* only(cids: readonly CID[]): AsyncIterable<CID> {
    for (const cid of cids) if (await store.has(cid, { signal })) yield cid
  }
  const scanned = options.bricks === undefined ? store.list({ signal }) : only(options.bricks)
  await forEachLimited(scanned, repairBricksInFlightMax, async (cid) => {
    report.scanned++
    await repairOne(cid)
    options.onProgress?.({ scanned: report.scanned, replicasAdded: report.replicasAdded })
  })
  return report
}
