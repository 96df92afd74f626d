/**
 * What a home knows of the threads of one process, kept within bounds however many threads the
 * process runs: where each running thread runs, which threads ended lately, and, per thread and
 * fd, the last output call shown (a restarted thread replays its output from its last save; the
 * replay is dropped). A home (home-duties.ts) and each of its replicas (home-copies.ts) keep one,
 * changed by the same steps in the same order (the home's copy entries), so they stay alike.
 *
 *   const threads = new HomeThreads({ endedThreadsKeptMax })
 *   threads.placed('0.1', 'node-b')
 *   if (threads.show('0.1', 1, callSequence)) ... // shown once
 *   threads.end('0.1')
 */

import { InvalidArgumentError } from '../errors.ts'
import type { HomeCopyEntry } from './messages.ts'

/**
 * Ended threads a home remembers per process (the most recent ones), each with its output dedupe.
 * What the dedupe guarantees: an output call of a thread is shown at most once while the thread
 * runs and until this many threads of its process ended after it. The current incarnation's output
 * all reaches the home before its end notice (it waits for it), so only a stale incarnation (one
 * replaced while it ran on, which stops at its next store write, its epoch outdated) can send
 * output after the end; it would have to outlive this many further ends for its replay to show
 * twice. Past the window, a late `placed` notice of the thread is harmless (`HomeThreads.placed`).
 */
export const endedThreadsKeptMaxDefault = 10_000

export interface HomeThreadsOptions {
  /** Ended threads remembered (`endedThreadsKeptMaxDefault`). */
  endedThreadsKeptMax?: number
}

/** The last output call shown of one thread on one fd. */
export interface ShownCall {
  tid: string
  fd: number
  callSequence: number
}

/** How much a home keeps of a process's threads (for tests and `ps`-like checks). */
export interface HomeThreadCounts {
  running: number
  ended: number
  /** Threads with output dedupe state. */
  shown: number
}

/** The bound `options` set (checked: bad options fail when a node starts, not at a process's first thread). */
export function endedThreadsKeptMaxOf(options: HomeThreadsOptions): number {
  const kept = options.endedThreadsKeptMax ?? endedThreadsKeptMaxDefault
  if (!Number.isSafeInteger(kept) || kept < 1)
    throw new InvalidArgumentError(`Expected endedThreadsKeptMax to be an integer from 1 and up, got ${kept}`)
  return kept
}

export class HomeThreads {
  private readonly endedThreadsKeptMax: number
  /** Threads running (or being placed), by the node the last `placed` notice named. */
  private readonly runningThreads = new Map<string, string>()
  /** The most recently ended threads, oldest first. */
  private readonly endedThreads = new Set<string>()
  /** Per thread, per fd, the last output call shown; in the order threads first wrote. */
  private readonly shownCalls = new Map<string, Map<number, number>>()

  constructor(options: HomeThreadsOptions = {}) {
    this.endedThreadsKeptMax = endedThreadsKeptMaxOf(options)
  }

  /**
   * Thread `tid` runs on `node`; false (ignored) when it is known to have ended (a late notice). A
   * notice later still, of a thread ended and forgotten since (`endedThreadsKeptMax` ends ago),
   * puts it back among the running: that is safe, because a thread record that says `done` or
   * `failed` never runs again (a claim of it is refused), so the home never restarts it; its
   * orphan check reads the record, finds it ended and ends it here again (`end`).
   */
  placed(tid: string, node: string): boolean {
    if (this.endedThreads.has(tid)) return false
    this.runningThreads.set(tid, node)
    return true
  }

  /**
   * Thread `tid` ended; false when known already (a notice that came twice). Past
   * `endedThreadsKeptMax`, the oldest ended thread is forgotten with its output dedupe.
   */
  end(tid: string): boolean {
    if (this.endedThreads.has(tid)) return false
    this.runningThreads.delete(tid)
    this.endedThreads.add(tid)
    while (this.endedThreads.size > this.endedThreadsKeptMax) {
      const oldest = this.endedThreads.values().next().value!
      this.endedThreads.delete(oldest)
      this.shownCalls.delete(oldest)
    }
    this.forgetStrayShown()
    return true
  }

  /** Output call `callSequence` of `tid` on `fd`: true when new (to show), false when shown already (a replay). */
  show(tid: string, fd: number, callSequence: number): boolean {
    let calls = this.shownCalls.get(tid)
    if (calls === undefined) {
      calls = new Map()
      this.shownCalls.set(tid, calls)
      this.forgetStrayShown()
    }
    if (callSequence <= (calls.get(fd) ?? 0)) return false
    calls.set(fd, callSequence)
    return true
  }

  /**
   * Dedupe state of threads neither running nor remembered as ended (their `placed` notice not
   * come yet, or their end notice lost) is kept for `endedThreadsKeptMax` of them; past it, the
   * one that first wrote longest ago goes. Threads running or remembered as ended met on the way
   * are moved behind, so each is passed over once per round.
   */
  private forgetStrayShown(): void {
    let passes = this.shownCalls.size
    while (
      passes-- > 0 &&
      this.shownCalls.size > this.runningThreads.size + this.endedThreads.size + this.endedThreadsKeptMax
    ) {
      const [tid, calls] = this.shownCalls.entries().next().value!
      this.shownCalls.delete(tid)
      if (this.runningThreads.has(tid) || this.endedThreads.has(tid)) this.shownCalls.set(tid, calls)
    }
  }

  isRunning(tid: string): boolean {
    return this.runningThreads.has(tid)
  }

  hasEnded(tid: string): boolean {
    return this.endedThreads.has(tid)
  }

  /** Running threads and their nodes. */
  running(): ReadonlyMap<string, string> {
    return this.runningThreads
  }

  /** Ended threads remembered, oldest first. */
  ended(): Iterable<string> {
    return this.endedThreads
  }

  /** The dedupe state, in the order it is kept (a replica rebuilds it so). */
  shown(): ShownCall[] {
    const calls: ShownCall[] = []
    for (const [tid, byFd] of this.shownCalls)
      for (const [fd, callSequence] of byFd) calls.push({ tid, fd, callSequence })
    return calls
  }

  /**
   * The state as `home-copy` entries a new replica rebuilds it from, in order: the ended threads
   * remembered (oldest first), the running ones, the output dedupe.
   */
  copyEntries(): HomeCopyEntry[] {
    const entries: HomeCopyEntry[] = []
    for (const tid of this.endedThreads) entries.push({ kind: 'ended', tid })
    for (const [tid, node] of this.runningThreads) entries.push({ kind: 'placed', tid, node })
    for (const shown of this.shown()) entries.push({ kind: 'shown', ...shown })
    return entries
  }

  counts(): HomeThreadCounts {
    return {
      running: this.runningThreads.size,
      ended: this.endedThreads.size,
      shown: this.shownCalls.size,
    }
  }
}
