import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createMemoryBlockStore } from '../storage/block-store.ts'
import { diskBrickPath, openDiskBlockStore } from '../storage/block-store-disk.ts'
import { brickCid } from '../storage/brick.ts'
import { BlockStoreError } from '../storage/errors.ts'
import { blockStoreCompliance } from './support/storage-block-store-compliance.ts'

const root = mkdtempSync(join(tmpdir(), 'fabric-block-store-'))
let counter = 0
afterAll(() => rmSync(root, { recursive: true, force: true }))

blockStoreCompliance('memory block store', async () => {
  const store = createMemoryBlockStore()
  return { store, damage: async (cid, bytes) => store.damage(cid, bytes) }
})

blockStoreCompliance('disk block store', async () => {
  const directory = join(root, `compliance-${counter++}`)
  const store = await openDiskBlockStore({ directory, syncWrites: false })
  return { store, damage: async (cid, bytes) => writeFileSync(diskBrickPath(directory, cid), bytes) }
})

describe('disk block store', () => {
  it('keeps bricks across a close and reopen, with the same counts', async () => {
    const directory = join(root, 'restart')
    const first = await openDiskBlockStore({ directory })
    const bytes = new TextEncoder().encode('survives restarts')
    const cid = await brickCid(bytes)
    await first.put(cid, bytes)
    await first.close()
    const second = await openDiskBlockStore({ directory })
    expect(await second.get(cid)).toEqual(bytes)
    expect(second.stats()).toEqual({ bricks: 1, bytes: bytes.length })
    await second.close()
  })

  it('removes half-written bricks left by a crash when it opens', async () => {
    const directory = join(root, 'crash')
    const store = await openDiskBlockStore({ directory })
    await store.close()
    writeFileSync(join(directory, '.tmp', 'half-written'), 'partial')
    const reopened = await openDiskBlockStore({ directory })
    expect(readdirSync(join(directory, '.tmp'))).toEqual([])
    expect(reopened.stats()).toEqual({ bricks: 0, bytes: 0 })
    await reopened.close()
  })

  it('refuses a non-empty directory that is not a brick store', async () => {
    const directory = join(root, 'foreign')
    mkdirSync(directory)
    writeFileSync(join(directory, 'notes.txt'), 'mine')
    await expect(openDiskBlockStore({ directory })).rejects.toBeInstanceOf(BlockStoreError)
    expect(existsSync(join(directory, '.tmp'))).toBe(false)
  })
})
