/**
 * The guest ABI, version 1: one import module `fabric` plus WASI preview 1.
 *
 * Every pointer is an offset into the guest's memory 0; lengths are in bytes. A guest declares the
 * ABI it was built for with an export `fabric_abi_version` (a function returning i32, or an i32
 * global). Calls marked `blocking` may suspend the thread (Asyncify unwinds the guest's stack); the
 * others return at once.
 */

export const abiVersion = 1

export interface ImportSpec {
  readonly blocking: boolean
}

/** `fabric` imports. Signatures are in guest-sdk/c/fabric.h and guest-sdk/assemblyscript/fabric.ts. */
export const fabricImports: Record<string, ImportSpec> = {
  // spawn(entry_ptr, entry_len, arg_ptr, arg_len) -> handle (> 0) or negative error
  spawn: { blocking: true },
  // join(handle, out_ptr, out_capacity) -> result length (may exceed capacity) or negative error
  join: { blocking: true },
  // checkpoint(): takes a context save now
  checkpoint: { blocking: true },
  // yield(): lets the host save or reschedule; returns at once when it has nothing to do
  yield: { blocking: true },
  // arg_length() -> length of this thread's argument
  arg_length: { blocking: false },
  // arg_read(ptr): copies this thread's argument to ptr
  arg_read: { blocking: false },
  // set_result(ptr, len): the bytes `join` hands to the joiner
  set_result: { blocking: false },
  // thread_id() -> this thread's number within its process (main is 0)
  thread_id: { blocking: false },
}

/** WASI preview 1 imports that may wait on the embedding (files live behind the `FileSystem`). */
export const blockingWasiImports = new Set([
  'path_open',
  'fd_read',
  'fd_write',
  'fd_fdstat_get',
  'fd_fdstat_set_flags',
  'fd_filestat_set_times',
  'fd_datasync',
  'fd_pread',
  'fd_pwrite',
  'fd_readdir',
  'fd_filestat_get',
  'fd_filestat_set_size',
  'path_filestat_get',
  'path_create_directory',
  'path_remove_directory',
  'path_unlink_file',
  'path_rename',
  'fd_close',
  'fd_seek',
  'fd_tell',
  'fd_sync',
  'poll_oneoff',
  'sched_yield',
])

/** Imports outside `fabric` and WASI that the host provides for AssemblyScript guests. */
export const environmentImports = new Set(['abort', 'seed', 'trace'])

export const importModuleFabric = 'fabric'
export const importModuleWasi = 'wasi_snapshot_preview1'
export const importModuleEnvironment = 'env'

/** Names the instrumentation gives to what it adds. */
export const instrumentedNames = {
  globalPrefix: 'fabric_global_',
  dirtyMemory: 'fabric_dirty_pages',
  asyncifyMemory: 'fabric_asyncify_memory',
} as const

export function isBlockingImport(module: string, name: string): boolean {
  if (module === importModuleFabric) return fabricImports[name]?.blocking ?? false
  if (module === importModuleWasi) return blockingWasiImports.has(name)
  return false
}
