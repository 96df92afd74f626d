/**
 * Context saves kept for other nodes' threads, in memory. Per thread the highest incarnation wins;
 * within it, a full save replaces the chain and a delta extends it when it follows the last save.
 * Superseded saves are dropped; all of a thread's saves go when it ends.
 *
 * Next to the chain, the thread's replay log: the clock readings (and other logged values) the guest
 * saw since its last save, so a thread restored on another node reads them again. A save supersedes
 * the log that preceded it.
 */

import type { RuntimeMessage } from './messages.ts'

/** Memory all replicas on one node may use; past it, the oldest threads' chains are dropped. */
export const replicaBytesMax = 2 * 1024 * 1024 * 1024

interface Chain {
  epoch: number
  sequences: number[]
  saves: Uint8Array[]
  bytes: number
  touchedAt: number
}

/** A save as the `save` message carries it. */
export type IncomingSave = Omit<Extract<RuntimeMessage, { type: 'save' }>, 'type'>

/** A replay log as the `log` message carries it. */
export type IncomingLog = Omit<Extract<RuntimeMessage, { type: 'log' }>, 'type'>

/** Logged values a thread saw since the save `afterSequence` (0: since its start). */
export interface HeldLog {
  epoch: number
  afterSequence: number
  entries: Array<[number, string]>
  /** `sync` replies no register records (fabric/runtime/primitives/reply-log.ts). */
  replies?: Array<[number, number, Uint8Array | null]>
}

export class SaveReplicas {
  private readonly chains = new Map<string, Chain>()
  private readonly logs = new Map<string, HeldLog>()
  private bytes = 0
  private clock = 0

  /** Keeps `save`; returns false when it is stale or does not follow the chain held. */
  keep(save: IncomingSave): boolean {
    const key = `${save.pid}/${save.tid}`
    const held = this.chains.get(key)
    if (held !== undefined && save.epoch < held.epoch) return false
    if (save.baseSequence === null) {
      this.replace(key, {
        epoch: save.epoch,
        sequences: [save.sequence],
        saves: [save.bytes],
        bytes: save.bytes.length,
        touchedAt: 0,
      })
    } else {
      if (held === undefined || held.sequences.at(-1) !== save.baseSequence) return false
      if (save.epoch > held.epoch) held.epoch = save.epoch
      held.sequences.push(save.sequence)
      held.saves.push(save.bytes)
      held.bytes += save.bytes.length
      this.bytes += save.bytes.length
      held.touchedAt = ++this.clock
    }
    // A log that follows this save may have come first (logs and saves travel apart).
    const log = this.logs.get(key)
    if (log !== undefined && log.afterSequence < save.sequence) this.logs.delete(key)
    this.evict()
    return true
  }

  /** Keeps a thread's replay log; false when a later incarnation's chain or log is held. */
  /**
   * Keeps a thread's log (or its continuation, from entry `from` on); `gap` when the continuation
   * does not follow what is held (the sender then sends the whole log), `stale` when a later
   * incarnation is held.
   */
  keepLog(log: IncomingLog): 'kept' | 'stale' | 'gap' {
    const key = `${log.pid}/${log.tid}`
    const chain = this.chains.get(key)
    if (chain !== undefined && log.epoch < chain.epoch) return 'stale'
    const held = this.logs.get(key)
    if (held !== undefined && log.epoch < held.epoch) return 'stale'
    const same = held !== undefined && held.epoch === log.epoch && held.afterSequence === log.afterSequence
    const from = log.from ?? 0
    if (from > 0 && (!same || held!.entries.length < from)) return 'gap'
    const entries = from > 0 ? held!.entries.slice(0, from).concat(log.entries) : log.entries
    // Logs only grow between saves: a shorter one for the same save arrived late.
    if (
      same &&
      held!.entries.length + (held!.replies?.length ?? 0) > entries.length + (log.replies?.length ?? 0)
    )
      return 'kept'
    this.logs.set(key, {
      epoch: log.epoch,
      afterSequence: log.afterSequence,
      entries,
      ...(log.replies === undefined ? {} : { replies: log.replies }),
    })
    return 'kept'
  }

  /** The log that continues the chain held (or, with no chain, the thread's start), if any. */
  log(pid: string, tid: string): HeldLog | undefined {
    const key = `${pid}/${tid}`
    const held = this.logs.get(key)
    if (held === undefined) return undefined
    const chain = this.chains.get(key)
    return held.afterSequence === (chain?.sequences.at(-1) ?? 0) ? held : undefined
  }

  chain(pid: string, tid: string): { epoch: number; saves: Uint8Array[]; sequences: number[] } | undefined {
    const held = this.chains.get(`${pid}/${tid}`)
    return held === undefined
      ? undefined
      : { epoch: held.epoch, saves: held.saves.slice(), sequences: held.sequences.slice() }
  }

  drop(pid: string, tid: string): void {
    this.replace(`${pid}/${tid}`, undefined)
    this.logs.delete(`${pid}/${tid}`)
  }

  dropProcess(pid: string): void {
    for (const key of [...this.chains.keys()]) if (key.startsWith(`${pid}/`)) this.replace(key, undefined)
    for (const key of [...this.logs.keys()]) if (key.startsWith(`${pid}/`)) this.logs.delete(key)
  }

  /** The processes whose threads' saves or logs are kept here. */
  processIds(): Set<string> {
    const pids = new Set<string>()
    for (const key of [...this.chains.keys(), ...this.logs.keys()]) pids.add(key.slice(0, key.indexOf('/')))
    return pids
  }

  get byteCount(): number {
    return this.bytes
  }

  private replace(key: string, chain: Chain | undefined): void {
    const held = this.chains.get(key)
    if (held !== undefined) this.bytes -= held.bytes
    if (chain === undefined) {
      this.chains.delete(key)
      return
    }
    chain.touchedAt = ++this.clock
    this.chains.set(key, chain)
    this.bytes += chain.bytes
  }

  private evict(): void {
    while (this.bytes > replicaBytesMax && this.chains.size > 1) {
      let oldest: string | undefined
      let oldestAt = Number.POSITIVE_INFINITY
      for (const [key, chain] of this.chains) {
        if (chain.touchedAt < oldestAt) {
          oldestAt = chain.touchedAt
          oldest = key
        }
      }
      this.replace(oldest!, undefined)
    }
  }
}
