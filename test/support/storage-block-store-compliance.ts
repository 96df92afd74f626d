/**
 * The compliance suite every block store passes (memory, disk, and later IndexedDB): what a caller
 * of `BlockStore` may rely on, written as specifications.
 */

import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import { afterEach, describe, expect, it } from 'vitest'
import type { BlockStore } from '../../storage/block-store.ts'
import { brickCid } from '../../storage/brick.ts'
import { BrickCorruptError, StorageArgumentError } from '../../storage/errors.ts'

export interface BlockStoreUnderTest {
  store: BlockStore
  /** Replaces the stored bytes of a brick behind the store's back, as a failing disk would. */
  damage(cid: CID, bytes: Uint8Array): Promise<void>
}

export function blockStoreCompliance(name: string, open: () => Promise<BlockStoreUnderTest>): void {
  describe(`${name}: block store compliance`, () => {
    const opened: BlockStore[] = []
    async function fresh(): Promise<BlockStoreUnderTest> {
      const underTest = await open()
      opened.push(underTest.store)
      return underTest
    }
    afterEach(async () => {
      for (const store of opened.splice(0)) await store.close()
    })

    function bytesOf(text: string): Uint8Array {
      return new TextEncoder().encode(text)
    }

    it('put then get returns the same bytes; put says whether the brick was new', async () => {
      const { store } = await fresh()
      const bytes = bytesOf('hello bricks')
      const cid = await brickCid(bytes)
      expect(await store.put(cid, bytes)).toBe(true)
      expect(await store.put(cid, bytes)).toBe(false)
      expect(await store.get(cid)).toEqual(bytes)
      expect(await store.has(cid)).toBe(true)
    })

    it('get and has of an absent brick answer undefined and false', async () => {
      const { store } = await fresh()
      const cid = await brickCid(bytesOf('never stored'))
      expect(await store.get(cid)).toBeUndefined()
      expect(await store.has(cid)).toBe(false)
      expect(await store.delete(cid)).toBe(false)
    })

    it('the empty brick and a multi-megabyte brick are stored like any other', async () => {
      const { store } = await fresh()
      const empty = new Uint8Array(0)
      const large = new Uint8Array(3 * 1024 * 1024)
      for (let index = 0; index < large.length; index++) large[index] = (index * 31) & 0xff
      for (const bytes of [empty, large]) {
        const cid = await brickCid(bytes)
        await store.put(cid, bytes)
        // Buffer comparison: element-wise deep equality of megabytes is slow.
        expect(Buffer.from((await store.get(cid))!).equals(bytes)).toBe(true)
      }
    })

    it('put checks the hash: bytes that do not match the name are refused and not stored', async () => {
      const { store } = await fresh()
      const cid = await brickCid(bytesOf('the real bytes'))
      await expect(store.put(cid, bytesOf('other bytes'))).rejects.toBeInstanceOf(BrickCorruptError)
      expect(await store.has(cid)).toBe(false)
      expect(store.stats()).toEqual({ bricks: 0, bytes: 0 })
    })

    it('get checks the hash: a damaged copy is dropped and reported as BrickCorruptError', async () => {
      const { store, damage } = await fresh()
      const bytes = bytesOf('soon to be damaged')
      const cid = await brickCid(bytes)
      await store.put(cid, bytes)
      await damage(cid, bytesOf('soon to be damagEd'))
      const error = await store.get(cid).catch((caught: unknown) => caught)
      expect(error).toBeInstanceOf(BrickCorruptError)
      expect((error as BrickCorruptError).cid).toBe(cid.toString())
      expect(await store.has(cid)).toBe(false)
      expect(store.stats().bricks).toBe(0)
      // The good bytes can be put back (repair from another replica).
      expect(await store.put(cid, bytes)).toBe(true)
      expect(await store.get(cid)).toEqual(bytes)
    })

    it('names that are not raw sha2-256 CIDv1 are refused', async () => {
      const { store } = await fresh()
      const bytes = bytesOf('x')
      const dagCbor = CID.createV1(0x71, await sha256.digest(bytes))
      await expect(store.put(dagCbor, bytes)).rejects.toBeInstanceOf(StorageArgumentError)
      await expect(store.get(dagCbor)).rejects.toBeInstanceOf(StorageArgumentError)
    })

    it('delete removes a brick; list and stats follow puts and deletes', async () => {
      const { store } = await fresh()
      const cids: CID[] = []
      let bytesTotal = 0
      for (let i = 0; i < 20; i++) {
        const bytes = bytesOf(`brick number ${i} `.repeat(i + 1))
        const cid = await brickCid(bytes)
        await store.put(cid, bytes)
        cids.push(cid)
        bytesTotal += bytes.length
      }
      expect(store.stats()).toEqual({ bricks: 20, bytes: bytesTotal })
      const removed = cids.splice(0, 5)
      for (const cid of removed) {
        bytesTotal -= (await store.get(cid))!.length
        expect(await store.delete(cid)).toBe(true)
      }
      const listed: string[] = []
      for await (const cid of store.list()) listed.push(cid.toString())
      expect(listed.sort()).toEqual(cids.map(String).sort())
      expect(store.stats()).toEqual({ bricks: 15, bytes: bytesTotal })
    })

    it('concurrent puts of one brick store it once and exactly one reports it new', async () => {
      const { store } = await fresh()
      const bytes = bytesOf('raced')
      const cid = await brickCid(bytes)
      const results = await Promise.all(Array.from({ length: 8 }, () => store.put(cid, bytes)))
      expect(results.filter(Boolean)).toHaveLength(1)
      expect(store.stats()).toEqual({ bricks: 1, bytes: bytes.length })
    })

    it('bytes returned by get are the caller’s: changing them does not change the store', async () => {
      const { store } = await fresh()
      const bytes = bytesOf('mine')
      const cid = await brickCid(bytes)
      await store.put(cid, bytes)
      bytes[0] = 0
      const read = (await store.get(cid))!
      read[1] = 0
      expect(new TextDecoder().decode((await store.get(cid))!)).toBe('mine')
    })

    it('an aborted signal stops put before it writes', async () => {
      const { store } = await fresh()
      const bytes = bytesOf('aborted')
      const cid = await brickCid(bytes)
      await expect(store.put(cid, bytes, { signal: AbortSignal.abort() })).rejects.toThrow()
      expect(await store.has(cid)).toBe(false)
    })
  })
}
