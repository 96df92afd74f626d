/**
 * Store writes that need not go at once (threads' end records), submitted in groups: the writes
 * asked for while the previous group is on its way are submitted together, in one turn, when it
 * has been answered, so the store sends them to each acceptor in one frame and each acceptor logs
 * them in one write (fabric/coord/store.ts, "Many keys at once"). An idle node's write goes at once.
 *
 *   const ends = new GroupedWrites((version, value, record) => records.casRecord(version, value, record), timers)
 *   const written = await ends.cas(version, encodeRecord(record), record)
 */

import type { Timers } from '../platform.ts'
import { PacedGroups } from './paced-groups.ts'
import type { Register } from './services.ts'

/**
 * How long the next group waits for the previous one's answers: a write the store is slow to
 * answer (a shard whose leader just died times out after seconds) must not hold the others up.
 */
export const groupAnswerWaitMsMax = 100

/**
 * A compare-and-swap of a value that names what it writes (an encoded thread record), with what it
 * encodes (the record, passed along so that the writer need not decode it).
 */
type Cas<Decoded> = (expectedVersion: number, value: Uint8Array, decoded: Decoded) => Promise<Register>

interface Queued<Decoded> {
  expectedVersion: number
  value: Uint8Array
  decoded: Decoded
  resolve: (register: Register) => void
  reject: (error: unknown) => void
}

export class GroupedWrites<Decoded> {
  private readonly groups: PacedGroups<Queued<Decoded>>

  constructor(submit: Cas<Decoded>, timers: Timers) {
    this.groups = new PacedGroups<Queued<Decoded>>({
      timers,
      answerWaitMsMax: groupAnswerWaitMsMax,
      // Every write of the group is submitted before any is awaited: they travel together.
      send: (group) =>
        Promise.all(
          group.map((write) =>
            submit(write.expectedVersion, write.value, write.decoded).then(write.resolve, write.reject),
          ),
        ),
    })
  }

  /** A compare-and-swap of `value` (`decoded`, encoded), submitted with the others of its group. */
  cas(expectedVersion: number, value: Uint8Array, decoded: Decoded): Promise<Register> {
    return new Promise((resolve, reject) =>
      this.groups.push({ expectedVersion, value, decoded, resolve, reject }),
    )
  }
}
