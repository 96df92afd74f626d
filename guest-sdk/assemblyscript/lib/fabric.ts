// The Fabric guest SDK for AssemblyScript.
//
//   import { print, args, spawn, checkpoint } from "fabric"
//
//   export function worker(): void { setResultString("hi from " + threadArgString()) }
//   export function main(): i32 {
//     const thread = spawnString("worker", "thread 1")
//     print(thread.joinString())
//     return 0
//   }
//
// `main` is the program's entry; its return value is the exit code. A thread is a new instance of
// the same module started at an exported function with a byte-string argument.

@external("wasi_snapshot_preview1", "fd_write")
declare function wasi_fd_write(fd: u32, iovs: usize, iovsLength: u32, written: usize): u16
@external("wasi_snapshot_preview1", "args_sizes_get")
declare function wasi_args_sizes_get(count: usize, size: usize): u16
@external("wasi_snapshot_preview1", "args_get")
declare function wasi_args_get(pointers: usize, buffer: usize): u16
@external("wasi_snapshot_preview1", "proc_exit")
declare function wasi_proc_exit(code: u32): void
@external("wasi_snapshot_preview1", "clock_time_get")
declare function wasi_clock_time_get(clock: u32, precision: u64, result: usize): u16

@external("fabric", "spawn")
declare function fabric_spawn(entry: usize, entryLength: u32, arg: usize, argLength: u32): i32
@external("fabric", "join")
declare function fabric_join(handle: i32, out: usize, capacity: u32): i32
@external("fabric", "checkpoint")
declare function fabric_checkpoint(): void
@external("fabric", "yield")
declare function fabric_yield(): void
@external("fabric", "arg_length")
declare function fabric_arg_length(): u32
@external("fabric", "arg_read")
declare function fabric_arg_read(pointer: usize): void
@external("fabric", "set_result")
declare function fabric_set_result(pointer: usize, length: u32): void
@external("fabric", "thread_id")
declare function fabric_thread_id(): i32

function writeAll(fd: u32, data: ArrayBuffer): void {
  const iov = new StaticArray<u32>(2)
  let offset: u32 = 0
  const length = <u32>data.byteLength
  const written = new StaticArray<u32>(1)
  while (offset < length) {
    unchecked((iov[0] = <u32>changetype<usize>(data) + offset))
    unchecked((iov[1] = length - offset))
    const error = wasi_fd_write(fd, changetype<usize>(iov), 1, changetype<usize>(written))
    if (error != 0) return
    offset += unchecked(written[0])
  }
}

/** Writes `text` and a newline to standard output. */
export function print(text: string): void {
  writeAll(1, String.UTF8.encode(text + "\n"))
}

/** Writes `text` and a newline to standard error. */
export function printError(text: string): void {
  writeAll(2, String.UTF8.encode(text + "\n"))
}

/** The program's arguments; the first is the program's name. */
export function args(): string[] {
  const sizes = new StaticArray<u32>(2)
  wasi_args_sizes_get(changetype<usize>(sizes), changetype<usize>(sizes) + 4)
  const count = unchecked(sizes[0])
  const pointers = new StaticArray<u32>(count)
  const buffer = new ArrayBuffer(unchecked(sizes[1]))
  wasi_args_get(changetype<usize>(pointers), changetype<usize>(buffer))
  const out = new Array<string>(count)
  for (let index: u32 = 0; index < count; index++) {
    const start = unchecked(pointers[index])
    let end = start
    while (load<u8>(end) != 0) end++
    out[index] = String.UTF8.decodeUnsafe(start, end - start)
  }
  return out
}

/** Ends the program with `code`, from any thread. */
export function exit(code: i32): void {
  wasi_proc_exit(<u32>code)
}

/** Takes a context save now: after a crash the thread continues from here. */
export function checkpoint(): void {
  fabric_checkpoint()
}

/** Gives the system a chance to save or reschedule this thread; cheap when it has nothing to do. */
export function yieldThread(): void {
  fabric_yield()
}

/** Wall-clock time in milliseconds since the Unix epoch. */
export function nowMs(): f64 {
  const result = new StaticArray<u64>(1)
  wasi_clock_time_get(0, 1000, changetype<usize>(result))
  return <f64>unchecked(result[0]) / 1e6
}

/** This thread's number within its process: 0 for the main thread. */
export function threadId(): i32 {
  return fabric_thread_id()
}

/** The argument this thread was spawned with. */
export function threadArg(): ArrayBuffer {
  const buffer = new ArrayBuffer(<i32>fabric_arg_length())
  fabric_arg_read(changetype<usize>(buffer))
  return buffer
}

export function threadArgString(): string {
  return String.UTF8.decode(threadArg())
}

/** Sets the bytes that `join` returns to the thread's joiner. */
export function setResult(result: ArrayBuffer): void {
  fabric_set_result(changetype<usize>(result), <u32>result.byteLength)
}

export function setResultString(result: string): void {
  setResult(String.UTF8.encode(result))
}

export class FabricError extends Error {}

/** A handle on a spawned thread. */
export class Thread {
  constructor(readonly handle: i32) {}

  /** Waits for the thread to end and returns its result bytes. */
  join(): ArrayBuffer {
    let capacity = 256
    let buffer = new ArrayBuffer(capacity)
    let length = fabric_join(this.handle, changetype<usize>(buffer), <u32>capacity)
    if (length > capacity) {
      capacity = length
      buffer = new ArrayBuffer(capacity)
      length = fabric_join(this.handle, changetype<usize>(buffer), <u32>capacity)
    }
    if (length < 0) throw new FabricError("join failed: the thread does not exist or ended with an error")
    return buffer.slice(0, length)
  }

  joinString(): string {
    return String.UTF8.decode(this.join())
  }
}

/** Starts a thread at the exported function `entry` with `arg`. */
export function spawn(entry: string, arg: ArrayBuffer = new ArrayBuffer(0)): Thread {
  const name = String.UTF8.encode(entry)
  const handle = fabric_spawn(changetype<usize>(name), <u32>name.byteLength, changetype<usize>(arg), <u32>arg.byteLength)
  if (handle < 0) throw new FabricError("spawn failed: no exported function '" + entry + "' or too many threads")
  return new Thread(handle)
}

export function spawnString(entry: string, arg: string): Thread {
  return spawn(entry, String.UTF8.encode(arg))
}

// ---------------------------------------------------------------------------------------------
// Coordination: shared variables, locks, fenced variables, queues and barriers, each named in a
// context (the process's global context, or a group made with `group(name)`).
//
//   const counter = new SharedVar("hits")            // in the global context
//   counter.add(1)
//   const team = group("team-a")                     // join a context group: names are its own
//   const lock = team.lock("table")
//   const token = lock.acquire(5_000)                // blocks; the lease lasts 5 s unless renewed
//   team.fencedVar("table").setString(token, "mine") // refused (false) once a newer holder wrote
//   lock.release()
//
// Every call is one `fabric.sync` request (layout in host/abi.ts) and is applied exactly once,
// also when a thread restored from a context save replays it.
//
// Two kinds of failure, kept apart on purpose:
// - outcomes a correct program meets under contention, timeouts and crashes (a timeout, a full or
//   closed queue, a stale token, an unset variable, a lock whose lease ran out) are return values
//   the program checks;
// - misuse that a correct program never makes (an empty or over-long name, a TTL out of range, a
//   value over `syncValueBytesMax`, releasing a lock this thread never acquired, `add` on a value
//   that is not an i64) aborts the thread with a message that names the call and the object; the
//   host reports it as a GuestTrapError and the process ends with that message. So does a store
//   that stays unreachable through the runtime's own retries (Unavailable): sending the request
//   again would be a new op id, and an add, push or pop could then take effect twice.
// ---------------------------------------------------------------------------------------------

@external("fabric", "sync")
declare function fabric_sync(request: usize, requestLength: u32, out: usize, outCapacity: u32): i32

/** Negative results of `fabric.sync`; the same numbers as `SyncError` in host/abi.ts and fabric.h. */
export enum SyncError {
  invalid = -1,
  tooLarge = -2,
  timeout = -3,
  notHolder = -4,
  staleToken = -5,
  full = -6,
  closed = -7,
  unset = -8,
  wrongType = -9,
  unavailable = -10,
}

/** Outcome of `Queue.push` and `Queue.pop` variants that may not complete. */
export enum QueueStatus {
  ok = 0,
  timeout = -3,
  full = -6,
  closed = -7,
}

/** Bytes of a name (UTF-8) and of a group name, at most. */
export const syncNameBytesMax = 255
/** Bytes of a value or queue item, at most. */
export const syncValueBytesMax = 65536
/** A timeout that waits for ever. */
export const waitForever: i64 = -1
/** A timeout that tries once and does not wait. */
export const noWait: i64 = 0

const syncRequestVersion: u8 = 1
const syncHeaderBytes = 32

const opGroup: u8 = 1
const opVarGet: u8 = 2
const opVarSet: u8 = 3
const opVarCas: u8 = 4
const opVarAdd: u8 = 5
const opLockAcquire: u8 = 6
const opLockRenew: u8 = 7
const opLockRelease: u8 = 8
const opFencedGet: u8 = 9
const opFencedSet: u8 = 10
const opQueuePush: u8 = 11
const opQueuePop: u8 = 12
const opQueueClose: u8 = 13
const opQueueLength: u8 = 14
const opBarrierWait: u8 = 15

/** Reply buffer for values and items, allocated on first use and reused (one per thread). */
let valueReply: ArrayBuffer | null = null
/** Reply buffer for 8-byte replies (counters, fencing tokens). */
const wordReply = new ArrayBuffer(8)

function valueReplyBuffer(): ArrayBuffer {
  let buffer = valueReply
  if (buffer == null) {
    buffer = new ArrayBuffer(syncValueBytesMax)
    valueReply = buffer
  }
  return buffer
}

function encodeName(name: string, what: string): ArrayBuffer {
  const bytes = String.UTF8.encode(name)
  if (bytes.byteLength > syncNameBytesMax) {
    throw new Error(what + ' "' + name + '": the name is ' + bytes.byteLength.toString() +
      " bytes of UTF-8; at most " + syncNameBytesMax.toString() + " are allowed")
  }
  return bytes
}

function checkValue(value: ArrayBuffer | null, call: string): void {
  if (value != null && value.byteLength > syncValueBytesMax) {
    throw new Error(call + ": the value is " + value.byteLength.toString() + " bytes; at most " +
      syncValueBytesMax.toString() + " are allowed (syncValueBytesMax)")
  }
}

function i64Bytes(value: i64): ArrayBuffer {
  const bytes = new ArrayBuffer(8)
  store<i64>(changetype<usize>(bytes), value)
  return bytes
}

function f64Bytes(value: f64): ArrayBuffer {
  const bytes = new ArrayBuffer(8)
  store<f64>(changetype<usize>(bytes), value)
  return bytes
}

function bytesToI64(bytes: ArrayBuffer, call: string): i64 {
  if (bytes.byteLength != 8) {
    throw new Error(call + ": the value is " + bytes.byteLength.toString() + " bytes, not an 8-byte i64")
  }
  return load<i64>(changetype<usize>(bytes))
}

function bytesToF64(bytes: ArrayBuffer, call: string): f64 {
  if (bytes.byteLength != 8) {
    throw new Error(call + ": the value is " + bytes.byteLength.toString() + " bytes, not an 8-byte f64")
  }
  return load<f64>(changetype<usize>(bytes))
}

/** Builds one request (layout in host/abi.ts) and sends it; returns the reply length or a SyncError. */
function syncCall(
  op: u8,
  group: ArrayBuffer,
  name: ArrayBuffer,
  a: i64,
  b: i64,
  value: ArrayBuffer | null,
  value2: ArrayBuffer | null,
  out: ArrayBuffer | null,
): i32 {
  const valueLength = value == null ? 0 : value.byteLength
  const value2Length = value2 == null ? 0 : value2.byteLength
  const length = syncHeaderBytes + group.byteLength + name.byteLength + valueLength + value2Length
  const request = new ArrayBuffer(length)
  const base = changetype<usize>(request)
  store<u8>(base, syncRequestVersion, 0)
  store<u8>(base, op, 1)
  store<u16>(base, <u16>group.byteLength, 2)
  store<u16>(base, <u16>name.byteLength, 4)
  store<u16>(base, 0, 6)
  store<i64>(base, a, 8)
  store<i64>(base, b, 16)
  store<u32>(base, <u32>valueLength, 24)
  store<u32>(base, <u32>value2Length, 28)
  let offset = base + syncHeaderBytes
  memory.copy(offset, changetype<usize>(group), group.byteLength)
  offset += group.byteLength
  memory.copy(offset, changetype<usize>(name), name.byteLength)
  offset += name.byteLength
  if (value != null) {
    memory.copy(offset, changetype<usize>(value), valueLength)
    offset += valueLength
  }
  if (value2 != null) memory.copy(offset, changetype<usize>(value2), value2Length)
  const outPointer: usize = out == null ? 0 : changetype<usize>(out)
  const outCapacity = out == null ? 0 : <u32>out.byteLength
  // Unavailable is not retried here: the runtime has retried the same op id already, and a new
  // request (a new op id) could apply an add, a push or a pop a second time if the first landed.
  return fabric_sync(base, <u32>length, outPointer, outCapacity)
}

/** Ends the thread with a message that names the call, for results a correct program never sees. */
function misuse(call: string, result: i32): void {
  let reason: string
  if (result == SyncError.invalid) {
    reason = "the request was refused as invalid (a name of 1 to " + syncNameBytesMax.toString() +
      " bytes, a TTL and a queue capacity within the runtime's bounds, a positive fencing token, parties of at least 1)"
  } else if (result == SyncError.tooLarge) {
    reason = "too large: the value or item, with what the runtime keeps beside it, does not fit in " +
      syncValueBytesMax.toString() + " bytes"
  } else if (result == SyncError.notHolder) {
    reason = "this thread does not hold the lock"
  } else if (result == SyncError.wrongType) {
    reason = "the variable holds a value that is not an 8-byte i64"
  } else if (result == SyncError.unavailable) {
    reason = "the coordination store could not be reached in time (the runtime retried); the call may or may not have taken effect"
  } else {
    reason = "unexpected result " + result.toString() + " from fabric.sync"
  }
  throw new Error(call + ": " + reason)
}

/**
 * A context: the process's global context, or a group; names in one context do not clash with
 * another's. `group(name)` joins a group; `new Context(name)` only names it, to use its objects
 * without joining (and without placing this thread's later children near it).
 */
export class Context {
  readonly name: string
  readonly encoded: ArrayBuffer

  constructor(name: string) {
    this.name = name
    this.encoded = encodeName(name, "group")
  }

  describe(kind: string, name: string): string {
    return this.name.length == 0 ? kind + ' "' + name + '"' : kind + ' "' + name + '" in group "' + this.name + '"'
  }

  sharedVar(name: string): SharedVar {
    return new SharedVar(name, this)
  }

  lock(name: string): Lock {
    return new Lock(name, this)
  }

  fencedVar(name: string): FencedVar {
    return new FencedVar(name, this)
  }

  /** `capacity` in items; 0 takes the runtime's default. */
  queue(name: string, capacity: i64 = 0): Queue {
    return new Queue(name, capacity, this)
  }

  barrier(name: string, parties: i32): Barrier {
    return new Barrier(name, parties, this)
  }
}

/** The process's global context, where every thread's names meet unless it uses a group. */
export const globalContext = new Context("")

/**
 * Creates or joins the context group `name` and returns its context. Names in it are the group's
 * own, and the threads this thread spawns from now on are placed near it.
 */
export function group(name: string): Context {
  if (name.length == 0) throw new Error("group(\"\"): a group needs a name of 1 to " + syncNameBytesMax.toString() + " bytes")
  const context = new Context(name)
  const result = syncCall(opGroup, context.encoded, new ArrayBuffer(0), 0, 0, null, null, null)
  if (result < 0) misuse('group("' + name + '")', result)
  return context
}

/** What every named object shares: its context, its name and its encoded form. */
class Named {
  readonly name: string
  readonly context: Context
  readonly encoded: ArrayBuffer
  readonly label: string

  constructor(kind: string, name: string, context: Context) {
    if (name.length == 0) {
      throw new Error(kind + ' "": a name of 1 to ' + syncNameBytesMax.toString() + " bytes is needed")
    }
    this.name = name
    this.context = context
    this.encoded = encodeName(name, kind)
    this.label = context.describe(kind, name)
  }

  request(op: u8, a: i64, b: i64, value: ArrayBuffer | null, value2: ArrayBuffer | null, out: ArrayBuffer | null): i32 {
    return syncCall(op, this.context.encoded, this.encoded, a, b, value, value2, out)
  }

  /** Gets a value (null when unset) with `op`. */
  getBytes(op: u8, call: string): ArrayBuffer | null {
    const out = valueReplyBuffer()
    const result = this.request(op, 0, 0, null, null, out)
    if (result == SyncError.unset) return null
    if (result < 0) misuse(this.label + "." + call, result)
    if (result > out.byteLength) misuse(this.label + "." + call, SyncError.tooLarge)
    return out.slice(0, result)
  }
}

/** A variable every thread of the context sees: bytes, with typed helpers for i64, f64 and strings. */
export class SharedVar extends Named {
  constructor(name: string, context: Context = globalContext) {
    super("SharedVar", name, context)
  }

  /** The value, or null when it was never set. */
  get(): ArrayBuffer | null {
    return this.getBytes(opVarGet, "get")
  }

  set(value: ArrayBuffer): void {
    checkValue(value, this.label + ".set")
    const result = this.request(opVarSet, 0, 0, value, null, null)
    if (result < 0) misuse(this.label + ".set", result)
  }

  /**
   * Sets `replacement` if the value is now `expected` (null: if it is unset); true when it did.
   * Atomic: no other write falls between the comparison and the swap.
   */
  compareAndSwap(expected: ArrayBuffer | null, replacement: ArrayBuffer): bool {
    checkValue(expected, this.label + ".compareAndSwap")
    checkValue(replacement, this.label + ".compareAndSwap")
    const result = this.request(opVarCas, expected == null ? 1 : 0, 0, expected, replacement, null)
    if (result < 0) misuse(this.label + ".compareAndSwap", result)
    return result == 1
  }

  /** Adds `delta` to the i64 value (unset counts as 0) atomically and returns the new value. */
  add(delta: i64): i64 {
    const result = this.request(opVarAdd, delta, 0, null, null, wordReply)
    if (result < 0) misuse(this.label + ".add(" + delta.toString() + ")", result)
    if (result != 8) misuse(this.label + ".add", result)
    return load<i64>(changetype<usize>(wordReply))
  }

  /** The value as an i64, or `unsetValue` when unset; aborts when it is not 8 bytes. */
  getI64(unsetValue: i64 = 0): i64 {
    const bytes = this.get()
    return bytes == null ? unsetValue : bytesToI64(bytes, this.label + ".getI64")
  }

  setI64(value: i64): void {
    this.set(i64Bytes(value))
  }

  /** Compare-and-swap on i64 values; an unset variable counts as 0, as it does for `add`. */
  compareAndSwapI64(expected: i64, replacement: i64): bool {
    if (expected == 0 && this.compareAndSwap(null, i64Bytes(replacement))) return true
    return this.compareAndSwap(i64Bytes(expected), i64Bytes(replacement))
  }

  getF64(unsetValue: f64 = 0): f64 {
    const bytes = this.get()
    return bytes == null ? unsetValue : bytesToF64(bytes, this.label + ".getF64")
  }

  setF64(value: f64): void {
    this.set(f64Bytes(value))
  }

  /** Compare-and-swap on f64 values (bit for bit); an unset variable counts as 0.0. */
  compareAndSwapF64(expected: f64, replacement: f64): bool {
    if (reinterpret<i64>(expected) == 0 && this.compareAndSwap(null, f64Bytes(replacement))) return true
    return this.compareAndSwap(f64Bytes(expected), f64Bytes(replacement))
  }

  /** The value as UTF-8 text, or null when unset. */
  getString(): string | null {
    const bytes = this.get()
    return bytes == null ? null : String.UTF8.decode(bytes)
  }

  setString(value: string): void {
    this.set(String.UTF8.encode(value))
  }

  /** Compare-and-swap on text; `expected` null means "unset". */
  compareAndSwapString(expected: string | null, replacement: string): bool {
    let expectedBytes: ArrayBuffer | null = null
    if (expected != null) expectedBytes = String.UTF8.encode(expected)
    return this.compareAndSwap(expectedBytes, String.UTF8.encode(replacement))
  }
}

/**
 * A lock with a lease: held until released or until its TTL runs out without a renewal (so a
 * holder that died frees it). Each new holder gets a fencing token larger than any before; pass it
 * to `FencedVar.set` so that a holder whose lease ran out cannot overwrite a newer holder's work.
 */
export class Lock extends Named {
  /** The fencing token of the current hold, 0 when this object does not hold the lock. */
  token: i64 = 0

  constructor(name: string, context: Context = globalContext) {
    super("Lock", name, context)
  }

  get held(): bool {
    return this.token != 0
  }

  private checkTtl(call: string, ttlMs: i64): void {
    if (ttlMs <= 0) {
      throw new Error(this.label + "." + call + ": a TTL of " + ttlMs.toString() + " ms; it must be positive (and within the runtime's bounds)")
    }
  }

  private acquireCall(call: string, ttlMs: i64, timeoutMs: i64): bool {
    this.checkTtl(call, ttlMs)
    const result = this.request(opLockAcquire, ttlMs, timeoutMs, null, null, wordReply)
    if (result == SyncError.timeout) return false
    if (result == SyncError.invalid) {
      throw new Error(this.label + "." + call + ": the runtime refused a TTL of " + ttlMs.toString() +
        " ms (or a timeout of " + timeoutMs.toString() + " ms) as out of its bounds")
    }
    if (result < 0) misuse(this.label + "." + call, result)
    if (result != 8) misuse(this.label + "." + call, result)
    this.token = load<i64>(changetype<usize>(wordReply))
    return true
  }

  /** Waits until the lock is free, takes it for `ttlMs` and returns the fencing token. */
  acquire(ttlMs: i64): i64 {
    this.acquireCall("acquire", ttlMs, waitForever)
    return this.token
  }

  /** Like `acquire`, but gives up after `timeoutMs`: true when the lock is held (token in `token`). */
  acquireWithin(ttlMs: i64, timeoutMs: i64): bool {
    if (timeoutMs < 0) {
      throw new Error(this.label + ".acquireWithin: a timeout of " + timeoutMs.toString() +
        " ms; use acquire() to wait for ever")
    }
    return this.acquireCall("acquireWithin", ttlMs, timeoutMs)
  }

  /** Takes the lock only if it is free now: true when held (token in `token`). */
  tryAcquire(ttlMs: i64): bool {
    return this.acquireCall("tryAcquire", ttlMs, noWait)
  }

  /** Extends the lease to `ttlMs` from now; false when it had already run out (the lock is lost). */
  renew(ttlMs: i64): bool {
    if (this.token == 0) throw new Error(this.label + ".renew: this thread has not acquired the lock")
    this.checkTtl("renew", ttlMs)
    const result = this.request(opLockRenew, this.token, ttlMs, null, null, null)
    if (result == SyncError.notHolder) {
      this.token = 0
      return false
    }
    if (result == SyncError.invalid) {
      throw new Error(this.label + ".renew: the runtime refused a TTL of " + ttlMs.toString() + " ms as out of its bounds")
    }
    if (result < 0) misuse(this.label + ".renew", result)
    return true
  }

  /**
   * Releases the lock. False when its lease had already run out (another thread may have taken it
   * since: what this thread wrote with the token after that was refused by fenced variables).
   */
  release(): bool {
    if (this.token == 0) {
      throw new Error(this.label + ".release: this thread does not hold the lock (it has not acquired it, or released it already)")
    }
    const result = this.request(opLockRelease, this.token, 0, null, null, null)
    this.token = 0
    if (result == SyncError.notHolder) return false
    if (result < 0) misuse(this.label + ".release", result)
    return true
  }
}

/** A variable whose writes carry a fencing token: a write with a token older than the newest seen is refused. */
/** What `FencedVar.getAsHolder` read: stale (a newer holder read or wrote), or the value. */
export class FencedRead {
  readonly stale: bool
  readonly value: ArrayBuffer | null

  constructor(stale: bool, value: ArrayBuffer | null) {
    this.stale = stale
    this.value = value
  }
}

export class FencedVar extends Named {
  constructor(name: string, context: Context = globalContext) {
    super("FencedVar", name, context)
  }

  /** The value, or null when it was never set. */
  get(): ArrayBuffer | null {
    return this.getBytes(opFencedGet, "get")
  }

  /**
   * Reads as the holder of the lock whose `token` (from `Lock.acquire`) is given. From this read on,
   * a write with an older token is refused: a holder whose lease ran out while it held on cannot
   * overwrite what this one computes from what it read. `stale` when a newer holder read or wrote
   * (this thread lost the lock: take it again); else `value` (null when unset).
   */
  getAsHolder(token: i64): FencedRead {
    const out = valueReplyBuffer()
    const result = this.request(opFencedGet, token, 0, null, null, out)
    if (result == SyncError.staleToken) return new FencedRead(true, null)
    if (result == SyncError.unset) return new FencedRead(false, null)
    if (result < 0) misuse(this.label + ".getAsHolder", result)
    if (result > out.byteLength) misuse(this.label + ".getAsHolder", SyncError.tooLarge)
    return new FencedRead(false, out.slice(0, result))
  }

  /** Writes `value` with `token` (from `Lock.acquire`); false when a newer token was seen (stale). */
  set(token: i64, value: ArrayBuffer): bool {
    checkValue(value, this.label + ".set")
    const result = this.request(opFencedSet, token, 0, value, null, null)
    if (result == SyncError.staleToken) return false
    if (result < 0) misuse(this.label + ".set", result)
    return true
  }

  getI64(unsetValue: i64 = 0): i64 {
    const bytes = this.get()
    return bytes == null ? unsetValue : bytesToI64(bytes, this.label + ".getI64")
  }

  setI64(token: i64, value: i64): bool {
    return this.set(token, i64Bytes(value))
  }

  getF64(unsetValue: f64 = 0): f64 {
    const bytes = this.get()
    return bytes == null ? unsetValue : bytesToF64(bytes, this.label + ".getF64")
  }

  setF64(token: i64, value: f64): bool {
    return this.set(token, f64Bytes(value))
  }

  getString(): string | null {
    const bytes = this.get()
    return bytes == null ? null : String.UTF8.decode(bytes)
  }

  setString(token: i64, value: string): bool {
    return this.set(token, String.UTF8.encode(value))
  }
}

/**
 * A FIFO queue of byte items with a bounded length, shared by the context's threads. Every item
 * is delivered to exactly one `pop`, also across crashes. After `close`, pushes are refused and
 * pops drain what is left, then report `closed`.
 */
export class Queue extends Named {
  /** Items the queue holds at most; 0 takes the runtime's default. */
  readonly capacity: i64
  /** The item of the last successful pop. */
  item: ArrayBuffer = new ArrayBuffer(0)

  constructor(name: string, capacity: i64 = 0, context: Context = globalContext) {
    super("Queue", name, context)
    if (capacity < 0) {
      throw new Error(this.label + ": a capacity of " + capacity.toString() + " items; use 0 for the default or a positive number")
    }
    this.capacity = capacity
  }

  private pushCall(call: string, item: ArrayBuffer, timeoutMs: i64): QueueStatus {
    checkValue(item, this.label + "." + call)
    const result = this.request(opQueuePush, this.capacity, timeoutMs, item, null, null)
    if (result == SyncError.full) return QueueStatus.full
    if (result == SyncError.timeout) return QueueStatus.full
    if (result == SyncError.closed) return QueueStatus.closed
    if (result == SyncError.invalid) {
      throw new Error(this.label + "." + call + ": the runtime refused a capacity of " + this.capacity.toString() +
        " items (or a timeout of " + timeoutMs.toString() + " ms) as out of its bounds")
    }
    if (result < 0) misuse(this.label + "." + call, result)
    return QueueStatus.ok
  }

  /** Appends `item`, waiting while the queue is full; `closed` when the queue was closed. */
  push(item: ArrayBuffer): QueueStatus {
    return this.pushCall("push", item, waitForever)
  }

  /** Appends `item`, waiting at most `timeoutMs` while full (0: not at all): ok, full or closed. */
  pushWithin(item: ArrayBuffer, timeoutMs: i64): QueueStatus {
    if (timeoutMs < 0) throw new Error(this.label + ".pushWithin: a timeout of " + timeoutMs.toString() + " ms; use push() to wait for ever")
    return this.pushCall("pushWithin", item, timeoutMs)
  }

  /** Appends `item` only if there is room now: ok, full or closed. */
  tryPush(item: ArrayBuffer): QueueStatus {
    return this.pushCall("tryPush", item, noWait)
  }

  private popCall(call: string, timeoutMs: i64): QueueStatus {
    const out = valueReplyBuffer()
    const result = this.request(opQueuePop, timeoutMs, 0, null, null, out)
    if (result == SyncError.timeout) return QueueStatus.timeout
    if (result == SyncError.closed) return QueueStatus.closed
    if (result < 0) misuse(this.label + "." + call, result)
    if (result > out.byteLength) misuse(this.label + "." + call, SyncError.tooLarge)
    this.item = out.slice(0, result)
    return QueueStatus.ok
  }

  /** Takes the oldest item into `item`, waiting while the queue is empty: ok, or closed (closed and empty). */
  pop(): QueueStatus {
    return this.popCall("pop", waitForever)
  }

  /** Like `pop`, waiting at most `timeoutMs`: ok, timeout or closed. */
  popWithin(timeoutMs: i64): QueueStatus {
    if (timeoutMs < 0) throw new Error(this.label + ".popWithin: a timeout of " + timeoutMs.toString() + " ms; use pop() to wait for ever")
    return this.popCall("popWithin", timeoutMs)
  }

  /** Takes the oldest item into `item` only if there is one now: ok, timeout (empty) or closed. */
  tryPop(): QueueStatus {
    return this.popCall("tryPop", noWait)
  }

  pushI64(value: i64): QueueStatus {
    return this.push(i64Bytes(value))
  }

  pushString(value: string): QueueStatus {
    return this.push(String.UTF8.encode(value))
  }

  /** The last popped item as an i64. */
  itemI64(): i64 {
    return bytesToI64(this.item, this.label + ".itemI64")
  }

  itemString(): string {
    return String.UTF8.decode(this.item)
  }

  /** Refuses further pushes; waiting pops return `closed` once the queue is empty. */
  close(): void {
    const result = this.request(opQueueClose, 0, 0, null, null, null)
    if (result < 0) misuse(this.label + ".close", result)
  }

  /** The number of items in the queue now. */
  get length(): i64 {
    const result = this.request(opQueueLength, 0, 0, null, null, null)
    if (result < 0) misuse(this.label + ".length", result)
    return result
  }
}

/** A reusable barrier: `wait` returns when `parties` threads of the context have arrived. */
export class Barrier extends Named {
  readonly parties: i32

  constructor(name: string, parties: i32, context: Context = globalContext) {
    super("Barrier", name, context)
    if (parties < 1) throw new Error(this.label + ": " + parties.toString() + " parties; a barrier needs at least 1")
    this.parties = parties
  }

  /** Waits for the others and returns the round number (0 for the first round, then 1, ...). */
  wait(): i32 {
    const result = this.request(opBarrierWait, this.parties, 0, null, null, null)
    if (result < 0) misuse(this.label + ".wait", result)
    return result
  }
}
