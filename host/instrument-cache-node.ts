/** Disk cache of instrumented modules for Node hosts: `<directory>/<digest>-v<version>.wasm` + `.json`. */

import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  type InstrumentCache,
  type InstrumentedModule,
  instrumentationVersion,
} from './instrumented-module.ts'

export function diskInstrumentCache(directory: string): InstrumentCache {
  return {
    async read(moduleDigest) {
      try {
        const base = join(directory, `${moduleDigest}-v${instrumentationVersion}`)
        const meta = JSON.parse(await readFile(`${base}.json`, 'utf8'))
        const bytes = new Uint8Array(await readFile(`${base}.wasm`))
        return {
          bytes,
          globalCount: meta.globalCount,
          mainEntry: meta.mainEntry,
          moduleDigest,
          instanceReusable: meta.instanceReusable === true,
        }
      } catch {
        return undefined
      }
    },
    async write(module: InstrumentedModule) {
      await mkdir(directory, { recursive: true })
      const base = join(directory, `${module.moduleDigest}-v${instrumentationVersion}`)
      await writeFile(`${base}.wasm.${process.pid}.tmp`, module.bytes)
      await rename(`${base}.wasm.${process.pid}.tmp`, `${base}.wasm`)
      const meta = {
        globalCount: module.globalCount,
        mainEntry: module.mainEntry,
        instanceReusable: module.instanceReusable,
      }
      await writeFile(`${base}.json.${process.pid}.tmp`, JSON.stringify(meta))
      await rename(`${base}.json.${process.pid}.tmp`, `${base}.json`)
    },
  }
}
