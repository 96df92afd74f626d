/**
 * C guests (guest-sdk/c/fabric.h): the primes example gives the same output as its native build,
 * also when a thread's worker is killed at a random moment, and thread entries have working libc.
 *
 * A failing kill run prints SEED=<n>; rerun that one with
 *   FABRIC_SEED=<n> npx vitest run test/c-guest.test.ts
 */

import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { build } from '../fabric/cli/build.ts'
import { loadProgram, type Program } from '../host/program.ts'
import { nodeWorkerFactory } from '../host/worker-node.ts'
import { WorkerPool } from '../host/worker-pool.ts'
import { type KillPlan, runProgram, seededRandom } from './support/run.ts'

const primesSource = 'examples/c-primes/primes.c'
const threadsSource = 'test/fixtures/c/threads.c'
/** Bound, threads, block: about a quarter of a second of work, with a save after every block. */
const primesArguments = ['600000', '3', '4000']
const killSeedCount = 20
/** Minimum time between automatic saves; the example also saves at every block. */
const saveIntervalMs = 20

function run(pool: WorkerPool, program: Program, args: string[], kill?: KillPlan) {
  return runProgram(pool, program, args, { seed: 1, saveIntervalMs, kill })
}

describe('C guests', () => {
  let directory: string
  let pool: WorkerPool
  let primes: Program
  let nativeOutput: string

  beforeAll(async () => {
    directory = mkdtempSync(join(tmpdir(), 'fabric-c-guest-'))
    const wasm = build({ source: primesSource, output: join(directory, 'primes.wasm') })
    primes = await loadProgram(new Uint8Array(readFileSync(wasm.output)))
    const native = join(directory, 'primes-native')
    const compiled = spawnSync(
      'gcc',
      ['-O2', '-Wall', '-Werror', '-Iguest-sdk/c', primesSource, '-o', native],
      {
        encoding: 'utf8',
      },
    )
    expect(compiled.status, compiled.stderr).toBe(0)
    const ran = spawnSync(native, primesArguments, { encoding: 'utf8' })
    expect(ran.status, ran.stderr).toBe(0)
    nativeOutput = ran.stdout
    pool = new WorkerPool({ createWorker: nodeWorkerFactory, runningMax: 2 })
  })

  afterAll(() => {
    pool?.close()
    if (directory !== undefined) rmSync(directory, { recursive: true, force: true })
  })

  it('primes example: output equals the native build of the same source', async () => {
    const result = await run(pool, primes, primesArguments)
    expect(result.error).toBeNull()
    expect(result.exitCode).toBe(0)
    expect(result.stderr).toBe('')
    expect(nativeOutput).toMatch(/^total: \d+ primes below 600000\n$/m)
    expect(result.stdout.get(0)).toBe(nativeOutput)
  })

  it(`primes example: a worker killed at a random moment changes nothing (${killSeedCount} seeds)`, async () => {
    // The first run may also start workers; the second shows how long the program itself runs.
    await run(pool, primes, primesArguments)
    const reference = await run(pool, primes, primesArguments)
    expect(reference.stdout.get(0)).toBe(nativeOutput)
    const only = process.env.FABRIC_SEED
    const seeds =
      only === undefined ? Array.from({ length: killSeedCount }, (_, index) => index + 1) : [Number(only)]
    let kills = 0
    let killsWithSave = 0
    for (const seed of seeds) {
      const random = seededRandom(seed)
      const afterSaves = Math.floor(random() * reference.saves * 0.8)
      const delayMs = random() * 10
      const result = await run(pool, primes, primesArguments, {
        triggers: [{ afterSaves, delayMs }],
        random,
      })
      const where = `SEED=${seed} (${result.kills} kill, ${delayMs.toFixed(0)} ms after save ${afterSaves}); rerun: FABRIC_SEED=${seed} npx vitest run test/c-guest.test.ts`
      expect(result.error, where).toBeNull()
      expect(result.exitCode, where).toBe(0)
      expect(result.stdout.get(0), where).toBe(nativeOutput)
      kills += result.kills
      killsWithSave += result.killsWithSave
    }
    // Most moments fall inside the run; a test that never kills would prove nothing.
    if (only === undefined) expect(kills).toBeGreaterThanOrEqual(killSeedCount / 2)
    console.log(
      `c-guest: ${kills} of ${seeds.length} runs killed a worker (${killsWithSave} restored from a save); undisturbed run ${reference.durationMs.toFixed(0)} ms`,
    )
  })

  it('thread entries: constructors, malloc and stdio work, and unflushed output appears', async () => {
    const wasm = build({ source: threadsSource, output: join(directory, 'threads.wasm') })
    const program = await loadProgram(new Uint8Array(readFileSync(wasm.output)))
    const result = await run(pool, program, ['one', 'two words'])
    expect(result.error).toBeNull()
    expect(result.exitCode).toBe(3)
    expect(result.stdout.get(0)).toBe(
      [
        'main: 3 arguments, last "two words"',
        'joined thread 1: worker 1 is done',
        'joined thread 2: worker 2 is done',
        'nested: 25 bytes (first inne): inner is done, via nested',
        'spawn of a missing entry: -2',
        'join of a missing thread: -1',
        '',
      ].join('\n'),
    )
    expect(result.stdout.get(1)).toBe('hello from worker 1 (thread 1)\nunterminated line of thread 1')
    expect(result.stdout.get(2)).toBe('hello from worker 2 (thread 2)\nunterminated line of thread 2')
    expect(result.stdout.has(3)).toBe(false)
    expect(result.stdout.get(4)).toBe('hello from inner (thread 4)\nunterminated line of thread 4')
  })
})
