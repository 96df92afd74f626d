/**
 * Node adapter: a block store in a directory of the node's data dir, kept across restarts.
 *
 *   const store = await openDiskBlockStore({ directory: join(dataDir, 'bricks') })
 *
 * Layout: `<directory>/<xy>/<cid>`, where `xy` are the two characters before the last of the CID's
 * base32 form (digest bytes, so evenly spread), which keeps directories small. A brick is written
 * to `<directory>/.tmp/` first and renamed into place, so a crash leaves either the whole brick or
 * none of it; leftovers in `.tmp` are removed when the store opens. With `syncWrites` (the default)
 * the file and its directory are flushed before `put` resolves, so a brick survives power loss too.
 */

import { randomBytes } from 'node:crypto'
import { mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { assertBrickCid, type BlockStore, type BlockStoreStats } from './block-store.ts'
import { type CID, parseBrickCid, verifyBrick } from './brick.ts'
import { BlockStoreError, BrickCorruptError, StorageArgumentError } from './errors.ts'

const markerFileName = 'FABRIC-BRICKS'
const markerContents = 'fabric brick store, format 1\n'
const temporaryDirectoryName = '.tmp'

export interface DiskBlockStoreOptions {
  directory: string
  /** Flush each brick and its directory to stable storage before `put` resolves. Default true. */
  syncWrites?: boolean
  /** Named in errors about corrupt copies; default the directory. */
  label?: string
}

/** Where a brick lives in a disk block store, for tools and tests that inspect the disk. */
export function diskBrickPath(directory: string, cid: CID): string {
  const name = cid.toString()
  return join(directory, shardOf(name), name)
}

function shardOf(name: string): string {
  return name.slice(-3, -1)
}

/** Opens (creating when absent) a disk block store and counts what it holds. */
export async function openDiskBlockStore(options: DiskBlockStoreOptions): Promise<BlockStore> {
  const { directory } = options
  const syncWrites = options.syncWrites ?? true
  const label = options.label ?? directory
  prepareDirectory(directory)
  const temporaryDirectory = join(directory, temporaryDirectoryName)
  const counted = countBricks(directory)
  let brickCount = counted.bricks
  let bytesTotal = counted.bytes
  let temporaryCounter = 0
  const temporaryPrefix = randomBytes(6).toString('hex')
  const shardsMade = new Set<string>()
  /** Puts and deletes in progress per brick, so that concurrent calls on one brick take turns. */
  const busy = new Map<string, Promise<unknown>>()
  let closed = false

  function checkOpen(): void {
    if (closed) throw new StorageArgumentError(`block store ${label} is closed`)
  }

  async function exclusive<T>(key: string, run: () => Promise<T>): Promise<T> {
    for (;;) {
      const previous = busy.get(key)
      if (previous === undefined) break
      await previous.catch(() => {})
    }
    const promise = run()
    busy.set(key, promise)
    try {
      return await promise
    } finally {
      if (busy.get(key) === promise) busy.delete(key)
    }
  }

  async function fileSize(path: string): Promise<number | undefined> {
    try {
      return (await stat(path)).size
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw error
    }
  }

  async function syncDirectory(path: string): Promise<void> {
    const handle = await open(path, 'r')
    try {
      await handle.sync()
    } finally {
      await handle.close()
    }
  }

  const store: BlockStore = {
    async put(cid, bytes, callOptions) {
      checkOpen()
      callOptions?.signal?.throwIfAborted()
      assertBrickCid(cid)
      await verifyBrick(cid, bytes, `a write to ${label}`)
      const name = cid.toString()
      return exclusive(name, async () => {
        const path = diskBrickPath(directory, cid)
        if ((await fileSize(path)) !== undefined) return false
        const shard = shardOf(name)
        if (!shardsMade.has(shard)) {
          await mkdir(join(directory, shard), { recursive: true })
          shardsMade.add(shard)
        }
        const temporaryPath = join(temporaryDirectory, `${temporaryPrefix}-${temporaryCounter++}`)
        const handle = await open(temporaryPath, 'wx')
        try {
          await handle.writeFile(bytes)
          if (syncWrites) await handle.sync()
        } finally {
          await handle.close()
        }
        await rename(temporaryPath, path)
        if (syncWrites) await syncDirectory(join(directory, shard))
        brickCount++
        bytesTotal += bytes.length
        return true
      })
    },

    async get(cid, callOptions) {
      checkOpen()
      assertBrickCid(cid)
      const path = diskBrickPath(directory, cid)
      let bytes: Uint8Array
      try {
        bytes = await readFile(path, { signal: callOptions?.signal })
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
        throw error
      }
      try {
        await verifyBrick(cid, bytes, label)
      } catch (error) {
        if (error instanceof BrickCorruptError) await store.delete(cid)
        throw error
      }
      return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    },

    async has(cid) {
      checkOpen()
      assertBrickCid(cid)
      return (await fileSize(diskBrickPath(directory, cid))) !== undefined
    },

    async delete(cid) {
      checkOpen()
      assertBrickCid(cid)
      const name = cid.toString()
      return exclusive(name, async () => {
        const path = diskBrickPath(directory, cid)
        const size = await fileSize(path)
        if (size === undefined) return false
        try {
          await unlink(path)
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false
          throw error
        }
        brickCount--
        bytesTotal -= size
        return true
      })
    },

    async *list(callOptions) {
      checkOpen()
      for (const shard of await readdir(directory)) {
        if (shard.length !== 2) continue
        let names: string[]
        try {
          names = await readdir(join(directory, shard))
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue
          throw error
        }
        for (const name of names) {
          callOptions?.signal?.throwIfAborted()
          yield parseBrickCid(name)
        }
      }
    },

    stats: (): BlockStoreStats => ({ bricks: brickCount, bytes: bytesTotal }),

    async close() {
      closed = true
      await Promise.allSettled([...busy.values()])
      await rm(temporaryDirectory, { recursive: true, force: true })
      mkdirSync(temporaryDirectory, { recursive: true })
    },
  }
  return store
}

function prepareDirectory(directory: string): void {
  try {
    mkdirSync(directory, { recursive: true })
    const entries = readdirSync(directory)
    const marker = join(directory, markerFileName)
    if (entries.includes(markerFileName)) {
      // A crash may leave half-written bricks in the temporary directory; they were never renamed into place.
      rmSync(join(directory, temporaryDirectoryName), { recursive: true, force: true })
    } else if (entries.length === 0) {
      writeFileSync(marker, markerContents)
    } else {
      throw new BlockStoreError(
        `${directory} is not empty and is not a brick store (no ${markerFileName} file); choose an empty directory`,
      )
    }
    mkdirSync(join(directory, temporaryDirectoryName), { recursive: true })
  } catch (error) {
    if (error instanceof BlockStoreError) throw error
    throw new BlockStoreError(`cannot use ${directory} as a brick store: ${(error as Error).message}`)
  }
}

function countBricks(directory: string): BlockStoreStats {
  let bricks = 0
  let bytes = 0
  for (const shard of readdirSync(directory)) {
    if (shard.length !== 2) continue
    for (const name of readdirSync(join(directory, shard))) {
      bricks++
      bytes += statSync(join(directory, shard, name)).size
    }
  }
  return { bricks, bytes }
}
