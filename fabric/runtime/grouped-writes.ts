/**
 * Store writes that need not go at once (threads' end records), submitted in groups: the writes
 * asked for while the previous group is on its way are submitted together, in one turn, when it
 * has been answered, so the store sends them to each acceptor in one frame and each acceptor logs
 * them in one write (fabric/coord/store.ts, "Many keys at once"). An idle node's write goes at once.
 *
 *   const ends = new GroupedWrites((key, version, value) => store.cas(key, version, value), timers)
 *   const written = await ends.cas(key, version, value)
 */

import type { Timers } from '../platform.ts'
import type { Register } from './services.ts'

/**
 * How long the next group waits for the previous one's answers: a write the store is slow to
 * answer (a shard whose leader just died times out after seconds) must not hold the others up.
 */
export const groupAnswerWaitMsMax = 100

type Cas = (key: string, expectedVersion: number, value: Uint8Array) => Promise<Register>

interface Queued {
  key: string
  expectedVersion: number
  value: Uint8Array
  resolve: (register: Register) => void
  reject: (error: unknown) => void
}

export class GroupedWrites {
  private readonly submit: Cas
  private readonly timers: Timers
  private queued: Queued[] = []
  private inFlight = false

  constructor(submit: Cas, timers: Timers) {
    this.submit = submit
    this.timers = timers
  }

  /** A compare-and-swap, submitted with the others of its group. */
  cas(key: string, expectedVersion: number, value: Uint8Array): Promise<Register> {
    return new Promise((resolve, reject) => {
      this.queued.push({ key, expectedVersion, value, resolve, reject })
      if (this.inFlight) return
      this.inFlight = true
      // The rest of this turn's writes join the group.
      queueMicrotask(() => this.submitQueued())
    })
  }

  private submitQueued(): void {
    const group = this.queued
    this.queued = []
    if (group.length === 0) {
      this.inFlight = false
      return
    }
    // Every write of the group is submitted before any is awaited: they travel together.
    const answers = group.map((write) =>
      this.submit(write.key, write.expectedVersion, write.value).then(write.resolve, write.reject),
    )
    let next = true
    const submitNext = () => {
      if (!next) return
      next = false
      timer.cancel()
      this.submitQueued()
    }
    const timer = this.timers.after(groupAnswerWaitMsMax, submitNext)
    void Promise.all(answers).then(submitNext)
  }
}
