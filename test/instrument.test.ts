import { mkdtempSync, readdirSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { instrumentedNames } from '../host/abi.ts'
import { instrument } from '../host/instrument.ts'
import { diskInstrumentCache } from '../host/instrument-cache-node.ts'
import { hostGlobalMemoryPagesMax } from '../host/memory-layout.ts'
import { guestBytes } from './support/guests.ts'

describe('instrumentation', () => {
  test('exports every mutable global, the dirty-page map, the Asyncify memory and the memory limit', async () => {
    const result = await instrument(guestBytes('examples/primes/primes.ts'))
    const module = await WebAssembly.compile(result.bytes as Uint8Array<ArrayBuffer>)
    const exports = new Map(WebAssembly.Module.exports(module).map((entry) => [entry.name, entry.kind]))
    expect(result.globalCount).toBeGreaterThan(0)
    for (let index = 0; index < result.globalCount; index++) {
      expect(exports.get(instrumentedNames.globalPrefix + index)).toBe('global')
    }
    expect(exports.get(instrumentedNames.dirtyMemory)).toBe('memory')
    expect(exports.get(instrumentedNames.asyncifyMemory)).toBe('memory')
    expect(exports.get(hostGlobalMemoryPagesMax)).toBe('global')
    expect(exports.get('asyncify_start_unwind')).toBe('function')
    expect(result.mainEntry).toBe('main')
  })

  test('results are cached by content hash, in memory and on disk', async () => {
    const bytes = guestBytes('examples/pi/pi.ts')
    const directory = mkdtempSync(join(tmpdir(), 'fabric-instrument-'))
    const cache = diskInstrumentCache(directory)
    const first = await instrument(bytes, { cache })
    expect(await instrument(bytes.slice(), { cache })).toBe(first)
    const fromDisk = await cache.read(first.moduleDigest)
    expect(fromDisk).toBeDefined()
    expect(Buffer.compare(fromDisk!.bytes, first.bytes)).toBe(0)
    expect(readdirSync(directory).filter((name) => name.endsWith('.wasm'))).toHaveLength(1)
  })
})
