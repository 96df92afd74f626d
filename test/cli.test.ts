import { spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import { guestBytes, repositoryRoot } from './support/guests.ts'

const cli = join(repositoryRoot, 'fabric/cli/bin.js')

function fabric(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const result = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env, timeout: 60_000 })
  return { code: result.status, stdout: result.stdout, stderr: result.stderr }
}

describe('fabric CLI', () => {
  const directory = mkdtempSync(join(tmpdir(), 'fabric-cli-'))

  test('fabric run streams the program output and exits with the program exit code', () => {
    const program = join(directory, 'primes.wasm')
    writeFileSync(program, guestBytes('examples/primes/primes.ts'))
    const run = fabric(['run', program, '--', '100000', '50000'])
    expect(run.stdout).toBe(
      'below 50000: 5133 primes\nbelow 100000: 9592 primes\ntotal: 9592 primes below 100000\n',
    )
    expect(run.code).toBe(0)
    const misbehave = join(directory, 'misbehave.wasm')
    writeFileSync(misbehave, guestBytes('test/fixtures/as/misbehave.ts'))
    const trapped = fabric(['run', misbehave, '--', 'trap'])
    expect(trapped.code).toBe(1)
    expect(trapped.stderr.trim().split('\n')).toHaveLength(1)
    expect(trapped.stderr).toMatch(/^fabric: guest trapped: divide by zero/)
  })

  test('fabric run refuses a file that is not WebAssembly with one line and exit code 2', () => {
    const bogus = join(directory, 'bogus.wasm')
    writeFileSync(bogus, 'MZ this is not wasm')
    const run = fabric(['run', bogus])
    expect(run.code).toBe(2)
    expect(run.stderr).toBe('fabric: not a WebAssembly module (the file does not start with "\\0asm")\n')
    const missing = fabric(['run', join(directory, 'nowhere.wasm')])
    expect(missing.code).toBe(2)
    expect(missing.stderr.trim().split('\n')).toHaveLength(1)
  })

  test('fabric build reports a source that does not compile, and a missing compiler, clearly', () => {
    const broken = join(directory, 'broken.ts')
    writeFileSync(broken, 'export function main(): i32 { return "not a number" }\n')
    const built = fabric(['build', broken])
    expect(built.code).toBe(2)
    expect(built.stderr).toMatch(/fabric: AssemblyScript compile of .*broken\.ts failed/)
    const cSource = join(directory, 'hello.c')
    writeFileSync(cSource, '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n')
    const noCompiler = fabric(['build', cSource], { ...process.env, PATH: '/nonexistent' })
    expect(noCompiler.code).toBe(2)
    expect(noCompiler.stderr).toMatch(
      /clang not found, so the C compile of .*hello\.c cannot run; install Debian packages clang lld wasi-libc/,
    )
  })
})
