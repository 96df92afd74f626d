/**
 * The replica counts on disk (`replica-counts.ts` has the interface and the in-memory version):
 * one small file per brick with a recorded count, kept across restarts.
 *
 *   const counts = await openDiskReplicaCounts({ directory: join(dataDir, 'replica-counts') })
 */

import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { checkReplicaCount, type ReplicaCounts, replicaCountMax } from './replica-counts.ts'

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
