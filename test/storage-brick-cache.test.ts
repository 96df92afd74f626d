/**
 * The brick cache of browser nodes (`storage/brick-cache.ts`): bounded in bytes, least recently
 * used out first.
 */

import { describe, expect, it } from 'vitest'
import { brickCid, type CID } from '../storage/brick.ts'
import { createBrickCache } from '../storage/brick-cache.ts'
import { StorageArgumentError } from '../storage/errors.ts'

async function brickOf(length: number, fill: number): Promise<{ cid: CID; bytes: Uint8Array }> {
  const bytes = new Uint8Array(length).fill(fill)
  return { cid: await brickCid(bytes), bytes }
}

describe('createBrickCache', () => {
  it('keeps bricks up to bytesMax and evicts the least recently used first', async () => {
    const cache = createBrickCache({ bytesMax: 300 })
    const [a, b, c, d] = await Promise.all([
      brickOf(100, 1),
      brickOf(100, 2),
      brickOf(100, 3),
      brickOf(100, 4),
    ])
    cache.put(a!.cid, a!.bytes)
    cache.put(b!.cid, b!.bytes)
    cache.put(c!.cid, c!.bytes)
    expect(cache.stats()).toEqual({ bricks: 3, bytes: 300, bytesMax: 300, evicted: 0 })
    // Reading a makes b the least recently used.
    expect(cache.get(a!.cid)).toBe(a!.bytes)
    cache.put(d!.cid, d!.bytes)
    expect(cache.has(b!.cid)).toBe(false)
    expect([a, c, d].every((brick) => cache.has(brick!.cid))).toBe(true)
    expect(cache.stats()).toEqual({ bricks: 3, bytes: 300, bytesMax: 300, evicted: 1 })
  })

  it('evicts as many bricks as a large one needs, and never keeps a brick larger than the limit', async () => {
    const cache = createBrickCache({ bytesMax: 300 })
    const small = await Promise.all([brickOf(100, 1), brickOf(100, 2), brickOf(100, 3)])
    for (const brick of small) cache.put(brick.cid, brick.bytes)
    const large = await brickOf(250, 9)
    cache.put(large.cid, large.bytes)
    expect(cache.stats()).toMatchObject({ bricks: 1, bytes: 250, evicted: 3 })
    const huge = await brickOf(301, 8)
    cache.put(huge.cid, huge.bytes)
    expect(cache.has(huge.cid)).toBe(false)
    expect(cache.has(large.cid)).toBe(true)
  })

  it('counts a brick put twice once, and delete frees its bytes', async () => {
    const cache = createBrickCache({ bytesMax: 1000 })
    const brick = await brickOf(100, 5)
    cache.put(brick.cid, brick.bytes)
    cache.put(brick.cid, brick.bytes)
    expect(cache.stats()).toMatchObject({ bricks: 1, bytes: 100 })
    expect(cache.delete(brick.cid)).toBe(true)
    expect(cache.delete(brick.cid)).toBe(false)
    expect(cache.get(brick.cid)).toBeUndefined()
    expect(cache.stats()).toMatchObject({ bricks: 0, bytes: 0 })
  })

  it('refuses a limit that is not a whole number of bytes', () => {
    expect(() => createBrickCache({ bytesMax: -1 })).toThrow(StorageArgumentError)
    expect(() => createBrickCache({ bytesMax: 1.5 })).toThrow(/bytesMax/)
  })
})
