import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import type { Program } from '../host/program.ts'
import type { WorkerPool } from '../host/worker-pool.ts'
import { guestBytes } from './support/guests.ts'
import { createPool, load, type RunOutput, runProgram, seededRandom } from './support/run.ts'

const seedCount = 20

function summary(run: RunOutput) {
  return { exitCode: run.exitCode, error: run.error, stdout: Object.fromEntries(run.stdout) }
}

describe('context save and restore: a thread whose worker dies continues from its last save', () => {
  let pool: WorkerPool
  beforeAll(() => {
    pool = createPool(2)
  })
  afterAll(() => pool.close())

  const cases = [
    { name: 'examples/primes', source: 'examples/primes/primes.ts', args: ['1500000', '50000'] },
    { name: 'examples/pi', source: 'examples/pi/pi.ts', args: ['6', '3000000'] },
  ]

  for (const example of cases) {
    test(`${example.name}: for ${seedCount} seeds, killing a worker at a random moment leaves the output of an undisturbed run`, async () => {
      const program: Program = await load(guestBytes(example.source))
      const reference = await runProgram(pool, program, example.args)
      expect(reference.exitCode).toBe(0)
      expect(reference.error).toBeNull()
      let killsWithSave = 0
      let kills = 0
      for (let seed = 1; seed <= seedCount; seed++) {
        const random = seededRandom(seed)
        const killCount = 1 + Math.floor(random() * 3)
        const triggers = Array.from({ length: killCount }, () => ({
          afterSaves: Math.floor(random() * reference.saves * 0.8),
          delayMs: random() * 20,
        }))
        const run = await runProgram(pool, program, example.args, { kill: { triggers, random } })
        kills += run.kills
        killsWithSave += run.killsWithSave
        if (JSON.stringify(summary(run)) !== JSON.stringify(summary(reference))) {
          throw new Error(
            `SEED=${seed}: output differs after ${run.kills} kills (rerun: npx vitest run test/host-restore.test.ts)`,
          )
        }
      }
      expect(kills).toBeGreaterThanOrEqual(seedCount)
      // Most kills land after the first save, so those restarts are real restores.
      expect(killsWithSave).toBeGreaterThanOrEqual(seedCount / 2)
    }, 240_000)
  }
})

describe('context save and restore: what the host writes into guest memory', () => {
  let pool: WorkerPool
  beforeAll(() => {
    pool = createPool(2)
  })
  afterAll(() => pool.close())

  test('bytes the host wrote after a save (random_get into an untouched page) are in the next incremental save', async () => {
    const program = await load(guestBytes('test/fixtures/as/host-writes.ts'))
    const args = ['400000000']
    const onlyCheckpoints = { saveIntervalMs: 3_600_000 }
    const reference = await runProgram(pool, program, args, onlyCheckpoints)
    expect(reference.exitCode).toBe(0)
    expect(reference.saves).toBe(2)
    // Killed while it computes after its second save: it resumes from that save.
    const run = await runProgram(pool, program, args, {
      ...onlyCheckpoints,
      kill: { triggers: [{ afterSaves: 2, delayMs: 50 }], random: seededRandom(1) },
    })
    expect(run.killsWithSave).toBe(1)
    expect(summary(run)).toEqual(summary(reference))
  })

  test('a value a blocking call returned, stored after the thread resumed from a save in that call, is in the next incremental save', async () => {
    // main stores each spawn's handle after its save in that spawn (saves at every blocking call),
    // saves again at a checkpoint, and is killed while it waits in its first join. Restored from
    // the checkpoint's save, it must read the last handle it stored (it read 0 when the page was
    // marked before the call and the save in the call cleared the mark).
    const program = await load(guestBytes('test/fixtures/c/store-call-result.c'))
    const args = ['60000000']
    const everyCall = { saveIntervalMs: 0 }
    const reference = await runProgram(pool, program, args, everyCall)
    expect(reference.exitCode).toBe(0)
    expect(reference.stdout.get(0)).toBe(
      'thread 0: handle 1, joined 0\nthread 1: handle 2, joined 0\nthread 2: handle 3, joined 0\n',
    )
    // Saves of main: three spawns, the checkpoint, the first join (the children make no blocking call).
    const run = await runProgram(pool, program, args, {
      ...everyCall,
      kill: { triggers: [{ afterSaves: 5, delayMs: 0, threadId: 0 }], random: seededRandom(1) },
    })
    expect(run.killsWithSave).toBe(1)
    expect(summary(run)).toEqual(summary(reference))
  })
})
