import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { SnapshotError } from '../host/errors.ts'
import { wasmPageBytes } from '../host/memory-layout.ts'
import { applyChain, type ContextSave, checkChain, decodeSave, encodeSave } from '../host/snapshot.ts'
import type { WorkerPool } from '../host/worker-pool.ts'
import { guestBytes } from './support/guests.ts'
import { createPool, load, runProgram } from './support/run.ts'

async function collectSaves(pool: WorkerPool, incrementalSaves: boolean): Promise<ContextSave[]> {
  const program = await load(guestBytes('test/fixtures/as/mutator.ts'))
  const decoded: Array<Promise<ContextSave>> = []
  const run = await runProgram(pool, program, ['40'], {
    incrementalSaves,
    onSave: (_threadId, save) => decoded.push(decodeSave(save.bytes)),
  })
  expect(run.exitCode).toBe(0)
  return Promise.all(decoded)
}

/** The chain that restores save `index`: its last full save and the deltas after it. */
function chainTo(saves: ContextSave[], index: number): ContextSave[] {
  let start = index
  while (saves[start]!.baseSequence !== null) start--
  return saves.slice(start, index + 1)
}

function memoryOf(chain: ContextSave[]): Uint8Array {
  const last = checkChain(chain)
  const memory = new Uint8Array(last.memoryPages * wasmPageBytes)
  applyChain(chain, memory)
  return memory
}

describe('context saves', () => {
  let pool: WorkerPool
  beforeAll(() => {
    pool = createPool(2)
  })
  afterAll(() => pool.close())

  test('incremental saves: base + deltas restore to exactly the memory a full save gives, at every save', async () => {
    const incremental = await collectSaves(pool, true)
    const full = await collectSaves(pool, false)
    expect(incremental.length).toBe(full.length)
    expect(incremental.length).toBe(40)
    expect(full.every((save) => save.baseSequence === null)).toBe(true)
    const deltas = incremental.filter((save) => save.baseSequence !== null)
    expect(deltas.length).toBeGreaterThan(20)
    for (const delta of deltas) expect(delta.pageIndexes.length).toBeLessThan(delta.memoryPages / 4)
    for (let index = 0; index < full.length; index++) {
      const fromDeltas = memoryOf(chainTo(incremental, index))
      const fromFull = memoryOf([full[index]!])
      expect(Buffer.compare(fromDeltas, fromFull)).toBe(0)
      expect(incremental[index]!.globals).toEqual(full[index]!.globals)
      expect(Buffer.compare(incremental[index]!.asyncifyData, full[index]!.asyncifyData)).toBe(0)
    }
  }, 60_000)

  test('a save survives encoding; a damaged, truncated or unknown-version save is refused with SnapshotError', async () => {
    const [save] = await collectSaves(pool, true)
    const encoded = await encodeSave(save!)
    const decoded = await decodeSave(encoded)
    expect(Buffer.compare(decoded.pageData, save!.pageData)).toBe(0)
    expect(decoded.callSequence).toBe(save!.callSequence)

    const damaged = encoded.slice()
    damaged[Math.floor(damaged.length / 2)]! ^= 0xff
    await expect(decodeSave(damaged)).rejects.toThrow(SnapshotError)
    await expect(decodeSave(damaged)).rejects.toThrow(/digest/)
    await expect(decodeSave(encoded.subarray(0, 100))).rejects.toThrow(SnapshotError)
    const futureVersion = encoded.slice()
    futureVersion[4] = 99
    await expect(decodeSave(futureVersion)).rejects.toThrow(/format version 99/)
    await expect(decodeSave(new Uint8Array([0xa1, 0x61, 0x78, 0x01]))).rejects.toThrow(
      /not a Fabric context save/,
    )
  }, 60_000)
})
