/**
 * The register that every key of the coordination store holds, and the operations on it.
 *
 * `applyOperation` is the whole semantics of the store: CASPaxos proposers run it on the value
 * they read from a quorum, and the linearizability checker runs it as its model.
 */

export type NodeId = string

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

/** What the caller sees: whether the operation applied, and the register's visible state after it. */
export interface OperationResult {
  ok: boolean
  version: number
  value: Uint8Array | null
  holder: string | null
  token: number
}

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

export function isReadOnly(operation: Operation): boolean {
  return operation.kind === 'get'
}
