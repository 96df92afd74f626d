/**
 * A bounded cache of bricks in memory, least recently used out first: what a browser node keeps of
 * the bricks it read, so that reading a file again costs no transfer. Only bricks whose bytes
 * matched their hash go in (the caller checks). A cached brick is a copy, never a replica: nothing
 * here is announced or counted toward a brick's r.
 *
 *   const cache = createBrickCache({ bytesMax: 64 * 1024 * 1024 })
 *   cache.put(cid, bytes)
 *   cache.get(cid)   // the bytes, now the most recently used; undefined when not cached
 */

import type { CID } from './brick.ts'
import { StorageArgumentError } from './errors.ts'

/** Bytes of bricks a browser node keeps by default: a few files' worth, small beside a tab's memory. */
export const brickCacheBytesMaxDefault = 64 * 1024 * 1024

export interface BrickCacheOptions {
  /** Most bytes of brick content held; default {@link brickCacheBytesMaxDefault}. */
  bytesMax?: number
}

export interface BrickCacheStats {
  bricks: number
  bytes: number
  bytesMax: number
  /** Bricks pushed out to make room. */
  evicted: number
}

export interface BrickCache {
  /** The cached bytes, marked most recently used; undefined when not cached. */
  get(cid: CID): Uint8Array | undefined
  has(cid: CID): boolean
  /** Keeps `bytes`, evicting the least recently used bricks beyond the limit; a brick larger than the whole limit is not kept. */
  put(cid: CID, bytes: Uint8Array): void
  delete(cid: CID): boolean
  stats(): BrickCacheStats
}

export function createBrickCache(options: BrickCacheOptions = {}): BrickCache {
  const bytesMax = options.bytesMax ?? brickCacheBytesMaxDefault
  if (!Number.isSafeInteger(bytesMax) || bytesMax < 0)
    throw new StorageArgumentError(
      `Expected the brick cache's bytesMax to be a whole number from 0 up, got ${bytesMax}`,
    )
  /** Insertion order is recency order: the first entry is the least recently used. */
  const entries = new Map<string, Uint8Array>()
  let bytes = 0
  let evicted = 0

  function remove(key: string): boolean {
    const held = entries.get(key)
    if (held === undefined) return false
    entries.delete(key)
    bytes -= held.length
    return true
  }

  return {
    get(cid) {
      const key = cid.toString()
      const held = entries.get(key)
      if (held === undefined) return undefined
      entries.delete(key)
      entries.set(key, held)
      return held
    },
    has: (cid) => entries.has(cid.toString()),
    put(cid, value) {
      const key = cid.toString()
      remove(key)
      if (value.length > bytesMax) return
      while (bytes + value.length > bytesMax) {
        remove(entries.keys().next().value!)
        evicted++
      }
      entries.set(key, value)
      bytes += value.length
    },
    delete: (cid) => remove(cid.toString()),
    stats: () => ({ bricks: entries.size, bytes, bytesMax, evicted }),
  }
}
