/**
 * Placement of new threads: by capacity and load, never on a browser node, and by context group.
 */

import { describe, expect, test } from 'vitest'
import type { Capacity } from '../fabric/membership/membership.ts'
import { seededRandom } from '../fabric/platform.ts'
import { chooseNode, groupThreadsPerCoreMax } from '../fabric/runtime/placement.ts'
import type { PeerInfo } from '../fabric/runtime/services.ts'

function peer(id: string, kind: PeerInfo['kind'], cores: number, speedScore: number): PeerInfo {
  const capacity: Capacity = { cores, memoryBytes: 2 ** 30, speedScore }
  return { id, kind, capacity }
}

function counts(candidates: PeerInfo[], picks: number): Map<string, number> {
  const random = seededRandom(7)
  const chosen = new Map<string, number>()
  for (let index = 0; index < picks; index++) {
    const id = chooseNode({ candidates, load: new Map(), random })
    chosen.set(id, (chosen.get(id) ?? 0) + 1)
  }
  return chosen
}

describe('placement', () => {
  test('a node twice as fast gets about twice the threads', () => {
    const chosen = counts([peer('fast', 'server', 2, 2), peer('slow', 'server', 2, 1)], 3000)
    const ratio = (chosen.get('fast') ?? 0) / (chosen.get('slow') ?? 1)
    expect(ratio).toBeGreaterThan(1.7)
    expect(ratio).toBeLessThan(2.3)
  })

  test('a browser node is never chosen, however fast', () => {
    const chosen = counts([peer('tab', 'browser', 16, 10), peer('server', 'server', 1, 1)], 500)
    expect(chosen.get('tab')).toBeUndefined()
    expect(chosen.get('server')).toBe(500)
  })

  test('with only browser nodes live there is nowhere to place a thread', () => {
    expect(() =>
      chooseNode({ candidates: [peer('tab', 'browser', 4, 1)], load: new Map(), random: seededRandom(1) }),
    ).toThrow(/no live server node/)
  })

  describe('threads of a context group', () => {
    const cluster = ['a', 'b', 'c', 'd', 'e'].map((id) => peer(id, 'server', 2, 1))
    const room = 2 * groupThreadsPerCoreMax
    /** Places `count` threads of one group one after the other, as a node's runtime counts them. */
    function placeGroup(
      count: number,
      seed: number,
      ran: Map<string, number> = new Map(),
    ): Map<string, number> {
      const random = seededRandom(seed)
      const groupThreads = new Map(ran)
      for (let index = 0; index < count; index++) {
        const id = chooseNode({ candidates: cluster, load: new Map(), groupThreads, random })
        groupThreads.set(id, (groupThreads.get(id) ?? 0) + 1)
      }
      return groupThreads
    }

    test('fill the node that runs the group up to its room, then one more node', () => {
      for (let seed = 1; seed <= 50; seed++) {
        const placed = placeGroup(6, seed, new Map([['c', 1]]))
        expect(placed.get('c'), `seed ${seed}`).toBe(room)
        expect(
          [...placed.values()].filter((threads) => threads > 0),
          `seed ${seed}`,
        ).toHaveLength(2)
      }
    })

    test('go back to a node where all of the group’s threads ended, not to a random one', () => {
      for (let seed = 1; seed <= 50; seed++) {
        // `c` ran threads of the group that all ended: it has room for the group again.
        const placed = placeGroup(3, seed, new Map([['c', 0]]))
        expect(placed, `seed ${seed}`).toEqual(new Map([['c', 3]]))
      }
    })
  })
})
