/**
 * Node adapter: a host directory mapped into guests, answering WASI file calls (encoding in
 * host/wasi-files.ts).
 *
 *   const files = nodeDirectoryFileSystem({ hostDirectory: './data', guestDirectory: '/data' })
 *   new LocalProcess({ pool, program, args, files })   // fopen("/data/x.txt", "w") writes ./data/x.txt
 *
 * Guests stay inside the directory: a path that climbs out with `..`, an absolute path, and a
 * symbolic link that points outside are refused with ENOTCAPABLE. (The checks resolve links before
 * opening, so a process of the host that swaps a directory for a link at that moment could slip
 * past them; guests cannot make links.)
 *
 * Each thread has its own descriptor table, kept here so that a thread restored in a fresh worker
 * finds its files open at the same positions. Replies are recorded per call (thread id, call
 * sequence number): a restored thread that repeats calls it made after its last save gets the
 * recorded replies, so reads, writes, creates and renames happen once.
 */

import { type BigIntStats, constants as fileConstants, realpathSync, type Stats, statSync } from 'node:fs'
import {
  type FileHandle,
  lstat,
  mkdir,
  open,
  readdir,
  realpath,
  rename,
  rmdir,
  stat,
  unlink,
} from 'node:fs/promises'
import { dirname, join, sep } from 'node:path'
import { GuestCallError } from './errors.ts'
import type { GuestFileSystem } from './files.ts'
import type { HostCall, HostCallReply } from './thread-runner.ts'
import {
  direntHeaderBytes,
  encodeDirentHeader,
  encodeFdstat,
  encodeFilestat,
  encodeUint32,
  encodeUint64,
  firstPreopenFd,
  pathBytesMax,
  transferBytesMax,
  wasiErrno,
  wasiFdFlags,
  wasiFileType,
  wasiLookupSymlinkFollow,
  wasiOpenFlags,
  wasiRights,
  wasiTimeFlags,
  wasiWhence,
} from './wasi-files.ts'

export interface DirectoryMapping {
  /** Directory on this machine. */
  hostDirectory: string
  /** Where guests see it (their preopened directory). */
  guestDirectory: string
}

/** Descriptors one thread may hold open at once (preopens included). */
export const openDescriptorsPerThreadMax = 1024
/** Entries of one directory a guest can list; the rest are left out. */
export const directoryEntriesMax = 65_536
/** Recorded replies kept per thread for replay after a restore: bytes of payload, and count. */
export const replayLogBytesMax = 32 * 1024 * 1024
export const replayLogEntriesMax = 100_000

/** A mapped directory; `close` releases what threads left open. */
export interface NodeDirectoryFileSystem extends GuestFileSystem {
  /** The thread will make no more calls: close its files and forget its replies. */
  threadEnded(threadId: number): void
  /** Closes every file of every thread. */
  close(): Promise<void>
}

interface DirectoryListing {
  names: string[]
  types: number[]
  inodes: bigint[]
}

interface OpenDirectory {
  kind: 'directory'
  /** Real path, inside the mapped directory. */
  hostPath: string
  /** Fixed at cookie 0 so that later cookies index the same listing. */
  listing: DirectoryListing | null
  preopen: boolean
}

interface OpenFile {
  kind: 'file'
  hostPath: string
  handle: FileHandle
  position: number
  append: boolean
  readable: boolean
  writable: boolean
}

type OpenDescriptor = OpenDirectory | OpenFile

interface RecordedReply {
  reply: Promise<HostCallReply>
  bytes: number
}

interface ThreadFiles {
  descriptors: Map<number, OpenDescriptor>
  /** Replies by call sequence number, oldest first. */
  replies: Map<number, RecordedReply>
  replyBytes: number
  highestSequence: number
}

/** An expected failure of a call, answered to the guest as a WASI errno. */
class CallFailure {
  readonly errno: number
  constructor(errno: number) {
    this.errno = errno
  }
}

const nodeErrorCodes: Record<string, number> = {
  EACCES: wasiErrno.access,
  EAGAIN: wasiErrno.again,
  EBADF: wasiErrno.badf,
  EBUSY: wasiErrno.busy,
  EEXIST: wasiErrno.exist,
  EFBIG: wasiErrno.fbig,
  EINVAL: wasiErrno.inval,
  EIO: wasiErrno.io,
  EISDIR: wasiErrno.isdir,
  ELOOP: wasiErrno.loop,
  EMFILE: wasiErrno.mfile,
  ENAMETOOLONG: wasiErrno.nametoolong,
  ENFILE: wasiErrno.nfile,
  ENOENT: wasiErrno.noent,
  ENOMEM: wasiErrno.nomem,
  ENOSPC: wasiErrno.nospc,
  ENOTDIR: wasiErrno.notdir,
  ENOTEMPTY: wasiErrno.notempty,
  EPERM: wasiErrno.perm,
  EROFS: wasiErrno.rofs,
  ESPIPE: wasiErrno.spipe,
  EXDEV: wasiErrno.xdev,
}

/** Runs a node:fs call; its expected errors become the matching WASI errno. */
async function fileSystemCall<T>(operation: Promise<T>): Promise<T> {
  try {
    return await operation
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code !== undefined) throw new CallFailure(nodeErrorCodes[code] ?? wasiErrno.io)
    throw error
  }
}

function fileTypeOf(stats: Stats | BigIntStats): number {
  if (stats.isFile()) return wasiFileType.regularFile
  if (stats.isDirectory()) return wasiFileType.directory
  if (stats.isSymbolicLink()) return wasiFileType.symbolicLink
  if (stats.isCharacterDevice()) return wasiFileType.characterDevice
  if (stats.isBlockDevice()) return wasiFileType.blockDevice
  if (stats.isSocket()) return wasiFileType.socketStream
  return wasiFileType.unknown
}

function filestatOf(stats: BigIntStats): Uint8Array {
  return encodeFilestat({
    device: stats.dev,
    inode: stats.ino,
    fileType: fileTypeOf(stats),
    linkCount: stats.nlink,
    size: stats.size,
    accessNs: stats.atimeNs,
    modifyNs: stats.mtimeNs,
    changeNs: stats.ctimeNs,
  })
}

function checkOffset(offset: number): number {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new CallFailure(wasiErrno.inval)
  return offset
}

export function nodeDirectoryFileSystem(mapping: DirectoryMapping): NodeDirectoryFileSystem {
  if (typeof mapping.guestDirectory !== 'string' || mapping.guestDirectory.length === 0) {
    throw new TypeError(
      `Expected guestDirectory to be a guest path such as "/data", got ${JSON.stringify(mapping.guestDirectory)}`,
    )
  }
  let root: string
  try {
    root = realpathSync(mapping.hostDirectory)
  } catch {
    throw new TypeError(
      `Expected hostDirectory to be an existing directory, got "${mapping.hostDirectory}" (create it first)`,
    )
  }
  if (!statSync(root).isDirectory()) {
    throw new TypeError(`Expected hostDirectory to be a directory, got the file "${mapping.hostDirectory}"`)
  }
  const preopens = [mapping.guestDirectory]
  const threads = new Map<number, ThreadFiles>()
  const decoder = new TextDecoder('utf-8', { fatal: true })

  const inside = (path: string) => path === root || path.startsWith(root.endsWith(sep) ? root : root + sep)

  const threadFiles = (threadId: number): ThreadFiles => {
    let files = threads.get(threadId)
    if (files === undefined) {
      const descriptors = new Map<number, OpenDescriptor>()
      descriptors.set(firstPreopenFd, { kind: 'directory', hostPath: root, listing: null, preopen: true })
      files = { descriptors, replies: new Map(), replyBytes: 0, highestSequence: 0 }
      threads.set(threadId, files)
    }
    return files
  }

  const descriptor = (files: ThreadFiles, fd: number): OpenDescriptor => {
    const found = files.descriptors.get(fd)
    if (found === undefined) throw new CallFailure(wasiErrno.badf)
    return found
  }
  const directory = (files: ThreadFiles, fd: number): OpenDirectory => {
    const found = descriptor(files, fd)
    if (found.kind !== 'directory') throw new CallFailure(wasiErrno.notdir)
    return found
  }
  const file = (files: ThreadFiles, fd: number): OpenFile => {
    const found = descriptor(files, fd)
    if (found.kind !== 'file') throw new CallFailure(wasiErrno.isdir)
    return found
  }

  const decodePath = (bytes: Uint8Array): string => {
    if (bytes.length > pathBytesMax) throw new CallFailure(wasiErrno.nametoolong)
    let path: string
    try {
      path = decoder.decode(bytes)
    } catch {
      throw new CallFailure(wasiErrno.inval)
    }
    if (path.includes('\0')) throw new CallFailure(wasiErrno.inval)
    return path
  }

  /**
   * The host path that `guestPath` names below the directory `base`, or a refusal when it would
   * leave `base` (by `..` or by an absolute path) or the mapped directory (by a link).
   * `follow` says whether a link in the last component is followed.
   */
  const resolvePath = async (base: OpenDirectory, guestPath: string, follow: boolean): Promise<string> => {
    if (guestPath.length === 0) throw new CallFailure(wasiErrno.noent)
    if (guestPath.startsWith('/')) throw new CallFailure(wasiErrno.notcapable)
    const parts: string[] = []
    for (const part of guestPath.split('/')) {
      if (part === '' || part === '.') continue
      if (part === '..') {
        if (parts.length === 0) throw new CallFailure(wasiErrno.notcapable)
        parts.pop()
      } else {
        parts.push(part)
      }
    }
    if (parts.length === 0) return base.hostPath
    const last = parts.pop()!
    // Links in the leading components are always followed; where they lead must stay inside.
    const parent = await fileSystemCall(realpath(join(base.hostPath, ...parts)))
    if (!inside(parent)) throw new CallFailure(wasiErrno.notcapable)
    const candidate = join(parent, last)
    if (!follow) return candidate
    let linked: boolean
    try {
      linked = (await lstat(candidate)).isSymbolicLink()
    } catch {
      return candidate // does not exist (yet): the operation itself reports what it needs
    }
    if (!linked) return candidate
    const target = await fileSystemCall(realpath(candidate))
    if (!inside(target)) throw new CallFailure(wasiErrno.notcapable)
    return target
  }

  const pathOf = (files: ThreadFiles, fd: number, payload: Uint8Array | null, follow: boolean) => {
    if (payload === null) throw new GuestCallError('file call without a path')
    return resolvePath(directory(files, fd), decodePath(payload), follow)
  }

  const lowestFreeDescriptor = (files: ThreadFiles): number => {
    if (files.descriptors.size >= openDescriptorsPerThreadMax) throw new CallFailure(wasiErrno.mfile)
    let fd = firstPreopenFd + preopens.length
    while (files.descriptors.has(fd)) fd++
    return fd
  }

  const listDirectory = async (hostPath: string): Promise<DirectoryListing> => {
    const entries = (await fileSystemCall(readdir(hostPath))).sort().slice(0, directoryEntriesMax - 2)
    const listing: DirectoryListing = { names: ['.', '..'], types: [], inodes: [] }
    const self = await fileSystemCall(stat(hostPath, { bigint: true }))
    listing.types.push(wasiFileType.directory, wasiFileType.directory)
    listing.inodes.push(
      self.ino,
      hostPath === root ? self.ino : (await fileSystemCall(stat(dirname(hostPath), { bigint: true }))).ino,
    )
    for (const name of entries) {
      try {
        const stats = await lstat(join(hostPath, name), { bigint: true })
        listing.names.push(name)
        listing.types.push(fileTypeOf(stats))
        listing.inodes.push(stats.ino)
      } catch {
        // Removed since the directory was read: leave it out.
      }
    }
    return listing
  }

  const operations: Record<
    string,
    (files: ThreadFiles, args: number[], payload: Uint8Array | null) => Promise<Uint8Array | null>
  > = {
    async path_open(
      files,
      [directoryFd = -1, lookupFlags = 0, openFlags = 0, rights = 0, fdFlags = 0],
      payload,
    ) {
      const follow = (lookupFlags & wasiLookupSymlinkFollow) !== 0
      const hostPath = await pathOf(files, directoryFd, payload, follow)
      const fd = lowestFreeDescriptor(files)
      const existing = await lstat(hostPath).catch(() => null)
      if (existing?.isSymbolicLink()) throw new CallFailure(wasiErrno.loop) // O_NOFOLLOW on a link
      const wantsDirectory = (openFlags & wasiOpenFlags.directory) !== 0
      const writable = (rights & wasiRights.fdWrite) !== 0
      const readable = (rights & wasiRights.fdRead) !== 0 || !writable
      if (existing?.isDirectory() || wantsDirectory) {
        if (existing === null) {
          if ((openFlags & wasiOpenFlags.create) !== 0) throw new CallFailure(wasiErrno.inval)
          throw new CallFailure(wasiErrno.noent)
        }
        if (!existing.isDirectory()) throw new CallFailure(wasiErrno.notdir)
        if ((openFlags & wasiOpenFlags.exclusive) !== 0) throw new CallFailure(wasiErrno.exist)
        if (writable || (openFlags & wasiOpenFlags.truncate) !== 0) throw new CallFailure(wasiErrno.isdir)
        files.descriptors.set(fd, { kind: 'directory', hostPath, listing: null, preopen: false })
        return encodeUint32(fd)
      }
      let flags =
        readable && writable
          ? fileConstants.O_RDWR
          : writable
            ? fileConstants.O_WRONLY
            : fileConstants.O_RDONLY
      if ((openFlags & wasiOpenFlags.create) !== 0) flags |= fileConstants.O_CREAT
      if ((openFlags & wasiOpenFlags.exclusive) !== 0) flags |= fileConstants.O_EXCL
      if ((openFlags & wasiOpenFlags.truncate) !== 0) {
        if (!writable) throw new CallFailure(wasiErrno.inval)
        flags |= fileConstants.O_TRUNC
      }
      // The path was resolved above; refuse a link that appeared since rather than follow it.
      flags |= fileConstants.O_NOFOLLOW
      const handle = await fileSystemCall(open(hostPath, flags, 0o666))
      files.descriptors.set(fd, {
        kind: 'file',
        hostPath,
        handle,
        position: 0,
        append: (fdFlags & wasiFdFlags.append) !== 0,
        readable,
        writable,
      })
      return encodeUint32(fd)
    },

    async fd_read(files, [fd = -1, capacity = 0]) {
      const opened = file(files, fd)
      if (!opened.readable) throw new CallFailure(wasiErrno.badf)
      const out = new Uint8Array(Math.min(capacity, transferBytesMax))
      const { bytesRead } = await fileSystemCall(opened.handle.read(out, 0, out.length, opened.position))
      opened.position += bytesRead
      return out.subarray(0, bytesRead)
    },

    async fd_pread(files, [fd = -1, capacity = 0, offset = 0]) {
      const opened = file(files, fd)
      if (!opened.readable) throw new CallFailure(wasiErrno.badf)
      const out = new Uint8Array(Math.min(capacity, transferBytesMax))
      const { bytesRead } = await fileSystemCall(opened.handle.read(out, 0, out.length, checkOffset(offset)))
      return out.subarray(0, bytesRead)
    },

    async fd_write(files, [fd = -1], payload) {
      const opened = file(files, fd)
      if (!opened.writable) throw new CallFailure(wasiErrno.badf)
      const data = payload ?? new Uint8Array(0)
      if (opened.append) opened.position = Number((await fileSystemCall(opened.handle.stat())).size)
      const written = await writeAll(opened.handle, data, opened.position)
      opened.position += written
      return encodeUint32(written)
    },

    async fd_pwrite(files, [fd = -1, offset = 0], payload) {
      const opened = file(files, fd)
      if (!opened.writable) throw new CallFailure(wasiErrno.badf)
      return encodeUint32(await writeAll(opened.handle, payload ?? new Uint8Array(0), checkOffset(offset)))
    },

    async fd_seek(files, [fd = -1, offset = 0, whence = -1]) {
      const opened = file(files, fd)
      let base: number
      if (whence === wasiWhence.set) base = 0
      else if (whence === wasiWhence.current) base = opened.position
      else if (whence === wasiWhence.end) base = Number((await fileSystemCall(opened.handle.stat())).size)
      else throw new CallFailure(wasiErrno.inval)
      opened.position = checkOffset(base + offset)
      return encodeUint64(opened.position)
    },

    async fd_tell(files, [fd = -1]) {
      return encodeUint64(file(files, fd).position)
    },

    async fd_close(files, [fd = -1]) {
      const opened = descriptor(files, fd)
      if (opened.kind === 'directory' && opened.preopen) throw new CallFailure(wasiErrno.notsup)
      files.descriptors.delete(fd)
      if (opened.kind === 'file') await fileSystemCall(opened.handle.close())
      return null
    },

    async fd_sync(files, [fd = -1]) {
      const opened = descriptor(files, fd)
      if (opened.kind === 'file') await fileSystemCall(opened.handle.sync())
      return null
    },

    async fd_datasync(files, [fd = -1]) {
      const opened = descriptor(files, fd)
      if (opened.kind === 'file') await fileSystemCall(opened.handle.datasync())
      return null
    },

    async fd_fdstat_get(files, [fd = -1]) {
      const opened = descriptor(files, fd)
      if (opened.kind === 'directory')
        return encodeFdstat({ fileType: wasiFileType.directory, append: false })
      const stats = await fileSystemCall(opened.handle.stat())
      return encodeFdstat({ fileType: fileTypeOf(stats), append: opened.append })
    },

    async fd_fdstat_set_flags(files, [fd = -1, flags = 0]) {
      const opened = descriptor(files, fd)
      if (opened.kind === 'file') opened.append = (flags & wasiFdFlags.append) !== 0
      return null
    },

    async fd_filestat_get(files, [fd = -1]) {
      const opened = descriptor(files, fd)
      const stats =
        opened.kind === 'file'
          ? await fileSystemCall(opened.handle.stat({ bigint: true }))
          : await fileSystemCall(stat(opened.hostPath, { bigint: true }))
      return filestatOf(stats)
    },

    async fd_filestat_set_size(files, [fd = -1, size = 0]) {
      const opened = file(files, fd)
      if (!opened.writable) throw new CallFailure(wasiErrno.inval)
      await fileSystemCall(opened.handle.truncate(checkOffset(size)))
      return null
    },

    async fd_filestat_set_times(files, [fd = -1, accessNs = 0, modifyNs = 0, timeFlags = 0]) {
      const opened = file(files, fd)
      const stats = await fileSystemCall(opened.handle.stat())
      const nowSeconds = Date.now() / 1000
      const pick = (given: number, nowFlag: number, setFlag: number, current: number) =>
        (timeFlags & nowFlag) !== 0 ? nowSeconds : (timeFlags & setFlag) !== 0 ? given / 1e9 : current
      await fileSystemCall(
        opened.handle.utimes(
          pick(accessNs, wasiTimeFlags.accessNow, wasiTimeFlags.access, stats.atimeMs / 1000),
          pick(modifyNs, wasiTimeFlags.modifyNow, wasiTimeFlags.modify, stats.mtimeMs / 1000),
        ),
      )
      return null
    },

    async path_filestat_get(files, [directoryFd = -1, lookupFlags = 0], payload) {
      const follow = (lookupFlags & wasiLookupSymlinkFollow) !== 0
      const hostPath = await pathOf(files, directoryFd, payload, follow)
      return filestatOf(await fileSystemCall(lstat(hostPath, { bigint: true })))
    },

    async fd_readdir(files, [fd = -1, capacity = 0, cookie = 0]) {
      const opened = directory(files, fd)
      if (cookie === 0 || opened.listing === null) opened.listing = await listDirectory(opened.hostPath)
      const { names, types, inodes } = opened.listing
      const out = new Uint8Array(Math.min(capacity, transferBytesMax))
      const encoder = new TextEncoder()
      let used = 0
      for (let index = checkOffset(cookie); index < names.length && used < out.length; index++) {
        const name = encoder.encode(names[index]!)
        const header = encodeDirentHeader({
          nextCookie: index + 1,
          inode: inodes[index]!,
          nameBytes: name.length,
          fileType: types[index]!,
        })
        // The last entry may be cut short; the guest then asks again from its cookie.
        const entry = new Uint8Array(direntHeaderBytes + name.length)
        entry.set(header, 0)
        entry.set(name, direntHeaderBytes)
        const take = Math.min(entry.length, out.length - used)
        out.set(entry.subarray(0, take), used)
        used += take
      }
      return out.subarray(0, used)
    },

    async path_create_directory(files, [directoryFd = -1], payload) {
      await fileSystemCall(mkdir(await pathOf(files, directoryFd, payload, false)))
      return null
    },

    async path_remove_directory(files, [directoryFd = -1], payload) {
      const hostPath = await pathOf(files, directoryFd, payload, false)
      if (hostPath === root) throw new CallFailure(wasiErrno.busy)
      await fileSystemCall(rmdir(hostPath))
      return null
    },

    async path_unlink_file(files, [directoryFd = -1], payload) {
      const hostPath = await pathOf(files, directoryFd, payload, false)
      if ((await fileSystemCall(lstat(hostPath))).isDirectory()) throw new CallFailure(wasiErrno.isdir)
      await fileSystemCall(unlink(hostPath))
      return null
    },

    async path_rename(files, [directoryFd = -1, newDirectoryFd = -1, oldPathBytes = 0], payload) {
      if (payload === null || oldPathBytes > payload.length) throw new GuestCallError('malformed path_rename')
      const from = await pathOf(files, directoryFd, payload.subarray(0, oldPathBytes), false)
      const to = await pathOf(files, newDirectoryFd, payload.subarray(oldPathBytes), false)
      if (from === root || to === root) throw new CallFailure(wasiErrno.busy)
      await fileSystemCall(rename(from, to))
      return null
    },
  }

  const answer = async (files: ThreadFiles, call: HostCall): Promise<HostCallReply> => {
    const operation = operations[call.name]
    if (operation === undefined) return { result: wasiErrno.nosys }
    try {
      return { result: wasiErrno.success, payload: await operation(files, call.args, call.payload) }
    } catch (error) {
      if (error instanceof CallFailure) return { result: error.errno }
      throw error
    }
  }

  const record = (files: ThreadFiles, sequence: number, reply: Promise<HostCallReply>) => {
    const recorded: RecordedReply = { reply, bytes: 0 }
    files.replies.set(sequence, recorded)
    void reply.then(
      (settled) => {
        if (files.replies.get(sequence) !== recorded) return
        recorded.bytes = settled.payload?.length ?? 0
        files.replyBytes += recorded.bytes
        forgetOldest(files)
      },
      () => {},
    )
    forgetOldest(files)
  }

  const forgetOldest = (files: ThreadFiles) => {
    for (const [sequence, recorded] of files.replies) {
      if (files.replies.size <= replayLogEntriesMax && files.replyBytes <= replayLogBytesMax) return
      files.replies.delete(sequence)
      files.replyBytes -= recorded.bytes
    }
  }

  /** A repeated call comes from a restored thread: everything before it is behind its last save. */
  const forgetBefore = (files: ThreadFiles, sequence: number) => {
    for (const [recordedSequence, recorded] of files.replies) {
      if (recordedSequence >= sequence) return
      files.replies.delete(recordedSequence)
      files.replyBytes -= recorded.bytes
    }
  }

  const closeThread = async (files: ThreadFiles) => {
    const handles = [...files.descriptors.values()].flatMap((entry) =>
      entry.kind === 'file' ? [entry.handle] : [],
    )
    files.descriptors.clear()
    files.replies.clear()
    await Promise.allSettled(handles.map((handle) => handle.close()))
  }

  return {
    preopens,

    handle(threadId: number, call: HostCall): Promise<HostCallReply> {
      const files = threadFiles(threadId)
      const recorded = files.replies.get(call.callSequence)
      if (recorded !== undefined) {
        forgetBefore(files, call.callSequence)
        return recorded.reply
      }
      if (call.callSequence <= files.highestSequence) {
        return Promise.reject(
          new GuestCallError(
            `thread ${threadId} repeated file call ${call.name} (#${call.callSequence}) after a restore, but its reply is no longer recorded (more than ${replayLogEntriesMax} calls or ${replayLogBytesMax} bytes since its last save); save more often`,
          ),
        )
      }
      files.highestSequence = call.callSequence
      const reply = answer(files, call)
      record(files, call.callSequence, reply)
      return reply
    },

    threadEnded(threadId: number) {
      const files = threads.get(threadId)
      if (files === undefined) return
      threads.delete(threadId)
      void closeThread(files)
    },

    async close() {
      const all = [...threads.values()]
      threads.clear()
      await Promise.all(all.map(closeThread))
    },
  }
}

async function writeAll(handle: FileHandle, data: Uint8Array, position: number): Promise<number> {
  let written = 0
  while (written < data.length) {
    const { bytesWritten } = await fileSystemCall(
      handle.write(data, written, data.length - written, position + written),
    )
    if (bytesWritten === 0) break
    written += bytesWritten
  }
  return written
}
