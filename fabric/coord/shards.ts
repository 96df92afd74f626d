/**
 * Keys hash into a fixed number of shards, each a prefix range of the XOR keyspace; the replicas
 * of a shard are the live server nodes whose ids hash closest (XOR) to the shard's id.
 */

import { sha256 } from '@noble/hashes/sha2.js'
import type { NodeId } from './register.ts'

export const shardCountDefault = 64
export const replicaCountDefault = 3

const encoder = new TextEncoder()
const pointCache = new Map<string, number>()
const pointCacheEntriesMax = 100_000

/** First 32 bits of sha-256: a position in the keyspace, precise enough to order nodes and shards. */
export function keyspacePoint(text: string): number {
  let point = pointCache.get(text)
  if (point === undefined) {
    const digest = sha256(encoder.encode(text))
    point = ((digest[0]! << 24) | (digest[1]! << 16) | (digest[2]! << 8) | digest[3]!) >>> 0
    if (pointCache.size >= pointCacheEntriesMax) pointCache.clear()
    pointCache.set(text, point)
  }
  return point
}

export function shardOfKey(key: string, shardCount: number): number {
  assertPowerOfTwo(shardCount)
  const bits = Math.log2(shardCount)
  return bits === 0 ? 0 : keyspacePoint(key) >>> (32 - bits)
}

/** The shard's id: the first point of its prefix range. */
export function shardPoint(shard: number, shardCount: number): number {
  const bits = Math.log2(shardCount)
  return bits === 0 ? 0 : (shard << (32 - bits)) >>> 0
}

/** The `count` nodes closest to the shard by XOR distance, ties broken by id; sorted by id. */
export function replicasOfShard(
  shard: number,
  shardCount: number,
  servers: readonly NodeId[],
  count: number,
): NodeId[] {
  return nodesByDistance(shard, shardCount, servers).slice(0, count).sort()
}

/** `nodes` from closest to farthest from the shard's id (XOR distance), ties broken by id. */
export function nodesByDistance(shard: number, shardCount: number, nodes: readonly NodeId[]): NodeId[] {
  const target = shardPoint(shard, shardCount)
  return [...nodes]
    .map((id) => ({ id, distance: (keyspacePoint(id) ^ target) >>> 0 }))
    .sort((a, b) => a.distance - b.distance || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .map((entry) => entry.id)
}

function assertPowerOfTwo(count: number): void {
  if (!Number.isInteger(count) || count < 1 || (count & (count - 1)) !== 0)
    throw new Error(`shard count must be a power of two, got ${count}`)
}
