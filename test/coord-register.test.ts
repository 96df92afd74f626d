/**
 * The register's lease rules (fabric/coord/register.ts), which every store replica applies: a lease
 * that outlived its TTL is not renewed even if nobody took it, and its holder may acquire it again
 * with the same token while nobody else did; a delete empties the key without repeating a version or a token.
 */

import { describe, expect, test } from 'vitest'
import { applyOperation, emptyRegister } from '../fabric/coord/register.ts'

describe('register leases', () => {
  const acquired = applyOperation(
    emptyRegister,
    { kind: 'acquire', holder: 'a', ttlMs: 500, grant: 'g1' },
    false,
  )
  const token = acquired.result.token

  test('a live lease is renewed by its holder with its token', () => {
    const renewed = applyOperation(acquired.state, { kind: 'renew', holder: 'a', token, grant: 'g2' }, false)
    expect(renewed.result).toMatchObject({ ok: true, holder: 'a', token })
    expect(renewed.state.lease?.grant).toBe('g2')
  })

  test('an expired lease is not renewed, though nobody took it', () => {
    const renewed = applyOperation(acquired.state, { kind: 'renew', holder: 'a', token, grant: 'g2' }, true)
    expect(renewed.result.ok).toBe(false)
    expect(renewed.state).toBe(acquired.state)
  })

  test('its holder acquires it again with the same token while nobody else did; another gets a newer one', () => {
    const again = applyOperation(
      acquired.state,
      { kind: 'acquire', holder: 'a', ttlMs: 500, grant: 'g3' },
      true,
    )
    expect(again.result).toMatchObject({ ok: true, holder: 'a', token })
    const other = applyOperation(
      acquired.state,
      { kind: 'acquire', holder: 'b', ttlMs: 500, grant: 'g4' },
      true,
    )
    expect(other.result).toMatchObject({ ok: true, holder: 'b', token: token + 1 })
    const refused = applyOperation(
      acquired.state,
      { kind: 'acquire', holder: 'b', ttlMs: 500, grant: 'g5' },
      false,
    )
    expect(refused.result.ok).toBe(false)
  })
})

describe('register delete', () => {
  test('empties value and lease; version and fencing token count on, so neither repeats after it', () => {
    const written = applyOperation(emptyRegister, { kind: 'put', value: new Uint8Array([1]) }, false)
    const locked = applyOperation(
      written.state,
      { kind: 'acquire', holder: 'a', ttlMs: 1000, grant: 'g1' },
      false,
    )
    const deleted = applyOperation(locked.state, { kind: 'delete' }, false)
    expect(deleted.result).toEqual({ ok: true, version: 2, value: null, holder: null, token: 1 })
    // Again: nothing left to delete, nothing changes.
    expect(applyOperation(deleted.state, { kind: 'delete' }, false).state).toBe(deleted.state)
    const again = applyOperation(
      deleted.state,
      { kind: 'acquire', holder: 'b', ttlMs: 1000, grant: 'g2' },
      false,
    )
    expect(again.result.token).toBe(2)
    const rewritten = applyOperation(
      deleted.state,
      { kind: 'cas', expectedVersion: 2, value: new Uint8Array([2]) },
      false,
    )
    expect(rewritten.result).toMatchObject({ ok: true, version: 3 })
  })
})
