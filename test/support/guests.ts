/** Builds guest programs for tests once per source content (cached under .cache/test-guests). */

import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from '../../fabric/cli/build.ts'

export const repositoryRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
const cacheDirectory = join(repositoryRoot, '.cache/test-guests')
const sdkSource = join(repositoryRoot, 'guest-sdk/assemblyscript/lib/fabric.ts')

/** Returns the bytes of the built guest; `source` is relative to the repository root. */
export function guestBytes(source: string): Uint8Array {
  const path = join(repositoryRoot, source)
  const hash = createHash('sha256')
    .update(readFileSync(path))
    .update(readFileSync(sdkSource))
    .digest('hex')
    .slice(0, 16)
  const output = join(cacheDirectory, `${hash}.wasm`)
  if (!existsSync(output)) {
    mkdirSync(cacheDirectory, { recursive: true })
    build({ source: path, output })
  }
  return new Uint8Array(readFileSync(output))
}
