/**
 * A thread's log of the `sync` replies that no register records: reads (get, length), refusals, a
 * compare that did not swap, a lock acquire that timed out. The engine logs each before the guest
 * sees it; the embedding keeps the log with the thread's context (the runtime sends it to the
 * thread's save replicas with its clock log, before the thread's next effect becomes visible), and a
 * thread restored from a save gets the logged replies again for the calls it replays. A save of the
 * thread starts the log again from the save's pending call.
 *
 *   const log = new ReplyLog()
 *   log.add(callSequence, reply)         // SyncThread.logReply
 *   log.find(callSequence)               // SyncThread.replayed
 *   log.saved(callSequence)              // a save was taken at that call
 */

import type { SyncReply } from './state.ts'

/** [call sequence, result, payload]: a logged reply as it travels with the thread's saves. */
export type LoggedReply = [number, number, Uint8Array | null]

/** Logged bytes after which the thread is asked for a save (which empties its log). */
export const loggedReplyBytesSaveAfter = 256 * 1024
/** Logged replies after which the thread is asked for a save. */
export const loggedRepliesSaveAfter = 1024

export class ReplyLog {
  private readonly entries = new Map<number, LoggedReply>()
  private byteCount = 0

  constructor(entries: readonly LoggedReply[] = []) {
    for (const entry of entries) this.keep(entry)
  }

  /** Logs `reply` to call `callSequence`; returns whether the log is now large enough to want a save. */
  add(callSequence: number, reply: SyncReply): boolean {
    this.keep([callSequence, reply.result, reply.payload ?? null])
    return this.byteCount >= loggedReplyBytesSaveAfter || this.entries.size >= loggedRepliesSaveAfter
  }

  find(callSequence: number): SyncReply | undefined {
    const entry = this.entries.get(callSequence)
    return entry === undefined ? undefined : { result: entry[1], payload: entry[2] }
  }

  /**
   * A save was taken at call `callSequence`: replies to earlier calls are never asked for again. The
   * call the save was taken at is replayed after a restore (it was pending), so its reply stays.
   */
  saved(callSequence: number): void {
    for (const [sequence, entry] of this.entries) {
      if (sequence >= callSequence) continue
      this.entries.delete(sequence)
      this.byteCount -= entry[2]?.length ?? 0
    }
  }

  /** The entries, oldest call first, for the thread's replicas. */
  list(): LoggedReply[] {
    return [...this.entries.values()].sort((left, right) => left[0] - right[0])
  }

  get size(): number {
    return this.entries.size
  }

  get bytes(): number {
    return this.byteCount
  }

  private keep(entry: LoggedReply): void {
    const previous = this.entries.get(entry[0])
    if (previous !== undefined) this.byteCount -= previous[2]?.length ?? 0
    this.entries.set(entry[0], entry)
    this.byteCount += entry[2]?.length ?? 0
  }
}
