/** Builds guest programs for tests once per source content (cached under .cache/test-guests). */

import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from '../../fabric/cli/build.ts'

export const repositoryRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const cacheDirectory = join(repositoryRoot, '.cache/test-guests')
const assemblyScriptLibrary = join(repositoryRoot, 'guest-sdk/assemblyscript/lib')
const cHeader = join(repositoryRoot, 'guest-sdk/c/fabric.h')

/** The SDK files a guest is built with: a change to any of them must rebuild it. */
function sdkFiles(): string[] {
  const library = readdirSync(assemblyScriptLibrary)
    .filter((name) => name.endsWith('.ts'))
    .sort()
    .map((name) => join(assemblyScriptLibrary, name))
  return [...library, cHeader]
}

/** Returns the bytes of the built guest; `source` is relative to the repository root. */
export function guestBytes(source: string): Uint8Array {
  const path = join(repositoryRoot, source)
  const hash = createHash('sha256').update(readFileSync(path))
  for (const file of sdkFiles()) hash.update(readFileSync(file))
  const digest = hash.digest('hex').slice(0, 16)
  const output = join(cacheDirectory, `${digest}.wasm`)
  if (!existsSync(output)) {
    mkdirSync(cacheDirectory, { recursive: true })
    build({ source: path, output })
  }
  return new Uint8Array(readFileSync(output))
}
