/**
 * Store writes that need not go at once (threads' end records), submitted in groups: the writes
 * asked for while the previous group is on its way are submitted together, in one turn, when it
 * has been answered, so the store sends them to each acceptor in one frame and each acceptor logs
 * them in one write (fabric/coord/store.ts, "Many keys at once"). An idle node's write goes at once.
 *
 *   const ends = new GroupedWrites((version, record) => records.casRecord(version, record), timers)
 *   const written = await ends.cas(version, record)
 */

import type { Timers } from '../platform.ts'
import { PacedGroups } from './paced-groups.ts'
import type { Register } from './services.ts'

/**
 * How long the next group waits for the previous one's answers: a write the store is slow to
 * answer (a shard whose leader just died times out after seconds) must not hold the others up.
 */
export const groupAnswerWaitMsMax = 100

/** A compare-and-swap of a value that names what it writes (an encoded thread record). */
type Cas = (expectedVersion: number, value: Uint8Array) => Promise<Register>

interface Queued {
  expectedVersion: number
  value: Uint8Array
  resolve: (register: Register) => void
  reject: (error: unknown) => void
}

export class GroupedWrites {
  private readonly groups: PacedGroups<Queued>

  constructor(submit: Cas, timers: Timers) {
    this.groups = new PacedGroups<Queued>({
      timers,
      answerWaitMsMax: groupAnswerWaitMsMax,
      // Every write of the group is submitted before any is awaited: they travel together.
      send: (group) =>
        Promise.all(
          group.map((write) => submit(write.expectedVersion, write.value).then(write.resolve, write.reject)),
        ),
    })
  }

  /** A compare-and-swap, submitted with the others of its group. */
  cas(expectedVersion: number, value: Uint8Array): Promise<Register> {
    return new Promise((resolve, reject) => this.groups.push({ expectedVersion, value, resolve, reject }))
  }
}
