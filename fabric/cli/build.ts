/**
 * `fabric build`: AssemblyScript (`.ts`) and C (`.c`) sources to a ready guest module, tagged with
 * the ABI it was built for.
 */

import { spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { dirname, extname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { abiVersion } from '../../host/abi.ts'
import { BuildError } from '../../host/errors.ts'
import { abiSectionName } from '../../host/program.ts'
import { appendCustomSection } from '../../host/wasm-binary.ts'

const repositoryRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const assemblyScriptLibrary = join(repositoryRoot, 'guest-sdk/assemblyscript/lib')
const cHeaders = join(repositoryRoot, 'guest-sdk/c')
const ascBinary = join(repositoryRoot, 'node_modules/assemblyscript/bin/asc.js')

export interface BuildOptions {
  source: string
  output?: string
  /** Extra compiler flags, passed through. */
  flags?: string[]
}

export interface BuildResult {
  output: string
  bytes: number
}

export function defaultOutput(source: string): string {
  return source.slice(0, source.length - extname(source).length) + '.wasm'
}

function run(command: string, args: string[], what: string, install: string): void {
  const result = spawnSync(command, args, { encoding: 'utf8' })
  if (result.error !== undefined && (result.error as NodeJS.ErrnoException).code === 'ENOENT') {
    throw new BuildError(`${command} not found, so the ${what} cannot run; ${install}`)
  }
  if (result.status !== 0) {
    const output = `${result.stdout ?? ''}${result.stderr ?? ''}`.trim()
    throw new BuildError(`${what} failed:\n${output}`)
  }
}

export function build(options: BuildOptions): BuildResult {
  const source = resolve(options.source)
  const output = resolve(options.output ?? defaultOutput(options.source))
  const flags = options.flags ?? []
  const kind = extname(source)
  if (kind === '.ts') {
    run(
      process.execPath,
      [
        ascBinary,
        source,
        '--lib',
        assemblyScriptLibrary,
        '-O3',
        '--runtime',
        'incremental',
        '-o',
        output,
        ...flags,
      ],
      `AssemblyScript compile of ${options.source}`,
      'run npm install in the Fabric checkout',
    )
  } else if (kind === '.c') {
    run(
      'clang',
      ['--target=wasm32-wasi', '--sysroot=/usr', '-O2', `-I${cHeaders}`, source, '-o', output, ...flags],
      `C compile of ${options.source}`,
      'install Debian packages clang lld wasi-libc libclang-rt-14-dev-wasm32',
    )
  } else {
    throw new BuildError(
      `cannot build ${options.source}: fabric build takes .ts (AssemblyScript) or .c (C) sources`,
    )
  }
  const tagged = appendCustomSection(
    readFileSync(output),
    abiSectionName,
    new TextEncoder().encode(String(abiVersion)),
  )
  writeFileSync(output, tagged)
  return { output, bytes: tagged.length }
}
