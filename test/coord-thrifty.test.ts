/**
 * Thrifty rounds (fabric/coord/store.ts): a prepare or accept goes first to the fewest replicas that
 * make a quorum, this node's own and the fastest other, and to the rest only when one of those has
 * not answered after `thriftyWidenMs` (or refuses). The linearizability of histories under crashes,
 * partitions and loss is checked by the simulation tests (test/coord-simulation-*.test.ts).
 */

import { describe, expect, test } from 'vitest'
import { createAcceptor } from '../fabric/coord/acceptor.ts'
import type { StoreMessage } from '../fabric/coord/messages.ts'
import { emptyRegister } from '../fabric/coord/register.ts'
import { attemptTimeoutMsDefault, thriftyWidenMs } from '../fabric/coord/store.ts'
import { memoryAcceptorStorage } from '../fabric/sim/cluster.ts'
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

describe('creates in one round trip', () => {
  const create = (text: string) => ({ kind: 'cas' as const, expectedVersion: 0, value: bytes(text) })

  test('a create skips the prepare: one accept to each replica, and the value is there', () => {
    const cluster = threeStores()
    const created = cluster.submit('n0', 'fresh', create('v'))
    cluster.deliver()
    expect(created[0]).toMatchObject({ ok: true, result: { ok: true, version: 1 } })
    expect(cluster.sent.get('prepare') ?? 0).toBe(0)
    expect(cluster.sent.get('accept')).toBe(3)
    const read = cluster.submit('n1', 'fresh', { kind: 'get' })
    cluster.settle(read)
    expect(read[0]).toMatchObject({ ok: true, result: { value: bytes('v'), version: 1 } })
  })

  test('a create of a key that exists falls back to the ordinary rounds and fails as a cas does', () => {
    const cluster = threeStores()
    const first = cluster.submit('n0', 'k', create('first'))
    cluster.deliver()
    expect(first[0]).toMatchObject({ ok: true, result: { ok: true } })
    cluster.sent.clear()
    const second = cluster.submit('n1', 'k', create('second'))
    cluster.settle(second)
    expect(second[0]).toMatchObject({ ok: true, result: { ok: false, value: bytes('first'), version: 1 } })
    expect(cluster.sent.get('prepare')).toBeGreaterThan(0)
  })

  test('two creates of one key at once: exactly one wins, and every reader sees it', () => {
    for (const order of [
      ['n0', 'n1'],
      ['n1', 'n0'],
      ['n2', 'n0'],
    ] as const) {
      const cluster = threeStores()
      const a = cluster.submit(order[0], 'k', create(order[0]))
      const b = cluster.submit(order[1], 'k', create(order[1]))
      cluster.settle(a, b)
      const wins = [a[0], b[0]].filter((outcome) => outcome?.ok && outcome.result.ok)
      expect(wins.length).toBe(1)
      const winner = a[0]?.ok && a[0].result.ok ? order[0] : order[1]
      for (const reader of ['n0', 'n1', 'n2']) {
        const read = cluster.submit(reader, 'k', { kind: 'get' })
        cluster.settle(read)
        expect(read[0]).toMatchObject({ ok: true, result: { value: bytes(winner), version: 1 } })
      }
    }
  })

  test('with a replica down, a create waits thriftyWidenMs then takes two rounds; the next ones do not wait', () => {
    const cluster = threeStores()
    cluster.down.add('n2')
    const startedMs = cluster.now()
    const created = cluster.submit('n0', 'a', create('a'))
    cluster.settle(created)
    expect(created[0]).toMatchObject({ ok: true, result: { ok: true } })
    expect(cluster.now() - startedMs).toBeGreaterThanOrEqual(thriftyWidenMs)
    const next = cluster.submit('n0', 'b', create('b'))
    cluster.deliver()
    expect(next[0]).toMatchObject({ ok: true, result: { ok: true } })
  })
})

describe('an acceptor and creates', () => {
  test('takes a create (round 0) only into a key it holds nothing for, even one a new configuration installed', () => {
    const replies: StoreMessage[] = []
    const acceptor = createAcceptor({
      self: 'n0',
      clock: { now: () => 0 },
      storage: memoryAcceptorStorage(new Map()),
      send: (_to, message) => replies.push(message),
    })
    const members = ['n0', 'n1', 'n2']
    // Epoch 2 installs key `k`, chosen at a ballot of epoch 1: every ballot of epoch 2 is higher.
    const state = { ...emptyRegister, value: bytes('chosen'), version: 1 }
    acceptor.receive('n1', {
      type: 'install',
      shard: 0,
      epoch: 2,
      members,
      registers: [{ key: 'k', ballot: { epoch: 1, round: 7, proposer: 'n1' }, state }],
    })
    const create = (key: string): StoreMessage => ({
      type: 'accept',
      shard: 0,
      epoch: 2,
      key,
      ballot: { epoch: 2, round: 0, proposer: 'n2' },
      state: { ...emptyRegister, value: bytes('created'), version: 1 },
      next: { epoch: 2, round: 1, proposer: 'n2' },
    })
    replies.length = 0
    acceptor.receive('n2', create('k'))
    acceptor.receive('n2', create('fresh'))
    expect(replies.map((reply) => [reply.type, (reply as { key: string }).key])).toEqual([
      ['reject', 'k'],
      ['accepted', 'fresh'],
    ])
  })
})
