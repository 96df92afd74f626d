/**
 * Placement: which node runs a new thread. Each live server node gets a weight of its cores times
 * its measured speed, divided by one plus the threads it already runs per core; a node twice as fast
 * thus gets about twice the threads. Threads of one context group prefer nodes that already run
 * threads of the group. The choice is random in proportion to the weights, from an injected source.
 */

import type { Random } from '../platform.ts'
import type { NodeId, PeerInfo } from './services.ts'

/** Weight multiplier for a node already running threads of the same context group. */
export const groupAffinityFactor = 4

export interface PlacementInput {
  candidates: readonly PeerInfo[]
  /** Threads each node runs now, as far as the placer knows. */
  load: ReadonlyMap<NodeId, number>
  /** Nodes that run threads of the new thread's context group. */
  groupNodes?: ReadonlySet<NodeId>
  random: Random
}

export function nodeWeight(peer: PeerInfo, threads: number, inGroup: boolean): number {
  const cores = Math.max(1, peer.capacity.cores)
  const speed = Math.max(1e-6, peer.capacity.speedScore)
  const weight = (cores * speed) / (1 + threads / cores)
  return inGroup ? weight * groupAffinityFactor : weight
}

export function chooseNode(input: PlacementInput): NodeId {
  const servers = input.candidates.filter((peer) => peer.kind === 'server')
  const pool = servers.length > 0 ? servers : input.candidates
  if (pool.length === 0) throw new Error('no live node to place a thread on')
  const weights = pool.map((peer) =>
    nodeWeight(peer, input.load.get(peer.id) ?? 0, input.groupNodes?.has(peer.id) ?? false),
  )
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
