/**
 * Context saves kept for other nodes' threads, in memory. Per thread the highest incarnation wins;
 * within it, a full save replaces the chain and a delta extends it when it follows the last save.
 * Superseded saves are dropped; all of a thread's saves go when it ends.
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

export class SaveReplicas {
  private readonly chains = new Map<string, Chain>()
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
    this.evict()
    return true
  }

  chain(pid: string, tid: string): { epoch: number; saves: Uint8Array[] } | undefined {
    const held = this.chains.get(`${pid}/${tid}`)
    return held === undefined ? undefined : { epoch: held.epoch, saves: held.saves.slice() }
  }

  drop(pid: string, tid: string): void {
    this.replace(`${pid}/${tid}`, undefined)
  }

  dropProcess(pid: string): void {
    for (const key of [...this.chains.keys()]) if (key.startsWith(`${pid}/`)) this.replace(key, undefined)
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
