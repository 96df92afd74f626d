/**
 * Thrifty rounds (fabric/coord/store.ts): a prepare or accept goes first to the fewest replicas that
 * make a quorum, this node's own and the fastest other, and to the rest only when one of those has
 * not answered after `thriftyWidenMs` (or refuses). The linearizability of histories under crashes,
 * partitions and loss is checked by the simulation tests (test/coord-simulation-*.test.ts).
 */

import { describe, expect, test } from 'vitest'
import { attemptTimeoutMsDefault, thriftyWidenMs } from '../fabric/coord/store.ts'
import { threeStores } from './support/three-stores.ts'

const bytes = (text: string) => new TextEncoder().encode(text)

describe('thrifty rounds', () => {
  test('a write and a read ask this node and one other replica, not all three', () => {
    const cluster = threeStores()
    const written = cluster.submit('n0', 'k', { kind: 'put', value: bytes('v') })
    cluster.deliver()
    expect(written[0]).toMatchObject({ ok: true, result: { ok: true } })
    const read = cluster.submit('n0', 'k', { kind: 'get' })
    cluster.deliver()
    expect(read[0]).toMatchObject({ ok: true, result: { value: bytes('v') } })
    // One other replica got each phase; the third got nothing.
    const others = ['n1', 'n2'].map(
      (id) => (cluster.sentTo.get(`prepare ${id}`) ?? 0) + (cluster.sentTo.get(`accept ${id}`) ?? 0),
    )
    // (put: a prepare and an accept; the read: one accept on the ballot the put's accept promised)
    expect(others.sort()).toEqual([0, 3])
    expect(cluster.sent.get('promise')).toBe(2)
  })

  test('a replica that does not answer is passed over after thriftyWidenMs, and asked last from then on', () => {
    const cluster = threeStores()
    // Warm up: n0 learns how fast n1 and n2 answer, and asks one of them first.
    const warm = cluster.submit('n0', 'warm', { kind: 'put', value: bytes('w') })
    cluster.deliver()
    expect(warm[0]?.ok).toBe(true)
    const first = ['n1', 'n2'].find((id) => (cluster.sentTo.get(`prepare ${id}`) ?? 0) > 0)!
    const third = first === 'n1' ? 'n2' : 'n1'
    cluster.down.add(first)
    const startedMs = cluster.now()
    const written = cluster.submit('n0', 'k', { kind: 'put', value: bytes('v') })
    cluster.deliver()
    expect(written).toEqual([])
    cluster.settle(written)
    expect(written[0]).toMatchObject({ ok: true, result: { ok: true } })
    expect(cluster.now() - startedMs).toBeGreaterThanOrEqual(thriftyWidenMs)
    expect(cluster.now() - startedMs).toBeLessThan(attemptTimeoutMsDefault)
    // The next round goes to the replica that answered, without waiting.
    cluster.sentTo.clear()
    const next = cluster.submit('n0', 'other', { kind: 'put', value: bytes('x') })
    cluster.deliver()
    expect(next[0]).toMatchObject({ ok: true, result: { ok: true } })
    expect(cluster.sentTo.get(`prepare ${third}`)).toBe(1)
    expect(cluster.sentTo.get(`prepare ${first}`) ?? 0).toBe(0)
  })

  test('a value written through two replicas is read through the other two', () => {
    const cluster = threeStores()
    const written = cluster.submit('n0', 'k', { kind: 'put', value: bytes('v') })
    cluster.deliver()
    const asked = ['n1', 'n2'].find((id) => (cluster.sentTo.get(`accept ${id}`) ?? 0) > 0)!
    // The replicas that hold it are n0 and `asked`; read it with n0 down, from the third's proposer.
    cluster.down.add('n0')
    const reader = asked === 'n1' ? 'n2' : 'n1'
    const read = cluster.submit(reader, 'k', { kind: 'get' })
    cluster.settle(read)
    expect(written[0]).toMatchObject({ ok: true, result: { ok: true } })
    expect(read[0]).toMatchObject({ ok: true, result: { value: bytes('v') } })
  })
})
