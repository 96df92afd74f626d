/**
 * Loading a guest program: validation (clear errors for anything that is not a Fabric guest),
 * instrumentation (cached by content hash) and compilation.
 */

import {
  abiVersion,
  environmentImports,
  fabricImports,
  importModuleEnvironment,
  importModuleFabric,
  importModuleWasi,
} from './abi.ts'
import { InvalidModuleError } from './errors.ts'
import type { InstrumentCache, InstrumentedModule, InstrumentOptions } from './instrumented-module.ts'

/** Largest module accepted, in bytes. */
export const moduleBytesMax = 256 * 1024 * 1024

export interface Program {
  /** The instrumented, compiled module (structured-clones to workers without recompiling). */
  module: WebAssembly.Module
  globalCount: number
  mainEntry: string
  moduleDigest: string
  /** Size of the original module in bytes. */
  sourceBytes: number
  /** A worker may reuse an instance for the next thread (see InstrumentedModule). */
  instanceReusable: boolean
}

const wasmMagic = [0x00, 0x61, 0x73, 0x6d]

/** Checks that `bytes` is a WebAssembly module a Fabric host can run; throws InvalidModuleError. */
export async function validateModule(bytes: Uint8Array): Promise<WebAssembly.Module> {
  if (bytes.length > moduleBytesMax) {
    throw new InvalidModuleError(`module is ${bytes.length} bytes; the limit is ${moduleBytesMax}`)
  }
  if (bytes.length < 8 || wasmMagic.some((byte, index) => bytes[index] !== byte)) {
    throw new InvalidModuleError('not a WebAssembly module (the file does not start with "\\0asm")')
  }
  let module: WebAssembly.Module
  try {
    module = await WebAssembly.compile(bytes as Uint8Array<ArrayBuffer>)
  } catch (error) {
    throw new InvalidModuleError(`not a valid WebAssembly module: ${(error as Error).message}`)
  }
  for (const entry of WebAssembly.Module.imports(module)) {
    const known =
      (entry.module === importModuleFabric && entry.name in fabricImports && entry.kind === 'function') ||
      (entry.module === importModuleWasi && entry.kind === 'function') ||
      (entry.module === importModuleEnvironment &&
        environmentImports.has(entry.name) &&
        entry.kind === 'function')
    if (!known) {
      throw new InvalidModuleError(
        `module imports ${entry.kind} ${entry.module}.${entry.name}, which Fabric does not provide (guests may import "fabric" and "wasi_snapshot_preview1")`,
      )
    }
  }
  const exports = new Map(WebAssembly.Module.exports(module).map((entry) => [entry.name, entry.kind]))
  if (exports.get('memory') !== 'memory')
    throw new InvalidModuleError('module does not export its memory as "memory"')
  if (exports.get('_start') !== 'function' && exports.get('main') !== 'function') {
    throw new InvalidModuleError(
      'module has no entry point: export a function "_start" (WASI command) or "main"',
    )
  }
  return module
}

/** The ABI a module declares in its `fabric.abi_version` custom section (added by `fabric build`). */
export const abiSectionName = 'fabric.abi_version'

function declaredAbiVersion(module: WebAssembly.Module): number | null {
  const sections = WebAssembly.Module.customSections(module, abiSectionName)
  if (sections.length === 0) return null
  const text = new TextDecoder().decode(sections[0])
  const version = Number.parseInt(text, 10)
  if (!Number.isInteger(version))
    throw new InvalidModuleError(`module's ${abiSectionName} section is not a number`)
  return version
}

export interface LoadOptions {
  cache?: InstrumentCache
  /**
   * Runs the instrumentation; defaults to `instrument` on this thread. Binaryen can take seconds on
   * a large module, so a node passes one that works in a worker (host/instrument-node.ts) and keeps
   * its event loop free for heartbeats.
   */
  instrument?: (bytes: Uint8Array, options: InstrumentOptions) => Promise<InstrumentedModule>
}

/** Validates, instruments and compiles a guest program. */
export async function loadProgram(bytes: Uint8Array, options: LoadOptions = {}): Promise<Program> {
  const plain = await validateModule(bytes)
  const version = declaredAbiVersion(plain)
  if (version !== null && version !== abiVersion) {
    throw new InvalidModuleError(
      `module was built for Fabric ABI ${version}; this host runs ABI ${abiVersion}`,
    )
  }
  // Binaryen is loaded only when this thread instruments (it is large and slow to load).
  const instrumentWith = options.instrument ?? (await import('./instrument.ts')).instrument
  const instrumented = await instrumentWith(bytes, { cache: options.cache })
  const module = await WebAssembly.compile(instrumented.bytes as Uint8Array<ArrayBuffer>)
  return {
    module,
    globalCount: instrumented.globalCount,
    instanceReusable: instrumented.instanceReusable,
    mainEntry: instrumented.mainEntry,
    moduleDigest: instrumented.moduleDigest,
    sourceBytes: bytes.length,
  }
}
