// Files for AssemblyScript guests, over WASI: on a Fabric cluster they are the cluster file system
// (preopened at "/"), with `fabric run --local --map-dir host:/data` a directory of the host.
//
//   import { writeFileString, readFileString, appendFileString, listDir, mkdir, remove, rename, stat, fsError, fsErrorName } from "fs"
//
//   mkdir("/results")
//   if (writeFileString("/results/run.txt", "42\n") != 0) print("write failed: " + fsErrorName(fsError()))
//   appendFileString("/results/run.txt", "43\n")
//   const text = readFileString("/results/run.txt")     // "42\n43\n", or null (see fsError())
//   const names = listDir("/results")                    // ["run.txt"]
//   const info = stat("/results/run.txt")                // info!.size == 6, info!.isDirectory == false
//   rename("/results/run.txt", "/results/done.txt")
//   remove("/results/done.txt"); remove("/results")
//
// AssemblyScript cannot catch exceptions, so calls report failure by their result: 0 or a WASI
// errno (ENOENT = 44, EEXIST = 20, ...) for calls that change something, null for calls that
// return data; `fsError()` is the errno of the last failed call and `fsErrorName` names it.
// Paths are absolute ("/results/run.txt") or relative to "/". Consistency on a cluster is
// close-to-open: each call here opens and closes its file, so what it wrote is visible to every
// node once it returns.

@external("wasi_snapshot_preview1", "fd_prestat_get")
declare function wasi_fd_prestat_get(fd: u32, result: usize): u16
@external("wasi_snapshot_preview1", "fd_prestat_dir_name")
declare function wasi_fd_prestat_dir_name(fd: u32, path: usize, length: u32): u16
@external("wasi_snapshot_preview1", "path_open")
declare function wasi_path_open(
  directoryFd: u32,
  lookupFlags: u32,
  path: usize,
  pathLength: u32,
  openFlags: u16,
  rightsBase: u64,
  rightsInheriting: u64,
  fdFlags: u16,
  openedFd: usize,
): u16
@external("wasi_snapshot_preview1", "fd_read")
declare function wasi_fd_read(fd: u32, iovs: usize, iovsLength: u32, readCount: usize): u16
@external("wasi_snapshot_preview1", "fd_write")
declare function wasi_fd_write(fd: u32, iovs: usize, iovsLength: u32, writtenCount: usize): u16
@external("wasi_snapshot_preview1", "fd_close")
declare function wasi_fd_close(fd: u32): u16
@external("wasi_snapshot_preview1", "fd_readdir")
declare function wasi_fd_readdir(fd: u32, buffer: usize, length: u32, cookie: u64, usedCount: usize): u16
@external("wasi_snapshot_preview1", "path_create_directory")
declare function wasi_path_create_directory(fd: u32, path: usize, length: u32): u16
@external("wasi_snapshot_preview1", "path_remove_directory")
declare function wasi_path_remove_directory(fd: u32, path: usize, length: u32): u16
@external("wasi_snapshot_preview1", "path_unlink_file")
declare function wasi_path_unlink_file(fd: u32, path: usize, length: u32): u16
@external("wasi_snapshot_preview1", "path_rename")
declare function wasi_path_rename(
  fd: u32,
  oldPath: usize,
  oldLength: u32,
  newFd: u32,
  newPath: usize,
  newLength: u32,
): u16
@external("wasi_snapshot_preview1", "path_filestat_get")
declare function wasi_path_filestat_get(fd: u32, lookupFlags: u32, path: usize, length: u32, result: usize): u16

const firstPreopenFd: u32 = 3
/** Preopened directories this module looks at, at most. */
const preopensMax: u32 = 64
const openCreate: u16 = 1
const openDirectory: u16 = 2
const openTruncate: u16 = 8
const fdFlagAppend: u16 = 1
const rightRead: u64 = 1 << 1
const rightWrite: u64 = 1 << 6
/** Read and fd_readdir: a directory opened with the write right is refused (EISDIR). */
const rightsDirectory: u64 = (1 << 1) | (1 << 14)
const fileTypeDirectory: u8 = 3
const errnoIsdir: u16 = 31
const errnoNoent: u16 = 44
const errnoPerm: u16 = 63
const errnoNotcapable: u16 = 76
/** Bytes read or written per WASI call. */
const transferBytes: i32 = 64 * 1024
const direntHeaderBytes: i32 = 24

let lastError: u16 = 0

/** The WASI errno of the last call that failed (0 if none has). */
export function fsError(): i32 {
  return lastError
}

/** A short name for a WASI errno: "ENOENT", "EEXIST", ... */
export function fsErrorName(errno: i32): string {
  switch (errno) {
    case 0: return "OK"
    case 2: return "EACCES"
    case 6: return "EAGAIN"
    case 8: return "EBADF"
    case 10: return "EBUSY"
    case 20: return "EEXIST"
    case 22: return "EFBIG"
    case 28: return "EINVAL"
    case 29: return "EIO"
    case 31: return "EISDIR"
    case 33: return "EMFILE"
    case 37: return "ENAMETOOLONG"
    case 44: return "ENOENT"
    case 51: return "ENOSPC"
    case 52: return "ENOSYS"
    case 54: return "ENOTDIR"
    case 55: return "ENOTEMPTY"
    case 58: return "ENOTSUP"
    case 76: return "ENOTCAPABLE"
    default: return "errno " + errno.toString()
  }
}

function failed(errno: u16): i32 {
  lastError = errno
  return <i32>errno
}

class Preopen {
  constructor(public fd: u32, public name: string) {}
}

let preopens: Preopen[] | null = null

function listPreopens(): Preopen[] {
  if (preopens !== null) return preopens!
  const found = new Array<Preopen>()
  const prestat = new StaticArray<u32>(2)
  for (let fd = firstPreopenFd; fd < firstPreopenFd + preopensMax; fd++) {
    if (wasi_fd_prestat_get(fd, changetype<usize>(prestat)) != 0) break
    const length = unchecked(prestat[1])
    const name = new ArrayBuffer(<i32>length)
    if (wasi_fd_prestat_dir_name(fd, changetype<usize>(name), length) != 0) break
    found.push(new Preopen(fd, String.UTF8.decode(name)))
  }
  preopens = found
  return found
}

/** A path as a preopened directory and the UTF-8 path below it, as wasi-libc resolves it. */
class Resolved {
  constructor(public fd: u32, public path: ArrayBuffer) {}
}

function resolve(path: string): Resolved | null {
  const absolute = path.startsWith("/") ? path : "/" + path
  let best: Preopen | null = null
  const all = listPreopens()
  for (let index = 0; index < all.length; index++) {
    const preopen = unchecked(all[index])
    const name = preopen.name.endsWith("/") && preopen.name.length > 1 ? preopen.name.slice(0, -1) : preopen.name
    const matches =
      name == "/" ||
      absolute == name ||
      (absolute.startsWith(name) && absolute.charAt(name.length) == "/")
    if (matches && (best === null || name.length > best.name.length)) best = preopen
  }
  if (best === null) {
    lastError = errnoNotcapable
    return null
  }
  const base = best.name == "/" ? 0 : best.name.length
  let relative = absolute.slice(base)
  while (relative.startsWith("/")) relative = relative.slice(1)
  if (relative.length == 0) relative = "."
  return new Resolved(best.fd, String.UTF8.encode(relative))
}

function open(path: string, openFlags: u16, rights: u64, fdFlags: u16): i64 {
  const resolved = resolve(path)
  if (resolved === null) return -1
  const opened = new StaticArray<u32>(1)
  const where = resolved
  const errno = wasi_path_open(
    where.fd,
    1,
    changetype<usize>(where.path),
    <u32>where.path.byteLength,
    openFlags,
    rights,
    rights,
    fdFlags,
    changetype<usize>(opened),
  )
  if (errno != 0) {
    failed(errno)
    return -1
  }
  return <i64>unchecked(opened[0])
}

function writeAll(fd: u32, data: ArrayBuffer): u16 {
  const iov = new StaticArray<u32>(2)
  const written = new StaticArray<u32>(1)
  let offset = 0
  while (offset < data.byteLength) {
    const length = min(data.byteLength - offset, transferBytes)
    unchecked((iov[0] = <u32>(changetype<usize>(data) + offset)))
    unchecked((iov[1] = <u32>length))
    const errno = wasi_fd_write(fd, changetype<usize>(iov), 1, changetype<usize>(written))
    if (errno != 0) return errno
    offset += <i32>unchecked(written[0])
  }
  return 0
}

function writeWith(path: string, data: ArrayBuffer, openFlags: u16, fdFlags: u16): i32 {
  const fd = open(path, openFlags, rightWrite, fdFlags)
  if (fd < 0) return lastError
  const errno = writeAll(<u32>fd, data)
  const closed = wasi_fd_close(<u32>fd)
  if (errno != 0) return failed(errno)
  if (closed != 0) return failed(closed)
  return 0
}

/** Replaces the file's content with `data` (creating it); 0 or a WASI errno. */
export function writeFile(path: string, data: ArrayBuffer): i32 {
  return writeWith(path, data, openCreate | openTruncate, 0)
}

export function writeFileString(path: string, text: string): i32 {
  return writeFile(path, String.UTF8.encode(text))
}

/** Adds `data` at the end of the file (creating it); 0 or a WASI errno. */
export function appendFile(path: string, data: ArrayBuffer): i32 {
  return writeWith(path, data, openCreate, fdFlagAppend)
}

export function appendFileString(path: string, text: string): i32 {
  return appendFile(path, String.UTF8.encode(text))
}

/** The whole file, or null (see fsError()). */
export function readFile(path: string): ArrayBuffer | null {
  const fd = open(path, 0, rightRead, 0)
  if (fd < 0) return null
  let content = new Uint8Array(0)
  let chunk = new Uint8Array(transferBytes)
  const iov = new StaticArray<u32>(2)
  const readCount = new StaticArray<u32>(1)
  for (;;) {
    unchecked((iov[0] = <u32>chunk.dataStart))
    unchecked((iov[1] = <u32>chunk.length))
    const errno = wasi_fd_read(<u32>fd, changetype<usize>(iov), 1, changetype<usize>(readCount))
    if (errno != 0) {
      wasi_fd_close(<u32>fd)
      failed(errno)
      return null
    }
    const got = <i32>unchecked(readCount[0])
    if (got == 0) break
    const grown = new Uint8Array(content.length + got)
    grown.set(content)
    grown.set(chunk.subarray(0, got), content.length)
    content = grown
  }
  wasi_fd_close(<u32>fd)
  return content.buffer
}

/** The file as UTF-8 text, or null (see fsError()). */
export function readFileString(path: string): string | null {
  const bytes = readFile(path)
  return bytes === null ? null : String.UTF8.decode(bytes)
}

/** Names in a directory, sorted, without "." and ".."; or null (see fsError()). */
export function listDir(path: string): string[] | null {
  const fd = open(path, openDirectory, rightsDirectory, 0)
  if (fd < 0) return null
  const names = new Array<string>()
  const buffer = new Uint8Array(8192)
  const used = new StaticArray<u32>(1)
  let cookie: u64 = 0
  for (;;) {
    const errno = wasi_fd_readdir(<u32>fd, buffer.dataStart, <u32>buffer.length, cookie, changetype<usize>(used))
    if (errno != 0) {
      wasi_fd_close(<u32>fd)
      failed(errno)
      return null
    }
    const filled = <i32>unchecked(used[0])
    let offset = 0
    let progressed = false
    while (offset + direntHeaderBytes <= filled) {
      const nameBytes = <i32>load<u32>(buffer.dataStart + offset + 16)
      if (offset + direntHeaderBytes + nameBytes > filled) break
      const name = String.UTF8.decodeUnsafe(buffer.dataStart + offset + direntHeaderBytes, nameBytes)
      cookie = load<u64>(buffer.dataStart + offset)
      if (name != "." && name != "..") names.push(name)
      offset += direntHeaderBytes + nameBytes
      progressed = true
    }
    // A full buffer may end in a cut entry: ask again from the last whole one.
    if (filled < buffer.length || !progressed) break
  }
  wasi_fd_close(<u32>fd)
  names.sort()
  return names
}

function pathCall(path: string, call: (fd: u32, path: usize, length: u32) => u16): i32 {
  const resolved = resolve(path)
  if (resolved === null) return lastError
  const where = resolved
  const errno = call(where.fd, changetype<usize>(where.path), <u32>where.path.byteLength)
  return errno == 0 ? 0 : failed(errno)
}

/** Creates a directory; 0 or a WASI errno (EEXIST when it exists). */
export function mkdir(path: string): i32 {
  return pathCall(path, (fd: u32, pointer: usize, length: u32): u16 =>
    wasi_path_create_directory(fd, pointer, length),
  )
}

/** Removes a file or an empty directory; 0 or a WASI errno. */
export function remove(path: string): i32 {
  const errno = pathCall(path, (fd: u32, pointer: usize, length: u32): u16 =>
    wasi_path_unlink_file(fd, pointer, length),
  )
  // Unlinking a directory is EISDIR (Linux) or EPERM (some WASI hosts): then it is one for rmdir.
  if (errno != errnoIsdir && errno != errnoPerm) return errno
  return pathCall(path, (fd: u32, pointer: usize, length: u32): u16 =>
    wasi_path_remove_directory(fd, pointer, length),
  )
}

/** Moves `from` to `to` (replacing a file there); 0 or a WASI errno. */
export function rename(from: string, to: string): i32 {
  const source = resolve(from)
  const target = resolve(to)
  if (source === null || target === null) return lastError
  const errno = wasi_path_rename(
    source.fd,
    changetype<usize>(source.path),
    <u32>source.path.byteLength,
    target.fd,
    changetype<usize>(target.path),
    <u32>target.path.byteLength,
  )
  return errno == 0 ? 0 : failed(errno)
}

export class FileStat {
  constructor(
    public size: u64,
    public isDirectory: bool,
    /** Last change of the content, in ms since 1970. */
    public modifiedMs: f64,
  ) {}
}

/** Size, kind and modification time of a file or directory, or null (see fsError()). */
export function stat(path: string): FileStat | null {
  const resolved = resolve(path)
  if (resolved === null) return null
  const where = resolved
  const result = new ArrayBuffer(64)
  const errno = wasi_path_filestat_get(
    where.fd,
    1,
    changetype<usize>(where.path),
    <u32>where.path.byteLength,
    changetype<usize>(result),
  )
  if (errno != 0) {
    failed(errno)
    return null
  }
  const base = changetype<usize>(result)
  return new FileStat(
    load<u64>(base + 32),
    load<u8>(base + 16) == fileTypeDirectory,
    <f64>load<u64>(base + 48) / 1e6,
  )
}

/** Whether a file or directory exists at `path`. */
export function exists(path: string): bool {
  if (stat(path) !== null) return true
  return false
}

/** WASI errno values a program may want to test for. */
export const ENOENT: i32 = errnoNoent
export const EEXIST: i32 = 20
export const ENOTDIR: i32 = 54
export const ENOTEMPTY: i32 = 55
export const EISDIR: i32 = errnoIsdir
