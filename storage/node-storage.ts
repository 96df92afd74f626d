/**
 * Storage inside a fabric node: the node's bricks on its disk, replication to the other storage
 * nodes over libp2p (`brick-peers-libp2p.ts`), the file system with its metadata in the
 * coordination store, the `/fabric/fs/1` service for `fabric fs`, and repair and rebalancing in
 * the background.
 *
 * Background work runs one job at a time and is rate-limited (repair at
 * `repairBytesPerSecondDefault`, rebalancing at `rebalanceBytesPerSecondDefault`): a repair pass
 * starts shortly after a storage node leaves the live list and every `repairIntervalMs` besides; a
 * rebalancing pass (resumed from its cursor until done) starts shortly after a storage node joins
 * and every `rebalanceIntervalMs` besides. A repair that becomes due stops a rebalancing pass in
 * progress and goes first. A storage node that joins while fewer than r were live brings on a
 * repair pass too (bricks written or repaired meanwhile are short, and it can hold them). Bricks
 * a repair pass left to a holder with a smaller id are checked again `repairTakeOverDelayMs`
 * (times this node's rank among their holders) later and repaired here if that holder is not at
 * it (none of a sample of them is whole again), so a loss is repaired within seconds even when
 * that holder restarted and never saw it. A node that starts over an existing data dir announces
 * its bricks again first.
 *
 *   const storage = await startNodeStorage(node, { dataDirectory: './n1' })
 *   await storage.fileSystem.writeFile('/hello.txt', new TextEncoder().encode('hi\n'))
 *   await storage.stop()
 */

import { join } from 'node:path'
import type { FabricNode } from '../fabric/net/node.ts'
import {
  sleep,
  systemClock,
  systemRandom,
  systemTimers,
  type TimerHandle,
  wallClockMs,
} from '../fabric/platform.ts'
import { type BlockStore, createMemoryBlockStore } from './block-store.ts'
import { openDiskBlockStore } from './block-store-disk.ts'
import type { CID } from './brick.ts'
import { type BrickNode, createBrickNode } from './brick-node.ts'
import { type Libp2pBrickNetwork, startLibp2pBrickNetwork } from './brick-peers-libp2p.ts'
import { type FileService, startFileService } from './file-service.ts'
import { createFileSystem, type FileSystem } from './file-system.ts'
import type { MetadataStore } from './metadata-store.ts'
import { coordinationMetadataStore } from './metadata-store-coordination.ts'
import { rebalanceBytesPerSecondDefault } from './rebalance.ts'
import { repairBytesPerSecondDefault } from './repair.ts'
import { createMemoryReplicaCounts } from './replica-counts.ts'
import { openDiskReplicaCounts } from './replica-counts-disk.ts'

/**
 * A full repair scan runs at least this often, besides the one after each loss. A scan looks up
 * the holders of every local brick (a DHT lookup and a check of each holder), so it is not cheap.
 */
export const repairIntervalMsDefault = 600_000
/** A rebalancing check runs at least this often, besides the one after each join. */
export const rebalanceIntervalMsDefault = 30_000
/**
 * How long a holder waits, per rank behind the smallest live holder, before it repairs a brick that
 * the smallest holder was expected to repair and did not.
 */
export const repairTakeOverDelayMs = 3000
/** Bricks a take-over checks first to tell whether the smallest holder is repairing them. */
export const repairTakeOverSampleBricks = 32
/** Wait after a loss or join before acting, so that several changes at once make one pass. */
export const backgroundSettleMs = 500
/** Rebalancing passes in a row before other work gets a turn. */
export const rebalancePassesPerJobMax = 64
/** Bytes one rebalancing pass moves; between passes a repair that became due goes first. */
export const rebalanceBytesPerPassMax = 64 * 1024 * 1024

export interface NodeStorageOptions {
  /** Bricks go to `<dataDirectory>/bricks`, replica counts to `<dataDirectory>/replica-counts`; in memory when absent. */
  dataDirectory?: string
  /** Replicas per brick; default 3. */
  replicaCount?: number
  /** Flush each brick to stable storage before acknowledging it; default true. */
  syncWrites?: boolean
  repairIntervalMs?: number
  rebalanceIntervalMs?: number
  repairBytesPerSecond?: number
  rebalanceBytesPerSecond?: number
  log?: (line: string) => void
}

export interface NodeStorage {
  /** This node's client of the cluster file system (close-to-open consistency, see `file-system.ts`). */
  fileSystem: FileSystem
  /** Where a further file-system client gets its metadata (`createFileSystem({ metadata, bricks, ... })`). */
  metadata: MetadataStore
  bricks: BrickNode
  network: Libp2pBrickNetwork
  /** Runs a repair pass now (after the one in progress). */
  repairNow(): Promise<void>
  /** Runs rebalancing passes until this node has nothing to shed (after the job in progress). */
  rebalanceNow(): Promise<void>
  stop(): Promise<void>
}

export async function startNodeStorage(
  node: FabricNode,
  options: NodeStorageOptions = {},
): Promise<NodeStorage> {
  const log = options.log ?? (() => {})
  const directory = options.dataDirectory
  const store: BlockStore =
    directory === undefined
      ? createMemoryBlockStore({ label: 'bricks' })
      : await openDiskBlockStore({
          directory: join(directory, 'bricks'),
          syncWrites: options.syncWrites ?? true,
        })
  const replicaCounts =
    directory === undefined
      ? createMemoryReplicaCounts()
      : await openDiskReplicaCounts({ directory: join(directory, 'replica-counts') })
  const network = await startLibp2pBrickNetwork({ node, hasLocal: (cid) => store.has(cid), log })
  const bricks = createBrickNode(
    { store, replicaCounts, connect: network.connect, clock: systemClock, sleep },
    { replicaCount: options.replicaCount },
  )
  const metadata = coordinationMetadataStore(node.store)
  const fileSystem = createFileSystem({
    metadata,
    bricks,
    clock: systemClock,
    wallClock: { now: wallClockMs },
    random: systemRandom,
    sleep,
  })
  const fileService: FileService = await startFileService({ node, fileSystem, log })

  // ---- background work, one job at a time
  const stopController = new AbortController()
  const signal = stopController.signal
  let chain: Promise<void> = Promise.resolve()
  const timers: TimerHandle[] = []
  let repairTimer: TimerHandle | undefined
  let repairPending = false
  let rebalancePreempt: AbortController | undefined
  let rebalanceTimer: TimerHandle | undefined

  function enqueue(name: string, job: () => Promise<void>): Promise<void> {
    const run = chain.then(async () => {
      if (signal.aborted) return
      try {
        await job()
      } catch (error) {
        if (!signal.aborted) log(`storage: ${name} failed: ${(error as Error).message}`)
      }
    })
    chain = run
    return run
  }

  async function repair(): Promise<void> {
    repairPending = false
    await repairPass({})
  }

  async function repairPass(scope: { bricks?: CID[]; takeOver?: boolean }): Promise<void> {
    const started = systemClock.now()
    const report = await bricks.repair({
      signal,
      bytesPerSecond: options.repairBytesPerSecond ?? repairBytesPerSecondDefault,
      ...scope,
    })
    if (report.replicasAdded > 0 || report.localCopiesRestored > 0 || report.stillUnderReplicated > 0)
      log(
        `storage: repair${scope.takeOver ? ' (take-over)' : ''} scanned ${report.scanned} bricks in ${Math.round(systemClock.now() - started)} ms: ` +
          `${report.replicasAdded} replicas added (${report.bytesCopied} bytes), ` +
          `${report.localCopiesRestored} corrupt local copies restored, ${report.stillUnderReplicated} still under-replicated`,
      )
    scheduleTakeOvers(report.deferred)
  }

  /** Checks again, later, the bricks left to a smaller holder; those still short are repaired here. */
  function scheduleTakeOvers(deferred: { cid: CID; rank: number }[]): void {
    const byRank = new Map<number, CID[]>()
    for (const { cid, rank } of deferred) {
      const group = byRank.get(rank) ?? []
      group.push(cid)
      byRank.set(rank, group)
    }
    for (const [rank, cids] of byRank) {
      if (signal.aborted) return
      const timer = systemTimers.after(repairTakeOverDelayMs * rank, () => {
        timers.splice(timers.indexOf(timer), 1)
        // A check, not a job: it does not wait for (or stop) the rebalancing in progress.
        takeOver(cids, rank).catch((error: unknown) => {
          if (!signal.aborted) log(`storage: repair take-over check failed: ${(error as Error).message}`)
        })
      })
      timers.push(timer)
    }
  }

  /**
   * Repairs here the bricks a smaller holder was expected to repair, unless it is at it: when some
   * of a sample of them are whole again, it is, and the rest are looked at again later (copying
   * them too would send each brick twice).
   */
  async function takeOver(cids: CID[], rank: number): Promise<void> {
    const step = Math.max(1, Math.floor(cids.length / repairTakeOverSampleBricks))
    const sample = cids.filter((_, index) => index % step === 0).slice(0, repairTakeOverSampleBricks)
    const check = await bricks.repair({
      signal,
      bytesPerSecond: options.repairBytesPerSecond ?? repairBytesPerSecondDefault,
      bricks: sample,
    })
    const stillShort = new Set(check.deferred.map((each) => each.cid.toString()))
    if (stillShort.size < sample.length) {
      const sampled = new Set(sample)
      const rest = cids.filter((cid) => !sampled.has(cid) || stillShort.has(cid.toString()))
      scheduleTakeOvers(rest.map((cid) => ({ cid, rank })))
      return
    }
    rebalancePreempt?.abort(new Error('a repair is due'))
    await enqueue('repair take-over', () => repairPass({ bricks: cids, takeOver: true }))
  }

  async function rebalance(): Promise<void> {
    // A repair that becomes due stops the pass (moves are copy-then-drop, so a stop loses nothing).
    const preempt = new AbortController()
    rebalancePreempt = preempt
    try {
      await rebalancePasses(AbortSignal.any([signal, preempt.signal]))
    } catch (error) {
      if (!preempt.signal.aborted || signal.aborted) throw error
      scheduleRebalance()
    } finally {
      rebalancePreempt = undefined
    }
  }

  async function rebalancePasses(jobSignal: AbortSignal): Promise<void> {
    let cursor: string | undefined
    let moved = 0
    let bytes = 0
    for (let pass = 0; pass < rebalancePassesPerJobMax; pass++) {
      // Bricks short of replicas come first: let the repair run, and carry on afterwards.
      if (repairPending) {
        scheduleRebalance()
        break
      }
      const report = await bricks.rebalance({
        signal: jobSignal,
        cursor,
        bytesMax: rebalanceBytesPerPassMax,
        bytesPerSecond: options.rebalanceBytesPerSecond ?? rebalanceBytesPerSecondDefault,
      })
      moved += report.moved
      bytes += report.bytesMoved
      if (report.done) break
      cursor = report.cursor
    }
    if (moved > 0) log(`storage: rebalancing moved ${moved} bricks (${bytes} bytes) to emptier nodes`)
  }

  function scheduleRepair(): void {
    repairPending = true
    rebalancePreempt?.abort(new Error('a repair is due'))
    if (repairTimer !== undefined || signal.aborted) return
    repairTimer = systemTimers.after(backgroundSettleMs, () => {
      repairTimer = undefined
      void enqueue('repair', repair)
    })
  }

  function scheduleRebalance(): void {
    if (rebalanceTimer !== undefined || signal.aborted) return
    rebalanceTimer = systemTimers.after(backgroundSettleMs, () => {
      rebalanceTimer = undefined
      void enqueue('rebalancing', rebalance)
    })
  }

  network.onChange(({ live }) => {
    if (!live) return scheduleRepair()
    scheduleRebalance()
    // With fewer live nodes than r, bricks were written (or repaired) short of replicas; the node
    // that came can hold them: a cluster growing back, or this node's view filling in after a restart.
    if (bricks.peers.liveNodes().length - 1 < bricks.replicaCount) scheduleRepair()
  })
  timers.push(systemTimers.every(options.repairIntervalMs ?? repairIntervalMsDefault, scheduleRepair))
  timers.push(
    systemTimers.every(options.rebalanceIntervalMs ?? rebalanceIntervalMsDefault, scheduleRebalance),
  )
  // Bricks kept across a restart: announce them, then check that each still has its replicas.
  if (store.stats().bricks > 0) {
    void enqueue('announcing local bricks', async () => {
      const count = await bricks.announceAll({ signal })
      log(`storage: announced ${count} bricks kept in the data dir`)
    })
    scheduleRepair()
  }

  let stopped = false
  return {
    fileSystem,
    metadata,
    bricks,
    network,
    repairNow: () => enqueue('repair', repair),
    rebalanceNow: () => enqueue('rebalancing', rebalance),
    async stop() {
      if (stopped) return
      stopped = true
      for (const timer of [...timers, repairTimer, rebalanceTimer]) timer?.cancel()
      stopController.abort(new Error('storage is stopping'))
      await fileService.stop()
      await fileSystem.closeAll().catch(() => {})
      await chain
      await network.stop()
      await store.close()
    },
  }
}
