import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import {
  CpuBudgetExceededError,
  GuestTrapError,
  InvalidModuleError,
  MemoryLimitError,
  StackOverflowError,
} from '../host/errors.ts'
import { loadProgram } from '../host/program.ts'
import type { WorkerPool } from '../host/worker-pool.ts'
import { guestBytes } from './support/guests.ts'
import { createPool, load, runProgram } from './support/run.ts'

/** The smallest module with a memory export and a `main`: (module (memory (export "memory") 1) (func (export "main"))). */
const minimalModule = Uint8Array.from([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00, 0x03, 0x02, 0x01, 0x00,
  0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x11, 0x02, 0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x04,
  0x6d, 0x61, 0x69, 0x6e, 0x00, 0x00, 0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b,
])

describe('bad input never takes the host down', () => {
  let pool: WorkerPool
  beforeAll(() => {
    pool = createPool(2)
  })
  afterAll(() => pool.close())

  test('loadProgram accepts the minimal module and refuses malformed ones with InvalidModuleError', async () => {
    await expect(loadProgram(minimalModule)).resolves.toMatchObject({ mainEntry: 'main' })
    const refusals: Array<[Uint8Array, RegExp]> = [
      [new TextEncoder().encode('#!/bin/sh\necho not wasm\n'), /not a WebAssembly module/],
      [minimalModule.subarray(0, 30), /not a valid WebAssembly module/],
      [
        Uint8Array.from(minimalModule.map((byte, index) => (index === 40 ? 0x7f : byte))),
        /not a valid WebAssembly module|entry point/,
      ],
      [new Uint8Array(0), /not a WebAssembly module/],
    ]
    for (const [bytes, message] of refusals) {
      const error = await loadProgram(bytes).catch((caught: unknown) => caught)
      expect(error).toBeInstanceOf(InvalidModuleError)
      expect((error as Error).message).toMatch(message)
    }
  })

  test('a module that imports what Fabric does not provide is refused by name', async () => {
    // (module (import "env" "launch_missiles" (func)) (memory (export "memory") 1) (func (export "main")))
    const importing = Uint8Array.from([
      0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00, 0x02, 0x17, 0x01,
      0x03, 0x65, 0x6e, 0x76, 0x0f, 0x6c, 0x61, 0x75, 0x6e, 0x63, 0x68, 0x5f, 0x6d, 0x69, 0x73, 0x73, 0x69,
      0x6c, 0x65, 0x73, 0x00, 0x00, 0x03, 0x02, 0x01, 0x00, 0x05, 0x03, 0x01, 0x00, 0x01, 0x07, 0x11, 0x02,
      0x06, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x04, 0x6d, 0x61, 0x69, 0x6e, 0x00, 0x01, 0x0a,
      0x04, 0x01, 0x02, 0x00, 0x0b,
    ])
    await expect(loadProgram(importing)).rejects.toThrow(/env\.launch_missiles/)
  })

  const misbehaviours = [
    { what: 'trap', error: GuestTrapError, message: /divide by zero/, limits: {} },
    {
      what: 'loop',
      error: CpuBudgetExceededError,
      message: /CPU budget of 1000 ms/,
      limits: { cpuBudgetMs: 1000 },
    },
    {
      what: 'memory',
      error: MemoryLimitError,
      message: /limit is 512 pages/,
      limits: { memoryPagesMax: 512 },
    },
    { what: 'recursion', error: StackOverflowError, message: /call stack/, limits: {} },
  ]
  for (const { what, error, message, limits } of misbehaviours) {
    test(`a guest that does "${what}" ends with ${error.name}, and the host runs the next program fine`, async () => {
      const program = await load(guestBytes('test/fixtures/as/misbehave.ts'))
      const bad = await runProgram(pool, program, [what], limits)
      expect(bad.exitCode).not.toBe(0)
      expect(bad.errorName).toBe(error.name)
      expect(bad.error).toMatch(message)
      const good = await runProgram(pool, program, ['ok'])
      expect(good).toMatchObject({ exitCode: 0, error: null })
      expect(good.stdout.get(0)).toBe('fine\n')
    }, 30_000)
  }
})
