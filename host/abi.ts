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
  // sync(request_ptr, request_len, out_ptr, out_capacity) -> reply length (>= 0) or a negative
  // `SyncError`: shared variables, locks, fenced variables, queues, barriers and context groups.
  // The request layout is `syncRequestLayout`; reply bytes (at most out_capacity) go to out_ptr.
  sync: { blocking: true },
}

/**
 * A `sync` request, little-endian. Every name lives in a context: the process's global context
 * (group length 0) or the context group named by `group`.
 *
 *   offset 0  u8   version (1)
 *          1  u8   op (`SyncOp`)
 *          2  u16  group length (<= syncNameBytesMax)
 *          4  u16  name length (<= syncNameBytesMax)
 *          6  u16  reserved, 0
 *          8  i64  a (per op: delta, ttl, token, timeout, count, capacity)
 *         16  i64  b (per op)
 *         24  u32  value length (<= syncValueBytesMax)
 *         28  u32  value2 length (<= syncValueBytesMax)
 *         32  group bytes, name bytes, value bytes, value2 bytes (UTF-8 names)
 *
 * Ops, their operands and replies (timeouts in ms: -1 waits for ever, 0 tries once):
 *   group          joins the context group `group` (its later children are placed near it) -> 0
 *   var_get        -> the value's bytes, or Unset
 *   var_set        value -> 0
 *   var_cas        value = expected, value2 = new; a = 1 if "expected unset" -> 1 swapped, 0 not
 *   var_add        a = delta; the value is an i64 (unset = 0) -> 8 bytes: the new i64, or WrongType
 *   lock_acquire   a = ttl ms, b = timeout ms -> 8 bytes: the fencing token (i64), or Timeout
 *   lock_renew     a = token, b = ttl ms -> 0, or NotHolder
 *   lock_release   a = token -> 0, or NotHolder
 *   fenced_get     a = 0, or a lock holder's token -> the value's bytes, or Unset; with a token,
 *                  StaleToken if a newer token was seen, else the fence rises to it (a write with
 *                  an older token is refused from then on)
 *   fenced_set     a = token, value -> 0, or StaleToken (a newer token was seen)
 *   queue_push     value = item, a = capacity (items; 0 = default), b = timeout ms when full
 *                  -> 0, or Full, or Closed
 *   queue_pop      a = timeout ms -> the item's bytes, or Timeout, or Closed (closed and empty)
 *   queue_close    -> 0
 *   queue_length   -> the number of items (as the result, no bytes)
 *   barrier_wait   a = parties -> the round number (as the result, no bytes), rounds count from 0
 *
 * Bounds (a request outside them gets Invalid, a value over its limit TooLarge; the constants are
 * here and in fabric/runtime/primitives/request.ts):
 *   names          1 to 255 bytes of UTF-8 (group: 0 to 255, 0 being the global context; the
 *                  group op needs 1 or more)
 *   values, items  up to 65536 bytes (`syncValueBytesMax`), less the register's bookkeeping below
 *   replies        a reply longer than out_capacity is TooLarge, and a pop then leaves the item
 *   lock TTL       100 ms to 10 min (600000 ms); a dead holder's lock is free after its TTL
 *   timeouts       -1 (for ever), 0 (try once) or 1 to 2^53-1 ms
 *   fencing token  1 to 2^53-1 (the store's tokens)
 *   queue capacity 1 to 65536 items, default 1024 (a = 0); the first push fixes it
 *   barrier        1 to 4096 parties; every wait on one barrier names the same number
 *
 * Each object is one register of the coordination store (64 KiB value): a variable's value, a
 * queue's items, a barrier's arrivals, and the results of effects (set, cas that swapped, add,
 * fenced set, push, pop with its item, close, barrier rounds, release) that threads made since
 * their last context save. So a value or item can be up to 64 KiB less that bookkeeping (an object
 * with no unsaved effects: about 64 KiB less 100 bytes; TooLarge when it does not fit), and a queue
 * holds items plus the items popped by consumers that have not saved since (a push that does not
 * fit waits as on a full queue; the runtime asks such consumers to save). Replies that change
 * nothing (var_get, fenced_get, queue_length, a cas that did not swap, an acquire that timed out,
 * any error) are not kept in the register but in the calling thread's own replay log, which goes
 * with its saves: any number of threads may read a value of any allowed size between their saves.
 * A thread keeps at most 64 unsaved effects per object (it is asked to save after 16, and waits for
 * its save past 64), and its replay log asks for a save past 256 KiB or 1024 replies.
 *
 * Each request is applied exactly once, also when a thread restored from a context save replays
 * it: its op id is (thread, call sequence number). A replayed lock_acquire acquires again (same
 * token while no one else took the lock since, else as a fresh acquire), a replayed lock_renew
 * renews again: a holder restarted from a save keeps its lock only if its lease still holds (a
 * renew after the TTL ran out answers NotHolder, even if no one took the lock meanwhile).
 *
 * Errors, and whether the guest may send the same request again (a new call, so a new op id):
 *   Invalid, TooLarge, WrongType     misuse: the same request fails the same way
 *   Unset, Timeout, Full, Closed,    outcomes of the object's state; retrying is safe (nothing
 *   NotHolder, StaleToken            changed), but Closed and StaleToken stay so
 *   Unavailable                      the runtime retried the store for 30 s: the call may or may
 *                                    not have applied. Safe to retry: var_get, var_set, fenced_get,
 *                                    fenced_set, queue_length, queue_close, lock_renew,
 *                                    lock_release, group. Not safe (could apply twice): var_cas,
 *                                    var_add, queue_push, queue_pop, barrier_wait; lock_acquire
 *                                    again is safe only by the same thread (it gets its own lease).
 */
export const syncRequestVersion = 1
export const syncHeaderBytes = 32
export const syncNameBytesMax = 255
export const syncValueBytesMax = 65536
export const syncRequestBytesMax = syncHeaderBytes + 2 * syncNameBytesMax + 2 * syncValueBytesMax

export const SyncOp = {
  group: 1,
  varGet: 2,
  varSet: 3,
  varCas: 4,
  varAdd: 5,
  lockAcquire: 6,
  lockRenew: 7,
  lockRelease: 8,
  fencedGet: 9,
  fencedSet: 10,
  queuePush: 11,
  queuePop: 12,
  queueClose: 13,
  queueLength: 14,
  barrierWait: 15,
} as const

/** Negative results of `sync`; guest-sdk/c/fabric.h and the AssemblyScript SDK use the same numbers. */
export const SyncError = {
  /** Malformed request or an operand out of range (a TTL of 0 or over the maximum, parties < 1). */
  invalid: -1,
  /** A value or item over `syncValueBytesMax`, or a reply larger than the caller's buffer. */
  tooLarge: -2,
  timeout: -3,
  notHolder: -4,
  staleToken: -5,
  full: -6,
  closed: -7,
  unset: -8,
  wrongType: -9,
  /** The store could not be reached in time; the call may be retried. */
  unavailable: -10,
} as const

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

/** Negative results of `spawn` and `join` (guest-sdk/c/fabric.h: FABRIC_SPAWN_*, FABRIC_JOIN_*). */
export const SpawnError = { tooManyThreads: -1, noSuchEntry: -2 } as const
export const JoinError = { noSuchThread: -1, threadFailed: -3 } as const

const exportedFunctionsByModule = new WeakMap<WebAssembly.Module, ReadonlySet<string>>()

/** Names of a module's function exports: the entries `spawn` accepts (else it returns -2). */
export function exportedFunctions(module: WebAssembly.Module): ReadonlySet<string> {
  let names = exportedFunctionsByModule.get(module)
  if (names === undefined) {
    names = new Set(
      WebAssembly.Module.exports(module)
        .filter((item) => item.kind === 'function')
        .map((item) => item.name),
    )
    exportedFunctionsByModule.set(module, names)
  }
  return names
}

/** Splits a `spawn` payload (u32 entry length, entry, argument); null when malformed. */
export function decodeSpawnPayload(payload: Uint8Array | null): { entry: string; arg: Uint8Array } | null {
  if (payload === null || payload.length < 4) return null
  const entryLength = new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(0, true)
  if (4 + entryLength > payload.length) return null
  return {
    entry: new TextDecoder().decode(payload.subarray(4, 4 + entryLength)),
    arg: payload.slice(4 + entryLength),
  }
}

export function isBlockingImport(module: string, name: string): boolean {
  if (module === importModuleFabric) return fabricImports[name]?.blocking ?? false
  if (module === importModuleWasi) return blockingWasiImports.has(name)
  return false
}
