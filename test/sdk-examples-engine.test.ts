/**
 * The coordination examples on the real sync engine (fabric/runtime/primitives over an in-memory
 * store, as `fabric run --local` serves them): each prints its exact expected lines, and prints
 * the same lines when a thread's worker is killed at a random moment and the thread resumes from
 * its last context save (its calls replayed: each applied once). Small sizes keep it quick; the
 * SIGKILL tests of whole nodes are in test/primitives-*.test.ts.
 *
 * A failing kill run prints SEED=<n>; rerun it with
 *   FABRIC_SEED=<n> npx vitest run test/sdk-examples-engine.test.ts
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { localSyncOptions } from '../fabric/runtime/primitives/local.ts'
import type { ProcessOptions } from '../host/local-process.ts'
import { loadProgram, type Program } from '../host/program.ts'
import type { WorkerPool } from '../host/worker-pool.ts'
import { guestBytes } from './support/guests.ts'
import { createPool, type KillPlan, runProgram, seededRandom } from './support/run.ts'

const killSeedCount = process.env.FABRIC_SOAK === '1' ? 20 : 2
/** Minimum time between automatic saves: often, so that kills land between saves with calls to replay. */
const saveIntervalMs = 20

interface Example {
  name: string
  source: string
  args: string[]
  output: string
}

const examples: Example[] = [
  {
    name: 'producer-consumer',
    source: 'examples/producer-consumer/producer-consumer.ts',
    args: ['3', '3', '60', '4'],
    output: [
      'producers: 3 x 60 items, consumers: 3, queue capacity: 4',
      'consumed 180 items of 180, sum 16290 (expected 16290)',
      'missing: 0, consumed more than once: 0, not produced: 0',
      'every item consumed exactly once',
      '',
    ].join('\n'),
  },
  {
    name: 'matmul-barrier',
    source: 'examples/matmul-barrier/matmul-barrier.ts',
    args: ['24', '8', '3'],
    output: [
      'A is 24 x 24, 8 rounds on 3 threads: A^9 modulo 1000000007',
      `checksum: ${matrixPowerChecksum(24, 8)} (computed alone: ${matrixPowerChecksum(24, 8)})`,
      'the product is exact',
      '',
    ].join('\n'),
  },
  {
    name: 'bank',
    source: 'examples/bank/bank.ts',
    args: ['5', '4', '25'],
    output: [
      'bank: 5 accounts of 1000000, 4 threads x 25 transfers',
      'total: 5000000 (at the start: 5000000)',
      'transfers applied: 100 of 100',
      `balances checksum: ${bankChecksum(5, 4, 25)}`,
      'the books balance',
      '',
    ].join('\n'),
  },
  ...['add', 'cas', 'lock'].map((how) => ({
    name: `counter (${how})`,
    source: 'examples/counter/counter.c',
    args: ['10', '300', how],
    output: `10 threads add 300 in all (${how})\ncounter: 300 (expected 300)\n`,
  })),
]

/** The matmul example's checksum of A^(rounds + 1) modulo its prime, computed here on its own. */
function matrixPowerChecksum(size: number, rounds: number): bigint {
  const modulus = 1_000_000_007n
  const a = Array.from({ length: size * size }, (_, index) => {
    const row = Math.floor(index / size)
    const column = index % size
    return BigInt(((row * 31 + column * 17 + row * column) % 97) + 1)
  })
  let m = a
  for (let round = 0; round < rounds; round++) {
    const next = new Array<bigint>(size * size).fill(0n)
    for (let row = 0; row < size; row++) {
      for (let column = 0; column < size; column++) {
        let sum = 0n
        for (let k = 0; k < size; k++) sum += a[row * size + k]! * m[k * size + column]!
        next[row * size + column] = sum % modulus
      }
    }
    m = next
  }
  return m.reduce((sum, entry, index) => (sum + entry * BigInt((index % 1000) + 1)) % modulus, 0n)
}

/** The bank example's final balances checksum: its tellers' seeded transfers replayed here. */
function bankChecksum(accounts: number, threads: number, transfers: number): bigint {
  const mask = (1n << 64n) - 1n
  const balances = new Array<bigint>(accounts).fill(1_000_000n)
  for (let index = 0; index < threads; index++) {
    let state = 0x9e3779b97f4a7c15n ^ ((BigInt(index + 1) * 0xbf58476d1ce4e5b9n) & mask)
    for (let done = 0; done < transfers; done++) {
      state ^= (state << 13n) & mask
      state ^= state >> 7n
      state ^= (state << 17n) & mask
      const from = Number(state % BigInt(accounts))
      const to = (from + 1 + Number((state >> 20n) % BigInt(accounts - 1))) % accounts
      const amount = 1n + ((state >> 40n) % 100n)
      balances[from]! -= amount
      balances[to]! += amount
    }
  }
  return balances.reduce((sum, balance, index) => sum + balance * BigInt(index + 1), 0n)
}

/** Serves `sync` with a fresh engine over an in-memory store, as `fabric run --local` does. */
function engineOptions(): Partial<ProcessOptions> {
  return localSyncOptions('test')
}

describe('coordination examples on the sync engine', () => {
  let pool: WorkerPool
  const programs = new Map<string, Program>()

  beforeAll(async () => {
    pool = createPool(2)
    for (const example of examples) {
      if (programs.has(example.source)) continue
      programs.set(example.source, await loadProgram(guestBytes(example.source)))
    }
  })

  afterAll(() => pool?.close())

  let runs = 0
  let killedRuns = 0

  function run(example: Example, kill?: KillPlan) {
    return runProgram(pool, programs.get(example.source)!, example.args, {
      seed: 1,
      saveIntervalMs,
      kill,
      ...engineOptions(),
    })
  }

  it.each(examples)('$name prints its exact lines, also with a worker killed mid-run', async (example) => {
    // The first run also starts workers; the second shows how long the program itself runs.
    const warmUp = await run(example)
    const reference = await run(example)
    for (const undisturbed of [warmUp, reference]) {
      expect(undisturbed.error).toBeNull()
      expect(undisturbed.exitCode).toBe(0)
      expect(undisturbed.stdout.get(0)).toBe(example.output)
    }
    const only = process.env.FABRIC_SEED
    const seeds =
      only === undefined ? Array.from({ length: killSeedCount }, (_, index) => index + 1) : [Number(only)]
    let kills = 0
    for (const seed of seeds) {
      const random = seededRandom(seed)
      // After the first save (so the thread has one to resume from), within the first 60% of an
      // undisturbed run's time.
      const afterSaves = 1
      const delayMs = random() * reference.durationMs * 0.6
      const result = await run(example, { triggers: [{ afterSaves, delayMs }], random })
      const where = `SEED=${seed} (${result.kills} kill, ${delayMs.toFixed(0)} ms after save ${afterSaves}); rerun: FABRIC_SEED=${seed} npx vitest run test/sdk-examples-engine.test.ts -t '${example.name}'`
      expect(result.error, where).toBeNull()
      expect({ exitCode: result.exitCode, stderr: result.stderr }, where).toEqual({ exitCode: 0, stderr: '' })
      expect(result.stdout.get(0), where).toBe(example.output)
      kills += result.kills
      killedRuns += result.kills > 0 ? 1 : 0
      runs++
    }
    console.log(
      `${example.name}: ${kills} kills in ${seeds.length} runs; undisturbed run ${reference.durationMs.toFixed(0)} ms, ${reference.saves} saves`,
    )
  })

  it('most kill runs did kill a worker (a test that never kills would prove nothing)', () => {
    if (process.env.FABRIC_SEED !== undefined) return
    expect(killedRuns).toBeGreaterThanOrEqual(runs / 2)
  })
})
