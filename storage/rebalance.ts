/**
 * Rebalancing: a node that holds more than its share of bytes moves bricks to the emptiest live
 * nodes that do not hold them yet, until it is down to the mean, at a limited rate. A brick that
 * has fewer live replicas than it asks for (a node was lost, repair has not reached it yet) is
 * copied and kept, so rebalancing never moves a brick away from its only other copies.
 *
 * A move is "copy to the target, and only when the target says the copy is new there, drop ours",
 * so a move never lowers a brick's replica count, even when two nodes move the same brick at once.
 * Each node only sheds its own excess over the mean it computed, so the nodes above the mean
 * together move what the nodes below it lack. A pass stops after `bytesMax` and returns a cursor;
 * calling again with it resumes (a restarted node simply starts over, since the loads it reads are
 * the state). A new node therefore fills up without any node coordinating the others.
 */

import type { AbortOptions, BlockStore } from './block-store.ts'
import type { CID } from './brick.ts'
import type { BrickPeers } from './brick-peers.ts'
import { BrickPeerUnreachableError } from './errors.ts'
import { readLocalCopy } from './local-copy.ts'
import { requiredReplicas } from './placement.ts'
import type { Clock, NodeId, Sleep } from './platform-types.ts'
import { createRateLimiter } from './rate-limiter.ts'
import type { ReplicaCounts } from './replica-counts.ts'

/** Bytes per second one node moves when rebalancing, so running programs keep their disk and network. */
export const rebalanceBytesPerSecondDefault = 32 * 1024 * 1024
/** A node sheds bricks only when it holds more than the mean by this fraction; then it sheds down to the mean. */
export const rebalanceToleranceRatio = 0.05
/** Bytes one pass moves before it returns a cursor to resume from. */
export const rebalanceBytesPerPassDefault = 1024 * 1024 * 1024

export interface RebalanceOptions extends AbortOptions {
  bytesPerSecond?: number
  /** Stop after moving this many bytes; default {@link rebalanceBytesPerPassDefault}. */
  bytesMax?: number
  /** Where a previous pass stopped. */
  cursor?: string
}

export interface RebalanceReport {
  moved: number
  /** Bricks short of replicas that were copied to the target and kept here too. */
  copiedShort: number
  bytesMoved: number
  /** True when this node has nothing more to shed; false when the pass stopped at `bytesMax`. */
  done: boolean
  /** Pass it back to resume. */
  cursor?: string
}

export interface RebalanceComponents {
  store: BlockStore
  peers: BrickPeers
  /** The default; bricks listed in `replicaCounts` ask for their own. */
  replicaCount: number
  replicaCounts: ReplicaCounts
  clock: Clock
  sleep: Sleep
}

export async function rebalanceStep(
  components: RebalanceComponents,
  options: RebalanceOptions = {},
): Promise<RebalanceReport> {
  const { store, peers, replicaCounts } = components
  const { signal } = options
  const self = peers.self
  const bytesMax = options.bytesMax ?? rebalanceBytesPerPassDefault
  const limiter = createRateLimiter(components, {
    bytesPerSecond: options.bytesPerSecond ?? rebalanceBytesPerSecondDefault,
  })
  const report: RebalanceReport = { moved: 0, copiedShort: 0, bytesMoved: 0, done: true }
  const live = peers.liveNodes()
  if (!live.includes(self)) return report

  const loads = new Map<NodeId, number>()
  for (const node of live) {
    try {
      loads.set(node, (await peers.stats(node, { signal })).bytes)
    } catch (error) {
      if (!(error instanceof BrickPeerUnreachableError)) throw error
    }
  }
  if (loads.size < 2) return report
  const total = [...loads.values()].reduce((sum, bytes) => sum + bytes, 0)
  const mean = total / loads.size
  if (loads.get(self)! <= mean * (1 + rebalanceToleranceRatio)) return report

  const local: CID[] = []
  for await (const cid of store.list({ signal })) local.push(cid)
  local.sort((a, b) => compareStrings(a.toString(), b.toString()))
  const start = options.cursor === undefined ? 0 : local.findIndex((cid) => cid.toString() > options.cursor!)
  if (start < 0) return report

  for (const cid of local.slice(start)) {
    signal?.throwIfAborted()
    if (loads.get(self)! <= mean) return report
    if (report.bytesMoved >= bytesMax) return { ...report, done: false, cursor: report.cursor }
    report.cursor = cid.toString()
    const holders = new Set(await peers.findProviders(cid, { signal }))
    holders.add(self)
    // A brick short of replicas (a node was lost and repair has not reached it) is copied, not moved.
    const liveHolders = live.filter((node) => holders.has(node)).length
    const underReplicated =
      liveHolders < requiredReplicas(replicaCounts.get(cid) ?? components.replicaCount, live.length)
    const target = emptiest(loads, (node) => node !== self && !holders.has(node))
    if (target === undefined || loads.get(target)! >= mean) continue
    const { bytes } = await readLocalCopy(store, peers, cid, { signal })
    if (bytes === undefined) continue
    await limiter.take(bytes.length, signal)
    let created: boolean
    try {
      created = await peers.store(target, cid, bytes, { signal, replicaCount: replicaCounts.get(cid) })
    } catch (error) {
      if (!(error instanceof BrickPeerUnreachableError)) throw error
      loads.delete(target)
      continue
    }
    // Only a copy that is new at the target may replace ours; otherwise dropping ours would lose a replica.
    if (!created) continue
    if (underReplicated) {
      loads.set(target, loads.get(target)! + bytes.length)
      report.copiedShort++
      continue
    }
    await store.delete(cid, { signal })
    await replicaCounts.forget(cid)
    await peers.withdraw(cid, { signal })
    loads.set(self, loads.get(self)! - bytes.length)
    loads.set(target, loads.get(target)! + bytes.length)
    report.moved++
    report.bytesMoved += bytes.length
  }
  return report
}

function emptiest(loads: Map<NodeId, number>, allowed: (node: NodeId) => boolean): NodeId | undefined {
  let best: NodeId | undefined
  for (const [node, bytes] of loads) {
    if (!allowed(node)) continue
    if (best === undefined || bytes < loads.get(best)! || (bytes === loads.get(best)! && node < best))
      best = node
  }
  return best
}

function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
