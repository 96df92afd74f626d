/**
 * Three store replicas (fabric/coord/store.ts) on one event loop, for tests of the protocol's
 * messages: messages are delivered in rounds and counted by type and by receiver; a node in `down`
 * neither receives nor sends (a crashed process), and the clock moves only when a test says so.
 */

import type { StoreMessage } from '../../fabric/coord/messages.ts'
import type { Operation } from '../../fabric/coord/register.ts'
import { createStore, type Outcome, type Store } from '../../fabric/coord/store.ts'
import { memoryAcceptorStorage } from '../../fabric/sim/cluster.ts'

export function threeStores() {
  const ids = ['n0', 'n1', 'n2']
  let nowMs = 0
  let seed = 1
  const queue: Array<{ from: string; to: string; message: StoreMessage }> = []
  /** Messages sent, by type. */
  const sent = new Map<string, number>()
  /** Messages sent, by `${type} ${receiver}`. */
  const sentTo = new Map<string, number>()
  const down = new Set<string>()
  const stores = new Map<string, Store>()
  for (const id of ids) {
    stores.set(
      id,
      createStore(
        {
          self: id,
          clock: { now: () => nowMs },
          random: {
            next: () => {
              seed = (seed * 16807) % 2147483647
              return (seed - 1) / 2147483646
            },
          },
          send: (to, message) => {
            sent.set(message.type, (sent.get(message.type) ?? 0) + 1)
            sentTo.set(`${message.type} ${to}`, (sentTo.get(`${message.type} ${to}`) ?? 0) + 1)
            queue.push({ from: id, to, message })
          },
          servers: () => ids,
          storage: memoryAcceptorStorage(new Map()),
        },
        { shardCount: 1, replicaCount: 3 },
      ),
    )
  }
  for (const store of stores.values()) store.genesis(ids)
  const deliver = () => {
    for (let steps = 0; queue.length > 0 && steps < 100_000; steps++) {
      const { from, to, message } = queue.shift()!
      if (down.has(to) || down.has(from)) continue
      stores.get(to)!.receive(from, message)
    }
  }
  const submit = (id: string, key: string, operation: Operation) => {
    const outcomes: Outcome[] = []
    stores.get(id)!.submit(key, operation, { timeoutMs: 5000 }, (outcome) => outcomes.push(outcome))
    return outcomes
  }
  /** Moves the clock by `ms` and ticks every live store. */
  const advance = (ms: number) => {
    nowMs += ms
    for (const [id, store] of stores) if (!down.has(id)) store.tick()
  }
  /** Delivers and ticks until every list holds its outcome (contending proposers retry on the clock). */
  const settle = (...lists: Outcome[][]) => {
    for (let step = 0; step < 400 && lists.some((list) => list.length === 0); step++) {
      deliver()
      advance(5)
    }
    deliver()
  }
  return { stores, sent, sentTo, down, deliver, submit, advance, settle, now: () => nowMs }
}
