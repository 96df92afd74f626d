/**
 * WASI preview 1 file calls inside the worker: marshals guest memory into host calls that the
 * embedding's `GuestFileSystem` answers (host/files.ts), and writes the replies back into guest
 * memory. The guest is suspended until the reply comes. Descriptor tables live with the embedding,
 * not here, so a thread restored in a fresh worker finds its open files where it left them. Only the
 * preopened directories (and fd_advise, a mere hint) are answered here: wasi-libc asks for the
 * preopens synchronously at start, before any reply could arrive.
 *
 * Encoding of a host call (module `wasi_snapshot_preview1`, name = the WASI function):
 *
 * | name | args | payload in | reply payload |
 * | --- | --- | --- | --- |
 * | path_open | directoryFd, lookupFlags, openFlags, rights (low 32 bits), fdFlags | path | fd (u32) |
 * | fd_read | fd, capacity | - | bytes read |
 * | fd_pread | fd, capacity, offset | - | bytes read |
 * | fd_write | fd | bytes | count written (u32) |
 * | fd_pwrite | fd, offset | bytes | count written (u32) |
 * | fd_seek | fd, offset, whence | - | new offset (u64) |
 * | fd_tell | fd | - | offset (u64) |
 * | fd_close, fd_sync, fd_datasync | fd | - | - |
 * | fd_fdstat_get | fd | - | fdstat (24 bytes, WASI layout) |
 * | fd_fdstat_set_flags | fd, fdFlags | - | - |
 * | fd_filestat_get | fd | - | filestat (64 bytes, WASI layout) |
 * | fd_filestat_set_size | fd, size | - | - |
 * | fd_filestat_set_times | fd, accessNs, modifyNs, timeFlags | - | - |
 * | path_filestat_get | directoryFd, lookupFlags | path | filestat (64 bytes) |
 * | fd_readdir | fd, capacity, cookie | - | dirents (WASI layout, last one possibly cut) |
 * | path_create_directory, path_remove_directory, path_unlink_file | directoryFd | path | - |
 * | path_rename | directoryFd, newDirectoryFd, old path length | old path, then new path | - |
 *
 * The reply's `result` is a WASI errno. Offsets and sizes travel as numbers (exact below 2^53).
 */

import type { FileCalls, WasiResult } from './wasi.ts'

/** Longest path a guest may pass, in bytes. */
export const pathBytesMax = 4096
/** Bytes that one read or write moves at most; a larger request is a short read or write. */
export const transferBytesMax = 1024 * 1024
/** The first preopened directory's descriptor (0-2 are stdio). */
export const firstPreopenFd = 3

/** WASI preview 1 errno values (wasi_snapshot_preview1 `errno`). */
export const wasiErrno = {
  success: 0,
  access: 2,
  again: 6,
  badf: 8,
  busy: 10,
  exist: 20,
  fault: 21,
  fbig: 22,
  inval: 28,
  io: 29,
  isdir: 31,
  loop: 32,
  mfile: 33,
  nametoolong: 37,
  nfile: 41,
  noent: 44,
  nomem: 48,
  nospc: 51,
  nosys: 52,
  notdir: 54,
  notempty: 55,
  notsup: 58,
  overflow: 61,
  perm: 63,
  rofs: 69,
  spipe: 70,
  xdev: 75,
  notcapable: 76,
} as const

export const wasiFileType = {
  unknown: 0,
  blockDevice: 1,
  characterDevice: 2,
  directory: 3,
  regularFile: 4,
  socketStream: 6,
  symbolicLink: 7,
} as const

export const wasiOpenFlags = { create: 1, directory: 2, exclusive: 4, truncate: 8 } as const
export const wasiFdFlags = { append: 1, nonblock: 4 } as const
export const wasiLookupSymlinkFollow = 1
export const wasiWhence = { set: 0, current: 1, end: 2 } as const
export const wasiTimeFlags = { access: 1, accessNow: 2, modify: 4, modifyNow: 8 } as const

export const wasiRights = {
  fdRead: 1 << 1,
  fdWrite: 1 << 6,
  /** Every right WASI preview 1 defines (bits 0-28); the host checks access itself. */
  all: 0x1fffffff,
} as const

export const fdstatBytes = 24
export const filestatBytes = 64
export const direntHeaderBytes = 24
const prestatBytes = 8
const prestatTagDirectory = 0

/** A WASI `fdstat` as the host encodes it in a reply. */
export function encodeFdstat(options: { fileType: number; append: boolean }): Uint8Array {
  const out = new Uint8Array(fdstatBytes)
  const view = new DataView(out.buffer)
  view.setUint8(0, options.fileType)
  view.setUint16(2, options.append ? wasiFdFlags.append : 0, true)
  view.setBigUint64(8, BigInt(wasiRights.all), true)
  view.setBigUint64(16, BigInt(wasiRights.all), true)
  return out
}

export interface FileStatus {
  device: bigint
  inode: bigint
  fileType: number
  linkCount: bigint
  size: bigint
  accessNs: bigint
  modifyNs: bigint
  changeNs: bigint
}

/** A WASI `filestat` as the host encodes it in a reply. */
export function encodeFilestat(status: FileStatus): Uint8Array {
  const out = new Uint8Array(filestatBytes)
  const view = new DataView(out.buffer)
  view.setBigUint64(0, BigInt.asUintN(64, status.device), true)
  view.setBigUint64(8, BigInt.asUintN(64, status.inode), true)
  view.setUint8(16, status.fileType)
  view.setBigUint64(24, status.linkCount, true)
  view.setBigUint64(32, status.size, true)
  // Times before 1970 are negative; WASI timestamps are unsigned, so they wrap as in C.
  view.setBigUint64(40, BigInt.asUintN(64, status.accessNs), true)
  view.setBigUint64(48, BigInt.asUintN(64, status.modifyNs), true)
  view.setBigUint64(56, BigInt.asUintN(64, status.changeNs), true)
  return out
}

/** A WASI `dirent` header; the entry's name follows it. */
export function encodeDirentHeader(options: {
  nextCookie: number
  inode: bigint
  nameBytes: number
  fileType: number
}): Uint8Array {
  const out = new Uint8Array(direntHeaderBytes)
  const view = new DataView(out.buffer)
  view.setBigUint64(0, BigInt(options.nextCookie), true)
  view.setBigUint64(8, BigInt.asUintN(64, options.inode), true)
  view.setUint32(16, options.nameBytes, true)
  view.setUint8(20, options.fileType)
  return out
}

export function encodeUint32(value: number): Uint8Array {
  const out = new Uint8Array(4)
  new DataView(out.buffer).setUint32(0, value, true)
  return out
}

export function encodeUint64(value: number): Uint8Array {
  const out = new Uint8Array(8)
  new DataView(out.buffer).setBigUint64(0, BigInt(value), true)
  return out
}

export interface FileCallBridge {
  memory(): WebAssembly.Memory
  /** The host wrote guest memory here (see `WasiContext.written`). */
  written(pointer: number, length: number): void
  /** Guest names of the preopened directories, for fds 3, 4, ... */
  preopens: readonly string[]
  /** Sends a call to the embedding; the reply's `result` is a WASI errno, `payload` any data. */
  callHost(
    name: string,
    args: number[],
    payload: Uint8Array | null,
  ): Promise<{ result: number; payload: Uint8Array | null }>
}

/** Raised inside a call when the guest passed memory it does not have; answered with EFAULT. */
class GuestFault {
  readonly errno: number
  constructor(errno: number = wasiErrno.fault) {
    this.errno = errno
  }
}

interface Span {
  pointer: number
  length: number
}

/**
 * An i64 parameter: a BigInt from the engine, or a number when a restored thread reissues its
 * pending call (saves keep arguments as numbers).
 */
function integer64(value: number | bigint): number {
  return Number(value)
}

export function createFileCalls(bridge: FileCallBridge): FileCalls {
  const encoder = new TextEncoder()
  const preopenNames = bridge.preopens.map((name) => encoder.encode(name))
  const preopenIndex = (fd: number) => {
    const index = fd - firstPreopenFd
    return index >= 0 && index < preopenNames.length ? index : -1
  }

  const buffer = () => bridge.memory().buffer
  const checkSpan = (pointer: number, length: number) => {
    if (pointer < 0 || length < 0 || pointer + length > buffer().byteLength) throw new GuestFault()
  }
  const readPath = (pointer: number, length: number): Uint8Array => {
    if (length > pathBytesMax) throw new GuestFault(wasiErrno.nametoolong)
    checkSpan(pointer, length)
    return new Uint8Array(buffer(), pointer, length).slice()
  }
  const readSpans = (iovs: number, iovsLength: number): Span[] => {
    checkSpan(iovs, iovsLength * 8)
    const view = new DataView(buffer())
    const spans: Span[] = []
    for (let index = 0; index < iovsLength; index++) {
      const pointer = view.getUint32(iovs + index * 8, true)
      const length = view.getUint32(iovs + index * 8 + 4, true)
      checkSpan(pointer, length)
      spans.push({ pointer, length })
    }
    return spans
  }
  const capacityOf = (spans: Span[]) =>
    Math.min(
      transferBytesMax,
      spans.reduce((sum, span) => sum + span.length, 0),
    )
  const gather = (spans: Span[]): Uint8Array => {
    const out = new Uint8Array(capacityOf(spans))
    const memory = new Uint8Array(buffer())
    let offset = 0
    for (const span of spans) {
      const take = Math.min(span.length, out.length - offset)
      out.set(memory.subarray(span.pointer, span.pointer + take), offset)
      offset += take
      if (offset === out.length) break
    }
    return out
  }
  const scatter = (spans: Span[], data: Uint8Array) => {
    const memory = new Uint8Array(buffer())
    let offset = 0
    for (const span of spans) {
      const take = Math.min(span.length, data.length - offset)
      memory.set(data.subarray(offset, offset + take), span.pointer)
      bridge.written(span.pointer, take)
      offset += take
      if (offset === data.length) break
    }
  }
  const writeUint32 = (pointer: number, value: number) => {
    new DataView(buffer()).setUint32(pointer, value, true)
    bridge.written(pointer, 4)
  }
  const copyOut = (pointer: number, data: Uint8Array | null, expectedBytes: number) => {
    if (data === null || data.length !== expectedBytes)
      throw new Error(`bug: file call reply has ${data?.length ?? 0} bytes, expected ${expectedBytes}`)
    new Uint8Array(buffer()).set(data, pointer)
    bridge.written(pointer, data.length)
  }

  /**
   * Runs one call: `prepare` reads guest memory (a bad pointer answers EFAULT at once), the host
   * answers, `finish` writes the reply into guest memory when the call succeeded.
   */
  const call = (
    prepare: () => { name: string; args: number[]; payload: Uint8Array | null },
    finish: (payload: Uint8Array | null) => void = () => {},
  ): WasiResult => {
    let request: { name: string; args: number[]; payload: Uint8Array | null }
    try {
      request = prepare()
    } catch (error) {
      if (error instanceof GuestFault) return error.errno
      throw error
    }
    return bridge.callHost(request.name, request.args, request.payload).then((reply) => {
      if (reply.result !== wasiErrno.success) return reply.result
      try {
        finish(reply.payload)
      } catch (error) {
        if (error instanceof GuestFault) return error.errno
        throw error
      }
      return wasiErrno.success
    })
  }
  const simple = (name: string) => (fd: number) => call(() => ({ name, args: [fd], payload: null }))
  const pathCall =
    (name: string) =>
    (directoryFd: number, pathPointer: number, pathLength: number): WasiResult =>
      call(() => ({ name, args: [directoryFd], payload: readPath(pathPointer, pathLength) }))

  return {
    fd_prestat_get: (fd, result) => {
      const index = preopenIndex(fd)
      if (index < 0) return wasiErrno.badf
      if (result + prestatBytes > buffer().byteLength) return wasiErrno.fault
      const view = new DataView(buffer())
      view.setUint8(result, prestatTagDirectory)
      view.setUint32(result + 4, preopenNames[index]!.length, true)
      bridge.written(result, prestatBytes)
      return wasiErrno.success
    },
    fd_prestat_dir_name: (fd, pointer, length) => {
      const index = preopenIndex(fd)
      if (index < 0) return wasiErrno.badf
      const name = preopenNames[index]!
      if (length < name.length) return wasiErrno.nametoolong
      if (pointer + name.length > buffer().byteLength) return wasiErrno.fault
      new Uint8Array(buffer()).set(name, pointer)
      bridge.written(pointer, name.length)
      return wasiErrno.success
    },
    fd_fdstat_get: (fd, result) => {
      if (preopenIndex(fd) >= 0) {
        // Answered here: wasi-libc asks for the preopen's rights before every open.
        if (result + fdstatBytes > buffer().byteLength) return wasiErrno.fault
        new Uint8Array(buffer()).set(
          encodeFdstat({ fileType: wasiFileType.directory, append: false }),
          result,
        )
        bridge.written(result, fdstatBytes)
        return wasiErrno.success
      }
      return call(
        () => {
          checkSpan(result, fdstatBytes)
          return { name: 'fd_fdstat_get', args: [fd], payload: null }
        },
        (payload) => copyOut(result, payload, fdstatBytes),
      )
    },
    fd_fdstat_set_flags: (fd, flags) =>
      call(() => ({ name: 'fd_fdstat_set_flags', args: [fd, flags], payload: null })),
    path_open: (
      directoryFd,
      lookupFlags,
      pathPointer,
      pathLength,
      openFlags,
      rightsBase,
      _rightsInheriting,
      fdFlags,
      openedFd,
    ) =>
      call(
        () => {
          checkSpan(openedFd, 4)
          const rights = Number(BigInt(rightsBase) & 0xffffffffn)
          return {
            name: 'path_open',
            args: [directoryFd, lookupFlags, openFlags, rights, fdFlags],
            payload: readPath(pathPointer, pathLength),
          }
        },
        (payload) => copyOut(openedFd, payload, 4),
      ),
    fd_read: (fd, iovs, iovsLength, readCount) => {
      let spans: Span[] = []
      return call(
        () => {
          checkSpan(readCount, 4)
          spans = readSpans(iovs, iovsLength)
          return { name: 'fd_read', args: [fd, capacityOf(spans)], payload: null }
        },
        (payload) => {
          const data = payload ?? new Uint8Array(0)
          scatter(spans, data)
          writeUint32(readCount, data.length)
        },
      )
    },
    fd_pread: (fd, iovs, iovsLength, offset, readCount) => {
      let spans: Span[] = []
      return call(
        () => {
          checkSpan(readCount, 4)
          spans = readSpans(iovs, iovsLength)
          return { name: 'fd_pread', args: [fd, capacityOf(spans), integer64(offset)], payload: null }
        },
        (payload) => {
          const data = payload ?? new Uint8Array(0)
          scatter(spans, data)
          writeUint32(readCount, data.length)
        },
      )
    },
    fd_write: (fd, iovs, iovsLength, writtenCount) =>
      call(
        () => {
          checkSpan(writtenCount, 4)
          return { name: 'fd_write', args: [fd], payload: gather(readSpans(iovs, iovsLength)) }
        },
        (payload) => copyOut(writtenCount, payload, 4),
      ),
    fd_pwrite: (fd, iovs, iovsLength, offset, writtenCount) =>
      call(
        () => {
          checkSpan(writtenCount, 4)
          return {
            name: 'fd_pwrite',
            args: [fd, integer64(offset)],
            payload: gather(readSpans(iovs, iovsLength)),
          }
        },
        (payload) => copyOut(writtenCount, payload, 4),
      ),
    fd_seek: (fd, offset, whence, newOffset) =>
      call(
        () => {
          checkSpan(newOffset, 8)
          return { name: 'fd_seek', args: [fd, integer64(offset), whence], payload: null }
        },
        (payload) => copyOut(newOffset, payload, 8),
      ),
    fd_tell: (fd, offset) =>
      call(
        () => {
          checkSpan(offset, 8)
          return { name: 'fd_tell', args: [fd], payload: null }
        },
        (payload) => copyOut(offset, payload, 8),
      ),
    fd_close: (fd) => {
      // wasi-libc resolves every path against the preopens; closing one would strand the guest.
      if (preopenIndex(fd) >= 0) return wasiErrno.notsup
      return call(() => ({ name: 'fd_close', args: [fd], payload: null }))
    },
    fd_sync: simple('fd_sync'),
    fd_datasync: simple('fd_datasync'),
    fd_filestat_get: (fd, result) =>
      call(
        () => {
          checkSpan(result, filestatBytes)
          return { name: 'fd_filestat_get', args: [fd], payload: null }
        },
        (payload) => copyOut(result, payload, filestatBytes),
      ),
    fd_filestat_set_size: (fd, size) =>
      call(() => ({ name: 'fd_filestat_set_size', args: [fd, integer64(size)], payload: null })),
    fd_filestat_set_times: (fd, accessNs, modifyNs, timeFlags) =>
      call(() => ({
        name: 'fd_filestat_set_times',
        args: [fd, integer64(accessNs), integer64(modifyNs), timeFlags],
        payload: null,
      })),
    path_filestat_get: (directoryFd, lookupFlags, pathPointer, pathLength, result) =>
      call(
        () => {
          checkSpan(result, filestatBytes)
          return {
            name: 'path_filestat_get',
            args: [directoryFd, lookupFlags],
            payload: readPath(pathPointer, pathLength),
          }
        },
        (payload) => copyOut(result, payload, filestatBytes),
      ),
    fd_readdir: (fd, pointer, length, cookie, usedCount) =>
      call(
        () => {
          checkSpan(pointer, length)
          checkSpan(usedCount, 4)
          return {
            name: 'fd_readdir',
            args: [fd, Math.min(length, transferBytesMax), integer64(cookie)],
            payload: null,
          }
        },
        (payload) => {
          const data = payload ?? new Uint8Array(0)
          if (data.length > length) throw new Error('bug: fd_readdir reply exceeds the buffer')
          new Uint8Array(buffer()).set(data, pointer)
          bridge.written(pointer, data.length)
          writeUint32(usedCount, data.length)
        },
      ),
    path_create_directory: pathCall('path_create_directory'),
    path_remove_directory: pathCall('path_remove_directory'),
    path_unlink_file: pathCall('path_unlink_file'),
    path_rename: (directoryFd, oldPointer, oldLength, newDirectoryFd, newPointer, newLength) =>
      call(() => {
        const oldPath = readPath(oldPointer, oldLength)
        const newPath = readPath(newPointer, newLength)
        const payload = new Uint8Array(oldPath.length + newPath.length)
        payload.set(oldPath, 0)
        payload.set(newPath, oldPath.length)
        return { name: 'path_rename', args: [directoryFd, newDirectoryFd, oldPath.length], payload }
      }),
    // A hint only; nothing to do for a mapped directory.
    fd_advise: () => wasiErrno.success,
  }
}
