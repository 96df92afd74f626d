/**
 * The programs a node holds, by digest: the compiled program (instrumented WebAssembly module, often
 * MBs) and its bytes (which a home serves to the nodes that fetch them). A program stays while a
 * process that has not ended on this node uses it; of the programs no such process uses ("idle"),
 * the node keeps the `idleMax` used last and drops the rest, oldest use first. So a long-lived node
 * does not grow with every program it ever ran, while a program submitted again soon after, or
 * preloaded (`load-program`) just before its process's first thread, needs no new fetch or compile.
 *
 *   const cache = new ProgramCache<Program>(idleProgramsMaxDefault)
 *   cache.use(pid, digest)            // this node learned the process's record
 *   cache.setProgram(digest, loading) // compiling; `program(digest)` answers it from now on
 *   cache.release(pid)                // the process ended here: its program may become idle
 *
 * Pure: no I/O and no clock (recency is the order of use).
 */

import { InvalidArgumentError } from '../errors.ts'

/** Programs no running process uses that a node keeps (most recently used first). */
export const idleProgramsMaxDefault = 8

interface Entry<CompiledProgram> {
  /** The compiled program, or its compile under way. */
  program: Promise<CompiledProgram> | undefined
  bytes: Uint8Array | undefined
  /** Processes that use it and have not ended here. */
  users: Set<string>
}

export class ProgramCache<CompiledProgram> {
  private readonly idleMax: number
  /** By digest, least recently used first (a use moves an entry to the end). */
  private readonly entries = new Map<string, Entry<CompiledProgram>>()
  /** The digest each process that has not ended here uses. */
  private readonly digestOfProcess = new Map<string, string>()

  constructor(idleMax: number = idleProgramsMaxDefault) {
    if (!Number.isInteger(idleMax) || idleMax < 0)
      throw new InvalidArgumentError(
        `Expected idleProgramsMax to be an integer from 0 and up, got ${idleMax}`,
      )
    this.idleMax = idleMax
  }

  /** The compiled program (or its compile under way), counted as a use. */
  program(digest: string): Promise<CompiledProgram> | undefined {
    return this.touch(digest)?.program
  }

  /** The program's bytes, counted as a use. */
  bytes(digest: string): Uint8Array | undefined {
    return this.touch(digest)?.bytes
  }

  /** Holds `loading` as the compiled program of `digest` (a program no process uses yet is idle). */
  setProgram(digest: string, loading: Promise<CompiledProgram>): void {
    const entry = this.touch(digest) ?? this.add(digest)
    entry.program = loading
    this.dropIdleBeyondMax()
  }

  /** A compile that failed: dropped, so the next request compiles again. */
  forgetProgram(digest: string, loading: Promise<CompiledProgram>): void {
    const entry = this.entries.get(digest)
    if (entry?.program !== loading) return
    entry.program = undefined
    this.dropIfEmpty(digest, entry)
  }

  /**
   * Keeps the program's bytes, when the program is held (in use, or loading): bytes fetched for a
   * program that was dropped meanwhile are not kept again.
   */
  setBytes(digest: string, bytes: Uint8Array): void {
    const entry = this.touch(digest)
    if (entry !== undefined) entry.bytes = bytes
  }

  /** Process `pid` uses program `digest` until `release(pid)`; it is not dropped meanwhile. */
  use(pid: string, digest: string): void {
    const previous = this.digestOfProcess.get(pid)
    if (previous !== undefined && previous !== digest) this.release(pid)
    const entry = this.touch(digest) ?? this.add(digest)
    entry.users.add(pid)
    this.digestOfProcess.set(pid, digest)
  }

  /** Process `pid` ended here: its program is idle once no other process uses it. */
  release(pid: string): void {
    const digest = this.digestOfProcess.get(pid)
    if (digest === undefined) return
    this.digestOfProcess.delete(pid)
    const entry = this.touch(digest)
    if (entry === undefined) return
    entry.users.delete(pid)
    if (this.dropIfEmpty(digest, entry)) return
    this.dropIdleBeyondMax()
  }

  /** Programs held: those a process uses, and the idle ones. */
  counts(): { inUse: number; idle: number } {
    let inUse = 0
    for (const entry of this.entries.values()) if (entry.users.size > 0) inUse++
    return { inUse, idle: this.entries.size - inUse }
  }

  private add(digest: string): Entry<CompiledProgram> {
    const entry: Entry<CompiledProgram> = { program: undefined, bytes: undefined, users: new Set() }
    this.entries.set(digest, entry)
    return entry
  }

  /** The entry, moved to the most recently used end. */
  private touch(digest: string): Entry<CompiledProgram> | undefined {
    const entry = this.entries.get(digest)
    if (entry === undefined) return undefined
    this.entries.delete(digest)
    this.entries.set(digest, entry)
    return entry
  }

  /** An entry with nothing held and no user goes at once (it is no program to keep). */
  private dropIfEmpty(digest: string, entry: Entry<CompiledProgram>): boolean {
    if (entry.users.size > 0 || entry.program !== undefined || entry.bytes !== undefined) return false
    this.entries.delete(digest)
    return true
  }

  private dropIdleBeyondMax(): void {
    let idle = 0
    for (const entry of this.entries.values()) if (entry.users.size === 0) idle++
    // Oldest use first; a compile under way that is dropped still answers those awaiting it.
    for (const [digest, entry] of this.entries) {
      if (idle <= this.idleMax) return
      if (entry.users.size > 0) continue
      this.entries.delete(digest)
      idle--
    }
  }
}
