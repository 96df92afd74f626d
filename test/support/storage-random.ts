/** Seeded randomness for storage tests: one seed reproduces a run. */

import type { Random } from '../../storage/platform-types.ts'

export interface TestRandom extends Random {
  /** An integer in [0, bound). */
  below(bound: number): number
  pick<T>(items: readonly T[]): T
  bytes(length: number): Uint8Array
  chance(probability: number): boolean
}

/** mulberry32: small, fast, and good enough to drive test choices. */
export function testRandom(seed: number): TestRandom {
  let state = seed >>> 0 || 0x9e3779b9
  function next(): number {
    state = (state + 0x6d2b79f5) | 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  const random: TestRandom = {
    next,
    below: (bound) => Math.floor(next() * bound),
    pick: (items) => items[Math.floor(next() * items.length)]!,
    bytes(length) {
      const bytes = new Uint8Array(length)
      for (let i = 0; i < length; i += 4) {
        const word = (next() * 4294967296) >>> 0
        for (let j = 0; j < 4 && i + j < length; j++) bytes[i + j] = (word >>> (8 * j)) & 0xff
      }
      return bytes
    },
    chance: (probability) => next() < probability,
  }
  return random
}

/** The line a failing seeded test prints: the seed and the command that reruns exactly that run. */
export function seedBanner(seed: number, testFile: string, testName: string): string {
  return `SEED=${seed} — rerun: SEED=${seed} npx vitest run ${testFile} -t "${testName}"`
}

/** Seeds to run: SEED=n runs only n; FABRIC_SOAK=1 runs `soakCount` seeds instead of `count`. */
export function seedsToRun(count: number, soakCount: number): number[] {
  if (process.env.SEED !== undefined) return [Number(process.env.SEED)]
  const total = process.env.FABRIC_SOAK === '1' ? soakCount : count
  return Array.from({ length: total }, (_, index) => index + 1)
}
