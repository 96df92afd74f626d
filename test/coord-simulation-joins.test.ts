import { describe, expect, it } from 'vitest'
import { replicasOfShard, shardCountDefault, shardOfKey } from '../fabric/coord/shards.ts'
import type { Outcome } from '../fabric/coord/store.ts'
import { type SimFabricNode, simFabricNode } from '../fabric/sim/cluster.ts'
import { createSimulator, seedBanner } from '../fabric/sim/simulator.ts'

const file = 'test/coord-simulation-joins.test.ts'

describe('coordination store in the simulator: nodes joining together', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    const name = `a node that joins together with others serves its first operation on a shard the genesis node still holds (seed ${seed})`
    it(name, () => {
      try {
        const sim = createSimulator({ seed })
        const ids = ['node-0', 'node-1', 'node-2', 'node-3', 'node-4']
        const newcomers = ids.slice(1)
        // A key none of whose replicas-to-be is the genesis node: only node-0 knows where it lives
        // until the shard's new leader (a newcomer) moves it.
        let key = ''
        for (let index = 0; key === ''; index++) {
          const candidate = `thread/${index}`
          const replicas = replicasOfShard(
            shardOfKey(candidate, shardCountDefault),
            shardCountDefault,
            ids,
            3,
          )
          if (!replicas.includes('node-0')) key = candidate
        }
        const outcomes = new Map<string, { outcome: Outcome; atMs: number }>()
        sim.addNode('node-0', simFabricNode({ seeds: [], genesis: ['node-0'] }))
        sim.runFor(500)
        const startedMs = sim.now()
        for (const id of newcomers)
          sim.addNode(
            id,
            simFabricNode({
              seeds: ['node-0'],
              onStart(node: SimFabricNode) {
                node.store.submit(
                  key,
                  { kind: 'put', value: new Uint8Array([1]) },
                  { timeoutMs: 5000 },
                  (outcome) => outcomes.set(id, { outcome, atMs: sim.now() }),
                )
              },
            }),
          )
        sim.runUntil(() => outcomes.size === newcomers.length, 10_000)
        for (const id of newcomers) {
          const done = outcomes.get(id)
          expect(done?.outcome.ok, `${id}'s operation`).toBe(true)
          expect(done!.atMs - startedMs).toBeLessThan(3000)
        }
      } catch (error) {
        console.error(seedBanner(seed, file, name))
        throw error
      }
    })
  }
})
