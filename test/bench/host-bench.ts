/**
 * Host figures for `npm run bench`: instrumentation overhead on CPU-bound guests, context save and
 * restore costs. Each figure is measured next to its baseline in the same run.
 */

import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { instrument } from '../../host/instrument.ts'
import { wasmPageBytes } from '../../host/memory-layout.ts'
import { applyChain, checkChain, decodeSave, type EncodedSave } from '../../host/snapshot.ts'
import { guestBytes, repositoryRoot } from '../support/guests.ts'
import { createPool, load, runProgram } from '../support/run.ts'

export interface BenchRow {
  name: string
  value: string
  unit: string
  note: string
}

function median(values: number[]): number {
  const sorted = [...values].sort((left, right) => left - right)
  return sorted[Math.floor(sorted.length / 2)]!
}

/** Runs a guest export directly in this thread, with stub imports (the loop never blocks for real). */
async function timeExport(
  bytes: Uint8Array,
  entry: string,
  argv: string[],
  threadArg: string,
): Promise<number> {
  const encoder = new TextEncoder()
  const arg = encoder.encode(threadArg)
  let instance: WebAssembly.Instance
  const memory = () => instance.exports.memory as WebAssembly.Memory
  const view = () => new DataView(memory().buffer)
  const imports = {
    fabric: {
      spawn: () => 0,
      join: () => 0,
      checkpoint: () => undefined,
      yield: () => undefined,
      arg_length: () => arg.length,
      arg_read: (pointer: number) => new Uint8Array(memory().buffer).set(arg, pointer),
      set_result: () => undefined,
      thread_id: () => 0,
    },
    wasi_snapshot_preview1: {
      args_sizes_get: (count: number, size: number) => {
        view().setUint32(count, argv.length, true)
        view().setUint32(
          size,
          argv.reduce((sum, value) => sum + value.length + 1, 0),
          true,
        )
        return 0
      },
      args_get: (pointers: number, buffer: number) => {
        let cursor = buffer
        argv.forEach((value, index) => {
          view().setUint32(pointers + index * 4, cursor, true)
          const bytes = encoder.encode(`${value}\0`)
          new Uint8Array(memory().buffer).set(bytes, cursor)
          cursor += bytes.length
        })
        return 0
      },
      fd_write: (_fd: number, iovs: number, _count: number, written: number) => {
        view().setUint32(written, view().getUint32(iovs + 4, true), true)
        return 0
      },
      proc_exit: () => undefined,
    },
    env: { abort: () => undefined, seed: () => 0.5, trace: () => undefined },
  }
  const module = await WebAssembly.compile(bytes as Uint8Array<ArrayBuffer>)
  instance = await WebAssembly.instantiate(module, imports as unknown as WebAssembly.Imports)
  const started = performance.now()
  ;(instance.exports[entry] as () => void)()
  return performance.now() - started
}

async function instrumentationOverhead(rows: BenchRow[]): Promise<void> {
  const guests = [
    {
      name: 'pi (xorshift sampling loop)',
      source: 'examples/pi/pi.ts',
      entry: 'sample',
      argv: [],
      arg: '1 20000000',
    },
    {
      name: 'primes (trial division)',
      source: 'examples/primes/primes.ts',
      entry: 'main',
      argv: ['p', '3000000', '100000'],
      arg: '',
    },
  ]
  for (const guest of guests) {
    const plain = guestBytes(guest.source)
    const instrumented = (await instrument(plain)).bytes
    const plainTimes: number[] = []
    const instrumentedTimes: number[] = []
    for (let round = 0; round < 7; round++) {
      plainTimes.push(await timeExport(plain, guest.entry, guest.argv, guest.arg))
      instrumentedTimes.push(await timeExport(instrumented, guest.entry, guest.argv, guest.arg))
    }
    const ratio = median(instrumentedTimes) / median(plainTimes)
    rows.push({
      name: `CPU-bound guest, instrumented / plain: ${guest.name}`,
      value: ratio.toFixed(3),
      unit: 'x time',
      note: `median of 7: ${median(instrumentedTimes).toFixed(1)} ms vs ${median(plainTimes).toFixed(1)} ms (goal <= 1.15x)`,
    })
  }
}

async function saveCosts(rows: BenchRow[]): Promise<void> {
  const pool = createPool(1)
  const program = await load(guestBytes('test/fixtures/as/dirty-pages.ts'))
  const pages = 1024 // 64 MiB
  const dirtyPages = 10 // 1%
  const saves: Array<{ save: EncodedSave; costMs: number }> = []
  const run = await runProgram(pool, program, [String(pages), String(dirtyPages), '30'], {
    onSave: (_threadId, save, costMs) => saves.push({ save, costMs }),
  })
  if (run.exitCode !== 0) throw new Error(`dirty-pages guest failed: ${run.error}`)
  const full = saves.filter((entry) => entry.save.summary.baseSequence === null)
  const deltas = saves.filter((entry) => entry.save.summary.baseSequence !== null)
  const mebibytes = (pages * wasmPageBytes) / 2 ** 20

  // Baseline: copying the same 64 MiB once with a plain typed-array copy, in this thread.
  const source = new Uint8Array(pages * wasmPageBytes).fill(3)
  const copyTimes: number[] = []
  for (let round = 0; round < 5; round++) {
    const started = performance.now()
    source.slice()
    copyTimes.push(performance.now() - started)
  }
  const copyMs = median(copyTimes)
  const fullMs = median(full.map((entry) => entry.costMs))
  rows.push({
    name: 'Full save (capture + CBOR + SHA-256, in the worker), per MiB',
    value: (fullMs / mebibytes).toFixed(3),
    unit: 'ms/MiB',
    note: `${fullMs.toFixed(1)} ms for 64 MiB; a plain 64 MiB copy takes ${copyMs.toFixed(1)} ms (${(fullMs / copyMs).toFixed(2)}x)`,
  })
  const deltaMs = median(deltas.map((entry) => entry.costMs))
  rows.push({
    name: 'Incremental save, 64 MiB memory with 1% of pages dirty',
    value: deltaMs.toFixed(3),
    unit: 'ms',
    note: `median of ${deltas.length}; ${median(deltas.map((entry) => entry.save.summary.pageCount))} pages, ${(median(deltas.map((entry) => entry.save.bytes.length)) / 1024).toFixed(0)} KiB encoded (goal <= 2 ms)`,
  })

  const chainStart = saves.findLastIndex((entry) => entry.save.summary.baseSequence === null)
  const chain = saves.slice(chainStart).map((entry) => entry.save.bytes)
  const restoreTimes: number[] = []
  for (let round = 0; round < 5; round++) {
    const started = performance.now()
    const decoded = await Promise.all(chain.map((bytes) => decodeSave(bytes)))
    const last = checkChain(decoded)
    applyChain(decoded, new Uint8Array(last.memoryPages * wasmPageBytes))
    restoreTimes.push(performance.now() - started)
  }
  rows.push({
    name: 'Restore: verify digests + decode + apply a chain into 64 MiB',
    value: median(restoreTimes).toFixed(1),
    unit: 'ms',
    note: `full save + ${chain.length - 1} deltas; ${(median(restoreTimes) / copyMs).toFixed(2)}x a plain 64 MiB copy`,
  })
  pool.close()
}

async function cVersusNative(rows: BenchRow[]): Promise<void> {
  const source = join(repositoryRoot, 'examples/c-primes/primes.c')
  const directory = mkdtempSync(join(tmpdir(), 'fabric-bench-'))
  const native = join(directory, 'primes-native')
  const compiled = spawnSync('gcc', ['-O2', '-I', join(repositoryRoot, 'guest-sdk/c'), source, '-o', native])
  if (compiled.status !== 0) {
    rows.push({
      name: 'C example, WebAssembly under Fabric / native',
      value: 'n/a',
      unit: '',
      note: 'gcc not available',
    })
    return
  }
  const args = ['6000000', '1', '100000']
  const nativeTimes: number[] = []
  let nativeOutput = ''
  for (let round = 0; round < 5; round++) {
    const started = performance.now()
    nativeOutput = execFileSync(native, args, { encoding: 'utf8' })
    nativeTimes.push(performance.now() - started)
  }
  const pool = createPool(1)
  const program = await load(guestBytes('examples/c-primes/primes.c'))
  const fabricTimes: number[] = []
  let fabricOutput = ''
  for (let round = 0; round < 5; round++) {
    const run = await runProgram(pool, program, args, { saveIntervalMs: 1000 })
    fabricOutput = run.stdout.get(0) ?? ''
    fabricTimes.push(run.durationMs)
  }
  pool.close()
  if (!fabricOutput.includes(nativeOutput.trim().split('\n').at(-1)!))
    throw new Error('C example: outputs differ')
  rows.push({
    name: 'C example (primes, 1 thread), WebAssembly under Fabric / native gcc -O2',
    value: (median(fabricTimes) / median(nativeTimes)).toFixed(2),
    unit: 'x time',
    note: `median of 5 whole runs: ${median(fabricTimes).toFixed(0)} ms vs ${median(nativeTimes).toFixed(0)} ms (Fabric includes worker start and saves)`,
  })
}

export async function hostBench(): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  await instrumentationOverhead(rows)
  await saveCosts(rows)
  await cVersusNative(rows)
  return rows
}
