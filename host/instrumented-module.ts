/**
 * What instrumentation produces, and the cache contract, without Binaryen: importing this costs
 * nothing, so hosts that instrument elsewhere (in a worker) never load Binaryen on their main thread.
 */

/**
 * Version of what instrumentation does (passes, ABI's blocking imports, layout). Part of every
 * cache key: bump it whenever the output for the same input would change.
 */
export const instrumentationVersion = 4

export interface InstrumentedModule {
  /** The instrumented binary. */
  bytes: Uint8Array
  /** Number of guest mutable globals exported as `fabric_global_<n>`. */
  globalCount: number
  /** The export a plain run starts at: `_start` for WASI commands, else `main`. */
  mainEntry: string
  /** SHA-256 (hex) of the original module: a save names the module it belongs to. */
  moduleDigest: string
  /**
   * No instruction changes a table or uses a passive data segment (table.set, table.grow,
   * memory.init, data.drop): an instance's whole state is its memories and mutable globals, so
   * writing back those of a fresh instance makes a used one fresh again (workers reuse instances).
   */
  instanceReusable: boolean
}

/** A second-level cache (the Node adapter keeps one on disk); keyed by the original's digest. */
export interface InstrumentCache {
  read(moduleDigest: string): Promise<InstrumentedModule | undefined>
  write(module: InstrumentedModule): Promise<void>
}

export interface InstrumentOptions {
  cache?: InstrumentCache
}
