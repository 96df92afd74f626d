/**
 * Placement: which node runs a new thread. Each live server node gets a weight of its cores times
 * its measured speed, divided by one plus the threads it already runs per core; a node twice as fast
 * thus gets about twice the threads. Threads of one context group go to nodes that run (or ran)
 * threads of the group while those have room (`groupThreadsPerCoreMax`), so a group fills the fewest
 * nodes; only then does it take another node. The choice is random in proportion to the weights,
 * from an injected source.
 */

import type { Random } from '../platform.ts'
import type { NodeId, PeerInfo } from './services.ts'

/**
 * Threads of one context group a node takes per core before the group spills to another node: the
 * group stays close, yet a large group still gets the cores of several nodes.
 */
export const groupThreadsPerCoreMax = 2

export interface PlacementInput {
  candidates: readonly PeerInfo[]
  /** Threads each node runs now, as far as the placer knows. */
  load: ReadonlyMap<NodeId, number>
  /**
   * Threads of the new thread's context group on each node that runs or ran some (0: all ended
   * there), as far as the placer knows.
   */
  groupThreads?: ReadonlyMap<NodeId, number>
  random: Random
}

export function nodeWeight(peer: PeerInfo, threads: number): number {
  const cores = Math.max(1, peer.capacity.cores)
  const speed = Math.max(1e-6, peer.capacity.speedScore)
  return (cores * speed) / (1 + threads / cores)
}

function groupRoom(peer: PeerInfo): number {
  return Math.max(1, peer.capacity.cores) * groupThreadsPerCoreMax
}

/**
 * Where a thread of the group goes: a node that runs or ran threads of the group and has room for
 * one more of them; when there is none, a node the group has not filled (a new one).
 */
function groupPool(candidates: readonly PeerInfo[], groupThreads: ReadonlyMap<NodeId, number>): PeerInfo[] {
  const near = candidates.filter((peer) => {
    const threads = groupThreads.get(peer.id)
    return threads !== undefined && threads < groupRoom(peer)
  })
  if (near.length > 0) return near
  return candidates.filter((peer) => (groupThreads.get(peer.id) ?? 0) < groupRoom(peer))
}

export function chooseNode(input: PlacementInput): NodeId {
  // Browser nodes run no threads yet (they are storage clients and caches only).
  let pool = input.candidates.filter((peer) => peer.kind === 'server')
  if (pool.length === 0) throw new Error('no live server node to place a thread on')
  if (input.groupThreads !== undefined) {
    const group = groupPool(pool, input.groupThreads)
    if (group.length > 0) pool = group
  }
  const weights = pool.map((peer) => nodeWeight(peer, input.load.get(peer.id) ?? 0))
  const total = weights.reduce((sum, weight) => sum + weight, 0)
  let pick = input.random.next() * total
  for (let index = 0; index < pool.length; index++) {
    pick -= weights[index]!
    if (pick < 0) return pool[index]!.id
  }
  return pool[pool.length - 1]!.id
}

/** `count` nodes other than `self` to hold a thread's saves: the next ones after `self` in id order. */
export function chooseSaveReplicas(self: NodeId, candidates: readonly PeerInfo[], count: number): NodeId[] {
  const others = candidates
    .filter((peer) => peer.id !== self && peer.kind === 'server')
    .map((peer) => peer.id)
    .sort()
  const after = others.filter((id) => id > self)
  const before = others.filter((id) => id < self)
  return [...after, ...before].slice(0, count)
}
