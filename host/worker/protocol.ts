/** Messages between a thread's worker and the host that drives it (structured-clone safe). */

import type { SerializedError } from '../errors.ts'
import type { EncodedSave, PendingCall } from '../snapshot.ts'

export interface ThreadLimits {
  /** Maximum guest linear memory, in 64 KiB pages. */
  memoryPagesMax: number
}

/**
 * What the threads of one process have in common, which a start names by `contextId` once the worker
 * holds it (sent the first time only: a worker's wake-up and the clone of a start message cost a
 * tiny thread more than its run, and these fields were most of the message).
 */
export interface ThreadContext {
  /** The worker may run this thread in an instance an earlier thread used (InstrumentedModule.instanceReusable). */
  instanceReusable: boolean
  globalCount: number
  moduleDigest: string
  args: string[]
  env: string[]
  limits: ThreadLimits
  /** Whether the embedding serves file calls (a mapped directory, later the distributed fs). */
  files: boolean
  /** Guest names of the preopened directories (fds 3, 4, ...); wasi-libc reads them at start. */
  preopens: string[]
  /** Whether saves after the first carry only the pages written since the previous one. */
  incrementalSaves: boolean
  /**
   * Spawns the worker may answer itself (the handle is the call sequence number) and send one way
   * before the host acknowledges them (`ChildrenMessage.placed`); past it, a spawn is a host call that
   * waits as the host decides. 0: every spawn is a host call (an embedding with other handles).
   */
  spawnsAheadMax: number
}

export interface StartMessage {
  type: 'start'
  /**
   * The compiled module, sent to a worker only the first time it runs it (a clone costs more than
   * a tiny thread's run); later starts name it by `moduleId` and the worker uses its own copy.
   */
  module: WebAssembly.Module | null
  /** The host's number for `module`, unique per module object in the host. */
  moduleId: number
  /** The thread's context, sent the first time only like `module`; later starts name it by `contextId`. */
  context: ThreadContext | null
  /** The host's number for the context, unique per distinct context in the host. */
  contextId: number
  entry: string
  arg: Uint8Array
  threadId: number
  seed: number
  /** Minimum time between automatic saves at blocking calls; 0 saves at every blocking call. */
  saveIntervalMs: number
  /** A chain of encoded saves to restore from (full save first), or none for a fresh start. */
  restore: Uint8Array[] | null
  /** Results of non-deterministic calls made after the last save, by call sequence number. */
  replayLog: Array<[number, bigint]>
  /** Number of the save to take next (continues the chain after a restore). */
  nextSaveSequence: number
}

export interface ReplyMessage {
  type: 'reply'
  callSequence: number
  result: number
  payload: Uint8Array | null
  /** One-way spawns placed since the last acknowledgement (see `ChildrenMessage.placed`). */
  spawnsPlaced: number
}

/** Changes how often the thread saves automatically at blocking calls. */
export interface ConfigureMessage {
  type: 'configure'
  saveIntervalMs?: number
  /** Take a save at the next blocking call (a node about to leave hands the thread over). */
  saveNow?: boolean
}

/** Compiled modules a worker keeps for later starts, oldest dropped first (the host keeps the same list). */
export const workerModulesMax = 8
/** Thread contexts a worker keeps for later starts, oldest dropped first (the host keeps the same list). */
export const workerContextsMax = 32

/**
 * News of the thread's children, gathered over one turn of the host: spawns sent one way that no
 * longer count against `spawnsAheadMax` (these also ride on replies; alone they wait until they add
 * up to half the limit), and outcomes of ended children that a join may use without asking the host
 * (by handle; null: the child failed).
 */
export interface ChildrenMessage {
  type: 'children'
  placed: number
  ended: Array<[handle: number, result: Uint8Array | null]>
}

export type ToWorker = StartMessage | ReplyMessage | ConfigureMessage | ChildrenMessage

export interface OutputMessage {
  type: 'output'
  callSequence: number
  fd: number
  bytes: Uint8Array
}

export interface CallMessage {
  type: 'call'
  callSequence: number
  module: string
  name: string
  args: number[]
  payload: Uint8Array | null
}

/** A spawn the worker answered itself (handle = `callSequence`); the host makes the child. */
export interface SpawnMessage {
  type: 'spawn'
  callSequence: number
  /** u32 entry length, entry name (UTF-8), argument bytes: the payload of a `spawn` call. */
  payload: Uint8Array
}

export interface SaveMessage {
  type: 'save'
  save: EncodedSave
  /** Wall time the save took inside the worker: capture, encoding and digest. */
  costMs: number
}

/**
 * The thread waits for something other than a host call (a timer, say), and computes again: a host
 * call implies both (waiting from the call, computing from the reply), with no message of its own.
 */
export interface SuspendMessage {
  type: 'suspend' | 'resume'
}

export interface ExitMessage {
  type: 'exit'
  code: number
  result: Uint8Array | null
}

export interface ErrorMessage {
  type: 'error'
  error: SerializedError
}

/**
 * Values the guest saw that a replay must see again (clock reads), by call sequence number, sent
 * with the worker's next message of any kind rather than one message each: nothing the thread does
 * reaches anyone before that message, and the host takes the values before the message itself.
 */
export interface LoggedValues {
  log?: Array<[callSequence: number, value: bigint]>
}

export type FromWorker = (
  | OutputMessage
  | CallMessage
  | SpawnMessage
  | SaveMessage
  | SuspendMessage
  | ExitMessage
  | ErrorMessage
) &
  LoggedValues

/** The two ends of a worker, whatever the platform. */
export interface WorkerPort {
  post(message: FromWorker, transfer?: Transferable[]): void
  onMessage(listener: (message: ToWorker) => void): void
}

export type { PendingCall }
