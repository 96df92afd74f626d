/**
 * Forgetting key groups (fabric/coord/slots.ts, Store.forget): every replica drops the slots of the
 * keys in a group (`threads/<pid>/`), and only those, for good (its log says so after a restart).
 */

import { describe, expect, test } from 'vitest'
import { createAcceptor } from '../fabric/coord/acceptor.ts'
import { zeroBallot } from '../fabric/coord/ballot.ts'
import type { StoreMessage } from '../fabric/coord/messages.ts'
import { forgetGroupsPerMessageMax, groupOf, isGroup } from '../fabric/coord/slots.ts'
import { InvalidArgumentError } from '../fabric/errors.ts'
import { isStoreMessage } from '../fabric/net/validate.ts'
import { memoryAcceptorStorage } from '../fabric/sim/cluster.ts'
import { threeStores } from './support/three-stores.ts'

const bytes = (text: string) => new TextEncoder().encode(text)

describe('key groups', () => {
  test("a key's group is its first two segments; a key of fewer than three has none", () => {
    expect(groupOf('threads/p1/0/7')).toBe('threads/p1/')
    expect(groupOf('sync/p1/@global/lock/a')).toBe('sync/p1/')
    expect(groupOf('proc/p1')).toBeNull()
    expect(groupOf('proc/p1/')).toBeNull()
    expect(groupOf('a//b')).toBeNull()
    expect(groupOf('/a/b')).toBeNull()
    expect(isGroup('threads/p1/')).toBe(true)
    for (const group of ['', 'threads/', 'threads/p1', 'threads/p1/0/', '/p1/', 'threads//'])
      expect(isGroup(group)).toBe(false)
  })

  test('a forget message names 1 to 64 groups and nothing else', () => {
    expect(isStoreMessage({ type: 'forget', groups: ['threads/p1/', 'sync/p1/'] }, 64)).toBe(true)
    const refused: unknown[] = [
      { type: 'forget', groups: [] },
      { type: 'forget', groups: ['threads/'] },
      { type: 'forget', groups: [''] },
      { type: 'forget', groups: ['threads/p1/0/'] },
      { type: 'forget', groups: 'threads/p1/' },
      { type: 'forget', groups: [7] },
      {
        type: 'forget',
        groups: Array.from({ length: forgetGroupsPerMessageMax + 1 }, (_, index) => `t/p${index}/`),
      },
    ]
    for (const message of refused) expect(isStoreMessage(message, 64)).toBe(false)
  })
})

describe('Store.forget', () => {
  test('every replica drops the slots of the group, and only those: a read finds nothing, other keys are intact', () => {
    const cluster = threeStores()
    const keys = ['threads/p1/0/1', 'threads/p1/0.1/2', 'threads/p2/0/1', 'proc/p1', 'sync/p1/@global/lock/a']
    for (const key of keys) {
      const written = cluster.submit('n0', key, { kind: 'put', value: bytes(key) })
      cluster.settle(written)
      expect(written[0]).toMatchObject({ ok: true })
    }
    const forgotten = (key: string) => key.startsWith('threads/p1/') || key.startsWith('sync/p1/')
    const slotKeys = (id: string) =>
      cluster.stores
        .get(id)!
        .acceptor!.snapshot()
        .flatMap((record) => (record.type === 'slot' ? [record.key] : []))
    // A write reaches a quorum (thrifty rounds: two of the three replicas here): each key has a
    // slot on two replicas at least.
    for (const key of keys)
      expect(
        ['n0', 'n1', 'n2'].filter((id) => slotKeys(id).includes(key)).length,
        key,
      ).toBeGreaterThanOrEqual(2)
    const before = new Map(['n0', 'n1', 'n2'].map((id) => [id, slotKeys(id)]))
    cluster.stores.get('n1')!.forget(['threads/p1/', 'sync/p1/'])
    cluster.deliver()
    for (const id of ['n0', 'n1', 'n2'])
      expect(slotKeys(id), id).toEqual(before.get(id)!.filter((key) => !forgotten(key)))
    expect([...before.values()].flat().filter(forgotten).length).toBeGreaterThanOrEqual(6)
    for (const key of keys) {
      const read = cluster.submit('n2', key, { kind: 'get' })
      cluster.settle(read)
      expect(read[0], key).toMatchObject({ ok: true, result: { value: forgotten(key) ? null : bytes(key) } })
    }
  })

  test('a group that is not one is refused at once, before anything is sent', () => {
    const cluster = threeStores()
    expect(() => cluster.stores.get('n0')!.forget(['threads/'])).toThrow(InvalidArgumentError)
    expect(cluster.sent.get('forget') ?? 0).toBe(0)
  })

  test("an acceptor's forget is in its log: restarted from it, the slots stay gone and the others stay", () => {
    const disk = new Map<string, unknown>()
    const start = () =>
      createAcceptor({
        self: 'n0',
        clock: { now: () => 0 },
        storage: memoryAcceptorStorage(disk),
        send: (_to: string, _message: StoreMessage) => {},
      })
    const acceptor = start()
    acceptor.genesis(new Map([[0, ['n0']]]))
    const ballot = { ...zeroBallot, epoch: 1, round: 1, proposer: 'n0' }
    for (const key of ['threads/p1/0/1', 'threads/p1/0/2', 'threads/p2/0/1'])
      acceptor.receive('n0', { type: 'prepare', shard: 0, epoch: 1, key, ballot })
    expect(acceptor.slotCount()).toBe(3)
    expect(acceptor.forget(['threads/p1/'])).toBe(2)
    expect(acceptor.forget(['threads/p1/'])).toBe(0)
    expect(acceptor.slotCount()).toBe(1)
    const restarted = start()
    expect(restarted.slotCount()).toBe(1)
    expect(restarted.snapshot().flatMap((record) => (record.type === 'slot' ? [record.key] : []))).toEqual([
      'threads/p2/0/1',
    ])
  })
})
