/**
 * Items sent in groups, one group on its way at a time: the items of one turn go in one group, and
 * those that arrive while it travels go in the next, which leaves once the previous one is answered
 * or after `answerWaitMsMax` (a lost or slow answer must not hold the rest up). An idle sender's
 * item goes at once. Runtime notices (notices.ts) and end records (grouped-writes.ts) travel so.
 *
 *   const groups = new PacedGroups({ timers, answerWaitMsMax: 100, send: (items) => submitAll(items) })
 *   groups.push(item)
 */

import type { Timers } from '../platform.ts'

export interface PacedGroupsOptions<Item> {
  timers: Timers
  answerWaitMsMax: number
  /** Sends one group; the next may leave once it settles. */
  send: (group: Item[]) => Promise<unknown>
  /** Items per group (the rest wait for the next one); unbounded when absent. */
  groupMax?: number
  /** Items waiting beyond which the oldest are dropped (a receiver that does not answer). */
  queuedMax?: number
  /** Nothing is queued or on its way any more. */
  onIdle?: () => void
}

export class PacedGroups<Item> {
  private readonly options: PacedGroupsOptions<Item>
  private queued: Item[] = []
  private sending = false

  constructor(options: PacedGroupsOptions<Item>) {
    this.options = options
  }

  push(item: Item): void {
    this.queued.push(item)
    if (this.queued.length > (this.options.queuedMax ?? Number.POSITIVE_INFINITY)) this.queued.shift()
    if (this.sending) return
    this.sending = true
    // The rest of this turn's items join the first group.
    queueMicrotask(() => this.sendQueued())
  }

  private sendQueued(): void {
    const group = this.queued.splice(0, this.options.groupMax ?? this.queued.length)
    if (group.length === 0) {
      this.sending = false
      this.options.onIdle?.()
      return
    }
    let next = true
    const sendNext = () => {
      if (!next) return
      next = false
      timer.cancel()
      this.sendQueued()
    }
    const timer = this.options.timers.after(this.options.answerWaitMsMax, sendNext)
    void this.options
      .send(group)
      .catch(() => undefined)
      .then(sendNext)
  }
}
