/**
 * Runs one guest thread on a pooled worker, from its start or from a chain of context saves, and
 * reports what it does: output, host calls, saves, its end. The embedding answers the calls.
 */

import { CpuBudgetExceededError, deserializeError, type FabricHostError, WorkerLostError } from './errors.ts'
import type { EncodedSave } from './snapshot.ts'
import {
  type CallMessage,
  type FromWorker,
  type StartMessage,
  type ThreadContext,
  type ThreadLimits,
  workerContextsMax,
  workerModulesMax,
} from './worker/protocol.ts'
import type { HostWorker, Lease, WorkerPool } from './worker-pool.ts'

/** A number per compiled module object, which workers key their copies by. */
const moduleIds = new WeakMap<WebAssembly.Module, number>()
let nextModuleId = 1
/** A number per distinct thread context (by its JSON), which workers key their copies by. */
const contextIds = new Map<string, number>()
/** Past this many, the numbering starts over (a context numbered again is sent to workers again). */
const contextIdsMax = 4096
let nextContextId = 1
/** The modules and contexts each worker holds, oldest first: the same lists the worker keeps. */
const workerModules = new WeakMap<HostWorker, number[]>()
const workerContexts = new WeakMap<HostWorker, number[]>()

/** Whether `worker` holds `id` by now; if not, it will once this start reaches it. */
function heldBy(worker: HostWorker, lists: WeakMap<HostWorker, number[]>, id: number, max: number): boolean {
  let held = lists.get(worker)
  if (held === undefined) {
    held = []
    lists.set(worker, held)
  }
  if (held.includes(id)) return true
  held.push(id)
  if (held.length > max) held.shift()
  return false
}

/**
 * After the I/O of this turn of the event loop (Node): the ends of children that several messages
 * of one turn bring reach the worker in one message (after each message's own microtasks, they took
 * 1.4 messages per child on 3 local nodes running tiny threads). A browser has no such phase: after
 * this task.
 */
const afterThisTurn: (run: () => void) => void =
  typeof globalThis.setImmediate === 'function' ? (run) => setImmediate(run) : (run) => queueMicrotask(run)

/** The module for a start on `worker`: null when the worker has it already. */
function moduleFor(
  worker: HostWorker,
  module: WebAssembly.Module,
): { module: WebAssembly.Module | null; moduleId: number } {
  let moduleId = moduleIds.get(module)
  if (moduleId === undefined) {
    moduleId = nextModuleId++
    moduleIds.set(module, moduleId)
  }
  return { module: heldBy(worker, workerModules, moduleId, workerModulesMax) ? null : module, moduleId }
}

/** The context for a start on `worker`: null when the worker has it already. */
function contextFor(
  worker: HostWorker,
  context: ThreadContext,
): { context: ThreadContext | null; contextId: number } {
  const key = JSON.stringify(context)
  let contextId = contextIds.get(key)
  if (contextId === undefined) {
    if (contextIds.size >= contextIdsMax) contextIds.clear()
    contextId = nextContextId++
    contextIds.set(key, contextId)
  }
  return { context: heldBy(worker, workerContexts, contextId, workerContextsMax) ? null : context, contextId }
}

/**
 * `bytes` fit to send to a worker. A structured clone copies a view's whole buffer, and the bytes
 * this host passes on are often views into a larger one (a network frame, a decoded record): a tiny
 * thread's arg of a few bytes was a view into 64 KiB on average, all of it copied into the worker
 * at each start. A view on less than half its buffer goes as a copy of its own bytes.
 */
export function ownBytes(bytes: Uint8Array): Uint8Array {
  // Not `slice`: a Node Buffer's is a view.
  return bytes.buffer.byteLength > 2 * bytes.byteLength ? new Uint8Array(bytes) : bytes
}

export interface HostCall {
  callSequence: number
  module: string
  name: string
  args: number[]
  payload: Uint8Array | null
}

export interface HostCallReply {
  result: number
  payload?: Uint8Array | null
}

export interface ThreadEvents {
  /** stdout (1) / stderr (2) bytes; `callSequence` identifies the write for exactly-once output. */
  output(fd: number, bytes: Uint8Array, callSequence: number): void
  /** A host call from the guest (spawn, join, files...). */
  call(call: HostCall): Promise<HostCallReply>
  /**
   * A spawn the worker answered itself (handle = call sequence number; only with
   * `ThreadStart.spawnsAheadMax` > 0): the embedding makes the child, synchronously in message order
   * (a later call, save or end of the thread comes after it). The promise settles when the spawn no
   * longer counts against the limit.
   */
  spawn?(callSequence: number, payload: Uint8Array): Promise<void>
  /** A context save was taken. */
  save(save: EncodedSave, costMs: number): void
  /** A non-deterministic value the guest saw (replayed after a restore). */
  log(callSequence: number, value: bigint): void
}

export type ThreadOutcome =
  | { kind: 'exit'; code: number; result: Uint8Array | null }
  | { kind: 'error'; error: FabricHostError }

export interface ThreadStart {
  module: WebAssembly.Module
  globalCount: number
  moduleDigest: string
  /** Workers may reuse an instance of the module for this thread (Program.instanceReusable). */
  instanceReusable?: boolean
  entry: string
  arg: Uint8Array
  threadId: number
  seed: number
  args: string[]
  env: string[]
  limits: ThreadLimits & {
    /** Time the thread may compute (not counting time suspended in host calls), ms. */
    cpuBudgetMs: number
  }
  saveIntervalMs: number
  incrementalSaves: boolean
  /** Whether `ThreadEvents.call` serves WASI file calls. */
  files: boolean
  /** Guest names of the preopened directories (fds 3, 4, ...). */
  preopens: string[]
  /** Encoded saves to restore from, full save first. */
  restore: Uint8Array[] | null
  replayLog: Array<[number, bigint]>
  nextSaveSequence: number
  /** Spawns the worker answers itself before the embedding acknowledges them (needs `ThreadEvents.spawn`); default 0. */
  spawnsAheadMax?: number
}

/** Outcome of a child, as `childEnded` hands it to the thread's worker: null result = it failed. */
export interface ChildOutcome {
  failed: boolean
  result: Uint8Array | null
}

export class ThreadRunner {
  readonly done: Promise<ThreadOutcome>
  private finish!: (outcome: ThreadOutcome) => void
  private lease: Lease | null = null
  private ended = false
  private computedMs = 0
  private computingSince = 0
  /** The worker waits: in a host call, or as its `suspend` said. */
  private suspended = false
  private budgetTimer: ReturnType<typeof setTimeout> | null = null
  private readonly start: ThreadStart
  private readonly events: ThreadEvents
  /** Children news for the worker, gathered until the end of the turn (see `ChildrenMessage`). */
  private childrenPlaced = 0
  private childrenEnded: Array<[number, Uint8Array | null]> = []
  private childrenFlushQueued = false
  private readonly spawnsAheadMax: number

  constructor(pool: WorkerPool, start: ThreadStart, events: ThreadEvents) {
    this.start = start
    this.events = events
    this.spawnsAheadMax = events.spawn === undefined ? 0 : (start.spawnsAheadMax ?? 0)
    this.done = new Promise((resolve) => {
      this.finish = resolve
    })
    void pool.acquire().then((lease) => this.begin(lease))
  }

  /** Changes how often the thread saves automatically (the embedding learns the best interval). */
  configure(saveIntervalMs: number): void {
    if (!this.ended) this.lease?.worker.post({ type: 'configure', saveIntervalMs })
  }

  /** Asks for a save at the thread's next blocking call. */
  requestSave(): void {
    if (!this.ended) this.lease?.worker.post({ type: 'configure', saveNow: true })
  }

  /**
   * A child this thread spawned (its handle) ended: its worker may answer a join of it at once. The
   * outcomes of one turn travel in one message; before the worker runs, they are dropped (a join then
   * asks the embedding).
   */
  childEnded(handle: number, outcome: ChildOutcome): void {
    if (this.ended || this.lease === null) return
    this.childrenEnded.push([handle, outcome.failed ? null : ownBytes(outcome.result ?? new Uint8Array(0))])
    this.queueChildrenFlush()
  }

  private queueChildrenFlush(): void {
    if (this.childrenFlushQueued) return
    this.childrenFlushQueued = true
    afterThisTurn(() => {
      this.childrenFlushQueued = false
      if (this.ended || this.lease === null) return
      if (this.childrenPlaced === 0 && this.childrenEnded.length === 0) return
      this.lease.worker.post({ type: 'children', placed: this.childrenPlaced, ended: this.childrenEnded })
      this.childrenPlaced = 0
      this.childrenEnded = []
    })
  }

  /** Ends the thread's worker as a crash would (tests; `fabric kill`). */
  kill(reason = 'worker was killed'): void {
    if (this.ended) return
    if (this.lease === null) {
      this.end({ kind: 'error', error: new WorkerLostError(reason) }, false)
      return
    }
    this.end({ kind: 'error', error: new WorkerLostError(reason) }, false)
  }

  private begin(lease: Lease): void {
    if (this.ended) {
      lease.release(true)
      return
    }
    this.lease = lease
    const { worker } = lease
    worker.onMessage((message) => this.onMessage(message))
    worker.onCrash((reason) => this.end({ kind: 'error', error: new WorkerLostError(reason) }, false))
    const start = this.start
    const message: StartMessage = {
      type: 'start',
      ...moduleFor(worker, start.module),
      ...contextFor(worker, {
        instanceReusable: start.instanceReusable === true,
        globalCount: start.globalCount,
        moduleDigest: start.moduleDigest,
        args: start.args,
        env: start.env,
        limits: { memoryPagesMax: start.limits.memoryPagesMax },
        files: start.files,
        preopens: start.preopens,
        incrementalSaves: start.incrementalSaves,
        spawnsAheadMax: this.spawnsAheadMax,
      }),
      entry: start.entry,
      arg: ownBytes(start.arg),
      threadId: start.threadId,
      seed: start.seed,
      saveIntervalMs: start.saveIntervalMs,
      restore: start.restore === null ? null : start.restore.map(ownBytes),
      replayLog: start.replayLog,
      nextSaveSequence: start.nextSaveSequence,
    }
    this.computingSince = Date.now()
    this.armBudget()
    worker.post(message)
  }

  private onMessage(message: FromWorker): void {
    if (this.ended) return
    // What the guest saw comes before what it did next.
    if (message.log !== undefined)
      for (const [callSequence, value] of message.log) this.events.log(callSequence, value)
    switch (message.type) {
      case 'output':
        this.events.output(message.fd, message.bytes, message.callSequence)
        break
      case 'save':
        this.events.save(message.save, message.costMs)
        break
      case 'call':
        // The worker waits for the reply from here (it sends no `suspend` for a host call).
        this.suspendComputing()
        this.answer(message)
        break
      case 'spawn': {
        // Placed or failed, the spawn no longer counts against the worker's limit.
        // Acknowledgements go with the next reply or children message; alone only once they add up
        // to half the worker's limit (a worker at its limit makes a host call, whose reply brings them).
        const acknowledge = () => {
          this.childrenPlaced++
          if (this.childrenPlaced >= Math.max(1, this.spawnsAheadMax / 2)) this.queueChildrenFlush()
        }
        this.events.spawn?.(message.callSequence, message.payload).then(acknowledge, acknowledge)
        break
      }
      case 'suspend':
        this.suspendComputing()
        break
      case 'resume':
        this.resumeComputing()
        break
      case 'exit':
        this.end({ kind: 'exit', code: message.code, result: message.result }, true)
        break
      case 'error':
        this.end({ kind: 'error', error: deserializeError(message.error) }, false)
        break
    }
  }

  private answer(message: CallMessage): void {
    const { type: _type, ...call } = message
    this.events.call(call).then(
      (reply) => {
        if (this.ended) return
        // The worker computes again from the reply (it sends no `resume` after a host call).
        this.resumeComputing()
        this.lease?.worker.post({
          type: 'reply',
          callSequence: message.callSequence,
          result: reply.result,
          payload: reply.payload === undefined || reply.payload === null ? null : ownBytes(reply.payload),
          spawnsPlaced: this.childrenPlaced,
        })
        this.childrenPlaced = 0
      },
      (error: unknown) => {
        const failure = error instanceof Error ? error : new Error(String(error))
        this.end({ kind: 'error', error: failure as FabricHostError }, false)
      },
    )
  }

  private suspendComputing(): void {
    if (this.suspended) return
    this.suspended = true
    this.computedMs += Date.now() - this.computingSince
    this.disarmBudget()
    this.lease?.suspend()
  }

  private resumeComputing(): void {
    if (!this.suspended) return
    this.suspended = false
    this.computingSince = Date.now()
    this.lease?.resume()
    this.armBudget()
  }

  private armBudget(): void {
    this.disarmBudget()
    const remaining = this.start.limits.cpuBudgetMs - this.computedMs
    this.budgetTimer = setTimeout(
      () => {
        this.end(
          {
            kind: 'error',
            error: new CpuBudgetExceededError(
              `guest computed for more than its CPU budget of ${this.start.limits.cpuBudgetMs} ms (endless loop?)`,
            ),
          },
          false,
        )
      },
      Math.max(0, remaining),
    )
  }

  private disarmBudget(): void {
    if (this.budgetTimer !== null) clearTimeout(this.budgetTimer)
    this.budgetTimer = null
  }

  private end(outcome: ThreadOutcome, reusable: boolean): void {
    if (this.ended) return
    this.ended = true
    this.disarmBudget()
    this.lease?.release(reusable)
    this.finish(outcome)
  }
}
