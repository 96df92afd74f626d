/**
 * A process on one machine: the main thread and the threads it spawns, each on the worker pool.
 * It keeps every thread's chain of context saves in memory and, when a thread's worker dies,
 * restarts the thread from its last save in a fresh worker. Output is exactly-once: a write that a
 * restarted thread replays (same call sequence number) is not shown again. The distributed runtime
 * (fabric/) does the same across nodes; this is the single-machine embedding of the host.
 */

import { importModuleWasi } from './abi.ts'
import { type FabricHostError, GuestCallError, WorkerLostError } from './errors.ts'
import type { GuestFileSystem } from './files.ts'
import type { Program } from './program.ts'
import { SaveIntervalLearner } from './save-interval.ts'
import type { EncodedSave } from './snapshot.ts'
import { type HostCall, type HostCallReply, type ThreadOutcome, ThreadRunner } from './thread-runner.ts'
import type { WorkerPool } from './worker-pool.ts'

export const defaultLimits = {
  /** 1 GiB of guest memory per thread. */
  memoryPagesMax: 16384,
  /** One hour of computing per thread. */
  cpuBudgetMs: 3_600_000,
}

/** Threads one process may create. */
export const threadCountMax = 10_000
/** Restarts of one thread after its worker is lost, before the process gives up. */
export const restartCountMax = 20
/** Bytes of result `join` hands back, at most. */
export const resultBytesMax = 1024 * 1024

export interface ProcessOptions {
  pool: WorkerPool
  program: Program
  args: string[]
  env?: string[]
  /** Seed of the process's random streams; random when not given. */
  seed?: number
  memoryPagesMax?: number
  cpuBudgetMs?: number
  /**
   * Minimum time between automatic saves at blocking calls. By default each thread learns its own:
   * Young/Daly's optimum from its measured save cost and `failureIntervalMs`.
   */
  saveIntervalMs?: number
  /** Expected time between failures that lose a thread's worker, for the learned interval. */
  failureIntervalMs?: number
  /** Saves after the first carry only changed pages; default true. */
  incrementalSaves?: boolean
  /** The file system guests see through WASI; none by default. */
  files?: GuestFileSystem
  /** Called with each piece of output as it arrives, at most once per write. */
  onOutput?: (threadId: number, fd: number, bytes: Uint8Array) => void
  /** Called after each context save (replication hooks here in fabric/). */
  onSave?: (threadId: number, save: EncodedSave, costMs: number) => void
  /**
   * Serves the `fabric` calls this class does not serve itself (`sync`: the embedding's
   * coordination engine). Without it such a call ends the process with a GuestCallError.
   */
  serveCall?: (threadId: number, call: HostCall, thread: LocalThreadControl) => Promise<HostCallReply>
}

/** What a `serveCall` handler may do with the calling thread. */
export interface LocalThreadControl {
  /** Asks for a context save at once (the thread waits in the call being served). */
  requestSave(): void
  /** The thread ended or the process is over: a pending call need not answer. */
  stopped(): boolean
}

export interface ProcessResult {
  exitCode: number
  /** Set when the process ended because a thread failed. */
  error: FabricHostError | null
}

interface ThreadState {
  threadId: number
  entry: string
  arg: Uint8Array
  seed: number
  chain: EncodedSave[]
  log: Array<[number, bigint]>
  /** Highest call sequence number whose output was shown, per fd. */
  shownThrough: Map<number, number>
  runner: ThreadRunner | null
  restarts: number
  interval: SaveIntervalLearner
  outcome: Promise<ThreadOutcome>
  settle: (outcome: ThreadOutcome) => void
  ended: ThreadOutcome | null
}

function threadSeed(processSeed: number, threadId: number): number {
  let value = (processSeed ^ Math.imul(threadId + 1, 0x9e3779b1)) >>> 0
  value = Math.imul(value ^ (value >>> 16), 0x85ebca6b) >>> 0
  value = Math.imul(value ^ (value >>> 13), 0xc2b2ae35) >>> 0
  return (value ^ (value >>> 16)) >>> 0
}

export class LocalProcess {
  readonly result: Promise<ProcessResult>
  private readonly options: ProcessOptions
  private readonly threads = new Map<number, ThreadState>()
  /** Effects already applied, by op id `${threadId}:${callSequence}`: spawn returns the same child. */
  private readonly applied = new Map<string, HostCallReply>()
  private readonly seed: number
  private nextThreadId = 0
  private finished = false
  private finishProcess!: (result: ProcessResult) => void

  constructor(options: ProcessOptions) {
    this.options = options
    this.seed = options.seed ?? Math.floor(Math.random() * 2 ** 32)
    this.result = new Promise((resolve) => {
      this.finishProcess = resolve
    })
    const main = this.createThread(options.program.mainEntry, new Uint8Array(0))
    main.outcome.then((outcome) => {
      if (outcome.kind === 'exit') this.finish({ exitCode: outcome.code, error: null })
      else this.finish({ exitCode: 1, error: outcome.error })
    })
  }

  /** Thread ids and how many saves each has (for tests and `ps`). */
  threadIds(): number[] {
    return [...this.threads.keys()]
  }

  saveCount(threadId: number): number {
    return this.threads.get(threadId)?.chain.length ?? 0
  }

  isRunning(threadId: number): boolean {
    const thread = this.threads.get(threadId)
    return thread !== undefined && thread.ended === null
  }

  /** Kills the worker of a thread as a crash would; the thread restarts from its last save. */
  killWorker(threadId: number): boolean {
    const thread = this.threads.get(threadId)
    if (thread?.runner === null || thread === undefined || thread.ended !== null) return false
    thread.runner.kill('worker was killed')
    return true
  }

  /** Stops every thread; the process ends with `exitCode`. */
  kill(exitCode = 137): void {
    this.finish({ exitCode, error: null })
  }

  private createThread(entry: string, arg: Uint8Array): ThreadState {
    const threadId = this.nextThreadId++
    let settle!: (outcome: ThreadOutcome) => void
    const outcome = new Promise<ThreadOutcome>((resolve) => {
      settle = resolve
    })
    const thread: ThreadState = {
      threadId,
      entry,
      arg,
      seed: threadSeed(this.seed, threadId),
      chain: [],
      log: [],
      shownThrough: new Map(),
      runner: null,
      restarts: 0,
      interval: new SaveIntervalLearner(this.options.failureIntervalMs),
      outcome,
      settle,
      ended: null,
    }
    this.threads.set(threadId, thread)
    this.launch(thread)
    return thread
  }

  private launch(thread: ThreadState): void {
    const { program, pool } = this.options
    const restore = thread.chain.length > 0 ? thread.chain.map((save) => save.bytes) : null
    const runner = new ThreadRunner(
      pool,
      {
        module: program.module,
        globalCount: program.globalCount,
        moduleDigest: program.moduleDigest,
        instanceReusable: program.instanceReusable,
        entry: thread.entry,
        arg: thread.arg,
        threadId: thread.threadId,
        seed: thread.seed,
        args: this.options.args,
        env: this.options.env ?? [],
        limits: {
          memoryPagesMax: this.options.memoryPagesMax ?? defaultLimits.memoryPagesMax,
          cpuBudgetMs: this.options.cpuBudgetMs ?? defaultLimits.cpuBudgetMs,
        },
        saveIntervalMs: this.options.saveIntervalMs ?? thread.interval.currentMs,
        incrementalSaves: this.options.incrementalSaves ?? true,
        files: this.options.files !== undefined,
        preopens: this.options.files?.preopens.slice() ?? [],
        restore,
        replayLog: thread.log.slice(),
        nextSaveSequence: (thread.chain.at(-1)?.summary.sequence ?? 0) + 1,
      },
      {
        output: (fd, bytes, callSequence) => this.output(thread, fd, bytes, callSequence),
        call: (call) => this.call(thread, call),
        save: (save, costMs) => {
          if (save.summary.baseSequence === null) thread.chain = [save]
          else thread.chain.push(save)
          thread.log = thread.log.filter(([sequence]) => sequence > save.summary.callSequence)
          this.options.onSave?.(thread.threadId, save, costMs)
          if (this.options.saveIntervalMs === undefined) {
            const interval = thread.interval.observe(costMs)
            if (interval !== null) runner.configure(interval)
          }
        },
        log: (callSequence, value) => thread.log.push([callSequence, value]),
      },
    )
    thread.runner = runner
    runner.done.then((outcome) => {
      if (thread.runner !== runner || this.finished) return
      if (
        outcome.kind === 'error' &&
        outcome.error instanceof WorkerLostError &&
        thread.restarts < restartCountMax
      ) {
        thread.restarts++
        this.launch(thread)
        return
      }
      thread.ended = outcome
      thread.runner = null
      // An ended thread is never restored: its saves and replay log are dropped.
      thread.chain = []
      thread.log = []
      this.options.files?.threadEnded?.(thread.threadId)
      thread.settle(outcome)
      if (outcome.kind === 'error' && thread.threadId !== 0) {
        this.finish({ exitCode: 1, error: outcome.error })
      }
    })
  }

  private output(thread: ThreadState, fd: number, bytes: Uint8Array, callSequence: number): void {
    const shown = thread.shownThrough.get(fd) ?? 0
    if (callSequence <= shown) return
    thread.shownThrough.set(fd, callSequence)
    this.options.onOutput?.(thread.threadId, fd, bytes)
  }

  private async call(thread: ThreadState, call: HostCall): Promise<HostCallReply> {
    const opId = `${thread.threadId}:${call.callSequence}`
    const recorded = this.applied.get(opId)
    if (recorded !== undefined) return recorded
    if (call.module === importModuleWasi) {
      if (this.options.files === undefined)
        throw new GuestCallError('guest made a file call, but no file system is mapped')
      return this.options.files.handle(thread.threadId, call)
    }
    switch (call.name) {
      case 'spawn': {
        const reply = this.spawn(call.payload)
        this.applied.set(opId, reply)
        return reply
      }
      case 'join':
        return this.join(thread.threadId, call.args[0]!)
      default:
        if (this.options.serveCall !== undefined) {
          return this.options.serveCall(thread.threadId, call, {
            requestSave: () => thread.runner?.requestSave(),
            stopped: () => this.finished || thread.ended !== null,
          })
        }
        throw new GuestCallError(`guest called fabric.${call.name}, which this host does not serve`)
    }
  }

  private spawn(payload: Uint8Array | null): HostCallReply {
    if (payload === null || payload.length < 4) throw new GuestCallError('spawn: malformed request')
    if (this.threads.size >= threadCountMax) return { result: -1 }
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength)
    const entryLength = view.getUint32(0, true)
    if (4 + entryLength > payload.length) throw new GuestCallError('spawn: malformed request')
    const entry = new TextDecoder().decode(payload.subarray(4, 4 + entryLength))
    const exported = WebAssembly.Module.exports(this.options.program.module).some(
      (item) => item.name === entry && item.kind === 'function',
    )
    if (!exported) return { result: -2 }
    const child = this.createThread(entry, payload.slice(4 + entryLength))
    return { result: child.threadId }
  }

  private async join(joiner: number, handle: number): Promise<HostCallReply> {
    const child = this.threads.get(handle)
    // Joining the main thread or oneself would wait forever.
    if (child === undefined || handle === 0 || handle === joiner) return { result: -1 }
    const outcome = await child.outcome
    if (outcome.kind === 'error') return { result: -3 }
    const result = outcome.result ?? new Uint8Array(0)
    return { result: result.length, payload: result.subarray(0, resultBytesMax) }
  }

  private finish(result: ProcessResult): void {
    if (this.finished) return
    this.finished = true
    for (const thread of this.threads.values()) {
      if (thread.runner !== null) {
        const runner = thread.runner
        thread.runner = null
        runner.kill('process ended')
      }
    }
    this.finishProcess(result)
  }
}
