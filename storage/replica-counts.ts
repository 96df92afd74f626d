/**
 * The replica count each brick asks for, when it is not the cluster default: files can ask for more
 * (or fewer) copies than the default, and every holder of a brick remembers how many, so that
 * repair and rebalancing keep that many after the writer is gone. When two files share a brick
 * (same content), the larger count wins. This file has no Node import (a browser node checks
 * counts too); the disk adapter is `replica-counts-disk.ts`.
 *
 *   const counts = await openDiskReplicaCounts({ directory: join(dataDir, 'replica-counts') })   // replica-counts-disk.ts
 *   await counts.raise(cid, 5)
 *   counts.get(cid)   // 5; undefined for bricks that use the default
 */

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
