/**
 * The register that every key of the coordination store holds, and the operations on it.
 *
 * `applyOperation` is the whole semantics of the store: CASPaxos proposers run it on the value
 * they read from a quorum, and the linearizability checker runs it as its model.
 */

import { decodeEntries, type Entry, encodeEntries } from './entries.ts'

export type NodeId = string

/** Largest value a register holds (for a register of entries: the whole map, encoded). */
export const valueBytesMax = 64 * 1024

export interface LeaseState {
  holder: string
  token: number
  /** Unique per acquire/renew operation, so acceptors can time each grant separately. */
  grant: string
  ttlMs: number
}

export interface RegisterState {
  /** Number of successful data writes (put, cas); 0 means never written. */
  version: number
  value: Uint8Array | null
  lease: LeaseState | null
  /** Last fencing token issued on this key; kept when the lease is released. */
  token: number
  /**
   * The last write of each recent proposer ([proposer, write id]), so a proposer that retries after
   * losing the replies to its accept finds its own write instead of applying it twice.
   */
  writers?: [string, string][]
}

export type Operation =
  | { kind: 'get' }
  | { kind: 'put'; value: Uint8Array }
  | { kind: 'cas'; expectedVersion: number; value: Uint8Array }
  | { kind: 'acquire'; holder: string; ttlMs: number; grant: string }
  | { kind: 'renew'; holder: string; token: number; grant: string }
  | { kind: 'release'; holder: string; token: number }
  /**
   * Empties the key: no value (a get sees null, as for a key never written) and no lease, whoever
   * holds it. The version and the fencing token count on, so a key written or locked again after a
   * delete never repeats either. For keys nobody uses any more (an ended process's objects).
   */
  | { kind: 'delete' }
  /**
   * On a register of entries (coord/entries.ts): writes entry `entry` (null deletes it) if its
   * version is `expectedVersion` (0: absent). Writers of different entries of one key do not fail
   * each other. Refused (`refused: 'too-large'`, the register unchanged) when the map would exceed
   * `valueBytesMax`, and (`'not-entries'`) on a register that holds a plain value.
   */
  | { kind: 'entry-cas'; entry: string; expectedVersion: number; value: Uint8Array | null }
  /** Reads entry `entry` of a register of entries: its version (0: absent) and value. */
  | { kind: 'entry-get'; entry: string }

/**
 * What the caller sees: whether the operation applied, and the register's visible state after it.
 * For an entry operation, `version` and `value` are the entry's.
 */
export interface OperationResult {
  ok: boolean
  version: number
  value: Uint8Array | null
  holder: string | null
  token: number
  /** Why an entry operation did not apply although its version matched. */
  refused?: EntryRefusal
}

export type EntryRefusal = 'too-large' | 'not-entries'

export const emptyRegister: RegisterState = { version: 0, value: null, lease: null, token: 0 }

/**
 * Applies `operation` to `state`. `leaseExpired` says whether the current lease has outlived its TTL
 * by the acceptors' clocks; it is an input because time is not part of the register.
 * Returns the new state (the same object when nothing changed) and the result.
 */
export function applyOperation(
  state: RegisterState,
  operation: Operation,
  leaseExpired: boolean,
): { state: RegisterState; result: OperationResult } {
  let next = state
  let ok = true
  switch (operation.kind) {
    case 'get':
      break
    case 'put':
      next = { ...state, version: state.version + 1, value: operation.value }
      break
    case 'cas':
      if (state.version === operation.expectedVersion)
        next = { ...state, version: state.version + 1, value: operation.value }
      else ok = false
      break
    case 'acquire': {
      const lease = state.lease
      if (lease !== null && lease.holder === operation.holder) {
        next = { ...state, lease: { ...lease, grant: operation.grant, ttlMs: operation.ttlMs } }
      } else if (lease === null || leaseExpired) {
        const token = state.token + 1
        next = {
          ...state,
          token,
          lease: { holder: operation.holder, token, grant: operation.grant, ttlMs: operation.ttlMs },
        }
      } else ok = false
      break
    }
    case 'renew': {
      const lease = state.lease
      // A lease that outlived its TTL is not renewed, even if nobody took it yet: its holder may
      // have been restarted elsewhere from a save, and keeps the lock only by acquiring it again.
      if (
        lease !== null &&
        lease.holder === operation.holder &&
        lease.token === operation.token &&
        !leaseExpired
      )
        next = { ...state, lease: { ...lease, grant: operation.grant } }
      else ok = false
      break
    }
    case 'release': {
      const lease = state.lease
      if (lease !== null && lease.holder === operation.holder && lease.token === operation.token)
        next = { ...state, lease: null }
      else ok = false
      break
    }
    case 'delete':
      if (state.value !== null || state.lease !== null)
        next = { ...state, version: state.version + 1, value: null, lease: null }
      break
    case 'entry-get':
    case 'entry-cas':
      return applyEntryOperation(state, operation)
  }
  return {
    state: next,
    result: {
      ok,
      version: next.version,
      value: next.value,
      holder: next.lease?.holder ?? null,
      token: next.lease?.token ?? next.token,
    },
  }
}

function applyEntryOperation(
  state: RegisterState,
  operation: Extract<Operation, { kind: 'entry-get' | 'entry-cas' }>,
): { state: RegisterState; result: OperationResult } {
  const lease = { holder: state.lease?.holder ?? null, token: state.lease?.token ?? state.token }
  const entries = decodeEntries(state.value)
  if (entries === null)
    return { state, result: { ok: false, version: 0, value: null, ...lease, refused: 'not-entries' } }
  const current = entries.get(operation.entry)
  const seen = (entry: Entry | undefined, ok: boolean, refused?: EntryRefusal): OperationResult => ({
    ok,
    version: entry?.version ?? 0,
    value: entry?.value ?? null,
    ...lease,
    ...(refused === undefined ? {} : { refused }),
  })
  if (operation.kind === 'entry-get') return { state, result: seen(current, true) }
  if ((current?.version ?? 0) !== operation.expectedVersion) return { state, result: seen(current, false) }
  if (current === undefined && operation.value === null) return { state, result: seen(current, true) }
  const version = state.version + 1
  const changed = new Map(entries)
  const written = operation.value === null ? undefined : { version, value: operation.value }
  if (written === undefined) changed.delete(operation.entry)
  else changed.set(operation.entry, written)
  const value = changed.size === 0 ? null : encodeEntries(changed)
  if (value !== null && value.length > valueBytesMax)
    return { state, result: seen(current, false, 'too-large') }
  return { state: { ...state, version, value }, result: seen(written, true) }
}

export function isReadOnly(operation: Operation): boolean {
  return operation.kind === 'get' || operation.kind === 'entry-get'
}
