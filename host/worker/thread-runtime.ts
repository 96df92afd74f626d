/**
 * Runs one guest thread inside a worker: instantiates the instrumented module, drives Asyncify at
 * blocking calls, takes context saves (full or incremental), restores from a chain of saves, and
 * turns traps into typed errors. Platform-free: the worker adapters give it a `WorkerPort`.
 */

import {
  decodeSpawnPayload,
  exportedFunctions,
  fabricImports,
  importModuleEnvironment,
  importModuleFabric,
  importModuleWasi,
  instrumentedNames,
  isBlockingImport,
  JoinError,
  SpawnError,
  SyncError,
  syncRequestBytesMax,
} from '../abi.ts'
import {
  FabricHostError,
  GuestCallError,
  GuestTrapError,
  MemoryLimitError,
  StackOverflowError,
  serializeError,
} from '../errors.ts'
import {
  asyncifyHeaderBytes,
  hostGlobalMemoryPagesMax,
  hostGlobalMemoryRefusedPages,
  wasmPageBytes,
} from '../memory-layout.ts'
import {
  applyChain,
  type ContextSave,
  checkChain,
  decodeSave,
  encodeSave,
  type PendingCall,
  summarize,
} from '../snapshot.ts'
import { createWasi, ExitSignal, type FileCalls } from '../wasi.ts'
import { createFileCalls } from '../wasi-files.ts'
import {
  type CallMessage,
  type ChildrenMessage,
  type FromWorker,
  type ReplyMessage,
  type StartMessage,
  type ThreadContext,
  type WorkerPort,
  workerContextsMax,
  workerModulesMax,
} from './protocol.ts'

const asyncifyStateUnwinding = 1
const asyncifyStateRewinding = 2
/** A delta chain is folded into a new full save once its deltas add up to this share of memory. */
const deltaShareOfMemoryMax = 1
const deltaCountMax = 64
/**
 * Outcomes of ended children a thread keeps for joins (each join of one uses it up); past it the
 * oldest go, and a join of one of those asks the host.
 */
export const childOutcomesMax = 4096

interface AsyncifyExports {
  asyncify_start_unwind(address: number): void
  asyncify_stop_unwind(): void
  asyncify_start_rewind(address: number): void
  asyncify_stop_rewind(): void
  asyncify_get_state(): number
}

/** A start with what the worker held for it (the module, the context) filled in. */
type ThreadSpec = Omit<StartMessage, 'module' | 'context'> & ThreadContext & { module: WebAssembly.Module }

interface Reply {
  result: number
  payload: Uint8Array | null
}

/** splitmix64: the thread's deterministic random stream, keyed by seed and call sequence number. */
function splitmix64(seed: bigint): bigint {
  let z = (seed + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn
  return z ^ (z >> 31n)
}

/**
 * An instance a worker keeps for the next thread of its module: its imports call whatever thread
 * is bound to it, and `fresh` is its state right after instantiation, written back between threads
 * (cheaper than a new instance: no new memories to map, nothing for the collector).
 */
export interface ReusedInstance {
  instance: WebAssembly.Instance
  imports: WebAssembly.ModuleImportDescriptor[]
  /** The bound thread's implementation of each import, in the order of `imports`. */
  bound: Array<(...args: unknown[]) => unknown>
  fresh: {
    memory: Uint8Array
    dirty: Uint8Array
    /** Null: all zeros. */
    asyncify: Uint8Array | null
    globals: Array<[WebAssembly.Global, unknown]>
  }
}

/** Where a worker keeps its idle instances, by module (one each: a worker runs one thread at a time). */
export type InstanceShelf = Map<number, ReusedInstance>

/** What a new instance holds: its memories and the values of its mutable globals. */
function freshState(instance: WebAssembly.Instance): ReusedInstance['fresh'] {
  const exports = instance.exports as Record<string, unknown>
  const bytes = (name: string) => new Uint8Array((exports[name] as WebAssembly.Memory).buffer).slice()
  const asyncify = bytes(instrumentedNames.asyncifyMemory)
  const globals: Array<[WebAssembly.Global, unknown]> = []
  for (const value of Object.values(exports)) {
    if (!(value instanceof WebAssembly.Global)) continue
    const current: unknown = value.value
    try {
      // Only a mutable global takes a write (of its own value: nothing changes).
      value.value = current
      globals.push([value, current])
    } catch {}
  }
  return {
    memory: bytes('memory'),
    dirty: bytes(instrumentedNames.dirtyMemory),
    asyncify: asyncify.every((byte) => byte === 0) ? null : asyncify,
    globals,
  }
}

export class GuestThread {
  private readonly start: ThreadSpec
  private readonly port: WorkerPort
  private readonly shelf: InstanceShelf | null
  /** The reused instance this thread runs in, if it runs in one. */
  private reused: ReusedInstance | null = null
  private instance!: WebAssembly.Instance
  private memory!: WebAssembly.Memory
  private dirty!: WebAssembly.Memory
  private asyncifyMemory!: WebAssembly.Memory
  /** The furthest an unwind of this thread wrote into the asyncify memory, in bytes. */
  private asyncifyWrittenBytes = 0
  private asyncify!: AsyncifyExports
  private globals: WebAssembly.Global[] = []
  private callSequence = 0
  private pending: Promise<Reply> | null = null
  private pendingCall: PendingCall | null = null
  private rewindReply: Reply | null = null
  private readonly implementations = new Map<string, (...args: number[]) => number | Promise<number>>()
  private readonly replies = new Map<number, (reply: Reply) => void>()
  private readonly replayLog: Map<number, bigint>
  private result: Uint8Array | null = null
  private saveSequence: number
  private lastSave: { sequence: number; memoryPages: number; takenAtMs: number } | null = null
  private deltaBytesSinceFull = 0
  private deltaCountSinceFull = 0
  private saveRequested = false
  /** Values logged since the last message to the host (they go with the next one). */
  private unsentLog: Array<[number, bigint]> = []
  /** Spawns sent one way that the host has not acknowledged yet. */
  private spawnsUnacknowledged = 0
  /** Results of ended children by handle, as the host pushed them (see `ChildrenMessage`). */
  private readonly childOutcomes = new Map<number, Reply>()
  /** The current call posted a host call; `waitsForHost`: the pending call is one. */
  private hostCallPosted = false
  private waitsForHost = false
  /** Unwound in a blocking call, waiting for its reply. */
  private suspended = false
  private saving = false
  private saveIntervalMs: number

  constructor(start: ThreadSpec, port: WorkerPort, shelf: InstanceShelf | null = null) {
    this.start = start
    this.port = port
    // Only fresh starts of modules whose whole state is memories and globals reuse instances.
    this.shelf = start.instanceReusable && start.restore === null ? shelf : null
    this.replayLog = new Map(start.replayLog)
    this.saveSequence = start.nextSaveSequence
    this.saveIntervalMs = start.saveIntervalMs
  }

  configure(change: { saveIntervalMs?: number; saveNow?: boolean }): void {
    if (change.saveIntervalMs !== undefined) this.saveIntervalMs = change.saveIntervalMs
    if (change.saveNow === true) {
      // Suspended in a call, the thread is unwound already: save at once rather than at the next call.
      if (this.suspended && !this.saving) void this.save()
      else this.saveRequested = true
    }
  }

  onChildren(message: ChildrenMessage): void {
    this.spawnsUnacknowledged = Math.max(0, this.spawnsUnacknowledged - message.placed)
    for (const [handle, result] of message.ended) {
      const reply =
        result === null
          ? { result: JoinError.threadFailed, payload: null }
          : { result: result.length, payload: result }
      this.childOutcomes.delete(handle)
      this.childOutcomes.set(handle, reply)
      if (this.childOutcomes.size > childOutcomesMax)
        this.childOutcomes.delete(this.childOutcomes.keys().next().value!)
    }
  }

  onReply(message: ReplyMessage): void {
    this.spawnsUnacknowledged = Math.max(0, this.spawnsUnacknowledged - message.spawnsPlaced)
    const resolve = this.replies.get(message.callSequence)
    if (resolve === undefined) return
    this.replies.delete(message.callSequence)
    resolve({ result: message.result, payload: message.payload })
  }

  async run(): Promise<void> {
    try {
      await this.instantiate()
      const restoring = this.start.restore !== null
      if (restoring) await this.restore(this.start.restore!)
      const code = await this.drive(restoring)
      this.send({ type: 'exit', code, result: this.result })
      this.shelve()
    } catch (error) {
      this.send({ type: 'error', error: serializeError(this.classify(error)) })
    }
  }

  private async instantiate(): Promise<void> {
    const blocking = (
      module: string,
      name: string,
      implementation: (...args: number[]) => number | Promise<number>,
    ) => this.wrapImport(module, name, implementation)
    const imports: WebAssembly.Imports = {
      [importModuleFabric]: this.fabricImports(blocking),
      [importModuleWasi]: this.wasiImports(blocking),
      [importModuleEnvironment]: this.environmentImports(),
    }
    this.instance = await this.instanceFor(imports)
    const exports = this.instance.exports as Record<string, unknown>
    this.memory = exports.memory as WebAssembly.Memory
    this.dirty = exports[instrumentedNames.dirtyMemory] as WebAssembly.Memory
    this.asyncifyMemory = exports[instrumentedNames.asyncifyMemory] as WebAssembly.Memory
    this.asyncify = exports as unknown as AsyncifyExports
    for (let index = 0; index < this.start.globalCount; index++) {
      this.globals.push(exports[instrumentedNames.globalPrefix + index] as WebAssembly.Global)
    }
    const pagesMax = this.start.limits.memoryPagesMax
    const pagesNow = this.memory.buffer.byteLength / wasmPageBytes
    if (pagesNow > pagesMax) {
      throw new MemoryLimitError(
        `guest starts with ${pagesNow} pages of memory; the limit is ${pagesMax} pages`,
      )
    }
    ;(exports[hostGlobalMemoryPagesMax] as WebAssembly.Global).value = pagesMax
  }

  /** A new instance, or the shelved one of this module bound to this thread's imports. */
  private async instanceFor(imports: WebAssembly.Imports): Promise<WebAssembly.Instance> {
    if (this.shelf === null) return WebAssembly.instantiate(this.start.module, imports)
    let reused = this.shelf.get(this.start.moduleId)
    this.shelf.delete(this.start.moduleId)
    if (reused === undefined) {
      const descriptors = WebAssembly.Module.imports(this.start.module)
      const bound: ReusedInstance['bound'] = []
      const forwarding: Record<string, Record<string, (...args: unknown[]) => unknown>> = {}
      descriptors.forEach((descriptor, index) => {
        forwarding[descriptor.module] ??= {}
        forwarding[descriptor.module]![descriptor.name] = (...args) => bound[index]!(...args)
      })
      const instance = await WebAssembly.instantiate(this.start.module, forwarding as WebAssembly.Imports)
      reused = { instance, imports: descriptors, bound, fresh: freshState(instance) }
    }
    const table = imports as Record<string, Record<string, (...args: unknown[]) => unknown>>
    reused.imports.forEach((descriptor, index) => {
      reused.bound[index] = table[descriptor.module]![descriptor.name]!
    })
    this.reused = reused
    return reused.instance
  }

  /**
   * After a clean end: writes the fresh state back into the instance and shelves it for the next
   * thread, unless something outside that state changed (memory grown, a save under way).
   */
  private shelve(): void {
    const reused = this.reused
    if (reused === null || this.shelf === null) return
    this.reused = null
    const { fresh } = reused
    if (
      this.asyncify.asyncify_get_state() !== 0 ||
      this.memory.buffer.byteLength !== fresh.memory.length ||
      this.dirty.buffer.byteLength !== fresh.dirty.length ||
      (fresh.asyncify !== null && this.asyncifyMemory.buffer.byteLength !== fresh.asyncify.length)
    )
      return
    new Uint8Array(this.memory.buffer).set(fresh.memory)
    new Uint8Array(this.dirty.buffer).set(fresh.dirty)
    // The asyncify memory is zero but for what this thread's unwinds wrote (its 1 MiB zeroed whole
    // took 11% of a worker's time per tiny thread).
    if (fresh.asyncify === null)
      new Uint8Array(this.asyncifyMemory.buffer).fill(
        0,
        0,
        Math.max(asyncifyHeaderBytes, this.asyncifyWrittenBytes),
      )
    else new Uint8Array(this.asyncifyMemory.buffer).set(fresh.asyncify)
    for (const [global, value] of fresh.globals) global.value = value
    reused.bound.fill(() => {
      throw new Error('bug: a shelved instance called an import')
    })
    this.shelf.set(this.start.moduleId, reused)
  }

  private fabricImports(
    blocking: (module: string, name: string, fn: (...args: number[]) => number | Promise<number>) => unknown,
  ) {
    const table: Record<string, (...args: number[]) => number | Promise<number>> = {
      spawn: (entryPointer, entryLength, argPointer, argLength) => {
        const payload = this.packSpawn(entryPointer, entryLength, argPointer, argLength)
        if (this.answersItself() && this.spawnsUnacknowledged < this.start.spawnsAheadMax) {
          // The host would answer the same (the handle is the op's call sequence number, the child's
          // id derives from it); the spawn goes one way, ahead of the thread's later messages.
          const spawn = decodeSpawnPayload(payload)
          if (spawn === null) return SpawnError.tooManyThreads
          if (!exportedFunctions(this.start.module).has(spawn.entry)) return SpawnError.noSuchEntry
          this.spawnsUnacknowledged++
          this.send({ type: 'spawn', callSequence: this.callSequence, payload }, [
            payload.buffer as ArrayBuffer,
          ])
          return this.callSequence
        }
        return this.callHost('spawn', [], payload).then((reply) => reply.result)
      },
      join: (handle, outPointer, outCapacity) => {
        // A child's result is fixed: the outcome the host pushed is the one it would answer.
        const ended = this.childOutcomes.get(handle)
        if (ended !== undefined && this.answersItself()) {
          // A result longer than the buffer is kept: the guest joins again with a larger one.
          if (ended.result <= outCapacity >>> 0) this.childOutcomes.delete(handle)
          return this.copyReply(ended, outPointer, outCapacity)
        }
        return this.callHost('join', [handle]).then((reply) => this.copyReply(reply, outPointer, outCapacity))
      },
      sync: (requestPointer, requestLength, outPointer, outCapacity) => {
        const memory = this.bytes()
        const request = [requestPointer >>> 0, requestLength >>> 0]
        const out = [outPointer >>> 0, outCapacity >>> 0]
        if (
          request[1]! > syncRequestBytesMax ||
          request[0]! + request[1]! > memory.length ||
          out[0]! + out[1]! > memory.length
        ) {
          return SyncError.invalid
        }
        return this.callHost('sync', [out[1]!], memory.slice(request[0]!, request[0]! + request[1]!)).then(
          (reply) => this.copyReply(reply, out[0]!, out[1]!),
        )
      },
      checkpoint: () => {
        this.saveRequested = true
        return Promise.resolve(0)
      },
      yield: () => (this.saveRequested || this.saveDue() ? Promise.resolve(0) : 0),
      arg_length: () => this.start.arg.length,
      arg_read: (pointer) => {
        this.bytes().set(this.start.arg, pointer)
        this.markWritten(pointer, this.start.arg.length)
        return 0
      },
      set_result: (pointer, length) => {
        this.result = this.bytes().slice(pointer, pointer + length)
        return 0
      },
      thread_id: () => this.start.threadId,
    }
    const wrapped: Record<string, unknown> = {}
    for (const name of Object.keys(fabricImports))
      wrapped[name] = blocking(importModuleFabric, name, table[name]!)
    return wrapped as WebAssembly.ModuleImports
  }

  private wasiImports(
    blocking: (module: string, name: string, fn: (...args: number[]) => number | Promise<number>) => unknown,
  ) {
    const wasi = createWasi({
      memory: () => this.memory,
      written: (pointer, length) => this.markWritten(pointer, length),
      args: this.start.args,
      env: this.start.env,
      writeOutput: (fd, bytes) => {
        this.send({ type: 'output', callSequence: this.callSequence, fd, bytes }, [
          bytes.buffer as ArrayBuffer,
        ])
      },
      clockNs: (clockId) =>
        this.logged(() =>
          clockId === 0 ? BigInt(Date.now()) * 1_000_000n : BigInt(Math.round(performance.now() * 1e6)),
        ),
      fillRandom: (target) => this.fillRandom(target),
      files: this.fileCalls(),
    })
    return new Proxy(
      {},
      {
        get: (_target, name: string) =>
          blocking(importModuleWasi, name, wasi[name] as (...args: number[]) => number),
      },
    ) as WebAssembly.ModuleImports
  }

  /** The embedding's file system, reached through host calls (blocking: the reply comes later). */
  private fileCalls(): FileCalls | null {
    if (!this.start.files) return null
    return createFileCalls({
      memory: () => this.memory,
      written: (pointer, length) => this.markWritten(pointer, length),
      preopens: this.start.preopens,
      callHost: (name, args, payload) => this.callHost(name, args, payload, importModuleWasi),
    })
  }

  private environmentImports(): WebAssembly.ModuleImports {
    return {
      abort: (messagePointer: number, filePointer: number, line: number, column: number) => {
        const message = this.readAssemblyScriptString(messagePointer)
        const file = this.readAssemblyScriptString(filePointer)
        throw new GuestTrapError(`guest aborted: ${message} at ${file}:${line}:${column}`)
      },
      seed: () => {
        const value = splitmix64(BigInt(this.start.seed) ^ 0x5eedn)
        return Number(value >> 11n) / 2 ** 53
      },
      trace: (messagePointer: number) => {
        const text = `trace: ${this.readAssemblyScriptString(messagePointer)}\n`
        const bytes = new TextEncoder().encode(text)
        this.send({ type: 'output', callSequence: this.callSequence, fd: 2, bytes }, [bytes.buffer])
      },
    }
  }

  private readAssemblyScriptString(pointer: number): string {
    if (pointer === 0) return ''
    const view = new DataView(this.memory.buffer)
    if (pointer < 4 || pointer > this.memory.buffer.byteLength) return '(bad string pointer)'
    const length = view.getUint32(pointer - 4, true)
    if (pointer + length > this.memory.buffer.byteLength) return '(bad string length)'
    return new TextDecoder('utf-16le').decode(new Uint8Array(this.memory.buffer, pointer, length))
  }

  /** Copies a reply's bytes (at most `capacity`) to the guest; returns the call's result. */
  private copyReply(reply: Reply, pointer: number, capacity: number): number {
    if (reply.payload !== null && reply.result >= 0) {
      const length = Math.min(capacity, reply.payload.length)
      this.bytes().set(reply.payload.subarray(0, length), pointer)
      this.markWritten(pointer, length)
    }
    return reply.result
  }

  /**
   * Marks the pages of a host write into guest memory for the next incremental save (the
   * instrumentation marks only the guest's own stores).
   */
  private markWritten(pointer: number, length: number): void {
    if (length <= 0) return
    const dirty = new Uint8Array(this.dirty.buffer)
    const last = Math.min(Math.floor((pointer + length - 1) / wasmPageBytes), dirty.length - 1)
    for (let page = Math.floor(pointer / wasmPageBytes); page <= last; page++) dirty[page] = 1
  }

  private bytes(): Uint8Array {
    return new Uint8Array(this.memory.buffer)
  }

  private packSpawn(
    entryPointerSigned: number,
    entryLengthSigned: number,
    argPointerSigned: number,
    argLengthSigned: number,
  ): Uint8Array {
    // The guest passes i32s: a negative length is a huge one (outside memory), not a short one.
    const [entryPointer, entryLength, argPointer, argLength] = [
      entryPointerSigned >>> 0,
      entryLengthSigned >>> 0,
      argPointerSigned >>> 0,
      argLengthSigned >>> 0,
    ]
    const memory = this.bytes()
    if (entryPointer + entryLength > memory.length || argPointer + argLength > memory.length) {
      throw new GuestCallError('spawn: entry or argument lies outside guest memory')
    }
    const entry = memory.subarray(entryPointer, entryPointer + entryLength)
    const out = new Uint8Array(4 + entryLength + argLength)
    new DataView(out.buffer).setUint32(0, entryLength, true)
    out.set(entry, 4)
    out.set(memory.subarray(argPointer, argPointer + argLength), 4 + entryLength)
    return out
  }

  private callHost(
    name: string,
    args: number[],
    payload: Uint8Array | null = null,
    module = importModuleFabric,
  ): Promise<Reply> {
    const callSequence = this.callSequence
    const message: CallMessage = { type: 'call', callSequence, module, name, args, payload }
    this.hostCallPosted = true
    return new Promise<Reply>((resolve) => {
      this.replies.set(callSequence, resolve)
      this.send(message)
    })
  }

  /**
   * A value the guest sees that a replay must see again: logged to the host (with the next message,
   * see `LoggedValues`), replayed from its log.
   */
  private logged(read: () => bigint): bigint {
    const replayed = this.replayLog.get(this.callSequence)
    if (replayed !== undefined) return replayed
    const value = read()
    this.unsentLog.push([this.callSequence, value])
    return value
  }

  /** Posts a message to the host, with the values logged since the last one. */
  private send(message: FromWorker, transfer?: Transferable[]): void {
    if (this.unsentLog.length > 0) {
      message.log = this.unsentLog
      this.unsentLog = []
    }
    this.port.post(message, transfer)
  }

  private fillRandom(target: Uint8Array): void {
    let state = splitmix64((BigInt(this.start.seed) << 32n) ^ BigInt(this.callSequence))
    for (let offset = 0; offset < target.length; offset += 8) {
      state = splitmix64(state)
      for (let byte = 0; byte < 8 && offset + byte < target.length; byte++) {
        target[offset + byte] = Number((state >> BigInt(byte * 8)) & 0xffn)
      }
    }
  }

  private wrapImport(
    module: string,
    name: string,
    implementation: ((...args: number[]) => number | Promise<number>) | undefined,
  ) {
    const mayBlock = isBlockingImport(module, name)
    if (implementation !== undefined) this.implementations.set(`${module}.${name}`, implementation)
    return (...args: number[]) => {
      if (this.asyncify.asyncify_get_state() === asyncifyStateRewinding) {
        this.asyncify.asyncify_stop_rewind()
        const reply = this.rewindReply!
        this.rewindReply = null
        return reply.result
      }
      this.callSequence++
      if (implementation === undefined)
        throw new GuestCallError(`guest called ${module}.${name}, which the host lacks`)
      this.hostCallPosted = false
      const outcome = implementation(...args)
      if (typeof outcome === 'number' || typeof outcome === 'bigint' || outcome === undefined) return outcome
      if (!mayBlock) throw new Error(`bug: non-blocking import ${module}.${name} returned a promise`)
      this.waitsForHost = this.hostCallPosted
      this.pending = outcome.then((result) => ({ result, payload: null }))
      this.pendingCall = { module, name, args: args.map(Number) }
      this.writeAsyncifyHeader()
      this.asyncify.asyncify_start_unwind(0)
      return 0
    }
  }

  private writeAsyncifyHeader(): void {
    const view = new DataView(this.asyncifyMemory.buffer)
    view.setUint32(0, asyncifyHeaderBytes, true)
    view.setUint32(4, this.asyncifyMemory.buffer.byteLength, true)
  }

  private entryFunction(): () => unknown {
    const entry = (this.instance.exports as Record<string, unknown>)[this.start.entry]
    if (typeof entry !== 'function')
      throw new GuestCallError(`module has no function export "${this.start.entry}"`)
    return entry as () => unknown
  }

  private async drive(restoring: boolean): Promise<number> {
    const entry = this.entryFunction()
    let rewinding = restoring
    if (restoring) {
      this.rewindReply = await this.pending!
      this.pending = null
    }
    for (;;) {
      if (rewinding) this.asyncify.asyncify_start_rewind(0)
      let returned: unknown
      try {
        returned = entry()
      } catch (error) {
        if (error instanceof ExitSignal) return error.code
        throw error
      }
      if (this.asyncify.asyncify_get_state() !== asyncifyStateUnwinding) {
        return typeof returned === 'number' ? returned : 0
      }
      this.asyncify.asyncify_stop_unwind()
      // How far this unwind wrote: shelve() zeroes that much again.
      this.asyncifyWrittenBytes = Math.max(
        this.asyncifyWrittenBytes,
        new DataView(this.asyncifyMemory.buffer).getUint32(0, true),
      )
      if (this.saveRequested || this.saveDue()) await this.save()
      // The host learns from a host call itself that the thread waits, and from its reply that it
      // computes again; only other waits are announced.
      const announced = !this.waitsForHost
      if (announced) this.send({ type: 'suspend' })
      this.suspended = true
      this.rewindReply = await this.pending!
      this.suspended = false
      while (this.saving) await new Promise((resolve) => setTimeout(resolve, 1))
      if (announced) this.send({ type: 'resume' })
      this.pending = null
      rewinding = true
    }
  }

  /**
   * Whether a blocking call may return without the host: not when a save is due, which is taken
   * while the guest is unwound in a call that waits.
   */
  private answersItself(): boolean {
    return !this.saveRequested && !this.saveDue()
  }

  private saveDue(): boolean {
    if (this.saveIntervalMs <= 0) return true
    const last = this.lastSave?.takenAtMs ?? 0
    return Date.now() - last >= this.saveIntervalMs
  }

  /** Takes a save while the guest is unwound; incremental when a previous save exists. */
  private async save(): Promise<void> {
    this.saving = true
    try {
      await this.captureSave()
    } finally {
      this.saving = false
    }
  }

  private async captureSave(): Promise<void> {
    const startedAt = performance.now()
    this.saveRequested = false
    const memoryPages = this.memory.buffer.byteLength / wasmPageBytes
    const dirty = new Uint8Array(this.dirty.buffer, 0, Math.min(memoryPages, this.dirty.buffer.byteLength))
    const memoryBytes = memoryPages * wasmPageBytes
    const full =
      this.lastSave === null ||
      !this.start.incrementalSaves ||
      this.deltaCountSinceFull >= deltaCountMax ||
      this.deltaBytesSinceFull >= memoryBytes * deltaShareOfMemoryMax
    const pages: number[] = []
    for (let page = 0; page < memoryPages; page++) {
      if (full || page >= this.lastSave!.memoryPages || dirty[page] !== 0) pages.push(page)
    }
    const pageIndexes = Uint32Array.from(pages)
    const pageData = new Uint8Array(pages.length * wasmPageBytes)
    const memory = this.bytes()
    pages.forEach((page, index) => {
      pageData.set(memory.subarray(page * wasmPageBytes, (page + 1) * wasmPageBytes), index * wasmPageBytes)
    })
    dirty.fill(0)
    const asyncifyUsed = new DataView(this.asyncifyMemory.buffer).getUint32(0, true)
    const sequence = this.saveSequence++
    const save: ContextSave = {
      moduleDigest: this.start.moduleDigest,
      threadId: this.start.threadId,
      sequence,
      baseSequence: full ? null : this.lastSave!.sequence,
      callSequence: this.callSequence,
      memoryPages,
      pageIndexes,
      pageData,
      globals: this.globals.map((global) => global.value as number | bigint),
      asyncifyData: new Uint8Array(this.asyncifyMemory.buffer, 0, asyncifyUsed).slice(),
      pendingCall: this.pendingCall!,
      record: {
        entry: this.start.entry,
        arg: this.start.arg,
        threadId: this.start.threadId,
        seed: this.start.seed,
        result: this.result,
      },
      takenAtMs: Date.now(),
    }
    if (full) {
      this.deltaBytesSinceFull = 0
      this.deltaCountSinceFull = 0
    } else {
      this.deltaBytesSinceFull += pageData.length
      this.deltaCountSinceFull++
    }
    this.lastSave = { sequence, memoryPages, takenAtMs: save.takenAtMs }
    this.replayLog.clear()
    const bytes = await encodeSave(save)
    const encoded = { summary: summarize(save), bytes }
    this.send({ type: 'save', save: encoded, costMs: performance.now() - startedAt }, [
      bytes.buffer as ArrayBuffer,
    ])
  }

  /** Puts a fresh instance into the state of the chain's last save, ready to rewind. */
  private async restore(encodedChain: Uint8Array[]): Promise<void> {
    const chain = await Promise.all(encodedChain.map((bytes) => decodeSave(bytes)))
    const last = checkChain(chain)
    if (last.moduleDigest !== this.start.moduleDigest) {
      throw new GuestCallError('context save belongs to a different module')
    }
    const pagesNow = this.memory.buffer.byteLength / wasmPageBytes
    if (last.memoryPages > this.start.limits.memoryPagesMax) {
      throw new MemoryLimitError(
        `context save needs ${last.memoryPages} pages; the limit is ${this.start.limits.memoryPagesMax}`,
      )
    }
    if (last.memoryPages > pagesNow) this.memory.grow(last.memoryPages - pagesNow)
    applyChain(chain, this.bytes())
    if (last.globals.length !== this.globals.length)
      throw new GuestCallError('context save has the wrong number of globals')
    last.globals.forEach((value, index) => {
      this.globals[index]!.value = value
    })
    new Uint8Array(this.asyncifyMemory.buffer).set(last.asyncifyData, 0)
    this.callSequence = last.callSequence
    this.result = last.record.result
    this.lastSave = { sequence: last.sequence, memoryPages: last.memoryPages, takenAtMs: Date.now() }
    this.saveSequence = Math.max(this.saveSequence, last.sequence + 1)
    const baseIndex = chain.length - 1
    this.deltaCountSinceFull = baseIndex
    this.deltaBytesSinceFull = chain.slice(1).reduce((sum, save) => sum + save.pageData.length, 0)
    // The thread was suspended in `pendingCall`; issue it again (effects carry op ids, so a call the
    // embedding already applied returns its recorded result).
    this.pendingCall = last.pendingCall
    this.pending = this.reissue(last.pendingCall)
  }

  private reissue(call: PendingCall): Promise<Reply> {
    if (call.module === importModuleFabric && (call.name === 'checkpoint' || call.name === 'yield')) {
      return Promise.resolve({ result: 0, payload: null })
    }
    const implementation = this.implementations.get(`${call.module}.${call.name}`)
    if (implementation === undefined)
      throw new GuestCallError(`context save is suspended in unknown call ${call.name}`)
    return Promise.resolve(implementation(...call.args)).then((result) => ({ result, payload: null }))
  }

  private classify(error: unknown): unknown {
    if (error instanceof FabricHostError) {
      if (error instanceof GuestTrapError) return this.memoryRefused() ?? error
      return error
    }
    if (error instanceof RangeError && /call stack/i.test(error.message)) {
      return new StackOverflowError('guest overflowed its call stack (unbounded recursion?)')
    }
    if (error instanceof WebAssembly.RuntimeError) {
      return this.memoryRefused() ?? new GuestTrapError(`guest trapped: ${error.message}`)
    }
    return error
  }

  private memoryRefused(): MemoryLimitError | undefined {
    const refused = (this.instance?.exports as Record<string, WebAssembly.Global> | undefined)?.[
      hostGlobalMemoryRefusedPages
    ]
    if (refused === undefined || refused.value === 0) return undefined
    return new MemoryLimitError(
      `guest asked for ${refused.value} pages of memory (${(refused.value * wasmPageBytes) / 2 ** 20} MiB); the limit is ${this.start.limits.memoryPagesMax} pages`,
    )
  }
}

/**
 * Keeps `value` as `id` in `held`, dropping the oldest past `max` (the host counts the same way, so
 * it knows which ids it need not send again); returns the dropped id.
 */
function hold<V>(held: Map<number, V>, id: number, value: V, max: number): number | undefined {
  held.set(id, value)
  if (held.size <= max) return undefined
  const oldest = held.keys().next().value!
  held.delete(oldest)
  return oldest
}

/** Worker main: waits for `start`, runs the thread, routes replies. */
export function serveThread(port: WorkerPort): void {
  let thread: GuestThread | null = null
  // Modules and contexts of earlier starts, oldest first, as the host counts them (it sends each once).
  const modules = new Map<number, WebAssembly.Module>()
  const contexts = new Map<number, ThreadContext>()
  const shelf: InstanceShelf = new Map()
  port.onMessage((message) => {
    if (message.type === 'start') {
      const { module: sentModule, context: sentContext, ...start } = message
      if (sentModule !== null) {
        const dropped = hold(modules, start.moduleId, sentModule, workerModulesMax)
        if (dropped !== undefined) shelf.delete(dropped)
      }
      if (sentContext !== null) hold(contexts, start.contextId, sentContext, workerContextsMax)
      const module = modules.get(start.moduleId)
      const context = contexts.get(start.contextId)
      if (module === undefined || context === undefined) {
        // The host believes this worker holds what it does not: a bug, reported as the thread's error.
        const missing = module === undefined ? `module ${start.moduleId}` : `context ${start.contextId}`
        port.post({ type: 'error', error: serializeError(new FabricHostError(`worker has no ${missing}`)) })
        return
      }
      thread = new GuestThread({ ...start, ...context, module }, port, shelf)
      void thread.run()
    } else if (message.type === 'reply') {
      thread?.onReply(message)
    } else if (message.type === 'configure') {
      thread?.configure(message)
    } else if (message.type === 'children') {
      thread?.onChildren(message)
    }
  })
}
