/**
 * A linearizability checker for histories of coordination-store operations (Wing & Gong's search
 * with Lowe's memoization, as in Knossos and Porcupine), one key at a time since keys are
 * independent registers.
 *
 * An operation whose outcome is unknown (the client timed out, or its node crashed) has no return:
 * it may take effect at any point after its call, or never, which is the same as taking effect
 * after every other operation.
 *
 *   const verdict = checkLinearizable(history)
 *   if (!verdict.ok) console.log(describeViolation(verdict))
 */

import {
  applyOperation,
  emptyRegister,
  type Operation,
  type OperationResult,
  type RegisterState,
} from '../coord/register.ts'

export interface HistoryOperation {
  client: string
  key: string
  operation: Operation
  callMs: number
  /** Null when the outcome is unknown. */
  returnMs: number | null
  result: OperationResult | null
}

export type Verdict = { ok: true } | { ok: false; key: string; operations: HistoryOperation[] }

/** Memoized search states per key before the checker gives up (a history that large is a test bug). */
export const searchStatesMax = 5_000_000

interface Entry {
  kind: 'call' | 'return'
  timeMs: number
  index: number
  match: Entry | undefined
  previous: Entry | undefined
  next: Entry | undefined
}

export function checkLinearizable(history: readonly HistoryOperation[]): Verdict {
  const byKey = new Map<string, HistoryOperation[]>()
  for (const operation of history) {
    let list = byKey.get(operation.key)
    if (list === undefined) {
      list = []
      byKey.set(operation.key, list)
    }
    list.push(operation)
  }
  for (const [key, operations] of byKey) {
    if (!checkKey(operations)) return { ok: false, key, operations }
  }
  return { ok: true }
}

/** The register's next state if `operation` can take effect now with the observed `result`. */
function step(
  state: RegisterState,
  operation: Operation,
  result: OperationResult | null,
): RegisterState | null {
  if (result === null) return applyOperation(state, operation, true).state
  // A granted acquire over a live holder, or a refused renew by the holder, means the lease had
  // expired; time is outside the model.
  const expired = (operation.kind === 'acquire' && result.ok) || (operation.kind === 'renew' && !result.ok)
  const applied = applyOperation(state, operation, expired)
  const expected = applied.result
  if (
    expected.ok !== result.ok ||
    expected.version !== result.version ||
    expected.holder !== result.holder ||
    expected.token !== result.token ||
    !sameBytes(expected.value, result.value)
  )
    return null
  return applied.state
}

function stateKey(state: RegisterState): string {
  return `${state.version}|${bytesKey(state.value)}|${state.lease?.holder ?? ''}|${state.token}`
}

function checkKey(operations: readonly HistoryOperation[]): boolean {
  const entries: Entry[] = []
  operations.forEach((operation, index) => {
    const call: Entry = {
      kind: 'call',
      timeMs: operation.callMs,
      index,
      match: undefined,
      previous: undefined,
      next: undefined,
    }
    const ret: Entry = {
      kind: 'return',
      timeMs: operation.returnMs ?? Number.POSITIVE_INFINITY,
      index,
      match: undefined,
      previous: undefined,
      next: undefined,
    }
    call.match = ret
    entries.push(call, ret)
  })
  // Calls before returns at equal times: touching operations count as concurrent.
  entries.sort(
    (a, b) => a.timeMs - b.timeMs || (a.kind === b.kind ? a.index - b.index : a.kind === 'call' ? -1 : 1),
  )
  const head: Entry = {
    kind: 'call',
    timeMs: -1,
    index: -1,
    match: undefined,
    previous: undefined,
    next: undefined,
  }
  let last = head
  for (const entry of entries) {
    last.next = entry
    entry.previous = last
    last = entry
  }

  const lift = (entry: Entry) => {
    entry.previous!.next = entry.next
    if (entry.next) entry.next.previous = entry.previous
    const ret = entry.match!
    ret.previous!.next = ret.next
    if (ret.next) ret.next.previous = ret.previous
  }
  const unlift = (entry: Entry) => {
    const ret = entry.match!
    ret.previous!.next = ret
    if (ret.next) ret.next.previous = ret
    entry.previous!.next = entry
    if (entry.next) entry.next.previous = entry
  }

  const linearized = new Uint32Array(Math.ceil(operations.length / 32))
  const cache = new Set<string>()
  const stack: { entry: Entry; state: RegisterState }[] = []
  let state: RegisterState = emptyRegister
  let entry = head.next
  while (head.next !== undefined) {
    if (entry === undefined) return false
    if (entry.kind === 'call') {
      const operation = operations[entry.index]!
      const next = step(state, operation.operation, operation.result)
      if (next !== null) {
        linearized[entry.index >> 5]! ^= 1 << (entry.index & 31)
        const key = `${linearized.join(',')}#${stateKey(next)}`
        if (!cache.has(key)) {
          if (cache.size >= searchStatesMax)
            throw new Error(`linearizability check exceeded ${searchStatesMax} states; shorten the history`)
          cache.add(key)
          stack.push({ entry, state })
          state = next
          lift(entry)
          entry = head.next
          continue
        }
        linearized[entry.index >> 5]! ^= 1 << (entry.index & 31)
      }
      entry = entry.next
    } else {
      const top = stack.pop()
      if (top === undefined) return false
      state = top.state
      linearized[top.entry.index >> 5]! ^= 1 << (top.entry.index & 31)
      unlift(top.entry)
      entry = top.entry.next
    }
  }
  return true
}

function sameBytes(a: Uint8Array | null, b: Uint8Array | null): boolean {
  if (a === null || b === null) return a === b
  if (a.length !== b.length) return false
  for (let index = 0; index < a.length; index++) if (a[index] !== b[index]) return false
  return true
}

function bytesKey(value: Uint8Array | null): string {
  if (value === null) return '-'
  let text = ''
  for (const byte of value) text += byte.toString(16).padStart(2, '0')
  return text
}

/** A readable dump of a failing key's history, ordered by call time. */
export function describeHistory(operations: readonly HistoryOperation[]): string {
  const decoder = new TextDecoder()
  const show = (value: Uint8Array | null) => (value === null ? 'null' : JSON.stringify(decoder.decode(value)))
  return [...operations]
    .sort((a, b) => a.callMs - b.callMs)
    .map((operation) => {
      const { operation: op, result } = operation
      const args =
        op.kind === 'put'
          ? show(op.value)
          : op.kind === 'cas'
            ? `v${op.expectedVersion} ${show(op.value)}`
            : op.kind === 'acquire'
              ? op.holder
              : op.kind === 'renew' || op.kind === 'release'
                ? `${op.holder} t${op.token}`
                : ''
      const outcome =
        result === null
          ? '?'
          : `${result.ok ? 'ok' : 'fail'} v${result.version} ${show(result.value)} holder=${result.holder} t${result.token}`
      const end = operation.returnMs === null ? '∞' : operation.returnMs.toFixed(2)
      return `[${operation.callMs.toFixed(2)}, ${end}] ${operation.client} ${op.kind} ${args} -> ${outcome}`
    })
    .join('\n')
}
