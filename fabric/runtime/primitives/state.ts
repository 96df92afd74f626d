/**
 * The semantics of every `sync` operation as a pure function over the state one store register
 * holds: `applyBatch(state, operations)` returns the next state, each operation's outcome and the
 * nodes to wake. The engine (engine.ts) reads the register, runs this, and writes the result back
 * with a compare-and-swap; tests run it directly.
 *
 * Exactly-once lives here too: the state keeps, per thread, the results of the operations that
 * changed it (effects) since that thread's last committed context save (`results`, pruned below the
 * thread's `floor`). An operation whose op id (thread, call sequence) has a recorded result gets
 * that result again and changes nothing, so a thread restored from a save that replays an effect
 * sees what it saw before. Replies of operations that change nothing (reads, refusals, a compare
 * that failed) are not recorded here: the thread logs them in its own replay log, which travels
 * with its saves (the outcome says `kept: false`), so readers do not grow the register.
 */

import { Decoder, Encoder } from 'cbor-x'
import { SyncError } from '../../../host/abi.ts'
import type { SyncKind, SyncOperation } from './request.ts'

export const syncStateFormatVersion = 1
/** Results one thread may leave unsaved in one register; past it the thread must save first. */
export const unsavedResultsPerThreadMax = 64
/**
 * Nodes remembered as waiting on one register: the most recent ones, so the list (and the notices a
 * change sends) stays bounded. A node pushed out of it, or one that stopped waiting and is still on
 * it, costs no wrong answer: a waiting call re-checks the register every `recheckMs` (engine.ts) and
 * puts its node back on the list when it waits again; an extra notice only wakes a call to look.
 */
export const waitersMax = 64

export interface SyncReply {
  result: number
  payload: Uint8Array | null
}

/** [call sequence, result, payload, and for a lock holder's fenced read the token it carried] */
export type RecordedResult = [number, number, Uint8Array | null, number?]

export interface SyncState {
  formatVersion: number
  kind: SyncKind
  /** var and fenced: the value (null = unset). */
  value: Uint8Array | null
  /** fenced: the newest fencing token a write carried. */
  fence: number
  /** queue */
  items: Uint8Array[]
  capacity: number
  closed: boolean
  /** barrier: parties per round, the current round, who arrived in it ([tid, call sequence]). */
  parties: number
  round: number
  arrived: Array<[string, number]>
  /** Per thread id: results since its last committed save. */
  results: Record<string, RecordedResult[]>
  /**
   * Per thread id: the floor below which its results were dropped. A call below it that comes
   * again can only be a replay from a save older than the committed one (saves lost): it is
   * refused as Unavailable rather than applied a second time.
   */
  pruned?: Record<string, number>
  /** Nodes that have threads waiting for this register to change. */
  waiters: string[]
}

/** One operation of a batch, with its op id and what the engine knows about it. */
export interface BatchOperation {
  tid: string
  callSequence: number
  /** The thread's latest committed save was taken at this call: results below it can go. */
  floor: number
  /** The same for other threads the engine knows of ([tid, floor]), so their old results go too. */
  otherFloors?: Array<[string, number]>
  /** Bytes the guest can take back; a larger reply is refused before anything changes. */
  outCapacity: number
  /** The node to wake when this operation waits. */
  node: string
  /** The operation's timeout has passed: do not wait, answer Timeout (or Full). */
  deadlinePassed: boolean
  step: BatchStep
}

export type BatchStep =
  | { kind: 'apply'; operation: SyncOperation }
  /**
   * Record a result computed elsewhere (a lock release on the store's lease), unless one exists;
   * `replace` overwrites the one that exists (a release found not to hold the lock after all).
   */
  | { kind: 'record'; reply: SyncReply; replace?: boolean }
  /** Put the node on the waiter list. */
  | { kind: 'await' }
  /** Drop the thread's recorded results (it ended). */
  | { kind: 'forget' }
  /** Nothing but dropping results below the floors (a register crowded by results awaiting saves). */
  | { kind: 'prune' }

export type Outcome =
  /**
   * `recorded`: the reply was recorded before (a replay). `kept`: the register holds the reply (it
   * was recorded now or before); when it does not, the thread must log it for its replays.
   */
  | { kind: 'done'; reply: SyncReply; recorded: boolean; kept: boolean }
  | { kind: 'wait' }
  /** The thread has too many unsaved results here; it must save before going on. */
  | { kind: 'save-first' }
  | { kind: 'none' }

export interface BatchResult {
  state: SyncState
  outcomes: Outcome[]
  /** Whether anything must be written back. */
  changed: boolean
  /** Nodes to wake because the state changed in a way a waiter may care about. */
  wake: string[]
}

/**
 * Operations that never change a register: they record nothing, so they never wait for a save (a
 * fenced get with a token may raise the fence: it is not one of them).
 */
export const readOnlyOps: ReadonlySet<SyncOperation['op']> = new Set([
  'var_get',
  'fenced_get',
  'queue_length',
])

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false } as never)
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true } as never)

export function emptyState(kind: SyncKind): SyncState {
  return {
    formatVersion: syncStateFormatVersion,
    kind,
    value: null,
    fence: 0,
    items: [],
    capacity: 0,
    closed: false,
    parties: 0,
    round: 0,
    arrived: [],
    results: {},
    waiters: [],
  }
}

export function encodeState(state: SyncState): Uint8Array {
  return encoder.encode(state) as Uint8Array
}

/** Decodes a register's value; anything unreadable is a broken invariant of this module. */
export function decodeState(bytes: Uint8Array | null, kind: SyncKind): SyncState {
  // Null: never written, or deleted when its process ended (empty: emptied by an older version).
  if (bytes === null || bytes.length === 0) return emptyState(kind)
  const state = decoder.decode(bytes) as SyncState
  if (state?.formatVersion !== syncStateFormatVersion || state.kind !== kind) {
    throw new Error(`sync register holds format ${String(state?.formatVersion)} of ${String(state?.kind)}`)
  }
  return state
}

const int64Min = -(2n ** 63n)
const int64Max = 2n ** 63n - 1n

function i64Bytes(value: bigint): Uint8Array {
  const bytes = new Uint8Array(8)
  new DataView(bytes.buffer).setBigInt64(0, value, true)
  return bytes
}

function readI64(bytes: Uint8Array): bigint | null {
  if (bytes.length !== 8) return null
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigInt64(0, true)
}

function sameBytes(left: Uint8Array | null, right: Uint8Array | null): boolean {
  if (left === null || right === null) return left === right
  if (left.length !== right.length) return false
  for (let index = 0; index < left.length; index++) if (left[index] !== right[index]) return false
  return true
}

const reply = (result: number, payload: Uint8Array | null = null): SyncReply => ({ result, payload })
const bytesReply = (bytes: Uint8Array): SyncReply => ({ result: bytes.length, payload: bytes })

/** Bytes an encoded token takes: the lock's reply. */
export function tokenReply(token: number): SyncReply {
  return bytesReply(i64Bytes(BigInt(token)))
}

/** Applies `operations` in order. Never throws on guest input; a broken state does. */
export function applyBatch(current: SyncState, operations: readonly BatchOperation[]): BatchResult {
  const state: SyncState = {
    ...current,
    items: current.items.slice(),
    arrived: current.arrived.slice(),
    results: { ...current.results },
    pruned: { ...(current.pruned ?? {}) },
    waiters: current.waiters.slice(),
  }
  const pruned = state.pruned!
  let changed = false
  let dataChanged = false
  const outcomes: Outcome[] = []
  for (const operation of operations) {
    const { tid, callSequence } = operation
    // Results below a thread's committed save are never asked for again.
    for (const [owner, floor] of [
      [tid, operation.floor] as [string, number],
      ...(operation.otherFloors ?? []),
    ]) {
      const before = state.results[owner]
      if (before === undefined) continue
      const kept = before.filter(([sequence]) => sequence >= floor)
      if (kept.length === before.length) continue
      changed = true
      if (kept.length === 0) delete state.results[owner]
      else state.results[owner] = kept
      pruned[owner] = Math.max(pruned[owner] ?? 0, floor)
    }
    const step = operation.step
    if (step.kind === 'prune') {
      outcomes.push({ kind: 'none' })
      continue
    }
    if (step.kind === 'forget') {
      if (state.results[tid] !== undefined || pruned[tid] !== undefined) {
        delete state.results[tid]
        delete pruned[tid]
        changed = true
      }
      outcomes.push({ kind: 'none' })
      continue
    }
    if (step.kind === 'await') {
      if (!state.waiters.includes(operation.node)) {
        state.waiters = [...state.waiters, operation.node].slice(-waitersMax)
        changed = true
      }
      outcomes.push({ kind: 'none' })
      continue
    }
    if (step.kind === 'record' && step.replace === true) {
      const entries = state.results[tid] ?? []
      const kept = entries.filter(([sequence]) => sequence !== callSequence)
      state.results[tid] = [...kept, [callSequence, step.reply.result, step.reply.payload]]
      changed = true
      outcomes.push({ kind: 'done', reply: step.reply, recorded: false, kept: true })
      continue
    }
    let recorded = state.results[tid]?.find(([sequence]) => sequence === callSequence)
    const holderToken = step.kind === 'apply' && step.operation.op === 'fenced_get' ? step.operation.token : 0
    if (recorded !== undefined && holderToken > 0 && recorded[3] !== holderToken) {
      // A holder's read replayed with another token: the thread, restored from a save, lost its
      // lock meanwhile and took it again. What it read then may be stale now; it reads afresh
      // (its write, if it made one, stays recorded: applied once).
      state.results[tid] = state.results[tid]!.filter(([sequence]) => sequence !== callSequence)
      changed = true
      recorded = undefined
    }
    if (recorded !== undefined) {
      outcomes.push({ kind: 'done', reply: reply(recorded[1], recorded[2]), recorded: true, kept: true })
      continue
    }
    if (callSequence < (pruned[tid] ?? 0)) {
      outcomes.push({ kind: 'done', reply: reply(SyncError.unavailable), recorded: false, kept: false })
      continue
    }
    const readOnly =
      step.kind === 'apply' &&
      readOnlyOps.has(step.operation.op) &&
      !(step.operation.op === 'fenced_get' && step.operation.token > 0)
    if (!readOnly && (state.results[tid]?.length ?? 0) >= unsavedResultsPerThreadMax) {
      outcomes.push({ kind: 'save-first' })
      continue
    }
    const arrivedBefore = state.arrived.length
    let outcome: { reply: SyncReply; effect: boolean; record: boolean } | 'wait'
    if (step.kind === 'record') outcome = { reply: step.reply, effect: false, record: true }
    else outcome = applyOne(state, step.operation, operation)
    if (outcome === 'wait') {
      if (state.arrived.length !== arrivedBefore) changed = true
      if (!state.waiters.includes(operation.node)) {
        state.waiters = [...state.waiters, operation.node].slice(-waitersMax)
        changed = true
      }
      outcomes.push({ kind: 'wait' })
      continue
    }
    if (outcome.effect) dataChanged = true
    if (outcome.record) {
      const entry: RecordedResult = [callSequence, outcome.reply.result, outcome.reply.payload]
      if (holderToken > 0) entry.push(holderToken)
      state.results[tid] = [...(state.results[tid] ?? []), entry]
      changed = true
    }
    outcomes.push({ kind: 'done', reply: outcome.reply, recorded: false, kept: outcome.record })
  }
  if (dataChanged) changed = true
  return { state, outcomes, changed, wake: dataChanged ? state.waiters.slice() : [] }
}

/**
 * One operation on the state (mutated in place). Returns the reply, whether the data changed (so
 * waiters are woken), and whether the reply must be recorded for replays (an effect: its record is
 * written with it, atomically); or 'wait'.
 */
function applyOne(
  state: SyncState,
  operation: SyncOperation,
  context: BatchOperation,
): { reply: SyncReply; effect: boolean; record: boolean } | 'wait' {
  // An effect is recorded with the change; a reply that changed nothing is logged by the thread.
  const done = (result: SyncReply, effect = false) => ({ reply: result, effect, record: effect })
  const refuse = (error: number) => ({ reply: reply(error), effect: false, record: false })
  switch (operation.op) {
    case 'var_get':
    case 'fenced_get': {
      // A lock holder's read (a token) is refused once a newer holder read or wrote, and raises the
      // fence to its token: a write of an older holder (its lease ran out while it held on) that
      // comes after this read is then refused, so it cannot overwrite what this holder computes.
      // Recorded with its token (a replay with another token reads afresh: applyBatch).
      const token = operation.op === 'fenced_get' ? operation.token : 0
      if (token > 0 && token < state.fence) return done(reply(SyncError.staleToken))
      const raises = token > state.fence
      if (state.value !== null && state.value.length > context.outCapacity) return refuse(SyncError.tooLarge)
      if (raises) state.fence = token
      const read = state.value === null ? reply(SyncError.unset) : bytesReply(state.value)
      return { reply: read, effect: raises, record: token > 0 }
    }
    case 'var_set':
      state.value = operation.value
      return done(reply(0), true)
    case 'var_cas': {
      if (!sameBytes(state.value, operation.expected)) return done(reply(0))
      state.value = operation.value
      return done(reply(1), true)
    }
    case 'var_add': {
      const previous = state.value === null ? 0n : readI64(state.value)
      if (previous === null) return done(reply(SyncError.wrongType))
      if (context.outCapacity < 8) return refuse(SyncError.tooLarge)
      let next = previous + operation.delta
      // Two's complement wrap, as an i64 add in the guest would.
      if (next > int64Max || next < int64Min) next = BigInt.asIntN(64, next)
      state.value = i64Bytes(next)
      return done(bytesReply(state.value), true)
    }
    case 'fenced_set': {
      if (operation.token < state.fence) return done(reply(SyncError.staleToken))
      state.fence = operation.token
      state.value = operation.value
      return done(reply(0), true)
    }
    case 'queue_push': {
      if (state.closed) return done(reply(SyncError.closed))
      if (state.capacity === 0) state.capacity = operation.capacity
      if (state.items.length >= state.capacity) {
        return context.deadlinePassed ? done(reply(SyncError.full)) : 'wait'
      }
      state.items.push(operation.item)
      return done(reply(0), true)
    }
    case 'queue_pop': {
      const item = state.items[0]
      if (item === undefined) {
        if (state.closed) return done(reply(SyncError.closed))
        return context.deadlinePassed ? done(reply(SyncError.timeout)) : 'wait'
      }
      // Refused before the item leaves the queue, so it is not lost to a buffer too small.
      if (item.length > context.outCapacity) return refuse(SyncError.tooLarge)
      state.items.shift()
      return done(bytesReply(item), true)
    }
    case 'queue_close':
      if (state.closed) return done(reply(0))
      state.closed = true
      return done(reply(0), true)
    case 'queue_length':
      return done(reply(state.items.length))
    case 'barrier_wait': {
      if (state.parties === 0) state.parties = operation.parties
      if (state.parties !== operation.parties) return refuse(SyncError.invalid)
      const arrived = state.arrived.some(
        ([tid, sequence]) => tid === context.tid && sequence === context.callSequence,
      )
      if (arrived) return 'wait'
      state.arrived.push([context.tid, context.callSequence])
      // The arrival is an effect kept in the state (applyBatch writes it back); then the thread waits.
      if (state.arrived.length < state.parties) return 'wait'
      // The last arrival ends the round: every party's result is recorded here, for all to find.
      const round = state.round
      for (const [tid, sequence] of state.arrived) {
        if (tid === context.tid && sequence === context.callSequence) continue
        state.results[tid] = [...(state.results[tid] ?? []), [sequence, round, null]]
      }
      state.arrived = []
      state.round = round + 1
      return done(reply(round), true)
    }
    case 'lock_acquire':
    case 'lock_renew':
    case 'lock_release':
    case 'group':
      // Served by the engine on the store's leases (and the thread record); never applied here.
      return refuse(SyncError.invalid)
  }
}
