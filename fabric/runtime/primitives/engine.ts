/**
 * Guest coordination: the host side of `fabric.sync` (shared variables, locks with a TTL and
 * fencing tokens, fenced variables, queues, barriers, context groups), built on the coordination
 * store. One engine per node serves the sync calls of the threads running there.
 *
 *   const engine = createSyncEngine({ store, self, clock, timers, notify })
 *   const reply = await engine.call(thread, { callSequence, payload, outCapacity })
 *   engine.wake(key)                          // a 'sync-wake' notice from another node
 *   engine.saveCommitted(pid, tid, callSeq)   // a thread's save reached its replicas
 *
 * Semantics (the request layout and error numbers are in host/abi.ts):
 * - Every object is one store register under `sync/<pid>/<context>/<kind>/<name>`; a context is the
 *   process's global one or a group. The operations are pure functions over the register's state
 *   (state.ts), applied with compare-and-swap; concurrent calls on one key from one node go in one
 *   write (a batch).
 * - Exactly once: a call's op id is (thread, call sequence number). An effect (set, a swap, add,
 *   fenced set, push, pop, close, a barrier arrival, a release) is recorded in the register with the
 *   change, per thread, until the thread's next committed save; a thread restored from a save
 *   replays its calls and gets the recorded results, with no second effect. A reply that changed
 *   nothing (a get, a length, a compare that did not swap, a refusal, an acquire that timed out) is
 *   not written to the register at all: the thread logs it (`SyncThread.logReply`, reply-log.ts),
 *   the runtime sends the log to the thread's save replicas before its next effect, and a replay
 *   gets it from there (`SyncThread.replayed`). So readers cost the register nothing, and a get is
 *   one store read. The engine asks a thread to save once it has `saveRequestAfterResults` unsaved
 *   results, and the register refuses more than `unsavedResultsPerThreadMax` per thread until it
 *   has saved, which bounds that memory. A queue item popped is recorded with the pop, so it reaches
 *   exactly one consumer, once. A save prunes only once the thread's record (a cas of the same
 *   incarnation) names replicas holding it; a call below a pruned floor can only come from a
 *   restart that lost its saves, and gets Unavailable (the SDK stops the thread: the effect is
 *   unknown) instead of a second effect.
 * - Locks are the store's leases: holder `<pid>/<tid>`, the fencing token is the store's (it grows
 *   with each new holder). A dead holder's lock is free once its TTL has passed. A holder restored
 *   from a save keeps the lock only if its lease still holds: a replayed acquire acquires again (an
 *   acquire by the holder keeps its token), so it gets its token back while no one else took the
 *   lock, and otherwise acts as a fresh acquire (waits, times out or fails a try as the call asked,
 *   and gets a newer token). Only an acquire's Timeout is recorded, so it times out again.
 * - Waiting never spins: a waiting call puts its node on the register's waiter list and sleeps; the
 *   node that changes the register sends the waiters a direct notice. A slow re-check
 *   (`recheckMs`) covers lost notices, and nodes beyond the list's bound (`waitersMax`, the most
 *   recent 64 nodes; more nodes waiting at once on one object get their turn by re-checking). The
 *   guest's thread is suspended meanwhile (no CPU).
 * - Queues hold their items in the register, so a queue is bounded by its capacity and by the
 *   store's value size (`valueBytesMax`, less bookkeeping); a push that does not fit waits as on a
 *   full queue. A value that cannot be stored with its bookkeeping gets TooLarge; an operation that
 *   fits but for the results other threads recorded (many threads whose saves lag) waits until
 *   saves prune them (a crowded register is pruned at each save of the threads that used it).
 */

import { SyncError, SyncOp } from '../../../host/abi.ts'
import { valueBytesMax } from '../../coord/store.ts'
import type { Clock, Timers } from '../../platform.ts'
import type { CoordinationClient, NodeId, Register } from '../services.ts'
import { decodeSyncRequest, kindOf, type SyncKind, type SyncOperation } from './request.ts'
import {
  applyBatch,
  type BatchOperation,
  type BatchStep,
  decodeState,
  encodeState,
  type Outcome,
  type SyncReply,
  type SyncState,
  tokenReply,
} from './state.ts'

export { unsavedResultsPerThreadMax } from './state.ts'

/** A waiting call looks at its register again this often even without a notice. */
export const recheckMs = 500
/** Unsaved results of one thread after which the engine asks the thread for a save. */
export const saveRequestAfterResults = 16
/** Operations on one key written in one compare-and-swap, at most. */
export const batchOperationsMax = 64
/** Compare-and-swap attempts of one batch before it backs off for longer. */
export const casAttemptsBeforeBackoff = 3
/** Longest pause between two contended compare-and-swap attempts. */
export const casBackoffMsMax = 50
/**
 * How long the engine retries a store that does not answer before the guest gets Unavailable: no
 * answer on the call's key for this long (a slow store that answers some calls on the key, as on a
 * busy machine, is retried: the calls are idempotent).
 */
export const unavailableAfterMs = 30_000
/** Keys whose last register the engine keeps (saves a read before the next write). */
export const cachedKeysMax = 4096
/** Other threads' save floors one operation carries, at most. */
export const otherFloorsMax = 256
/** Keys remembered per thread (to drop its results when it ends). */
export const touchedKeysPerThreadMax = 1024
/** Keys remembered per process (to delete them when it ends). */
export const keysPerProcessMax = 4096
/** Processes whose keys this node remembers, and ended processes it refuses calls of, at most each. */
export const processesTrackedMax = 1024

export interface SyncEngineComponents {
  store: CoordinationClient
  self: NodeId
  clock: Clock
  timers: Timers
  /** Sends a wake notice for `key` to `node`; best effort (a lost notice costs a re-check). */
  notify(node: NodeId, key: string): void
  random?: () => number
}

/** The thread a call comes from, as the runtime knows it. */
export interface SyncThread {
  pid: string
  tid: string
  /** Asks the thread for a context save at once (it is suspended in this call). */
  requestSave(): void
  /** Records the thread's context group (the `group` op). */
  setGroup(group: string): Promise<void>
  /** The thread was stopped or moved: its pending call must not go on. */
  stopped(): boolean
  /**
   * The reply the thread's replay log holds for call `callSequence` (reply-log.ts): a thread
   * restored from a save gets it again instead of running the call.
   */
  replayed(callSequence: number): SyncReply | undefined
  /**
   * Logs a reply that no register records (a read, a refusal), before the guest sees it; the
   * embedding makes the log durable with the thread's saves before the thread's next effect.
   */
  logReply(callSequence: number, reply: SyncReply): void
}

export interface SyncCall {
  callSequence: number
  payload: Uint8Array | null
  outCapacity: number
}

interface Slot {
  kind: SyncKind
  pending: Array<{ operation: BatchOperation; settle: (result: Committed | Error) => void }>
  running: boolean
  cached: { version: number; value: Uint8Array | null } | null
  /** The register was found too full of recorded results: saves prune it at once (saveCommitted). */
  crowded?: boolean
}

interface Committed {
  outcome: Outcome
  waiters: string[]
  /** The lease on the key as the store's last answer showed it (null: answered from the cache). */
  lease: { holder: string | null; token: number } | null
}

interface ThreadTrack {
  floor: number
  unsaved: number
  saveRequested: boolean
  touched: Set<string>
}

class StoreUnavailable extends Error {}

const never = <T>() => new Promise<T>(() => {})

/** A write refused because the process of its key ended on this node (its callers never return). */
class ProcessEnded extends Error {}

/** The process a key of `syncKey` belongs to. */
function processOfKey(key: string): string {
  return key.slice('sync/'.length, key.indexOf('/', 'sync/'.length))
}

export class SyncEngine {
  private readonly components: SyncEngineComponents
  private readonly slots = new Map<string, Slot>()
  private readonly sleepers = new Map<string, Set<() => void>>()
  private readonly threads = new Map<string, ThreadTrack>()
  /** The TTL this node last gave each lease it took (`key\0holder`): a renew with it needs no acquire. */
  private readonly leaseTtls = new Map<string, number>()
  /** Keys each process's calls on this node used, kept apart from the threads (which stop first). */
  private readonly processKeys = new Map<string, Set<string>>()
  /** Processes that ended: a call of theirs still under way must not leave a value or a lease. */
  private readonly endedProcesses = new Set<string>()
  private readonly random: () => number
  /** When the store last answered a call on each key (a slow store is not an unavailable one). */
  private readonly answeredAt = new Map<string, number>()

  constructor(components: SyncEngineComponents) {
    this.components = components
    this.random = components.random ?? Math.random
  }

  /** Serves one `sync` call; never throws for anything the guest sent. */
  async call(thread: SyncThread, call: SyncCall): Promise<{ result: number; payload?: Uint8Array | null }> {
    // A replay of a call whose reply the thread logged (a read): the same reply, nothing runs.
    const logged = thread.replayed(call.callSequence)
    if (logged !== undefined) return logged
    const decoded = decodeSyncRequest(call.payload)
    if (!decoded.ok) return { result: decoded.error }
    const { group, name, operation } = decoded.request
    if (operation.op === 'group') {
      await thread.setGroup(group)
      return { result: 0 }
    }
    const kind = kindOf(operation)!
    const key = await syncKey(thread.pid, group, kind, name)
    if (this.endedProcesses.has(thread.pid)) return never()
    this.noteProcessKey(thread.pid, key)
    try {
      const reply =
        kind === 'lock'
          ? await this.lockCall(thread, key, operation, call)
          : await this.applyCall(thread, key, kind, operation, call)
      return reply
    } catch (error) {
      if (error instanceof StoreUnavailable) return { result: SyncError.unavailable }
      throw error
    }
  }

  /** A wake notice for `key`: its waiting calls on this node look again now. */
  wake(key: string): void {
    const sleepers = this.sleepers.get(key)
    if (sleepers === undefined) return
    this.sleepers.delete(key)
    for (const wake of sleepers) wake()
  }

  /** The thread's save taken at call `callSequence` is on its replicas: older results can go. */
  saveCommitted(pid: string, tid: string, callSequence: number): void {
    const track = this.track(pid, tid)
    if (callSequence <= track.floor) return
    track.floor = callSequence
    track.unsaved = 0
    track.saveRequested = false
    // A register crowded by results awaiting saves has the thread's go now, not at its next call
    // there (which may not come while others wait for room).
    for (const key of track.touched) {
      const slot = this.slots.get(key)
      if (slot?.crowded !== true) continue
      void this.submit(key, slot.kind, this.operation(pid, tid, 0, 0, false, { kind: 'prune' }, track)).catch(
        () => {},
      )
    }
  }

  /** Whether the thread has made sync calls on this node (its saves then confirm a floor). */
  tracks(pid: string, tid: string): boolean {
    return this.threads.has(`${pid}/${tid}`)
  }

  /** The thread stopped on this node (moved, or its node lost its lease): its floor is not ours to keep. */
  threadStopped(pid: string, tid: string): void {
    this.threads.delete(`${pid}/${tid}`)
  }

  /** The thread ended for good: its recorded results are dropped from the registers it used. */
  threadEnded(pid: string, tid: string): void {
    const id = `${pid}/${tid}`
    const track = this.threads.get(id)
    this.threads.delete(id)
    if (track === undefined) return
    for (const key of track.touched) {
      const slot = this.slots.get(key)
      if (slot === undefined) continue
      void this.submit(
        key,
        slot.kind,
        this.operation(pid, tid, 0, 0, false, { kind: 'forget' }, track),
      ).catch(() => {})
    }
  }

  /** The processes this engine holds anything for (keys used, threads tracked, registers cached). */
  processIds(): Set<string> {
    const pids = new Set<string>(this.processKeys.keys())
    for (const id of this.threads.keys()) pids.add(id.slice(0, id.indexOf('/')))
    for (const key of this.slots.keys()) if (key.startsWith('sync/')) pids.add(processOfKey(key))
    return pids
  }

  /**
   * The process ended (or was killed): forgets its threads, and deletes the registers of its
   * objects that this node knows of (each node that ran its threads does the same): values and the
   * leases its threads still hold go, one store operation per key. A key only threads on a node that
   * has since died used is not known to anyone and stays. Best effort and in the background;
   * resolves when done.
   */
  processEnded(pid: string): Promise<void> {
    const prefix = syncKeyGroup(pid)
    this.endedProcesses.add(pid)
    if (this.endedProcesses.size > processesTrackedMax)
      this.endedProcesses.delete(this.endedProcesses.values().next().value!)
    const keys = new Set<string>(this.processKeys.get(pid))
    this.processKeys.delete(pid)
    for (const [id, track] of [...this.threads]) {
      if (!id.startsWith(`${pid}/`)) continue
      for (const key of track.touched) keys.add(key)
      this.threads.delete(id)
    }
    for (const [key, slot] of [...this.slots]) {
      if (!key.startsWith(prefix)) continue
      keys.add(key)
      if (slot.running) slot.cached = null
      else this.slots.delete(key)
    }
    for (const key of [...this.leaseTtls.keys()]) if (key.startsWith(prefix)) this.leaseTtls.delete(key)
    return this.deleteRegisters([...keys])
  }

  private async deleteRegisters(keys: readonly string[]): Promise<void> {
    for (const key of keys) {
      try {
        await this.components.store.delete(key)
      } catch {
        // A store that does not answer leaves this register as it was: memory, not a wrong answer.
      }
    }
  }

  // --- shared variables, fenced variables, queues, barriers -----------------------------------

  private async applyCall(
    thread: SyncThread,
    key: string,
    kind: SyncKind,
    operation: SyncOperation,
    call: SyncCall,
  ): Promise<SyncReply> {
    const timeoutMs =
      operation.op === 'queue_pop' || operation.op === 'queue_push' ? operation.timeoutMs : Infinity
    const deadline = this.components.clock.now() + timeoutMs
    const track = this.track(thread.pid, thread.tid)
    for (;;) {
      if (thread.stopped()) return never()
      const nap = this.nap(key)
      const deadlinePassed = this.components.clock.now() >= deadline
      const { outcome } = await this.submit(
        key,
        kind,
        this.operation(
          thread.pid,
          thread.tid,
          call.callSequence,
          call.outCapacity,
          deadlinePassed,
          { kind: 'apply', operation },
          track,
        ),
        thread,
      )
      if (outcome.kind === 'done') {
        nap.cancel()
        if (!outcome.kept) thread.logReply(call.callSequence, outcome.reply)
        this.noteResult(thread, key, outcome.kept && !outcome.recorded, track)
        return outcome.reply
      }
      if (outcome.kind === 'save-first') {
        thread.requestSave()
        await nap.sleep(recheckMs / 5)
        continue
      }
      await nap.sleep(Math.min(recheckMs, Math.max(0, deadline - this.components.clock.now())))
    }
  }

  // --- locks ----------------------------------------------------------------------------------

  private async lockCall(
    thread: SyncThread,
    key: string,
    operation: SyncOperation,
    call: SyncCall,
  ): Promise<SyncReply> {
    const track = this.track(thread.pid, thread.tid)
    const holder = `${thread.pid}/${thread.tid}`
    const store = this.components.store
    const step = (batchStep: BatchStep) =>
      this.submit(
        key,
        'lock',
        this.operation(thread.pid, thread.tid, call.callSequence, call.outCapacity, false, batchStep, track),
        thread,
      )
    const notHolder: SyncReply = { result: SyncError.notHolder, payload: null }
    switch (operation.op) {
      case 'lock_acquire': {
        // One store operation when the lock is free. Not recorded: a replay acquires again, which
        // gives the same token while the lease still holds (an acquire by the holder keeps its
        // token), and acts as a fresh acquire once it does not (waits, times out or fails a try as
        // the call asked, and gets a newer token). So a restarted holder keeps the lock only if its
        // lease still holds. A Timeout is logged: a replay times out again.
        if (call.outCapacity < 8) return { result: SyncError.tooLarge, payload: null }
        const deadline = this.components.clock.now() + operation.timeoutMs
        let registered = false
        for (;;) {
          if (thread.stopped()) return never()
          const nap = this.nap(key)
          const taken = await this.persist(thread, key, () => store.acquire(key, holder, operation.ttlMs))
          this.noteRegister(key, taken)
          if (taken.ok && this.endedProcesses.has(thread.pid)) {
            // Its process ended (and its keys were deleted) while this call waited: let go again.
            nap.cancel()
            await this.deleteRegisters([key])
            return never()
          }
          if (taken.ok) {
            nap.cancel()
            this.leaseTtls.set(`${key}\u0000${holder}`, operation.ttlMs)
            this.noteResult(thread, key, false, track)
            return tokenReply(taken.token)
          }
          if (this.components.clock.now() >= deadline) {
            nap.cancel()
            const timedOut: SyncReply = { result: SyncError.timeout, payload: null }
            thread.logReply(call.callSequence, timedOut)
            return timedOut
          }
          if (!registered) {
            // On the waiter list before the next try, so a release in between wakes this call.
            await step({ kind: 'await' })
            registered = true
            nap.cancel()
            continue
          }
          // A dead holder sends no notice: its lease runs out. Re-checking at least twice per TTL of
          // the lease this call asks for notices a lapsed lease of that size within half a TTL.
          const recheck = Math.min(recheckMs, operation.ttlMs / 2)
          await nap.sleep(Math.min(recheck, Math.max(0, deadline - this.components.clock.now())))
        }
      }
      case 'lock_renew': {
        // Not recorded either: a replay renews again, and answers as the lease is then. The store's
        // renew checks holder and token and keeps the lease's TTL; another TTL takes an acquire by
        // the holder (which keeps its token) after it.
        const ttlKey = `${key}\u0000${holder}`
        const renewed = await this.persist(thread, key, () => store.renew(key, holder, operation.token))
        this.noteRegister(key, renewed)
        if (!renewed.ok) return notHolder
        if (this.leaseTtls.get(ttlKey) !== operation.ttlMs) {
          const extended = await this.persist(thread, key, () => store.acquire(key, holder, operation.ttlMs))
          this.noteRegister(key, extended)
          if (extended.ok && extended.token === operation.token) this.leaseTtls.set(ttlKey, operation.ttlMs)
        }
        return { result: 0, payload: null }
      }
      case 'lock_release': {
        // Recorded before the lease goes (in one write that also shows the lease), so a replay after
        // a crash in between finishes the release and answers as the first run did.
        let done: Committed
        for (;;) {
          done = await step({ kind: 'record', reply: { result: 0, payload: null } })
          if (done.outcome.kind === 'done') break
          thread.requestSave()
          await this.pause(recheckMs / 5)
          if (thread.stopped()) return never()
        }
        const outcome = done.outcome as Extract<Outcome, { kind: 'done' }>
        if (outcome.recorded) {
          // A replay: finish a release that may not have reached the lease (a no-op if it did).
          if (outcome.reply.result === 0) await this.releaseAndWake(thread, key, holder, operation.token)
          return outcome.reply
        }
        let lease = done.lease
        if (lease === null) {
          const read = await this.persist(thread, key, () => store.get(key))
          lease = { holder: read.holder, token: read.token }
        }
        if (lease.holder !== holder || lease.token !== operation.token) {
          // Not the holder after all: the record says so (a rare second write), then the guest.
          const replaced = await step({ kind: 'record', reply: notHolder, replace: true })
          this.noteResult(thread, key, true, track)
          return replaced.outcome.kind === 'done' ? replaced.outcome.reply : notHolder
        }
        this.noteResult(thread, key, true, track)
        await this.releaseAndWake(thread, key, holder, operation.token)
        return outcome.reply
      }
      default:
        return { result: SyncError.invalid, payload: null }
    }
  }

  /** Releases the lease and wakes the nodes waiting for it (the release shows who they are). */
  private async releaseAndWake(
    thread: SyncThread,
    key: string,
    holder: string,
    token: number,
  ): Promise<void> {
    const released = await this.persist(thread, key, () => this.components.store.release(key, holder, token))
    this.noteRegister(key, released)
    this.leaseTtls.delete(`${key}\u0000${holder}`)
    if (released.ok) this.wakeAll(decodeState(released.value, 'lock').waiters, key)
  }

  /** Keeps a register a store operation returned as the key's cached one, when it is newer. */
  private noteRegister(key: string, register: Register): void {
    const slot = this.slots.get(key)
    if (slot !== undefined && !slot.running && (slot.cached?.version ?? -1) <= register.version)
      slot.cached = { version: register.version, value: register.value }
  }

  // --- batches --------------------------------------------------------------------------------

  private operation(
    pid: string,
    tid: string,
    callSequence: number,
    outCapacity: number,
    deadlinePassed: boolean,
    step: BatchStep,
    track: ThreadTrack,
  ): BatchOperation {
    return {
      tid,
      callSequence,
      floor: track.floor,
      otherFloors: this.otherFloors(pid, tid),
      outCapacity,
      node: this.components.self,
      deadlinePassed,
      step,
    }
  }

  /** Queues an operation on `key`; the key's batch loop applies it with the others queued. */
  private async submit(
    key: string,
    kind: SyncKind,
    operation: BatchOperation,
    thread?: SyncThread,
  ): Promise<Committed> {
    const startedAt = this.components.clock.now()
    for (;;) {
      const result = await new Promise<Committed | Error>((settle) => {
        let slot = this.slots.get(key)
        if (slot === undefined) {
          if (this.slots.size >= cachedKeysMax) this.evictIdle()
          slot = { kind, pending: [], running: false, cached: null }
          this.slots.set(key, slot)
        }
        slot.pending.push({ operation, settle })
        if (!slot.running) void this.drain(key, slot)
      })
      if (!(result instanceof Error)) return result
      if (result instanceof ProcessEnded) return never()
      // The store did not answer: the same op id again is safe (a write that did land is found).
      if (thread?.stopped()) return never()
      if (this.unanswered(key, startedAt)) throw new StoreUnavailable()
      await this.pause(recheckMs / 5)
    }
  }

  private evictIdle(): void {
    for (const [key, slot] of this.slots) {
      if (!slot.running && slot.pending.length === 0) this.slots.delete(key)
      if (this.slots.size < cachedKeysMax / 2) return
    }
  }

  private async drain(key: string, slot: Slot): Promise<void> {
    slot.running = true
    try {
      while (slot.pending.length > 0) {
        const batch = slot.pending.splice(0, batchOperationsMax)
        try {
          const committed = await this.commit(
            key,
            slot,
            batch.map((entry) => entry.operation),
          )
          for (const [index, entry] of batch.entries()) entry.settle(committed[index]!)
        } catch (error) {
          slot.cached = null
          for (const entry of batch) entry.settle(error instanceof Error ? error : new Error(String(error)))
        }
      }
    } finally {
      slot.running = false
    }
  }

  private async read(key: string): Promise<Register> {
    const register = await this.components.store.get(key)
    this.answered(key)
    return register
  }

  /** Read (or use the cached register), apply, compare-and-swap; again on a lost race. */
  private async commit(key: string, slot: Slot, operations: BatchOperation[]): Promise<Committed[]> {
    const store = this.components.store
    let register: { version: number; value: Uint8Array | null } = slot.cached ?? (await this.read(key))
    let fromCache = slot.cached !== null
    let lease: Committed['lease'] = fromCache ? null : leaseOf(register as Register)
    for (let attempt = 0; ; attempt++) {
      const state = decodeState(register.value, slot.kind)
      const result = applyBatch(state, operations)
      if (!result.changed) {
        // Nothing to write; but a cached register may be stale: only replies recorded before (which
        // never change) may come from it. A read, or a "wait", looks at the store itself.
        if (fromCache && result.outcomes.some((outcome) => outcome.kind !== 'done' || !outcome.recorded)) {
          register = await this.read(key)
          lease = leaseOf(register as Register)
          fromCache = false
          continue
        }
        slot.cached = { version: register.version, value: register.value }
        return result.outcomes.map((outcome) => ({ outcome, waiters: result.state.waiters, lease }))
      }
      // Its process ended here meanwhile, and its keys are being deleted: a write now would outlive them.
      if (this.endedProcesses.has(processOfKey(key))) throw new ProcessEnded()
      const encoded = encodeState(result.state)
      if (encoded.length > valueBytesMax) return this.commitTooLarge(key, slot, operations, state)
      const written: Register = await store.cas(key, register.version, encoded)
      this.answered(key)
      lease = leaseOf(written)
      if (written.ok) {
        slot.cached = { version: written.version, value: encoded }
        if (encoded.length < valueBytesMax / 2) slot.crowded = false
        this.wakeAll(result.wake, key)
        return result.outcomes.map((outcome) => ({ outcome, waiters: result.state.waiters, lease }))
      }
      register = { version: written.version, value: written.value }
      fromCache = false
      if (attempt >= casAttemptsBeforeBackoff) {
        await this.pause(this.random() * Math.min(casBackoffMsMax, 2 ** attempt))
      }
    }
  }

  /**
   * A batch whose state would not fit in a register: each operation alone. One that would fit but
   * for the results other threads recorded there (their saves lag: many threads, a busy machine)
   * waits for saves to prune them, as on a full queue; only one that cannot fit at all gets TooLarge.
   */
  private async commitTooLarge(
    key: string,
    slot: Slot,
    operations: BatchOperation[],
    state: SyncState,
  ): Promise<Committed[]> {
    if (operations.length === 1) {
      // A prune that would not fit (its floor record outweighs what it drops): leave it for later.
      if (operations[0]!.step.kind === 'prune')
        return [{ outcome: { kind: 'none' }, waiters: [], lease: null }]
      const step = operations[0]!.step
      const crowded =
        encodeState(applyBatch({ ...state, results: {} }, operations).state).length <= valueBytesMax
      if (crowded) {
        slot.crowded = true
        // What this operation's floors allow to go, at least, goes now (pruning only shrinks it).
        await this.commit(key, slot, [{ ...operations[0]!, step: { kind: 'prune' } }])
      }
      // A push that does not fit with the items already queued (or the results others recorded)
      // waits for room, as on a full queue, and is Full once its timeout passed.
      if (step.kind === 'apply' && step.operation.op === 'queue_push') {
        const outcome: Outcome = operations[0]!.deadlinePassed
          ? { kind: 'done', reply: { result: SyncError.full, payload: null }, recorded: false, kept: false }
          : { kind: 'wait' }
        return [{ outcome, waiters: [], lease: null }]
      }
      if (crowded) return [{ outcome: { kind: 'save-first' }, waiters: [], lease: null }]
      return [
        {
          outcome: {
            kind: 'done',
            reply: { result: SyncError.tooLarge, payload: null },
            recorded: false,
            kept: false,
          },
          waiters: [],
          lease: null,
        },
      ]
    }
    const out: Committed[] = []
    for (const operation of operations) out.push(...(await this.commit(key, slot, [operation])))
    return out
  }

  // --- waiting --------------------------------------------------------------------------------

  private wakeAll(nodes: readonly string[], key: string): void {
    for (const node of nodes) {
      if (node === this.components.self) this.wake(key)
      else this.components.notify(node, key)
    }
  }

  /**
   * A sleeper on `key`, registered before the call looks at the register, so a notice that arrives
   * between the look and the sleep is not lost.
   */
  private nap(key: string): { sleep(ms: number): Promise<void>; cancel(): void } {
    let woken = false
    let resolveSleep: (() => void) | null = null
    const wake = () => {
      woken = true
      resolveSleep?.()
    }
    let sleepers = this.sleepers.get(key)
    if (sleepers === undefined) {
      sleepers = new Set()
      this.sleepers.set(key, sleepers)
    }
    sleepers.add(wake)
    const cancel = () => {
      const current = this.sleepers.get(key)
      current?.delete(wake)
      if (current?.size === 0) this.sleepers.delete(key)
    }
    return {
      cancel,
      sleep: (ms: number) => {
        if (woken) return Promise.resolve()
        return new Promise<void>((resolve) => {
          const timer = this.components.timers.after(ms, () => {
            cancel()
            resolve()
          })
          resolveSleep = () => {
            timer.cancel()
            resolve()
          }
        })
      },
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => this.components.timers.after(ms, resolve))
  }

  /** Runs a store call until it answers (a timeout may or may not have applied: callers are idempotent). */
  private async persist(thread: SyncThread, key: string, run: () => Promise<Register>): Promise<Register> {
    const startedAt = this.components.clock.now()
    for (;;) {
      try {
        const register = await run()
        this.answered(key)
        return register
      } catch {
        if (thread.stopped()) return never()
        if (this.unanswered(key, startedAt)) throw new StoreUnavailable()
        await this.pause(recheckMs / 5)
      }
    }
  }

  /** The store answered a call on `key`. */
  private answered(key: string): void {
    this.answeredAt.delete(key)
    this.answeredAt.set(key, this.components.clock.now())
    if (this.answeredAt.size > cachedKeysMax) this.answeredAt.delete(this.answeredAt.keys().next().value!)
  }

  /** Whether a call on `key` tried since `startedAt` has had no answer on the key for `unavailableAfterMs`. */
  private unanswered(key: string, startedAt: number): boolean {
    const since = Math.max(startedAt, this.answeredAt.get(key) ?? startedAt)
    return this.components.clock.now() - since >= unavailableAfterMs
  }

  // --- per-thread bookkeeping -----------------------------------------------------------------

  /** Committed-save floors of this node's other threads of the process (their old results can go). */
  private otherFloors(pid: string, tid: string): Array<[string, number]> {
    const floors: Array<[string, number]> = []
    const prefix = `${pid}/`
    for (const [id, track] of this.threads) {
      if (track.floor === 0 || !id.startsWith(prefix)) continue
      const other = id.slice(prefix.length)
      if (other !== tid) floors.push([other, track.floor])
      if (floors.length >= otherFloorsMax) break
    }
    return floors
  }

  private track(pid: string, tid: string): ThreadTrack {
    const id = `${pid}/${tid}`
    let track = this.threads.get(id)
    if (track === undefined) {
      track = { floor: 0, unsaved: 0, saveRequested: false, touched: new Set() }
      this.threads.set(id, track)
    }
    return track
  }

  private noteProcessKey(pid: string, key: string): void {
    let keys = this.processKeys.get(pid)
    if (keys === undefined) {
      if (this.processKeys.size >= processesTrackedMax)
        this.processKeys.delete(this.processKeys.keys().next().value!)
      keys = new Set()
      this.processKeys.set(pid, keys)
    }
    if (keys.size < keysPerProcessMax) keys.add(key)
  }

  /** Notes that the thread used `key`, and a result it recorded there (`recorded`) that awaits its save. */
  private noteResult(thread: SyncThread, key: string, recorded: boolean, track: ThreadTrack): void {
    if (track.touched.size < touchedKeysPerThreadMax) track.touched.add(key)
    if (!recorded) return
    track.unsaved++
    if (track.unsaved >= saveRequestAfterResults && !track.saveRequested) {
      track.saveRequested = true
      thread.requestSave()
    }
  }
}

function leaseOf(register: Register): { holder: string | null; token: number } {
  return { holder: register.holder, token: register.token }
}

/**
 * Whether a `sync` request only reads (get, length): it makes nothing visible to other threads, so
 * the runtime need not make the thread's replay log durable before it.
 */
export function isSyncRead(payload: Uint8Array | null): boolean {
  const op = payload !== null && payload.length > 1 ? payload[1] : -1
  if (op === SyncOp.fencedGet) {
    // With a token (operand a, bytes 8-15) the read raises the fence: others see that.
    if (payload === null || payload.length < 16) return true
    return payload.subarray(8, 16).every((byte) => byte === 0)
  }
  return op === SyncOp.varGet || op === SyncOp.queueLength
}

/** The key group (Store.forget) of process `pid`'s objects: every `syncKey` of it begins with it. */
export function syncKeyGroup(pid: string): string {
  return `sync/${pid}/`
}

/** The store key of a named object: readable when it fits, else a digest of its parts. */
export async function syncKey(pid: string, group: string, kind: SyncKind, name: string): Promise<string> {
  const context = group === '' ? '@global' : `g=${encodeURIComponent(group)}`
  const readable = `${syncKeyGroup(pid)}${context}/${kind}/${encodeURIComponent(name)}`
  if (new TextEncoder().encode(readable).length <= syncKeyBytesMax) return readable
  const digest = new Uint8Array(
    await crypto.subtle.digest('SHA-256', new TextEncoder().encode(`${group}\u0000${kind}\u0000${name}`)),
  )
  const hex = Array.from(digest, (byte) => byte.toString(16).padStart(2, '0')).join('')
  return `${syncKeyGroup(pid)}#${hex}/${kind}`
}

/** Longest readable key (the store takes 512 bytes). */
export const syncKeyBytesMax = 400

export function createSyncEngine(components: SyncEngineComponents): SyncEngine {
  return new SyncEngine(components)
}
