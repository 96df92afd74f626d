/**
 * The replica count each brick asks for, when it is not the cluster default: files can ask for more
 * (or fewer) copies than the default, and every holder of a brick remembers how many, so that
 * repair and rebalancing keep that many after the writer is gone. When two files share a brick
 * (same content), the larger count wins.
 *
 *   const counts = await openDiskReplicaCounts({ directory: join(dataDir, 'replica-counts') })
 *   await counts.raise(cid, 5)
 *   counts.get(cid)   // 5; undefined for bricks that use the default
 */

import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { CID } from './brick.ts'
import { StorageArgumentError } from './errors.ts'

/** Most replicas a brick may ask for. */
export const replicaCountMax = 16

export interface ReplicaCounts {
  get(cid: CID): number | undefined
  /** Records `count` unless a larger count is recorded already. */
  raise(cid: CID, count: number): Promise<void>
  forget(cid: CID): Promise<void>
}

export function checkReplicaCount(count: number): void {
  if (!Number.isInteger(count) || count < 1 || count > replicaCountMax)
    throw new StorageArgumentError(`Expected a replica count from 1 to ${replicaCountMax}, got ${count}`)
}

export function createMemoryReplicaCounts(): ReplicaCounts {
  const counts = new Map<string, number>()
  return {
    get: (cid) => counts.get(cid.toString()),
    async raise(cid, count) {
      checkReplicaCount(count)
      const key = cid.toString()
      if ((counts.get(key) ?? 0) < count) counts.set(key, count)
    },
    async forget(cid) {
      counts.delete(cid.toString())
    },
  }
}

/**
 * Node adapter: one small file per brick with a recorded count, `<directory>/<cid>`, written to a
 * temporary name and renamed; all read into memory when opened.
 */
export async function openDiskReplicaCounts(options: { directory: string }): Promise<ReplicaCounts> {
  const { directory } = options
  mkdirSync(directory, { recursive: true })
  const counts = new Map<string, number>()
  for (const name of readdirSync(directory)) {
    if (name.endsWith('.tmp')) {
      rmSync(join(directory, name), { force: true })
      continue
    }
    const count = Number(readFileSync(join(directory, name), 'utf8'))
    if (Number.isInteger(count) && count >= 1 && count <= replicaCountMax) counts.set(name, count)
  }
  let temporaryCounter = 0
  return {
    get: (cid) => counts.get(cid.toString()),
    async raise(cid, count) {
      checkReplicaCount(count)
      const key = cid.toString()
      if ((counts.get(key) ?? 0) >= count) return
      counts.set(key, count)
      const temporary = join(directory, `${key}.${temporaryCounter++}.tmp`)
      await writeFile(temporary, String(count))
      await rename(temporary, join(directory, key))
    },
    async forget(cid) {
      const key = cid.toString()
      if (!counts.delete(key)) return
      await rm(join(directory, key), { force: true })
    },
  }
}
