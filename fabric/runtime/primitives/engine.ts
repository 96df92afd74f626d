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
 * - Exactly once: a call's op id is (thread, call sequence number). The register keeps, per thread,
 *   the results applied since the thread's latest committed save; a thread restored from a save
 *   replays its calls and gets the recorded results, with no second effect. The engine asks a thread
 *   to save once it has `saveRequestAfterResults` unsaved results, and the register refuses more
 *   than `unsavedResultsPerThreadMax` per thread until it has saved, which bounds that memory. A
 *   queue item popped is recorded with the pop, so it reaches exactly one consumer, once. A save
 *   prunes only once the thread's record (a cas of the same incarnation) names replicas holding
 *   it; a call below a pruned floor can only come from a restart that lost its saves, and gets
 *   Unavailable (the SDK stops the thread: the effect is unknown) instead of a second effect.
 * - Locks are the store's leases: holder `<pid>/<tid>`, the fencing token is the store's (it grows
 *   with each new holder). A dead holder's lock is free once its TTL has passed. A holder restored
 *   from a save keeps the lock only if its lease still holds: a replayed acquire acquires again (an
 *   acquire by the holder keeps its token), so it gets its token back while no one else took the
 *   lock, and otherwise acts as a fresh acquire (waits, times out or fails a try as the call asked,
 *   and gets a newer token). Only an acquire's Timeout is recorded, so it times out again.
 * - Waiting never spins: a waiting call puts its node on the register's waiter list and sleeps; the
 *   node that changes the register sends the waiters a direct notice. A slow re-check
 *   (`recheckMs`) covers lost notices. The guest's thread is suspended meanwhile (no CPU).
 * - Queues hold their items in the register, so a queue is bounded by its capacity and by the
 *   store's value size (`valueBytesMax`, less bookkeeping); a push that does not fit waits as on a
 *   full queue. A value that cannot be stored with its bookkeeping gets TooLarge.
 */

import { SyncError } from '../../../host/abi.ts'
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
/** How long the engine retries a store that does not answer before the guest gets Unavailable. */
export const unavailableAfterMs = 30_000
/** Keys whose last register the engine keeps (saves a read before the next write). */
export const cachedKeysMax = 4096
/** Other threads' save floors one operation carries, at most. */
export const otherFloorsMax = 256
/** Keys remembered per thread (to drop its results when it ends). */
export const touchedKeysPerThreadMax = 1024

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
}

interface Committed {
  outcome: Outcome
  waiters: string[]
}

interface ThreadTrack {
  floor: number
  unsaved: number
  saveRequested: boolean
  touched: Set<string>
}

class StoreUnavailable extends Error {}

const never = <T>() => new Promise<T>(() => {})

export class SyncEngine {
  private readonly components: SyncEngineComponents
  private readonly slots = new Map<string, Slot>()
  private readonly sleepers = new Map<string, Set<() => void>>()
  private readonly threads = new Map<string, ThreadTrack>()
  private readonly random: () => number

  constructor(components: SyncEngineComponents) {
    this.components = components
    this.random = components.random ?? Math.random
  }

  /** Serves one `sync` call; never throws for anything the guest sent. */
  async call(thread: SyncThread, call: SyncCall): Promise<{ result: number; payload?: Uint8Array | null }> {
    const decoded = decodeSyncRequest(call.payload)
    if (!decoded.ok) return { result: decoded.error }
    const { group, name, operation } = decoded.request
    if (operation.op === 'group') {
      await thread.setGroup(group)
      return { result: 0 }
    }
    const kind = kindOf(operation)!
    const key = await syncKey(thread.pid, group, kind, name)
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
    if (callSequence > track.floor) {
      track.floor = callSequence
      track.unsaved = 0
      track.saveRequested = false
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

  /** Forgets the threads of a process (it ended). */
  processEnded(pid: string): void {
    for (const id of [...this.threads.keys()]) if (id.startsWith(`${pid}/`)) this.threads.delete(id)
    for (const key of [...this.slots.keys()]) {
      if (key.startsWith(`sync/${pid}/`) && !this.slots.get(key)!.running) this.slots.delete(key)
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
        this.noteResult(thread, key, outcome.recorded, track)
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
    /** Records `reply` (or finds the result recorded first) and returns it with the waiters. */
    const record = async (reply: SyncReply): Promise<Committed & { reply: SyncReply }> => {
      for (;;) {
        const committed = await step({ kind: 'record', reply })
        if (committed.outcome.kind === 'done') {
          this.noteResult(thread, key, committed.outcome.recorded, track)
          return { ...committed, reply: committed.outcome.reply }
        }
        thread.requestSave()
        await this.pause(recheckMs / 5)
        if (thread.stopped()) return never()
      }
    }
    // Renew and release read the register anyway (for the lease): the recorded result comes with it.
    // Acquire looks at the key's cached register, when there is one.
    const read = operation.op === 'lock_acquire' ? null : await this.persist(thread, () => store.get(key))
    let recorded: SyncReply | null
    if (read === null) {
      const checked = await step({ kind: 'check' })
      recorded = checked.outcome.kind === 'done' ? checked.outcome.reply : null
    } else {
      const slot = this.slots.get(key)
      if (slot !== undefined && !slot.running && (slot.cached?.version ?? -1) <= read.version)
        slot.cached = { version: read.version, value: read.value }
      const entry = decodeState(read.value, 'lock').results[thread.tid]?.find(
        ([sequence]) => sequence === call.callSequence,
      )
      recorded = entry === undefined ? null : { result: entry[1], payload: entry[2] }
    }

    switch (operation.op) {
      case 'lock_acquire': {
        // Only a Timeout is recorded (a replay must time out again: the guest went on without it).
        if (recorded !== null) return recorded
        if (call.outCapacity < 8) return { result: SyncError.tooLarge, payload: null }
        const deadline = this.components.clock.now() + operation.timeoutMs
        let registered = false
        for (;;) {
          if (thread.stopped()) return never()
          const nap = this.nap(key)
          const taken = await this.persist(thread, () => store.acquire(key, holder, operation.ttlMs))
          if (taken.ok) {
            // Not recorded: a replay acquires again, which gives the same token while the lease
            // still holds (an acquire by the holder renews it), and a fresh one (or a wait) once it
            // does not. So a restarted holder keeps the lock only if its lease still holds.
            nap.cancel()
            return tokenReply(taken.token)
          }
          if (this.components.clock.now() >= deadline) {
            nap.cancel()
            return (await record({ result: SyncError.timeout, payload: null })).reply
          }
          if (!registered) {
            // On the waiter list before the next try, so a release in between wakes this call.
            await step({ kind: 'await' })
            registered = true
            nap.cancel()
            continue
          }
          await nap.sleep(Math.min(recheckMs, Math.max(0, deadline - this.components.clock.now())))
        }
      }
      case 'lock_renew': {
        if (recorded !== null || read === null)
          return recorded ?? { result: SyncError.invalid, payload: null }
        if (read.holder !== holder || read.token !== operation.token)
          return (await record({ result: SyncError.notHolder, payload: null })).reply
        // An acquire by the holder keeps its token and takes the new TTL.
        const renewed = await this.persist(thread, () => store.acquire(key, holder, operation.ttlMs))
        if (renewed.ok && renewed.token === operation.token)
          return (await record({ result: 0, payload: null })).reply
        if (renewed.ok) await store.release(key, holder, renewed.token).catch(() => undefined)
        return (await record({ result: SyncError.notHolder, payload: null })).reply
      }
      case 'lock_release': {
        const holds = read?.holder === holder && read.token === operation.token
        if (recorded !== null) {
          // A replayed release that was recorded but may not have reached the lease: finish it.
          if (recorded.result === 0 && holds) await this.releaseAndWake(thread, key, holder, operation.token)
          return recorded
        }
        if (!holds) return (await record({ result: SyncError.notHolder, payload: null })).reply
        // Recorded before the lease goes, so a replay after a crash in between finishes the release.
        const done = await record({ result: 0, payload: null })
        if (done.reply.result === 0)
          await this.releaseAndWake(thread, key, holder, operation.token, done.waiters)
        return done.reply
      }
      default:
        return { result: SyncError.invalid, payload: null }
    }
  }

  private async releaseAndWake(
    thread: SyncThread,
    key: string,
    holder: string,
    token: number,
    waiters?: string[],
  ): Promise<void> {
    await this.persist(thread, () => this.components.store.release(key, holder, token))
    const list = waiters ?? decodeState(this.slots.get(key)?.cached?.value ?? null, 'lock').waiters
    this.wakeAll(list, key)
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
      // The store did not answer: the same op id again is safe (a write that did land is found).
      if (thread?.stopped()) return never()
      if (this.components.clock.now() - startedAt >= unavailableAfterMs) throw new StoreUnavailable()
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

  /** Read (or use the cached register), apply, compare-and-swap; again on a lost race. */
  private async commit(key: string, slot: Slot, operations: BatchOperation[]): Promise<Committed[]> {
    const store = this.components.store
    let register: { version: number; value: Uint8Array | null } = slot.cached ?? (await store.get(key))
    let fromCache = slot.cached !== null
    for (let attempt = 0; ; attempt++) {
      const state = decodeState(register.value, slot.kind)
      const result = applyBatch(state, operations)
      if (!result.changed) {
        // Nothing to write; but a cached register may be stale, and a stale "wait" would sleep.
        if (fromCache && result.outcomes.some((outcome) => outcome.kind !== 'done')) {
          register = await store.get(key)
          fromCache = false
          continue
        }
        slot.cached = { version: register.version, value: register.value }
        return result.outcomes.map((outcome) => ({ outcome, waiters: result.state.waiters }))
      }
      const encoded = encodeState(result.state)
      if (encoded.length > valueBytesMax) return this.commitTooLarge(key, slot, operations)
      const written: Register = await store.cas(key, register.version, encoded)
      if (written.ok) {
        slot.cached = { version: written.version, value: encoded }
        this.wakeAll(result.wake, key)
        return result.outcomes.map((outcome) => ({ outcome, waiters: result.state.waiters }))
      }
      register = { version: written.version, value: written.value }
      fromCache = false
      if (attempt >= casAttemptsBeforeBackoff) {
        await this.pause(this.random() * Math.min(casBackoffMsMax, 2 ** attempt))
      }
    }
  }

  /** A batch whose state would not fit in a register: each operation alone; one that cannot fit gets TooLarge. */
  private async commitTooLarge(key: string, slot: Slot, operations: BatchOperation[]): Promise<Committed[]> {
    if (operations.length === 1) {
      const step = operations[0]!.step
      // A push that does not fit with the items already queued waits for room, as on a full queue.
      if (step.kind === 'apply' && step.operation.op === 'queue_push') {
        const outcome: Outcome = operations[0]!.deadlinePassed
          ? { kind: 'done', reply: { result: SyncError.full, payload: null }, recorded: false }
          : { kind: 'wait' }
        return [{ outcome, waiters: [] }]
      }
      return [
        {
          outcome: { kind: 'done', reply: { result: SyncError.tooLarge, payload: null }, recorded: false },
          waiters: [],
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
  private async persist(thread: SyncThread, run: () => Promise<Register>): Promise<Register> {
    const startedAt = this.components.clock.now()
    for (;;) {
      try {
        return await run()
      } catch {
        if (thread.stopped()) return never()
        if (this.components.clock.now() - startedAt >= unavailableAfterMs) throw new StoreUnavailable()
        await this.pause(recheckMs / 5)
      }
    }
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

  private noteResult(thread: SyncThread, key: string, replayed: boolean, track: ThreadTrack): void {
    if (track.touched.size < touchedKeysPerThreadMax) track.touched.add(key)
    if (replayed) return
    track.unsaved++
    if (track.unsaved >= saveRequestAfterResults && !track.saveRequested) {
      track.saveRequested = true
      thread.requestSave()
    }
  }
}

/** The store key of a named object: readable when it fits, else a digest of its parts. */
export async function syncKey(pid: string, group: string, kind: SyncKind, name: string): Promise<string> {
  const context = group === '' ? '@global' : `g=${encodeURIComponent(group)}`
  const readable = `sync/${pid}/${context}/${kind}/${encodeURIComponent(name)}`
  if (new TextEncoder().encode(readable).length <= syncKeyBytesMax) return readable
  const digest = new Uint8Array(
    await crypto.subtle.digest('SHA-256', new TextEncoder().encode(`${group}\u0000${kind}\u0000${name}`)),
  )
  const hex = Array.from(digest, (byte) => byte.toString(16).padStart(2, '0')).join('')
  return `sync/${pid}/#${hex}/${kind}`
}

/** Longest readable key (the store takes 512 bytes). */
export const syncKeyBytesMax = 400

export function createSyncEngine(components: SyncEngineComponents): SyncEngine {
  return new SyncEngine(components)
}
