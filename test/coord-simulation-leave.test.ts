import { describe, expect, it } from 'vitest'
import { replicasOfShard, shardCountDefault, shardOfKey } from '../fabric/coord/shards.ts'
import type { Outcome } from '../fabric/coord/store.ts'
import { type SimFabricNode, simFabricNode } from '../fabric/sim/cluster.ts'
import { createSimulator, seedBanner } from '../fabric/sim/simulator.ts'

const file = 'test/coord-simulation-leave.test.ts'

describe('coordination store in the simulator: a node that leaves cleanly', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    const name = `hands every shard it replicates over before it goes, so its keys survive the crash of another of their replicas (seed ${seed})`
    it(name, () => {
      try {
        const sim = createSimulator({ seed, network: { lossRate: 0.01 } })
        const ids = ['node-0', 'node-1', 'node-2', 'node-3', 'node-4']
        const leaver = 'node-1'
        const victim = 'node-2'
        // Keys whose replicas include both the leaver and the node that crashes after it.
        const keys: string[] = []
        for (let index = 0; keys.length < 4; index++) {
          const key = `key/${index}`
          const replicas = replicasOfShard(shardOfKey(key, shardCountDefault), shardCountDefault, ids, 3)
          if (replicas.includes(leaver) && replicas.includes(victim)) keys.push(key)
        }
        const nodes = new Map<string, SimFabricNode>()
        for (const id of ids)
          sim.addNode(
            id,
            simFabricNode({
              seeds: ['node-0'],
              genesis: id === 'node-0' ? ['node-0'] : undefined,
              onStart: (node) => nodes.set(id, node),
            }),
          )
        const run = (on: string, key: string, value: number): Outcome | undefined => {
          let outcome: Outcome | undefined
          nodes
            .get(on)!
            .store.submit(
              key,
              { kind: 'put', value: new Uint8Array([value]) },
              { timeoutMs: 3000 },
              (result) => {
                outcome = result
              },
            )
          sim.runUntil(() => outcome !== undefined, 4000)
          return outcome
        }
        // Let the shards settle on their replicas, then write every key.
        sim.runFor(5000)
        for (const key of keys) {
          const outcome = run('node-0', key, 1)
          if (!outcome?.ok) console.log(key, outcome && !outcome.ok ? outcome.error.message : 'none')
          expect(outcome?.ok, `${key} before`).toBe(true)
        }

        const leaving = nodes.get(leaver)!
        leaving.membership.leave()
        leaving.store.leave()
        const startedMs = sim.now()
        expect(sim.runUntil(() => leaving.store.shardsToHandOver() === 0, 3000)).toBe(true)
        const handOverMs = sim.now() - startedMs
        sim.crash(leaver)
        sim.crash(victim)
        for (const key of keys) {
          const outcome = run('node-3', key, 2)
          expect(outcome?.ok, `${key} after`).toBe(true)
          if (outcome?.ok) expect(outcome.result.version, key).toBe(2)
        }
        expect(handOverMs).toBeLessThan(1000)
      } catch (error) {
        console.error(seedBanner(seed, file, name))
        throw error
      }
    })
  }
})
