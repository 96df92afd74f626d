/** Disk cache of instrumented modules for Node hosts: `<directory>/<digest>.wasm` + `.json`. */

import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { InstrumentCache, InstrumentedModule } from './instrument.ts'

const formatVersion = 1

export function diskInstrumentCache(directory: string): InstrumentCache {
  return {
    async read(moduleDigest) {
      try {
        const meta = JSON.parse(await readFile(join(directory, `${moduleDigest}.json`), 'utf8'))
        if (meta.formatVersion !== formatVersion) return undefined
        const bytes = new Uint8Array(await readFile(join(directory, `${moduleDigest}.wasm`)))
        return { bytes, globalCount: meta.globalCount, mainEntry: meta.mainEntry, moduleDigest }
      } catch {
        return undefined
      }
    },
    async write(module: InstrumentedModule) {
      await mkdir(directory, { recursive: true })
      const base = join(directory, module.moduleDigest)
      await writeFile(`${base}.wasm.${process.pid}.tmp`, module.bytes)
      await rename(`${base}.wasm.${process.pid}.tmp`, `${base}.wasm`)
      const meta = { formatVersion, globalCount: module.globalCount, mainEntry: module.mainEntry }
      await writeFile(`${base}.json.${process.pid}.tmp`, JSON.stringify(meta))
      await rename(`${base}.json.${process.pid}.tmp`, `${base}.json`)
    },
  }
}
