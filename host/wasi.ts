/**
 * WASI preview 1 for guests: args, environment, clocks, random, stdio and exit, inside the worker.
 * File calls go through `FileCalls` (a bridge to the embedding's file system); without one, a guest
 * sees no preopened directories and every path call fails with ENOENT or EBADF.
 */

export const errno = {
  success: 0,
  badf: 8,
  fault: 21,
  inval: 28,
  io: 29,
  noent: 44,
  nosys: 52,
  notsup: 58,
} as const

export const clockRealtime = 0
export const clockMonotonic = 1

/** Raised by proc_exit; unwinds the guest's stack to the thread runner. */
export class ExitSignal {
  readonly code: number
  constructor(code: number) {
    this.code = code
  }
}

export interface WasiContext {
  memory(): WebAssembly.Memory
  /**
   * The host wrote `length` bytes of guest memory at `pointer`. Stores of the guest mark their
   * pages for the next incremental save; the host's own writes must say so here, or a thread
   * restored from a later save would miss them.
   */
  written(pointer: number, length: number): void
  args: readonly string[]
  env: readonly string[]
  /** stdout (1) and stderr (2). */
  writeOutput(fd: number, bytes: Uint8Array): void
  /** Current time of a clock in ns; the caller logs it so a replay sees the same value. */
  clockNs(clockId: number): bigint
  /** Fills `target` with this thread's deterministic random stream. */
  fillRandom(target: Uint8Array): void
  /** File calls; may return a Promise (the guest is then suspended). */
  files: FileCalls | null
}

export type WasiResult = number | Promise<number>

/** What the embedding's file bridge implements: WASI file functions over guest memory. */
export type FileCalls = Record<string, (...args: number[]) => WasiResult>

const encoder = new TextEncoder()

function writeStringTable(
  context: WasiContext,
  strings: readonly string[],
  pointers: number,
  buffer: number,
) {
  const memory = context.memory()
  const view = new DataView(memory.buffer)
  const bytes = new Uint8Array(memory.buffer)
  let cursor = buffer
  strings.forEach((value, index) => {
    const encoded = encoder.encode(value)
    view.setUint32(pointers + index * 4, cursor, true)
    bytes.set(encoded, cursor)
    bytes[cursor + encoded.length] = 0
    cursor += encoded.length + 1
  })
  context.written(pointers, strings.length * 4)
  context.written(buffer, cursor - buffer)
  return errno.success
}

function tableSizes(
  context: WasiContext,
  strings: readonly string[],
  countPointer: number,
  sizePointer: number,
) {
  const view = new DataView(context.memory().buffer)
  view.setUint32(countPointer, strings.length, true)
  view.setUint32(
    sizePointer,
    strings.reduce((sum, value) => sum + encoder.encode(value).length + 1, 0),
    true,
  )
  context.written(countPointer, 4)
  context.written(sizePointer, 4)
  return errno.success
}

export function gatherIovecs(memory: WebAssembly.Memory, iovs: number, iovsLength: number): Uint8Array {
  const view = new DataView(memory.buffer)
  const parts: Uint8Array[] = []
  let total = 0
  for (let index = 0; index < iovsLength; index++) {
    const pointer = view.getUint32(iovs + index * 8, true)
    const length = view.getUint32(iovs + index * 8 + 4, true)
    parts.push(new Uint8Array(memory.buffer, pointer, length))
    total += length
  }
  const out = new Uint8Array(total)
  let offset = 0
  for (const part of parts) {
    out.set(part, offset)
    offset += part.length
  }
  return out
}

export function createWasi(context: WasiContext): Record<string, (...args: never[]) => WasiResult> {
  const memory = () => context.memory()
  const files = context.files
  const file = (name: string, fallback: number) => files?.[name] ?? ((..._args: number[]) => fallback)

  const core: Record<string, (...args: number[]) => WasiResult> = {
    args_sizes_get: (count, size) => tableSizes(context, context.args, count, size),
    args_get: (pointers, buffer) => writeStringTable(context, context.args, pointers, buffer),
    environ_sizes_get: (count, size) => tableSizes(context, context.env, count, size),
    environ_get: (pointers, buffer) => writeStringTable(context, context.env, pointers, buffer),
    clock_res_get: (_clock, result) => {
      new DataView(memory().buffer).setBigUint64(result, 1000n, true)
      context.written(result, 8)
      return errno.success
    },
    clock_time_get: (clock, _precision, result) => {
      if (clock !== clockRealtime && clock !== clockMonotonic) return errno.inval
      new DataView(memory().buffer).setBigUint64(result, context.clockNs(clock), true)
      context.written(result, 8)
      return errno.success
    },
    random_get: (buffer, length) => {
      context.fillRandom(new Uint8Array(memory().buffer, buffer, length))
      context.written(buffer, length)
      return errno.success
    },
    proc_exit: (code) => {
      throw new ExitSignal(code)
    },
    sched_yield: () => errno.success,
    fd_write: (fd, iovs, iovsLength, written) => {
      if (fd === 1 || fd === 2) {
        const bytes = gatherIovecs(memory(), iovs, iovsLength)
        new DataView(memory().buffer).setUint32(written, bytes.length, true)
        context.written(written, 4)
        context.writeOutput(fd, bytes) // may transfer `bytes` away
        return errno.success
      }
      return file('fd_write', errno.badf)(fd, iovs, iovsLength, written)
    },
    fd_fdstat_get: (fd, result) => {
      if (fd <= 2) {
        const view = new DataView(memory().buffer)
        view.setUint8(result, 2) // character device
        view.setUint16(result + 2, 0, true)
        view.setBigUint64(result + 8, 0xffffn, true)
        view.setBigUint64(result + 16, 0xffffn, true)
        context.written(result, 24)
        return errno.success
      }
      return file('fd_fdstat_get', errno.badf)(fd, result)
    },
    fd_prestat_get: (fd, result) => file('fd_prestat_get', errno.badf)(fd, result),
    fd_prestat_dir_name: (fd, path, length) => file('fd_prestat_dir_name', errno.badf)(fd, path, length),
    fd_close: (fd) => (fd <= 2 ? errno.success : file('fd_close', errno.badf)(fd)),
    fd_seek: (fd, offset, whence, result) =>
      fd <= 2 ? errno.badf : file('fd_seek', errno.badf)(fd, offset, whence, result),
    fd_read: (fd, iovs, iovsLength, read) => {
      if (fd === 0) {
        new DataView(memory().buffer).setUint32(read, 0, true)
        context.written(read, 4)
        return errno.success
      }
      return file('fd_read', errno.badf)(fd, iovs, iovsLength, read)
    },
    poll_oneoff: (_in, _out, _count, _events) => errno.notsup,
  }
  return new Proxy(core, {
    get(target, name: string) {
      // Calls we do not implement fail with ENOSYS instead of refusing the module.
      return target[name] ?? files?.[name] ?? (() => errno.nosys)
    },
  }) as Record<string, (...args: never[]) => WasiResult>
}
