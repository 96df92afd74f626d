/**
 * The coordination examples build with `fabric build` into guests that import `fabric.sync`, and
 * the C header also builds natively (gcc -Wall -Wextra -Werror), where the counter example gives
 * the same count by each of its three ways (add, compare-and-swap, lock with a fenced variable).
 */

import { spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { build } from '../fabric/cli/build.ts'
import { abiVersion, importModuleFabric } from '../host/abi.ts'
import { abiSectionName } from '../host/program.ts'
import { guestBytes, repositoryRoot } from './support/guests.ts'

const examples = [
  'examples/producer-consumer/producer-consumer.ts',
  'examples/matmul-barrier/matmul-barrier.ts',
  'examples/bank/bank.ts',
  'examples/counter/counter.c',
]

describe('coordination examples', () => {
  let directory: string

  beforeAll(() => {
    directory = mkdtempSync(join(tmpdir(), 'fabric-sdk-examples-'))
  })

  afterAll(() => {
    if (directory !== undefined) rmSync(directory, { recursive: true, force: true })
  })

  it.each(examples)('%s builds into a guest that imports fabric.sync', (source) => {
    // AssemblyScript guests go through the shared test cache (which runs `fabric build` once).
    const output = join(directory, `${source.replaceAll('/', '-')}.wasm`)
    const bytes = source.endsWith('.ts')
      ? guestBytes(source)
      : readFileSync(build({ source: join(repositoryRoot, source), output }).output)
    const module = new WebAssembly.Module(new Uint8Array(bytes))
    const imports = WebAssembly.Module.imports(module).map((entry) => `${entry.module}.${entry.name}`)
    expect(imports).toContain(`${importModuleFabric}.sync`)
    expect(imports).toContain(`${importModuleFabric}.spawn`)
    const sections = WebAssembly.Module.customSections(module, abiSectionName)
    expect(sections.map((section) => new TextDecoder().decode(section))).toEqual([String(abiVersion)])
  })

  it('counter (C) natively: 50 threads add 10,000 in all, by add, compare-and-swap and lock', () => {
    const native = join(directory, 'counter-native')
    const compiled = spawnSync(
      'gcc',
      ['-O2', '-Wall', '-Wextra', '-Werror', '-Iguest-sdk/c', 'examples/counter/counter.c', '-o', native],
      { encoding: 'utf8', cwd: repositoryRoot },
    )
    expect(compiled.status, compiled.stderr).toBe(0)
    for (const how of ['add', 'cas', 'lock']) {
      const ran = spawnSync(native, ['50', '10000', how], { encoding: 'utf8' })
      expect(ran.status, ran.stderr).toBe(0)
      expect(ran.stdout).toBe(`50 threads add 10000 in all (${how})\ncounter: 10000 (expected 10000)\n`)
    }
    const refused = spawnSync(native, ['50', '10000', 'twice'], { encoding: 'utf8' })
    expect(refused.status).toBe(2)
    expect(refused.stderr).toBe('counter: how must be add, cas or lock, got "twice"\n')
  })
})
