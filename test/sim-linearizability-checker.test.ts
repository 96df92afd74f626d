import { describe, expect, it } from 'vitest'
import type { Operation, OperationResult } from '../fabric/coord/register.ts'
import { checkLinearizable, type HistoryOperation } from '../fabric/sim/linearizability.ts'
import { checkExclusiveHoldings } from '../fabric/sim/workload.ts'

const bytes = (text: string) => new TextEncoder().encode(text)

function op(
  client: string,
  callMs: number,
  returnMs: number | null,
  operation: Operation,
  result: Partial<OperationResult> | null,
  key = 'k',
): HistoryOperation {
  return {
    client,
    key,
    operation,
    callMs,
    returnMs,
    result: result === null ? null : { ok: true, version: 0, value: null, holder: null, token: 0, ...result },
  }
}

const put = (text: string): Operation => ({ kind: 'put', value: bytes(text) })
const get: Operation = { kind: 'get' }

describe('checkLinearizable accepts', () => {
  it('a sequential history that follows the register', () => {
    const history = [
      op('a', 0, 1, put('x'), { version: 1, value: bytes('x') }),
      op('b', 2, 3, get, { version: 1, value: bytes('x') }),
      op(
        'a',
        4,
        5,
        { kind: 'cas', expectedVersion: 1, value: bytes('y') },
        { version: 2, value: bytes('y') },
      ),
      op(
        'b',
        6,
        7,
        { kind: 'cas', expectedVersion: 1, value: bytes('z') },
        { ok: false, version: 2, value: bytes('y') },
      ),
    ]
    expect(checkLinearizable(history).ok).toBe(true)
  })

  it('concurrent writes seen in either order, as long as one order explains every read', () => {
    const history = [
      op('a', 0, 10, put('x'), { version: 1, value: bytes('x') }),
      op('b', 1, 9, put('y'), { version: 2, value: bytes('y') }),
      op('c', 11, 12, get, { version: 2, value: bytes('y') }),
    ]
    expect(checkLinearizable(history).ok).toBe(true)
  })

  it('an operation with unknown outcome that took effect later, or never', () => {
    const tookEffect = [
      op('a', 0, null, put('x'), null),
      op('b', 5, 6, get, { version: 0 }),
      op('b', 7, 8, get, { version: 1, value: bytes('x') }),
    ]
    const neverDid = [op('a', 0, null, put('x'), null), op('b', 5, 6, get, { version: 0 })]
    expect(checkLinearizable(tookEffect).ok).toBe(true)
    expect(checkLinearizable(neverDid).ok).toBe(true)
  })
})

describe('checkLinearizable rejects', () => {
  it('a stale read after a completed write', () => {
    const history = [
      op('a', 0, 1, put('x'), { version: 1, value: bytes('x') }),
      op('b', 2, 3, get, { version: 0 }),
    ]
    expect(checkLinearizable(history).ok).toBe(false)
  })

  it('a read that goes back in time (new value, then old value)', () => {
    const history = [
      op('a', 0, 20, put('x'), { version: 1, value: bytes('x') }),
      op('b', 1, 2, get, { version: 1, value: bytes('x') }),
      op('c', 3, 4, get, { version: 0 }),
    ]
    expect(checkLinearizable(history).ok).toBe(false)
  })

  it('two compare-and-swaps that both succeed on the same version (a lost update)', () => {
    const history = [
      op('a', 0, 1, put('x'), { version: 1, value: bytes('x') }),
      op(
        'b',
        2,
        5,
        { kind: 'cas', expectedVersion: 1, value: bytes('b') },
        { version: 2, value: bytes('b') },
      ),
      op(
        'c',
        2,
        5,
        { kind: 'cas', expectedVersion: 1, value: bytes('c') },
        { version: 2, value: bytes('c') },
      ),
    ]
    expect(checkLinearizable(history).ok).toBe(false)
  })

  it('a write applied twice (version jumps by two for one put)', () => {
    const history = [op('a', 0, 1, put('x'), { version: 2, value: bytes('x') })]
    expect(checkLinearizable(history).ok).toBe(false)
  })

  it('a fencing token handed out twice', () => {
    const history = [
      op(
        'a',
        0,
        1,
        { kind: 'acquire', holder: 'a', ttlMs: 100, grant: 'g1' },
        { holder: 'a', token: 1 },
        'lease',
      ),
      op('b', 2, 3, { kind: 'release', holder: 'a', token: 1 }, { holder: null, token: 1 }, 'lease'),
      op(
        'b',
        4,
        5,
        { kind: 'acquire', holder: 'b', ttlMs: 100, grant: 'g2' },
        { holder: 'b', token: 1 },
        'lease',
      ),
    ]
    expect(checkLinearizable(history).ok).toBe(false)
  })

  it('a refused acquire while nobody holds the lease', () => {
    const history = [
      op(
        'a',
        0,
        1,
        { kind: 'acquire', holder: 'a', ttlMs: 100, grant: 'g1' },
        { ok: false, holder: null },
        'lease',
      ),
    ]
    expect(checkLinearizable(history).ok).toBe(false)
  })
})

describe('checkExclusiveHoldings', () => {
  it('reports two holders at the same instant, and allows back-to-back holdings', () => {
    expect(
      checkExclusiveHoldings([
        { holder: 'a', token: 1, fromMs: 0, untilMs: 10 },
        { holder: 'b', token: 2, fromMs: 10, untilMs: 20 },
      ]),
    ).toEqual([])
    expect(
      checkExclusiveHoldings([
        { holder: 'a', token: 1, fromMs: 0, untilMs: 10 },
        { holder: 'b', token: 2, fromMs: 9, untilMs: 20 },
      ]),
    ).toHaveLength(1)
  })
})
