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
