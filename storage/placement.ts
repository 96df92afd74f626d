/**
 * Where replicas go and where reads come from: pure functions of the live nodes, the current
 * holders and a stripe number.
 *
 * A file's chunk i is written with stripe number `seed + i`, where `seed` comes from the file, so
 * successive chunks start their replica sets on successive nodes (striping) and different files
 * start at different nodes. The writing node keeps one replica of what it writes. Reads take a
 * local copy when there is one, and otherwise rotate over the holders by the same stripe number,
 * so a sequential read of a striped file pulls from every holder in parallel.
 */

import type { CID } from './brick.ts'
import type { NodeId } from './platform-types.ts'

/** Replicas per brick unless configured otherwise. */
export const replicaCountDefault = 3

export interface ReplicaChoice {
  self: NodeId
  live: readonly NodeId[]
  /** Nodes that already hold the brick; they are not chosen again. */
  holders?: readonly NodeId[]
  /** How many new replicas to place. */
  count: number
  stripe: number
  /** Put one of the new replicas on `self` when it is live and not yet a holder. Default true. */
  preferSelf?: boolean
}

/**
 * Up to `count` distinct live nodes to place new replicas on, in order of preference: `self` first
 * (when asked), then the other live nodes in id order rotated by the stripe number. The candidates
 * after the first `count` are the fallbacks when a chosen node fails.
 */
export function replicaCandidates(choice: ReplicaChoice): NodeId[] {
  const holders = new Set(choice.holders ?? [])
  const preferSelf = choice.preferSelf ?? true
  const first: NodeId[] = []
  if (preferSelf && choice.live.includes(choice.self) && !holders.has(choice.self)) first.push(choice.self)
  const others = [...new Set(choice.live)].filter((node) => node !== choice.self && !holders.has(node)).sort()
  if (others.length === 0) return first
  // Each stripe advances by the number of remote replicas, so consecutive chunks use disjoint node sets while they can.
  const remotePerStripe = Math.max(1, choice.count - first.length)
  const start = mod(choice.stripe * remotePerStripe, others.length)
  const rotated = [...others.slice(start), ...others.slice(0, start)]
  if (!preferSelf && choice.live.includes(choice.self) && !holders.has(choice.self)) rotated.push(choice.self)
  return [...first, ...rotated]
}

/** The order in which to try the holders of a brick when reading: this node first, then rotated by stripe. */
export function readOrder(self: NodeId, holders: readonly NodeId[], stripe: number): NodeId[] {
  const others = [...new Set(holders)].filter((node) => node !== self).sort()
  const start = others.length === 0 ? 0 : mod(stripe, others.length)
  const rotated = [...others.slice(start), ...others.slice(0, start)]
  return holders.includes(self) ? [self, ...rotated] : rotated
}

/** A stripe number for bricks that are not part of a file's run of chunks (manifests, listings): from the digest. */
export function stripeOfCid(cid: CID): number {
  const digest = cid.multihash.digest
  return ((digest[0]! << 16) | (digest[1]! << 8) | digest[2]!) >>> 0
}

/** A stripe seed for a file, from its id, so that different files start on different nodes. */
export function stripeSeedOf(id: string): number {
  // FNV-1a: any even spread will do, it only has to be the same everywhere.
  let hash = 0x811c9dc5
  for (let i = 0; i < id.length; i++) hash = Math.imul(hash ^ id.charCodeAt(i), 0x01000193)
  return (hash >>> 0) & 0xffffff
}

/** The replica count actually required when fewer nodes than asked for are live. */
export function requiredReplicas(replicaCount: number, liveCount: number): number {
  return Math.max(1, Math.min(replicaCount, liveCount))
}

function mod(value: number, modulus: number): number {
  return ((value % modulus) + modulus) % modulus
}
