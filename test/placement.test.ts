/**
 * Placement of new threads: by capacity and load, never on a browser node, and by context group.
 */

import { describe, expect, test } from 'vitest'
import type { Capacity } from '../fabric/membership/membership.ts'
import { seededRandom } from '../fabric/platform.ts'
import { chooseNode } from '../fabric/runtime/placement.ts'
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
})
