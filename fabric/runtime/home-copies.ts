/**
 * Copies of other nodes' home state, kept in memory: for each process whose home chose this node as
 * a home replica, its record, its program, its output chunks in order and its thread state (where
 * its threads run, which ended lately, which output was shown: home-threads.ts, bounded).
 * Should the home be lost, one replica takes the process over from its copy (home-duties.ts), so
 * the submitter, attaching through that node, gets the whole output and the process goes on.
 */

import { HomeThreads, type HomeThreadsOptions } from './home-threads.ts'
import type { HomeCopyEntry, RuntimeMessage } from './messages.ts'
import { decodeProcess, type ProcessRecord } from './records.ts'

/** Processes whose home state one node copies, at most; past it, the oldest copies go. */
export const homeCopiesMax = 10_000
/** Output bytes copied for one process, at most (a home keeps no more: `outputBytesMax`). */
export const homeCopyOutputBytesMax = 64 * 1024 * 1024
/** Output and program bytes of all copies on one node; past it, the oldest copies go. */
export const homeCopiesBytesMax = 512 * 1024 * 1024

export interface CopiedChunk {
  tid: string
  fd: number
  callSequence: number
  bytes: Uint8Array
}

export interface HomeCopy {
  record: ProcessRecord
  program: Uint8Array
  /** The home's replicas, this node among them. */
  replicas: string[]
  /** Output chunks by index, with no gap. */
  chunks: CopiedChunk[]
  /** Bytes of the output chunks. */
  outputBytes: number
  /** Where threads run, which ended lately, what output was shown: as the home keeps them. */
  threads: HomeThreads
}

export type IncomingHomeCopy = Omit<Extract<RuntimeMessage, { type: 'home-copy' }>, 'type'>

export class HomeCopies {
  private readonly copies = new Map<string, HomeCopy>()
  /** Output and program bytes held. */
  private bytes = 0
  /** The bounds of each copy's thread state (the same as the homes'). */
  private readonly threadsOptions: HomeThreadsOptions

  constructor(threadsOptions: HomeThreadsOptions = {}) {
    this.threadsOptions = threadsOptions
  }

  /**
   * Keeps a copy; false when it cannot follow what is held (no first copy yet, or a gap in the
   * output): the home then sends the whole state again. A whole copy (with record, program and
   * replicas) carries the home's thread state as entries of its own (`ended`, `placed`, `shown`);
   * its output entries do not add to the dedupe state, which the home may have forgotten for
   * threads ended long ago. Later copies change the thread state entry by entry, as the home did.
   */
  keep(message: IncomingHomeCopy): boolean {
    let copy = this.copies.get(message.pid)
    const { record: recordBytes, program, replicas } = message
    const whole = recordBytes !== undefined && program !== undefined && replicas !== undefined
    if (whole) {
      const record = decodeProcess(recordBytes)
      if (record.pid !== message.pid) return false
      this.drop(message.pid)
      copy = {
        record,
        program,
        replicas,
        chunks: [],
        outputBytes: 0,
        threads: new HomeThreads(this.threadsOptions),
      }
      this.copies.set(message.pid, copy)
      this.bytes += copy.program.length
    }
    if (copy === undefined) return false
    for (const entry of message.entries) if (!this.apply(copy, entry, whole)) return false
    // The oldest copies go first (never the one just kept).
    while (
      (this.copies.size > homeCopiesMax || this.bytes > homeCopiesBytesMax) &&
      this.copies.keys().next().value !== message.pid
    )
      this.drop(this.copies.keys().next().value!)
    return true
  }

  private apply(copy: HomeCopy, entry: HomeCopyEntry, whole: boolean): boolean {
    switch (entry.kind) {
      case 'output':
        if (entry.index < copy.chunks.length) return true // held already (a copy sent again)
        if (entry.index > copy.chunks.length) return false
        if (copy.outputBytes + entry.bytes.length > homeCopyOutputBytesMax) return false
        if (!whole) copy.threads.show(entry.tid, entry.fd, entry.callSequence)
        copy.outputBytes += entry.bytes.length
        this.bytes += entry.bytes.length
        copy.chunks.push({
          tid: entry.tid,
          fd: entry.fd,
          callSequence: entry.callSequence,
          bytes: entry.bytes,
        })
        return true
      case 'placed':
        copy.threads.placed(entry.tid, entry.node)
        return true
      case 'ended':
        copy.threads.end(entry.tid)
        return true
      case 'shown':
        copy.threads.show(entry.tid, entry.fd, entry.callSequence)
        return true
    }
  }

  /** Output entries of a copy from index `from` on, up to about `bytesMax` (at least one). */
  outputFrom(pid: string, from: number, bytesMax: number): Array<Extract<HomeCopyEntry, { kind: 'output' }>> {
    const copy = this.copies.get(pid)
    const entries: Array<Extract<HomeCopyEntry, { kind: 'output' }>> = []
    let bytes = 0
    for (let index = from; copy !== undefined && index < copy.chunks.length && bytes < bytesMax; index++) {
      const chunk = copy.chunks[index]!
      entries.push({ kind: 'output', index, ...chunk })
      bytes += chunk.bytes.length
    }
    return entries
  }

  get(pid: string): HomeCopy | undefined {
    return this.copies.get(pid)
  }

  drop(pid: string): void {
    const copy = this.copies.get(pid)
    if (copy === undefined) return
    this.bytes -= copy.program.length + copy.outputBytes
    this.copies.delete(pid)
  }

  /** Processes held whose home is `node`. */
  homedOn(node: string): string[] {
    return [...this.copies].filter(([, copy]) => copy.record.home === node).map(([pid]) => pid)
  }

  /** The homes of the processes held. */
  homes(): Set<string> {
    return new Set([...this.copies.values()].map((copy) => copy.record.home))
  }
}
