/**
 * The distributed file system: POSIX-like calls over bricks (content) and the coordination store
 * (names, directories, file heads).
 *
 * Layout. Every file and directory has an id; its metadata key `fs/<volume>/i/<id>` holds a file
 * head (size, manifest brick, generation) or a directory (its entries name -> id and kind), see
 * `records.ts`. The root directory's id is `root`. A file's content is a manifest brick listing
 * its chunk bricks (`manifest.ts`); chunk i is placed with stripe number seed(id) + i, so
 * successive chunks sit on different nodes and are read and written in parallel.
 *
 * Atomicity. Create, mkdir and unlink change one directory key by compare-and-swap. rmdir (the
 * parent and the removed directory, marked `removed` so nothing is created in it afterwards) and
 * rename between directories change several keys in one transaction (`metadata-transactions.ts`);
 * a directory moving between directories also takes the volume's rename key, so that two such
 * moves cannot build a cycle between them (Linux serializes them the same way). A file's content
 * changes when a writer closes it (or calls fsync): one CAS of its head, from the generation it
 * opened to the next.
 *
 * Consistency: close-to-open, as NFS. A descriptor sees the file as it was when the file was opened
 * in this client, plus this client's own writes; other clients see those writes once the writer
 * has closed the file (or called fsync) and they open it after that. Within one client all
 * descriptors of a file share one view, so one client alone behaves as a local POSIX file system.
 * Two clients writing one file are serialized at close: the second close replays its own writes
 * and truncates, in order, on top of what the first committed (the later writer wins where both
 * wrote the same bytes, and neither loses the bytes only it wrote). Names and directories have no
 * such delay: every call sees every completed namespace change.
 *
 * Paths are absolute or relative to the root; `.` and `..` are resolved by name (there are no
 * symbolic links). Errors are {@link FileSystemError}s with POSIX codes.
 *
 *   const wallClock = { now: wallClockMs }   // fabric/platform.ts
 *   const fs = createFileSystem({ metadata, bricks: node, clock: systemClock, wallClock, random: systemRandom, sleep })
 *   await fs.mkdir('/results')
 *   const fd = await fs.open('/results/run-1.txt', 'w')
 *   await fs.write(fd, new TextEncoder().encode('42\n'))
 *   await fs.close(fd)                       // now visible to every node that opens it
 *   const entries = await fs.readdir('/results')   // [{ name: 'run-1.txt', type: 'file' }]
 */

import type { CID } from './brick.ts'
import { utf8Length } from './cbor.ts'
import { FileSystemError, type PosixErrorCode, StorageArgumentError, StorageError } from './errors.ts'
import { type ChunkBricks, createFileImage, type FileImage } from './file-image.ts'
import {
  chunkBytesMax,
  chunkBytesMin,
  decodeManifest,
  encodeManifest,
  manifestChunksMax,
} from './manifest.ts'
import type { MetadataStore } from './metadata-store.ts'
import {
  conflictRetriesMax,
  createMetadataTransactions,
  MetadataContentionError,
  type Versioned,
} from './metadata-transactions.ts'
import { stripeOfCid, stripeSeedOf } from './placement.ts'
import type { Clock, Random, Sleep } from './platform-types.ts'
import {
  type DirectoryEntry,
  type DirectoryRecord,
  decodeDirectory,
  decodeFileHead,
  directoryEntriesMax,
  type EntryKind,
  emptyFileHead,
  encodeDirectory,
  encodeFileHead,
  type FileHead,
  nameBytesMax,
} from './records.ts'
import { checkReplicaCount } from './replica-counts.ts'

/** Chunk size of new files unless configured. */
export const chunkBytesDefault = 1024 * 1024
/** Descriptors one file-system client may hold open. */
export const openFilesMaxDefault = 1024
/** Longest path, in UTF-8 bytes (POSIX PATH_MAX). */
export const pathBytesMax = 4096
/** Largest single read. */
export const readBytesMax = 64 * 1024 * 1024
/** Writes and truncates one file remembers for replay before it commits on its own (as fsync would). */
export const changeLogEntriesMax = 4096
/** Bytes copied at once when replaying writes on top of another writer's commit. */
const replayStepBytes = 4 * 1024 * 1024

export type OpenFlags = 'r' | 'r+' | 'rs+' | 'w' | 'wx' | 'w+' | 'wx+' | 'a' | 'ax' | 'a+' | 'ax+'
export type Whence = 'set' | 'current' | 'end'

export interface Stat {
  type: EntryKind
  /** Bytes in a file; 0 for a directory. */
  size: number
  mtimeMs: number
  /** Stable for the life of the file or directory, also across renames. */
  id: string
  /** Replicas of the file's bricks, when it asked for other than the cluster default. */
  replicaCount?: number
}

export interface DirectoryListingEntry {
  name: string
  type: EntryKind
}

export interface FileSystemComponents {
  metadata: MetadataStore
  /** Where content goes: a storage node's `put`/`get` (see `brick-node.ts`). */
  bricks: ChunkBricks
  /** Monotonic: how long a metadata transaction has waited on another's lock. */
  clock: Clock
  /** Milliseconds since the epoch, for modification times. */
  wallClock: Clock
  random: Random
  sleep: Sleep
}

export interface FileSystemOptions {
  /** Several file systems can share one store; default "default". */
  volume?: string
  /** Chunk size of new files; default {@link chunkBytesDefault}. */
  chunkBytes?: number
  /** Replicas of the bricks of new files; default the storage node's. */
  replicaCount?: number
  openFilesMax?: number
  /** See `metadata-transactions.ts`. */
  transactionTimeoutMs?: number
}

export interface OpenOptions {
  /** For a file this call creates: replicas of its bricks (kept for the file's life). */
  replicaCount?: number
}

export interface FileSystem {
  open(path: string, flags?: OpenFlags, options?: OpenOptions): Promise<number>
  /**
   * Opens the file whose id (`Stat.id`) is given, under whatever name it has now or with none left
   * (renamed or unlinked by another client meanwhile), as a descriptor held across those changes
   * would still reach it. Flags 'r', 'r+' or 'rs+' (it neither creates nor truncates).
   */
  openById(id: string, flags?: OpenFlags): Promise<number>
  /** Commits this descriptor's file when it has changes, then releases the descriptor. */
  close(fd: number): Promise<void>
  /**
   * Releases the descriptor without committing: what this client changed in the file since its
   * last commit is dropped (for an owner that died, whose work another will redo). The changes are
   * the file's in this client, shared by all of its descriptors here: while another descriptor of
   * the file stays open, they stay, and its close commits them.
   */
  discard(fd: number): Promise<void>
  /** Up to `length` bytes at `position`, or at the descriptor's offset (advancing it) when `position` is absent. */
  read(fd: number, length: number, position?: number | null): Promise<Uint8Array>
  /** Writes all of `data`; at `position` or the descriptor's offset (advancing it); in append mode always at the end. */
  write(fd: number, data: Uint8Array, position?: number | null): Promise<number>
  seek(fd: number, offset: number, whence?: Whence): Promise<number>
  ftruncate(fd: number, size: number): Promise<void>
  /** Commits the file's changes now, so other clients that open it see them. */
  fsync(fd: number): Promise<void>
  fstat(fd: number): Promise<Stat>
  truncate(path: string, size: number): Promise<void>
  stat(path: string): Promise<Stat>
  /** Entries sorted by name. */
  readdir(path: string): Promise<DirectoryListingEntry[]>
  mkdir(path: string): Promise<void>
  rmdir(path: string): Promise<void>
  unlink(path: string): Promise<void>
  rename(from: string, to: string): Promise<void>
  readFile(path: string): Promise<Uint8Array>
  writeFile(path: string, data: Uint8Array): Promise<void>
  /** Closes every descriptor (committing changes). */
  closeAll(): Promise<void>
}

interface OpenMode {
  readable: boolean
  writable: boolean
  create: boolean
  exclusive: boolean
  truncate: boolean
  append: boolean
}

const openModes: Record<OpenFlags, OpenMode> = {
  r: { readable: true, writable: false, create: false, exclusive: false, truncate: false, append: false },
  'r+': { readable: true, writable: true, create: false, exclusive: false, truncate: false, append: false },
  'rs+': { readable: true, writable: true, create: false, exclusive: false, truncate: false, append: false },
  w: { readable: false, writable: true, create: true, exclusive: false, truncate: true, append: false },
  wx: { readable: false, writable: true, create: true, exclusive: true, truncate: true, append: false },
  'w+': { readable: true, writable: true, create: true, exclusive: false, truncate: true, append: false },
  'wx+': { readable: true, writable: true, create: true, exclusive: true, truncate: true, append: false },
  a: { readable: false, writable: true, create: true, exclusive: false, truncate: false, append: true },
  ax: { readable: false, writable: true, create: true, exclusive: true, truncate: false, append: true },
  'a+': { readable: true, writable: true, create: true, exclusive: false, truncate: false, append: true },
  'ax+': { readable: true, writable: true, create: true, exclusive: true, truncate: false, append: true },
}

type Change = { kind: 'write'; offset: number; length: number } | { kind: 'truncate'; size: number }

/** One file open in this client, shared by all of its descriptors. */
interface OpenFile {
  id: string
  key: string
  head: FileHead
  image: FileImage | undefined
  /** This client's changes since the last commit, in order, for replay on top of another writer's commit. */
  changes: Change[]
  references: number
  /** Operations on the file run one at a time, in call order. */
  queue: Promise<unknown>
}

interface Descriptor {
  path: string
  kind: EntryKind
  id: string
  file: OpenFile | undefined
  mode: OpenMode
  position: number
}

interface Lookup {
  /** The directory holding the name; undefined for the root. */
  parent: { id: string; record: DirectoryRecord } | undefined
  name: string | undefined
  entry: DirectoryEntry | undefined
  components: string[]
  trailingSlash: boolean
}

/** A lookup went stale before its transaction ran; resolve the paths again. */
class StaleLookup extends Error {}

const rootId = 'root'
/** What ids look like (`newId`: a random prefix, a dot, a counter; base 36). */
const fileIdPattern = /^[0-9a-z]{1,40}\.[0-9a-z]{1,20}$/

export function createFileSystem(
  components: FileSystemComponents,
  options: FileSystemOptions = {},
): FileSystem {
  const { metadata, bricks, clock, wallClock, random, sleep } = components
  const volume = options.volume ?? 'default'
  const chunkBytes = options.chunkBytes ?? chunkBytesDefault
  const openFilesMax = options.openFilesMax ?? openFilesMaxDefault
  if (!/^[a-z0-9][a-z0-9._-]{0,63}$/.test(volume))
    throw new StorageArgumentError(`Expected volume to be 1-64 of [a-z0-9._-], got "${volume}"`)
  if (!Number.isInteger(chunkBytes) || chunkBytes < chunkBytesMin || chunkBytes > chunkBytesMax)
    throw new StorageArgumentError(
      `Expected chunkBytes from ${chunkBytesMin} to ${chunkBytesMax}, got ${chunkBytes}`,
    )
  const prefix = `fs/${volume}/`
  const renameKey = `${prefix}rename`
  const transactions = createMetadataTransactions(
    { metadata, clock, random, sleep },
    { prefix, transactionTimeoutMs: options.transactionTimeoutMs },
  )
  const idPrefix = `${Math.floor(random.next() * 2 ** 48).toString(36)}${Math.floor(random.next() * 2 ** 48).toString(36)}`
  let idCounter = 0
  const descriptors = new Map<number, Descriptor>()
  const openFiles = new Map<string, OpenFile>()

  const keyOf = (id: string) => `${prefix}i/${id}`
  const newId = () => `${idPrefix}.${(idCounter++).toString(36)}`
  const getListing = (cid: CID) => bricks.get(cid, { stripe: stripeOfCid(cid) })

  // ---- paths and lookups

  function parsePath(path: string, syscall: string): { components: string[]; trailingSlash: boolean } {
    if (typeof path !== 'string')
      throw new FileSystemError('EINVAL', syscall, String(path), 'path must be a string')
    if (path.length === 0) throw new FileSystemError('ENOENT', syscall, path)
    if (path.includes('\0')) throw new FileSystemError('EINVAL', syscall, path, 'NUL in path')
    if (utf8Length(path) > pathBytesMax) throw new FileSystemError('ENAMETOOLONG', syscall, path)
    const result: string[] = []
    for (const part of path.split('/')) {
      if (part === '' || part === '.') continue
      if (part === '..') {
        result.pop()
        continue
      }
      if (utf8Length(part) > nameBytesMax) throw new FileSystemError('ENAMETOOLONG', syscall, path)
      result.push(part)
    }
    return { components: result, trailingSlash: /\/\.?$/.test(path) && result.length > 0 }
  }

  async function readDirectory(id: string): Promise<DirectoryRecord> {
    return decodeDirectory((await transactions.read(keyOf(id))).data, id, getListing)
  }

  async function lookup(path: string, syscall: string): Promise<Lookup> {
    const { components: names, trailingSlash } = parsePath(path, syscall)
    if (names.length === 0)
      return {
        parent: undefined,
        name: undefined,
        entry: { id: rootId, kind: 'directory' },
        components: names,
        trailingSlash,
      }
    let id = rootId
    let record = await readDirectory(rootId)
    for (const name of names.slice(0, -1)) {
      const entry = record.entries.get(name)
      if (entry === undefined) throw new FileSystemError('ENOENT', syscall, path)
      if (entry.kind !== 'directory') throw new FileSystemError('ENOTDIR', syscall, path)
      id = entry.id
      record = await readDirectory(id)
      if (record.removed) throw new FileSystemError('ENOENT', syscall, path)
    }
    const name = names[names.length - 1]!
    const entry = record.entries.get(name)
    if (trailingSlash && entry?.kind === 'file') throw new FileSystemError('ENOTDIR', syscall, path)
    return { parent: { id, record }, name, entry, components: names, trailingSlash }
  }

  async function decodeView(view: Versioned, id: string): Promise<DirectoryRecord> {
    return decodeDirectory(view.data, id, getListing)
  }

  /** A listing brick is placed by its directory's stripe seed, so that big directories spread over the nodes. */
  async function encodeView(record: DirectoryRecord, id: string): Promise<Uint8Array> {
    if (record.entries.size > directoryEntriesMax)
      throw new FileSystemError('EFBIG', 'directory', undefined, `more than ${directoryEntriesMax} entries`)
    return encodeDirectory(record, (bytes) => bricks.put(bytes, { stripe: stripeSeedOf(id) }))
  }

  /** Changes one directory by CAS; `change` returns the result, and mutates the record when `write` is true. */
  async function changeDirectory<T>(
    id: string,
    syscall: string,
    path: string,
    change: (record: DirectoryRecord) => { write: boolean; result: T },
  ): Promise<T> {
    const key = keyOf(id)
    return transactions.transact([key], async (views) => {
      const record = await decodeView(views.get(key)!, id)
      if (record.removed) throw new FileSystemError('ENOENT', syscall, path)
      const { write, result } = change(record)
      if (!write) return { result }
      record.mtimeMs = wallClock.now()
      return { writes: new Map([[key, await encodeView(record, id)]]), result }
    })
  }

  /** Runs `attempt` again while its lookups go stale under concurrent changes. */
  async function withFreshLookups<T>(attempt: () => Promise<T>): Promise<T> {
    for (let tries = 0; ; tries++) {
      try {
        return await attempt()
      } catch (error) {
        if (!(error instanceof StaleLookup) || tries >= conflictRetriesMax) throw error
      }
    }
  }

  // ---- open files

  function descriptorOf(fd: number, syscall: string): Descriptor {
    const descriptor = descriptors.get(fd)
    if (descriptor === undefined) throw new FileSystemError('EBADF', syscall, undefined, `descriptor ${fd}`)
    return descriptor
  }

  function serialized<T>(file: OpenFile, run: () => Promise<T>): Promise<T> {
    const result = file.queue.then(run, run)
    file.queue = result.catch(() => {})
    return result
  }

  async function readHead(id: string): Promise<FileHead> {
    return decodeFileHead((await transactions.read(keyOf(id))).data, id)
  }

  async function imageOver(head: FileHead, id: string): Promise<FileImage> {
    const manifest =
      head.manifest === null
        ? null
        : decodeManifest(
            await bricks.get(head.manifest, { stripe: stripeOfCid(head.manifest) }),
            head.manifest.toString(),
          )
    if (manifest !== null && manifest.size !== head.size)
      throw new StorageError(
        'STORAGE_FORMAT',
        `file ${id}: head says ${head.size} bytes, manifest ${manifest.size}`,
      )
    return createFileImage(
      { bricks, stripeSeed: stripeSeedOf(id), replicaCount: head.replicaCount },
      { base: manifest, size: head.size, chunkBytes },
    )
  }

  async function imageOf(file: OpenFile): Promise<FileImage> {
    file.image ??= await imageOver(file.head, file.id)
    return file.image
  }

  function noteChange(file: OpenFile, change: Change): void {
    const last = file.changes[file.changes.length - 1]
    if (change.kind === 'write' && last?.kind === 'write' && last.offset + last.length === change.offset)
      last.length += change.length
    else file.changes.push(change)
  }

  /** Replays `file`'s changes, with the bytes as this client sees them now, on top of `head`. */
  async function replayOnto(file: OpenFile, head: FileHead): Promise<FileImage> {
    const source = await imageOf(file)
    const target = await imageOver(head, file.id)
    for (const change of file.changes) {
      if (change.kind === 'truncate') {
        await target.truncate(change.size)
        continue
      }
      for (let done = 0; done < change.length; done += replayStepBytes) {
        const length = Math.min(replayStepBytes, change.length - done)
        const bytes = new Uint8Array(length)
        // Bytes a later truncate of ours cut off read as zeros; the replayed truncate cuts them again.
        bytes.set(await source.read(change.offset + done, length))
        await target.write(change.offset + done, bytes)
      }
    }
    return target
  }

  /** Makes the file's changes visible: one CAS of its head, replaying on top of a newer commit when needed. */
  async function commit(file: OpenFile): Promise<void> {
    if (file.changes.length === 0) return
    const key = keyOf(file.id)
    const committed = await transactions.transact([key], async (views) => {
      const current = decodeFileHead(views.get(key)!.data, file.id)
      const image =
        current.generation === file.head.generation ? await imageOf(file) : await replayOnto(file, current)
      const manifest = await image.flush()
      const replicaCount = current.replicaCount ?? file.head.replicaCount
      const manifestCid =
        manifest.size === 0
          ? null
          : // The manifest is placed as if it were the chunk after the last.
            await bricks.put(encodeManifest(manifest), {
              stripe: stripeSeedOf(file.id) + manifest.chunks.length,
              replicaCount,
            })
      const head: FileHead = {
        size: manifest.size,
        manifest: manifestCid,
        mtimeMs: wallClock.now(),
        generation: current.generation + 1,
        ...(replicaCount === undefined ? {} : { replicaCount }),
      }
      return { writes: new Map([[key, encodeFileHead(head)]]), result: { head, image } }
    })
    file.head = committed.head
    file.image = committed.image
    file.changes = []
  }

  async function attach(id: string): Promise<OpenFile> {
    let file = openFiles.get(id)
    if (file === undefined) {
      file = {
        id,
        key: keyOf(id),
        head: await readHead(id),
        image: undefined,
        changes: [],
        references: 0,
        queue: Promise.resolve(),
      }
      // Another open of the same file may have finished first; share its view.
      const raced = openFiles.get(id)
      if (raced !== undefined) file = raced
      else openFiles.set(id, file)
    }
    file.references++
    return file
  }

  function release(file: OpenFile): void {
    file.references--
    if (file.references === 0 && openFiles.get(file.id) === file) openFiles.delete(file.id)
  }

  function allocateDescriptor(descriptor: Descriptor, path: string): number {
    if (descriptors.size >= openFilesMax) throw new FileSystemError('EMFILE', 'open', path)
    let fd = 3
    while (descriptors.has(fd)) fd++
    descriptors.set(fd, descriptor)
    return fd
  }

  function checkSize(value: number, syscall: string, what: string): void {
    if (!Number.isSafeInteger(value) || value < 0)
      throw new FileSystemError('EINVAL', syscall, undefined, `${what} must be an integer >= 0, got ${value}`)
  }

  function checkFileBytes(image: FileImage, size: number, syscall: string): void {
    if (size > image.chunkBytes * manifestChunksMax)
      throw new FileSystemError(
        'EFBIG',
        syscall,
        undefined,
        `largest file is ${image.chunkBytes * manifestChunksMax} bytes`,
      )
  }

  // ---- the calls

  async function open(path: string, flags: OpenFlags = 'r', openOptions: OpenOptions = {}): Promise<number> {
    const mode = openModes[flags]
    if (mode === undefined) throw new FileSystemError('EINVAL', 'open', path, `unknown flags "${flags}"`)
    const replicaCount = openOptions.replicaCount ?? options.replicaCount
    if (replicaCount !== undefined) checkReplicaCount(replicaCount)
    let found = await lookup(path, 'open')
    let entry = found.entry
    if (entry !== undefined && mode.create && mode.exclusive)
      throw new FileSystemError('EEXIST', 'open', path)
    if (entry === undefined) {
      if (!mode.create) throw new FileSystemError('ENOENT', 'open', path)
      if (found.trailingSlash) throw new FileSystemError('EISDIR', 'open', path)
      const name = found.name!
      const fresh: DirectoryEntry = { id: newId(), kind: 'file' }
      // A file that asks for its own replica count gets its head before its name, so it never exists without it.
      if (replicaCount !== undefined) {
        const head: FileHead = { ...emptyFileHead, mtimeMs: wallClock.now(), replicaCount }
        await transactions.transact([keyOf(fresh.id)], () => ({
          writes: new Map([[keyOf(fresh.id), encodeFileHead(head)]]),
          result: undefined,
        }))
      }
      entry = await changeDirectory(found.parent!.id, 'open', path, (record) => {
        const existing = record.entries.get(name)
        if (existing !== undefined) {
          if (mode.exclusive) throw new FileSystemError('EEXIST', 'open', path)
          return { write: false, result: existing }
        }
        record.entries.set(name, fresh)
        return { write: true, result: fresh }
      })
      found = { ...found, entry }
    }
    if (entry.kind === 'directory') {
      if (mode.writable) throw new FileSystemError('EISDIR', 'open', path)
      return allocateDescriptor(
        { path, kind: 'directory', id: entry.id, file: undefined, mode, position: 0 },
        path,
      )
    }
    const file = await attach(entry.id)
    try {
      if (mode.truncate && mode.writable)
        await serialized(file, async () => {
          const image = await imageOf(file)
          if (image.size === 0 && file.head.size === 0) return
          await image.truncate(0)
          noteChange(file, { kind: 'truncate', size: 0 })
        })
      return allocateDescriptor({ path, kind: 'file', id: entry.id, file, mode, position: 0 }, path)
    } catch (error) {
      release(file)
      throw error
    }
  }

  async function openById(id: string, flags: OpenFlags = 'r'): Promise<number> {
    const where = `file ${String(id).slice(0, 80)}`
    if (typeof id !== 'string' || !fileIdPattern.test(id) || id === rootId)
      throw new FileSystemError('EINVAL', 'open', where, 'not a file id')
    const mode = openModes[flags]
    if (mode === undefined || mode.create || mode.truncate)
      throw new FileSystemError('EINVAL', 'open', where, `flags must be r, r+ or rs+, got "${flags}"`)
    const file = await attach(id)
    return allocateDescriptor({ path: where, kind: 'file', id, file, mode, position: 0 }, where)
  }

  async function close(fd: number): Promise<void> {
    const descriptor = descriptorOf(fd, 'close')
    descriptors.delete(fd)
    const file = descriptor.file
    if (file === undefined) return
    try {
      await serialized(file, () => commit(file))
    } finally {
      release(file)
    }
  }

  async function discard(fd: number): Promise<void> {
    const descriptor = descriptorOf(fd, 'discard')
    descriptors.delete(fd)
    const file = descriptor.file
    if (file === undefined) return
    // After the calls already queued on the file; the last release forgets the file and its image.
    await serialized(file, async () => release(file))
  }

  async function read(fd: number, length: number, position?: number | null): Promise<Uint8Array> {
    const descriptor = descriptorOf(fd, 'read')
    if (descriptor.kind === 'directory') throw new FileSystemError('EISDIR', 'read', descriptor.path)
    if (!descriptor.mode.readable)
      throw new FileSystemError('EBADF', 'read', descriptor.path, 'not open for reading')
    checkSize(length, 'read', 'length')
    const at = position ?? descriptor.position
    checkSize(at, 'read', 'position')
    const file = descriptor.file!
    const bytes = await serialized(file, async () =>
      (await imageOf(file)).read(at, Math.min(length, readBytesMax)),
    )
    if (position === undefined || position === null) descriptor.position = at + bytes.length
    return bytes
  }

  async function write(fd: number, data: Uint8Array, position?: number | null): Promise<number> {
    const descriptor = descriptorOf(fd, 'write')
    if (!descriptor.mode.writable)
      throw new FileSystemError('EBADF', 'write', descriptor.path, 'not open for writing')
    if (!(data instanceof Uint8Array))
      throw new FileSystemError('EINVAL', 'write', descriptor.path, 'data must be bytes')
    if (position !== undefined && position !== null) checkSize(position, 'write', 'position')
    const file = descriptor.file!
    return serialized(file, async () => {
      const image = await imageOf(file)
      const at = descriptor.mode.append ? image.size : (position ?? descriptor.position)
      checkFileBytes(image, at + data.length, 'write')
      await image.write(at, data)
      noteChange(file, { kind: 'write', offset: at, length: data.length })
      // As write(2): a write at the descriptor's offset moves it (in append mode, to the new end); pwrite does not.
      if (position === undefined || position === null) descriptor.position = at + data.length
      if (file.changes.length >= changeLogEntriesMax) await commit(file)
      return data.length
    })
  }

  async function seek(fd: number, offset: number, whence: Whence = 'set'): Promise<number> {
    const descriptor = descriptorOf(fd, 'seek')
    if (!Number.isSafeInteger(offset)) throw new FileSystemError('EINVAL', 'seek', descriptor.path, 'offset')
    let base: number
    if (whence === 'set') base = 0
    else if (whence === 'current') base = descriptor.position
    else if (whence === 'end') {
      const file = descriptor.file
      base = file === undefined ? 0 : await serialized(file, async () => (await imageOf(file)).size)
    } else throw new FileSystemError('EINVAL', 'seek', descriptor.path, `whence "${whence}"`)
    const position = base + offset
    if (position < 0) throw new FileSystemError('EINVAL', 'seek', descriptor.path, 'before the start')
    descriptor.position = position
    return position
  }

  async function ftruncate(fd: number, size: number): Promise<void> {
    const descriptor = descriptorOf(fd, 'ftruncate')
    if (descriptor.kind === 'directory' || !descriptor.mode.writable)
      throw new FileSystemError('EINVAL', 'ftruncate', descriptor.path, 'not open for writing')
    checkSize(size, 'ftruncate', 'size')
    const file = descriptor.file!
    await serialized(file, async () => {
      const image = await imageOf(file)
      checkFileBytes(image, size, 'ftruncate')
      await image.truncate(size)
      noteChange(file, { kind: 'truncate', size })
      if (file.changes.length >= changeLogEntriesMax) await commit(file)
    })
  }

  async function fsync(fd: number): Promise<void> {
    const file = descriptorOf(fd, 'fsync').file
    if (file !== undefined) await serialized(file, () => commit(file))
  }

  async function statOf(entry: DirectoryEntry): Promise<Stat> {
    if (entry.kind === 'directory') {
      const record = await readDirectory(entry.id)
      return { type: 'directory', size: 0, mtimeMs: record.mtimeMs, id: entry.id }
    }
    const file = openFiles.get(entry.id)
    const replicas = (head: FileHead) =>
      head.replicaCount === undefined ? {} : { replicaCount: head.replicaCount }
    if (file !== undefined)
      return serialized(file, async () => ({
        type: 'file' as const,
        size: file.image?.size ?? file.head.size,
        mtimeMs: file.head.mtimeMs,
        id: entry.id,
        ...replicas(file.head),
      }))
    const head = await readHead(entry.id)
    return { type: 'file', size: head.size, mtimeMs: head.mtimeMs, id: entry.id, ...replicas(head) }
  }

  async function stat(path: string): Promise<Stat> {
    const { entry } = await lookup(path, 'stat')
    if (entry === undefined) throw new FileSystemError('ENOENT', 'stat', path)
    return statOf(entry)
  }

  async function fstat(fd: number): Promise<Stat> {
    const descriptor = descriptorOf(fd, 'fstat')
    return statOf({ id: descriptor.id, kind: descriptor.kind })
  }

  async function truncate(path: string, size: number): Promise<void> {
    checkSize(size, 'truncate', 'size')
    const { entry } = await lookup(path, 'truncate')
    if (entry === undefined) throw new FileSystemError('ENOENT', 'truncate', path)
    if (entry.kind === 'directory') throw new FileSystemError('EISDIR', 'truncate', path)
    const fd = await open(path, 'r+')
    try {
      await ftruncate(fd, size)
    } finally {
      await close(fd)
    }
  }

  async function readdir(path: string): Promise<DirectoryListingEntry[]> {
    const { entry } = await lookup(path, 'readdir')
    if (entry === undefined) throw new FileSystemError('ENOENT', 'readdir', path)
    if (entry.kind !== 'directory') throw new FileSystemError('ENOTDIR', 'readdir', path)
    const record = await readDirectory(entry.id)
    if (record.removed) throw new FileSystemError('ENOENT', 'readdir', path)
    return [...record.entries]
      .map(([name, child]) => ({ name, type: child.kind }))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  }

  async function mkdir(path: string): Promise<void> {
    const found = await lookup(path, 'mkdir')
    if (found.entry !== undefined) throw new FileSystemError('EEXIST', 'mkdir', path)
    const name = found.name!
    const fresh: DirectoryEntry = { id: newId(), kind: 'directory' }
    await changeDirectory(found.parent!.id, 'mkdir', path, (record) => {
      if (record.entries.has(name)) throw new FileSystemError('EEXIST', 'mkdir', path)
      record.entries.set(name, fresh)
      return { write: true, result: undefined }
    })
  }

  async function unlink(path: string): Promise<void> {
    const found = await lookup(path, 'unlink')
    if (found.name === undefined) throw new FileSystemError('EISDIR', 'unlink', path)
    if (found.entry === undefined) throw new FileSystemError('ENOENT', 'unlink', path)
    if (found.entry.kind === 'directory') throw new FileSystemError('EISDIR', 'unlink', path)
    const name = found.name
    await changeDirectory(found.parent!.id, 'unlink', path, (record) => {
      const entry = record.entries.get(name)
      if (entry === undefined) throw new FileSystemError('ENOENT', 'unlink', path)
      if (entry.kind === 'directory') throw new FileSystemError('EISDIR', 'unlink', path)
      record.entries.delete(name)
      return { write: true, result: undefined }
    })
  }

  async function rmdir(path: string): Promise<void> {
    await withFreshLookups(async () => {
      const found = await lookup(path, 'rmdir')
      if (found.name === undefined) throw new FileSystemError('EBUSY', 'rmdir', path)
      if (found.entry === undefined) throw new FileSystemError('ENOENT', 'rmdir', path)
      if (found.entry.kind !== 'directory') throw new FileSystemError('ENOTDIR', 'rmdir', path)
      const name = found.name
      const parentId = found.parent!.id
      const childId = found.entry.id
      const parentKey = keyOf(parentId)
      const childKey = keyOf(childId)
      await transactions.transact([parentKey, childKey], async (views) => {
        const parent = await decodeView(views.get(parentKey)!, parentId)
        if (parent.removed) throw new FileSystemError('ENOENT', 'rmdir', path)
        const entry = parent.entries.get(name)
        if (entry === undefined) throw new FileSystemError('ENOENT', 'rmdir', path)
        if (entry.id !== childId) throw new StaleLookup()
        const child = await decodeView(views.get(childKey)!, childId)
        if (child.entries.size > 0) throw new FileSystemError('ENOTEMPTY', 'rmdir', path)
        child.removed = true
        parent.entries.delete(name)
        parent.mtimeMs = wallClock.now()
        return {
          writes: new Map([
            [parentKey, await encodeView(parent, parentId)],
            [childKey, await encodeView(child, childId)],
          ]),
          result: undefined,
        }
      })
    })
  }

  async function rename(from: string, to: string): Promise<void> {
    await withFreshLookups(async () => {
      // Read before the lookups: a directory move between them changes it, and the transaction then starts over.
      const renameVersion = (await transactions.read(renameKey)).version
      const source = await lookup(from, 'rename')
      const target = await lookup(to, 'rename')
      if (source.name === undefined || target.name === undefined)
        throw new FileSystemError('EBUSY', 'rename', from)
      if (source.entry === undefined) throw new FileSystemError('ENOENT', 'rename', from)
      const moving = source.entry
      if (isPrefix(source.components, target.components))
        throw new FileSystemError('EINVAL', 'rename', from, `cannot move a directory into itself (${to})`)
      // As Linux: a target that is an ancestor of the source is a non-empty directory.
      if (isPrefix(target.components, source.components)) throw new FileSystemError('ENOTEMPTY', 'rename', to)
      const sourceParent = source.parent!
      const targetParent = target.parent!
      if (sourceParent.id === targetParent.id && source.name === target.name) return
      const replaced = target.entry
      if (replaced !== undefined) {
        if (replaced.id === moving.id) return
        if (moving.kind === 'directory' && replaced.kind === 'file')
          throw new FileSystemError('ENOTDIR', 'rename', to)
        if (moving.kind === 'file' && replaced.kind === 'directory')
          throw new FileSystemError('EISDIR', 'rename', to)
      }
      if (moving.kind === 'file' && target.trailingSlash) throw new FileSystemError('ENOTDIR', 'rename', to)
      const sourceKey = keyOf(sourceParent.id)
      const targetKey = keyOf(targetParent.id)
      const replacedKey = replaced?.kind === 'directory' ? keyOf(replaced.id) : undefined
      const crossing = moving.kind === 'directory' && sourceParent.id !== targetParent.id
      const keys = [sourceKey, targetKey]
      if (replacedKey !== undefined) keys.push(replacedKey)
      if (crossing) keys.push(renameKey)
      const sourceName = source.name
      const targetName = target.name
      await transactions.transact(keys, async (views) => {
        if (crossing && views.get(renameKey)!.version !== renameVersion) throw new StaleLookup()
        const sourceRecord = await decodeView(views.get(sourceKey)!, sourceParent.id)
        const targetRecord =
          targetKey === sourceKey ? sourceRecord : await decodeView(views.get(targetKey)!, targetParent.id)
        if (sourceRecord.removed || targetRecord.removed) throw new FileSystemError('ENOENT', 'rename', from)
        const entry = sourceRecord.entries.get(sourceName)
        if (entry === undefined) throw new FileSystemError('ENOENT', 'rename', from)
        if (entry.id !== moving.id || targetRecord.entries.get(targetName)?.id !== replaced?.id)
          throw new StaleLookup()
        const writes = new Map<string, Uint8Array | null>()
        if (replacedKey !== undefined) {
          const replacedRecord = await decodeView(views.get(replacedKey)!, replaced!.id)
          if (replacedRecord.entries.size > 0) throw new FileSystemError('ENOTEMPTY', 'rename', to)
          replacedRecord.removed = true
          writes.set(replacedKey, await encodeView(replacedRecord, replaced!.id))
        }
        sourceRecord.entries.delete(sourceName)
        targetRecord.entries.set(targetName, entry)
        const now = wallClock.now()
        sourceRecord.mtimeMs = now
        targetRecord.mtimeMs = now
        writes.set(sourceKey, await encodeView(sourceRecord, sourceParent.id))
        if (targetKey !== sourceKey) writes.set(targetKey, await encodeView(targetRecord, targetParent.id))
        return { writes, result: undefined }
      })
    })
  }

  async function readFile(path: string): Promise<Uint8Array> {
    const fd = await open(path, 'r')
    try {
      const size = (await fstat(fd)).size
      return await read(fd, size, 0)
    } finally {
      await close(fd)
    }
  }

  async function writeFile(path: string, data: Uint8Array): Promise<void> {
    const fd = await open(path, 'w')
    try {
      await write(fd, data)
    } finally {
      await close(fd)
    }
  }

  async function closeAll(): Promise<void> {
    const failures: unknown[] = []
    for (const fd of [...descriptors.keys()]) await close(fd).catch((error: unknown) => failures.push(error))
    if (failures.length > 0) throw failures[0]
  }

  /** Public calls fail with FileSystemError only: other failures become EIO (or EAGAIN, EINVAL) with the cause kept. */
  function guarded<A extends unknown[], R>(syscall: string, call: (...args: A) => Promise<R>) {
    return async (...args: A): Promise<R> => {
      try {
        return await call(...args)
      } catch (error) {
        if (error instanceof FileSystemError) throw error
        const path = typeof args[0] === 'string' ? args[0] : undefined
        const code: PosixErrorCode =
          error instanceof MetadataContentionError
            ? 'EAGAIN'
            : error instanceof StorageArgumentError
              ? 'EINVAL'
              : 'EIO'
        throw new FileSystemError(code, syscall, path, (error as Error).message, { cause: error })
      }
    }
  }

  return {
    open: guarded('open', open),
    openById: guarded('openById', openById),
    close: guarded('close', close),
    discard: guarded('discard', discard),
    read: guarded('read', read),
    write: guarded('write', write),
    seek: guarded('seek', seek),
    ftruncate: guarded('ftruncate', ftruncate),
    fsync: guarded('fsync', fsync),
    fstat: guarded('fstat', fstat),
    truncate: guarded('truncate', truncate),
    stat: guarded('stat', stat),
    readdir: guarded('readdir', readdir),
    mkdir: guarded('mkdir', mkdir),
    rmdir: guarded('rmdir', rmdir),
    unlink: guarded('unlink', unlink),
    rename: guarded('rename', rename),
    readFile: guarded('readFile', readFile),
    writeFile: guarded('writeFile', writeFile),
    closeAll: guarded('closeAll', closeAll),
  }
}

function isPrefix(prefix: readonly string[], path: readonly string[]): boolean {
  if (prefix.length >= path.length) return false
  return prefix.every((name, index) => path[index] === name)
}
