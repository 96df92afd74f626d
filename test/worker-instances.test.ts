// Workers reuse a module's instance for the next thread only when that thread cannot tell.
import { describe, expect, test } from 'vitest'
import { instrument } from '../host/instrument.ts'
import { guestBytes } from './support/guests.ts'
import { createPool, load, runProgram } from './support/run.ts'

describe('instances reused by workers', () => {
  test('each thread of a program starts with fresh globals, memory and memory size, also after one grew its memory', async () => {
    const pool = createPool(1)
    try {
      const program = await load(guestBytes('test/fixtures/as/fresh-state.ts'))
      expect(program.instanceReusable).toBe(true)
      const run = await runProgram(pool, program, ['fresh-state'])
      expect(run.exitCode).toBe(0)
      const lines = run.stdout.get(0)!.trim().split('\n')
      const pages = Number(lines[0]!.split(',')[2])
      expect(lines).toEqual([
        `bump 1,1,${pages}`,
        `bump 1,1,${pages}`,
        `grow 1,1,${pages + 1}`,
        `bump 1,1,${pages}`,
        `bump 1,1,${pages}`,
      ])
    } finally {
      pool.close()
    }
  }, 60_000)

  test('a module that uses a passive data segment is never reused (table changes need reference types, which are refused)', async () => {
    const binaryen = (await import('binaryen')).default
    const build = (body: string) => {
      const module = binaryen.parseText(`(module
        (memory (export "memory") 1)
        (data $segment "x")
        (func (export "main") (result i32) ${body} (i32.const 0)))`)
      module.setFeatures(binaryen.Features.All)
      const bytes = module.emitBinary()
      module.dispose()
      return bytes
    }
    expect((await instrument(build('(nop)'))).instanceReusable).toBe(true)
    expect((await instrument(build('(data.drop $segment)'))).instanceReusable).toBe(false)
    expect(
      (await instrument(build('(memory.init $segment (i32.const 0) (i32.const 0) (i32.const 1))')))
        .instanceReusable,
    ).toBe(false)
  }, 60_000)
})
