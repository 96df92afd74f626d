/**
 * Guests' files on the distributed file system: answers a thread's WASI file calls (encoding in
 * host/wasi-files.ts) with the storage layer's `FileSystem` (storage/file-system.ts), and keeps the
 * thread's open files with its context, so that a thread restarted on another node goes on reading
 * and writing where it was.
 *
 *   const files = createGuestFilesService({ fileSystem, store })        // one per node
 *   const session = await files.session({ pid, tid, resumed: false, restoredCallSequence: null })
 *   await session.handle(call)              // each WASI file call of the thread, in order
 *   await session.checkpoint(callSequence)  // at each context save, before it is replicated
 *   await session.end()                     // the thread ended: its files are closed (committed)
 *   session.abandon()                       // or it stopped here and may go on elsewhere
 *
 * What a guest sees. The cluster file system is preopened at `/` (the whole volume; `fabric fs ls /`
 * lists the same), so `fopen("/results/out.txt", "w")` and relative paths both work. Consistency is
 * close-to-open, as in NFS: what a thread writes becomes visible to other nodes when it closes the
 * file or calls fsync, and to opens that come after. Threads on one node share one view of a file.
 * A context save commits the thread's open files as fsync would (so they may become visible before
 * the close), and a thread that ends has its files closed before `join` returns. There are no
 * symbolic links; paths cannot climb above the preopen (ENOTCAPABLE); times cannot be set
 * (ENOTSUP).
 *
 * Restarts. The open-file table (path, access, offset of each descriptor) travels in the
 * coordination store, key `files/<pid>/<tid>`, written at each context save after the thread's
 * files were committed and before the save goes to its replicas; the last two are kept, and a thread
 * resumes with the newest one not later than its save. A thread that resumes re-runs its calls since
 * that save (op id = thread, call sequence number); re-running writes puts the same bytes at the
 * same offsets, so they are not applied twice in effect. Calls whose second run would answer
 * differently are logged in the same key: mkdir, rmdir, unlink, rename and exclusive creates (the
 * intent before the change, the reply after it, before the guest sees it; a re-run gets the logged
 * reply, and the change is only made to hold again where the re-run undid it: a file the re-run
 * created again is renamed or removed as before), and the offsets of appending writes (logged
 * before any commit, so replayed appends land where the first run put them). An intent without a reply (the node died in
 * between) is judged from the file system: applied if the directory exists (mkdir), the name is gone
 * (rmdir, unlink), the source is gone and the target there (rename), the file exists (exclusive
 * create); otherwise it runs again. Reads since the save are logged too when the thread commits a
 * file (close, fsync) before its next save, up to {@link readLogBytesMax} bytes: a re-run read gets
 * what the first run read, not what the thread committed after it. What a resumed thread may see
 * differently from an undisturbed run: past that many bytes, a re-run read of bytes that the thread
 * itself wrote and committed after its last save (the read sees the later bytes); and changes by
 * other clients in between (as with any close-to-open client, and they can mislead the judging of
 * an intent). Files are reopened by their id (`Stat.id`), so one that another client renamed or
 * unlinked while the thread was saved stays usable, as POSIX keeps an open file (a journal written
 * before ids were kept reopens by path, and such a file then answers EIO). A worker that dies on
 * the same node is replayed exactly: replies since the last save are kept in memory and answered
 * again. An incarnation stopped while another may take over (its
 * node lost its lease, or handed the thread on) commits nothing more: its writes since its save are
 * dropped (its descriptors are discarded, not closed), and the other incarnation makes them again.
 */

import { Decoder, Encoder } from 'cbor-x'
import type { GuestFileSystem } from '../../host/files.ts'
import { equalBytes } from '../../host/snapshot.ts'
import type { HostCall, HostCallReply } from '../../host/thread-runner.ts'
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
  wasiOpenFlags,
  wasiRights,
  wasiWhence,
} from '../../host/wasi-files.ts'
import { FileSystemError } from '../../storage/errors.ts'
import type { DirectoryListingEntry, FileSystem, Stat } from '../../storage/file-system.ts'
import { GuestFilesError } from '../errors.ts'
import type { CoordinationClient } from './services.ts'

/** Where guests see the cluster file system (their one preopened directory). */
export const guestFilesMountDefault = '/'
/** Descriptors one thread may hold open at once (the preopen included). */
export const openDescriptorsPerThreadMax = 256
/** Entries of one directory a guest can list; the rest are left out. */
export const directoryEntriesMax = 65_536
/** Replies kept in memory per thread for a worker restarted on the same node: count and payload bytes. */
export const replayRepliesMax = 100_000
export const replayReplyBytesMax = 32 * 1024 * 1024
/** Logged calls between two saves past which the thread is asked for a save (which empties the log). */
export const journalEffectsSaveAt = 256
/** Logged calls between two saves, at most; a thread that needs more fails with GuestFilesError. */
export const journalEffectsMax = 1024
/** The journal is one value of the coordination store (its limit is 64 KiB). */
export const journalBytesMax = 60 * 1024
/** Bytes of read replies since the last save kept for the journal; beyond, reads are not logged. */
export const readLogBytesMax = 32 * 1024
/** Attempts at one journal write when the store does not answer in time. */
export const journalWriteAttemptsMax = 5
/** Checkpoints kept in the journal: the newest, and the one before in case its save never arrived. */
const checkpointsKept = 2
export const journalFormatVersion = 1

/** Store key of a thread's file journal. */
export function threadFilesKey(pid: string, tid: string): string {
  return `files/${pid}/${tid}`
}

// ---- the journal: the open-file table at saves, and calls whose second run would differ

interface DescriptorRecord {
  fd: number
  kind: 'file' | 'directory'
  path: string
  readable: boolean
  writable: boolean
  append: boolean
  position: number
  /**
   * The file's id in the file system (`Stat.id`): a resumed thread reopens the file by it, so a
   * rename or unlink by another client meanwhile does not lose it (POSIX keeps an open file
   * usable). Absent in journals written before it was kept; those reopen by path.
   */
  id?: string
  /**
   * A writable file's committed size at the save. An incarnation that died after the save may have
   * committed more (a later automatic save whose context never reached its replicas); the resumed
   * thread cuts that off, or its re-run would find the end of the file further on than it was.
   */
  size?: number
}

interface CheckpointRecord {
  /** The save's call sequence number: the table is as it was when that call began. */
  callSequence: number
  descriptors: DescriptorRecord[]
}

interface EffectRecord {
  callSequence: number
  name: string
  result: number
  payload: Uint8Array | null
  /** For an appending write: where its bytes went. */
  offset?: number
  /** For a rename: the storage paths, so that a resumed thread finds files it renamed while open. */
  from?: string
  to?: string
}

interface JournalRecord {
  formatVersion: number
  checkpoints: CheckpointRecord[]
  effects: EffectRecord[]
}

const cborEncoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false } as never)
const cborDecoder = new Decoder({ useRecords: false, mapsAsObjects: true } as never)

function encodeJournal(journal: JournalRecord): Uint8Array {
  return Uint8Array.from(cborEncoder.encode(journal))
}

function decodeJournal(bytes: Uint8Array, key: string): JournalRecord {
  let value: unknown
  try {
    value = cborDecoder.decode(bytes)
  } catch (error) {
    throw new GuestFilesError(`file journal ${key} is not valid CBOR (${(error as Error).message})`)
  }
  const record = value as Partial<JournalRecord> | null
  if (record === null || typeof record !== 'object' || record.formatVersion !== journalFormatVersion)
    throw new GuestFilesError(
      `file journal ${key} has format version ${String(record?.formatVersion)}; this node reads ${journalFormatVersion}`,
    )
  if (!Array.isArray(record.checkpoints) || !Array.isArray(record.effects))
    throw new GuestFilesError(`file journal ${key} is malformed`)
  return record as JournalRecord
}

// ---- errors and encodings

const posixToWasi: Record<string, number> = {
  ENOENT: wasiErrno.noent,
  EEXIST: wasiErrno.exist,
  ENOTDIR: wasiErrno.notdir,
  EISDIR: wasiErrno.isdir,
  ENOTEMPTY: wasiErrno.notempty,
  EBADF: wasiErrno.badf,
  EINVAL: wasiErrno.inval,
  ENAMETOOLONG: wasiErrno.nametoolong,
  EBUSY: wasiErrno.busy,
  EFBIG: wasiErrno.fbig,
  EMFILE: wasiErrno.mfile,
  EIO: wasiErrno.io,
  EAGAIN: wasiErrno.again,
}

/** The WASI errno for a storage error (POSIX code), EIO for anything else. */
export function wasiErrnoOf(error: unknown): number {
  if (error instanceof FileSystemError) return posixToWasi[error.code] ?? wasiErrno.io
  return wasiErrno.io
}

/** An expected failure of a call, answered to the guest as a WASI errno. */
class CallFailure {
  readonly errno: number
  constructor(errno: number) {
    this.errno = errno
  }
}

/** Runs a storage call; its failures become WASI errnos. */
async function storage<T>(operation: Promise<T>): Promise<T> {
  try {
    return await operation
  } catch (error) {
    if (error instanceof CallFailure || error instanceof GuestFilesError) throw error
    throw new CallFailure(wasiErrnoOf(error))
  }
}

/** FNV-1a, 64 bits: a stable inode number from a file's id (or a path). */
function inodeOf(text: string): bigint {
  let hash = 0xcbf29ce484222325n
  for (let index = 0; index < text.length; index++) {
    hash ^= BigInt(text.charCodeAt(index))
    hash = (hash * 0x100000001b3n) & 0xffffffffffffffffn
  }
  return hash === 0n ? 1n : hash
}

function filestatOf(status: Stat): Uint8Array {
  const timeNs = BigInt(Math.round(status.mtimeMs)) * 1_000_000n
  return encodeFilestat({
    device: 0n,
    inode: inodeOf(status.id),
    fileType: status.type === 'directory' ? wasiFileType.directory : wasiFileType.regularFile,
    linkCount: 1n,
    size: BigInt(status.size),
    accessNs: timeNs,
    modifyNs: timeNs,
    changeNs: timeNs,
  })
}

function checkOffset(offset: number): number {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new CallFailure(wasiErrno.inval)
  return offset
}

function joinPath(directory: string, names: readonly string[]): string {
  const base = directory === '/' ? '' : directory
  return names.length === 0 ? directory : `${base}/${names.join('/')}`
}

// ---- one thread's files

interface OpenDirectory {
  kind: 'directory'
  path: string
  /** Fixed at cookie 0 so that later cookies index the same listing. */
  listing: DirectoryListingEntry[] | null
  preopen: boolean
}

interface OpenFile {
  kind: 'file'
  path: string
  /** The storage client's descriptor; null when reopening after a restart failed. */
  storageFd: number | null
  /** The file's id (`Stat.id`), by which a resumed thread reopens it; null when not known. */
  id: string | null
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

/** The result of a logged call whose reply is not known yet. */
const pendingResult = -1

/** Calls that change names: logged before the guest sees their reply, answered from the log on a re-run. */
const namespaceCalls = new Set([
  'path_create_directory',
  'path_remove_directory',
  'path_unlink_file',
  'path_rename',
])

export interface GuestFileSessionOptions {
  fileSystem: FileSystem
  /** The storage directory guests see as their preopen; default `/`. */
  directory?: string
  /** Where the thread's journal lives; without it, the session keeps nothing beyond this node. */
  journal?: { store: Pick<CoordinationClient, 'get' | 'cas'>; key: string }
  /** Asks the thread for a context save soon (its journal is getting long). */
  requestSave?: () => void
  log?: (line: string) => void
}

/** The files of one thread: its descriptors, its replies kept for replay, its journal. */
export class GuestFileSession {
  private readonly fileSystem: FileSystem
  private readonly options: GuestFileSessionOptions
  private readonly descriptors = new Map<number, OpenDescriptor>()
  private readonly replies = new Map<number, RecordedReply>()
  private replyBytes = 0
  private highestSequence = 0
  /** Calls run one at a time, in the order they came. */
  private queue: Promise<unknown> = Promise.resolve()
  /** The last call and the table as it was when it began (a save taken at it restores that table). */
  private lastCall: { callSequence: number; table: DescriptorRecord[] } | null = null
  private journal: JournalRecord = { formatVersion: journalFormatVersion, checkpoints: [], effects: [] }
  private journalVersion = 0
  /** Calls since the last checkpoint that changed the table or were logged. */
  private changedSinceCheckpoint = false
  private journalUnwritten = false
  /**
   * Replies of reads since the last checkpoint: logged before the thread commits a file, so that a
   * re-run read does not see what the thread itself committed after it.
   */
  private readsSinceCheckpoint: EffectRecord[] = []
  private readBytesSinceCheckpoint = 0
  /** Logged calls of the run before a restart, by call sequence number. */
  private replayEffects = new Map<number, EffectRecord>()
  private ended = false

  constructor(options: GuestFileSessionOptions) {
    this.fileSystem = options.fileSystem
    this.options = options
    const directory = options.directory ?? '/'
    if (!directory.startsWith('/'))
      throw new GuestFilesError(
        `Expected directory to be an absolute storage path such as "/", got "${directory}"`,
      )
    this.descriptors.set(firstPreopenFd, { kind: 'directory', path: directory, listing: null, preopen: true })
  }

  /**
   * Reads the thread's journal and reopens its files as they were at the save it resumes from
   * (`restoredCallSequence`, or its start when null).
   */
  async resume(restoredCallSequence: number | null): Promise<void> {
    const journal = this.options.journal
    if (journal === undefined) return
    const read = await journal.store.get(journal.key)
    if (read.value === null) return
    this.journal = decodeJournal(read.value, journal.key)
    this.journalVersion = read.version
    const from = restoredCallSequence ?? 0
    const checkpoint = [...this.journal.checkpoints].reverse().find((each) => each.callSequence <= from) ?? {
      callSequence: 0,
      descriptors: [],
    }
    if (restoredCallSequence !== null && checkpoint.callSequence !== restoredCallSequence)
      this.options.log?.(
        `files: ${journal.key} resumes from call ${restoredCallSequence}, nearest file checkpoint is call ${checkpoint.callSequence}`,
      )
    for (const effect of this.journal.effects)
      if (effect.callSequence >= checkpoint.callSequence) this.replayEffects.set(effect.callSequence, effect)
    const renames = [...this.replayEffects.values()]
      .filter((effect) => effect.name === 'path_rename' && effect.result === wasiErrno.success)
      .sort((left, right) => left.callSequence - right.callSequence)
    // A rename whose reply is unknown may have happened too: tried first, then without it.
    const renamesMaybe = [...this.replayEffects.values()]
      .filter(
        (effect) =>
          effect.name === 'path_rename' &&
          (effect.result === wasiErrno.success || effect.result === pendingResult),
      )
      .sort((left, right) => left.callSequence - right.callSequence)
    for (const entry of checkpoint.descriptors) {
      if (entry.kind === 'directory') {
        this.descriptors.set(entry.fd, { kind: 'directory', path: entry.path, listing: null, preopen: false })
        continue
      }
      // By its id, wherever it is named now; without one (an older journal), by path: the file is
      // where the thread's renames since the save moved it (the descriptor keeps the path of then,
      // and the replayed renames move it on).
      let storageFd: number | null = null
      if (entry.id !== undefined)
        storageFd = await this.fileSystem
          .openById(entry.id, entry.writable ? 'r+' : 'r')
          .catch((error: unknown) => {
            this.options.log?.(
              `files: ${journal.key} cannot reopen ${entry.path} by its id ${entry.id} (${(error as Error).message})`,
            )
            return null
          })
      for (const moves of renamesMaybe.length > renames.length ? [renamesMaybe, renames] : [renames]) {
        if (storageFd !== null) break
        let current = entry.path
        for (const rename of moves) current = movedPath(current, rename.from ?? '', rename.to ?? '')
        try {
          storageFd = await this.fileSystem.open(current, entry.writable ? 'r+' : 'r')
          break
        } catch (error) {
          this.options.log?.(
            `files: ${journal.key} cannot reopen ${entry.path} at ${current} (${(error as Error).message})`,
          )
        }
      }
      if (storageFd !== null && entry.writable && entry.size !== undefined) {
        const status = await this.fileSystem.fstat(storageFd)
        if (status.size > entry.size) {
          this.options.log?.(
            `files: ${journal.key} cuts ${entry.path} back to ${entry.size} bytes, its size at the save`,
          )
          await this.fileSystem.ftruncate(storageFd, entry.size)
        }
      }
      this.descriptors.set(entry.fd, {
        kind: 'file',
        path: entry.path,
        storageFd,
        id: entry.id ?? null,
        position: entry.position,
        append: entry.append,
        readable: entry.readable,
        writable: entry.writable,
      })
    }
  }

  /** Answers one WASI file call; a repeated call (a worker restarted here) gets its recorded reply. */
  handle(call: HostCall): Promise<HostCallReply> {
    const recorded = this.replies.get(call.callSequence)
    if (recorded !== undefined) {
      this.forgetBefore(call.callSequence)
      return recorded.reply
    }
    if (call.callSequence <= this.highestSequence)
      return Promise.reject(
        new GuestFilesError(
          `file call ${call.name} (#${call.callSequence}) repeated after a restore, but its reply is no longer kept (more than ${replayRepliesMax} calls or ${replayReplyBytesMax} bytes since the last save); save more often`,
        ),
      )
    this.highestSequence = call.callSequence
    const reply = this.serialized(() => this.answer(call))
    this.record(call.callSequence, reply)
    return reply
  }

  /**
   * The thread took a context save at call `callSequence`: commits its open files and writes the
   * table to the journal. Runs after the calls already received, before later ones.
   */
  checkpoint(callSequence: number): Promise<void> {
    return this.serialized(async () => {
      if (this.ended) return
      const table = this.lastCall?.callSequence === callSequence ? this.lastCall.table : this.tableRecord()
      this.forgetBefore(callSequence)
      // Reads before the save are not run again.
      this.readsSinceCheckpoint = []
      this.readBytesSinceCheckpoint = 0
      if (this.options.journal === undefined || !this.changedSinceCheckpoint) return
      // Where appends went must be known before they become visible (a re-run would append again).
      if (this.journalUnwritten) await this.writeJournal()
      for (const opened of this.descriptors.values())
        if (opened.kind === 'file' && opened.writable && opened.storageFd !== null)
          await this.fileSystem.fsync(opened.storageFd)
      const descriptors: DescriptorRecord[] = []
      for (const entry of table) {
        const opened = this.descriptors.get(entry.fd)
        const sized =
          entry.kind === 'file' && entry.writable && opened?.kind === 'file' && opened.storageFd !== null
            ? { ...entry, size: await this.fileSize(opened) }
            : entry
        descriptors.push(sized)
      }
      const checkpoints = [...this.journal.checkpoints, { callSequence, descriptors }].slice(-checkpointsKept)
      const oldest = checkpoints[0]!.callSequence
      this.journal = {
        formatVersion: journalFormatVersion,
        checkpoints,
        effects: this.journal.effects.filter((effect) => effect.callSequence >= oldest),
      }
      await this.writeJournal()
      this.changedSinceCheckpoint = false
    })
  }

  /** The thread ended (or stopped here): closes its files, which commits what it wrote. */
  end(): Promise<void> {
    return this.serialized(async () => {
      if (this.ended) return
      this.ended = true
      const failures: unknown[] = []
      for (const opened of this.descriptors.values()) {
        if (opened.kind !== 'file' || opened.storageFd === null) continue
        await this.fileSystem.close(opened.storageFd).catch((error: unknown) => failures.push(error))
      }
      this.descriptors.clear()
      this.replies.clear()
      this.replyBytes = 0
      if (failures.length > 0) throw failures[0]
    })
  }

  /**
   * This incarnation stops while another may take the thread over: nothing more is committed (a
   * late commit of its writes could land after the other's). Its storage descriptors are discarded,
   * after the call in progress (which may still open one): their uncommitted changes are dropped
   * and nothing stays open. Resolves when they are.
   */
  abandon(): Promise<void> {
    if (this.ended) return this.queue.then(() => {})
    this.ended = true
    this.replies.clear()
    this.replyBytes = 0
    return this.serialized(async () => {
      const open = [...this.descriptors.values()].filter(
        (opened): opened is OpenFile => opened.kind === 'file' && opened.storageFd !== null,
      )
      this.descriptors.clear()
      for (const opened of open) await this.fileSystem.discard(opened.storageFd!).catch(() => {})
      if (open.length > 0)
        this.options.log?.(
          `files: ${this.options.journal?.key ?? 'a thread'} stopped with ${open.length} files open; their uncommitted changes were dropped`,
        )
    })
  }

  // ---- internals

  private serialized<T>(run: () => Promise<T>): Promise<T> {
    const result = this.queue.then(run, run)
    this.queue = result.catch(() => {})
    return result
  }

  private tableRecord(): DescriptorRecord[] {
    const table: DescriptorRecord[] = []
    for (const [fd, opened] of this.descriptors) {
      if (opened.kind === 'directory') {
        if (!opened.preopen)
          table.push({
            fd,
            kind: 'directory',
            path: opened.path,
            readable: true,
            writable: false,
            append: false,
            position: 0,
          })
        continue
      }
      table.push({
        fd,
        kind: 'file',
        path: opened.path,
        readable: opened.readable,
        writable: opened.writable,
        append: opened.append,
        position: opened.position,
        ...(opened.id === null ? {} : { id: opened.id }),
      })
    }
    return table
  }

  private async answer(call: HostCall): Promise<HostCallReply> {
    if (this.ended) return { result: wasiErrno.badf }
    this.lastCall = { callSequence: call.callSequence, table: this.tableRecord() }
    this.changedSinceCheckpoint = true
    const replayed = this.replayEffects.get(call.callSequence)
    if (replayed !== undefined) {
      this.replayEffects.delete(call.callSequence)
      return this.replay(call, replayed)
    }
    const exclusiveOpen =
      call.name === 'path_open' &&
      (call.args[2]! & (wasiOpenFlags.create | wasiOpenFlags.exclusive)) ===
        (wasiOpenFlags.create | wasiOpenFlags.exclusive)
    if (this.options.journal === undefined || !(namespaceCalls.has(call.name) || exclusiveOpen))
      return this.execute(call)
    // The intent is logged before the change and its reply after: a node that dies in between
    // leaves an intent, which a re-run checks against the file system (see `replay`).
    const effect: EffectRecord = {
      callSequence: call.callSequence,
      name: call.name,
      result: pendingResult,
      payload: null,
    }
    if (call.name === 'path_rename') {
      try {
        Object.assign(effect, this.renamePaths(call))
      } catch (error) {
        if (error instanceof CallFailure) return { result: error.errno }
        throw error
      }
    }
    this.logEffect(effect)
    await this.writeJournal()
    return this.executeLogged(call, effect)
  }

  private async execute(call: HostCall): Promise<HostCallReply> {
    const operation = this.operations[call.name]
    if (operation === undefined) return { result: wasiErrno.nosys }
    try {
      return { result: wasiErrno.success, payload: await operation(call) }
    } catch (error) {
      if (!(error instanceof CallFailure)) throw error
      return { result: error.errno }
    }
  }

  /** Runs a logged call and records its reply in the journal before the guest sees it. */
  private async executeLogged(call: HostCall, effect: EffectRecord): Promise<HostCallReply> {
    const reply = await this.execute(call)
    effect.result = reply.result
    effect.payload = reply.payload ?? null
    if (reply.result !== wasiErrno.success) {
      delete effect.from
      delete effect.to
    }
    await this.writeJournal()
    return reply
  }

  /** Whether a logged intent (its reply unknown: the node died) was applied, judged from the file system. */
  private async intentApplied(call: HostCall, effect: EffectRecord): Promise<boolean> {
    const exists = async (path: string) => (await this.statOrNull(path)) !== null
    switch (call.name) {
      case 'path_create_directory':
        return (await this.statOrNull(this.pathOf(call.args[0]!, call.payload)))?.type === 'directory'
      case 'path_remove_directory':
      case 'path_unlink_file':
        return !(await exists(this.pathOf(call.args[0]!, call.payload)))
      case 'path_rename':
        return !(await exists(effect.from ?? '')) && (await exists(effect.to ?? ''))
      case 'path_open':
        return exists(this.pathOf(call.args[0]!, call.payload))
      default:
        return false
    }
  }

  /** A logged call of the run before the restart: its reply again, and its effect on this table only. */
  private async replay(call: HostCall, effect: EffectRecord): Promise<HostCallReply> {
    if (effect.name !== call.name)
      throw new GuestFilesError(
        `file call #${call.callSequence} was ${effect.name} before the restart and is ${call.name} now; the program does not replay deterministically`,
      )
    if (effect.result === pendingResult) {
      const applied = await this.intentApplied(call, effect).catch((error: unknown) => {
        if (error instanceof CallFailure) return false
        throw error
      })
      if (!applied) return this.executeLogged(call, effect)
      this.options.log?.(`files: call #${call.callSequence} ${call.name} was applied before the restart`)
      effect.result = wasiErrno.success
      if (call.name === 'path_open') effect.payload = encodeUint32(this.lowestFreeDescriptor())
      await this.writeJournal()
    }
    const reply = { result: effect.result, payload: effect.payload }
    if (effect.result !== wasiErrno.success) return reply
    if (call.name === 'fd_read') {
      // What the first run read, before the thread committed over it.
      this.readableFile(call.args[0]!).position += effect.payload?.length ?? 0
      return reply
    }
    if (call.name === 'fd_pread') return reply
    // The re-run re-creates what the first run created after the save (a file opened with O_CREAT,
    // say); each logged change is made to hold again, so that a re-created file is renamed or
    // removed as the first run did. What already holds is left alone.
    const settle = (change: Promise<unknown>) =>
      change.catch((error: unknown) => {
        if (!(error instanceof FileSystemError)) throw error
      })
    if (call.name === 'path_create_directory') {
      await settle(this.fileSystem.mkdir(this.pathOf(call.args[0]!, call.payload)))
    } else if (call.name === 'path_remove_directory') {
      await settle(this.fileSystem.rmdir(this.pathOf(call.args[0]!, call.payload)))
    } else if (call.name === 'path_unlink_file') {
      await settle(this.fileSystem.unlink(this.pathOf(call.args[0]!, call.payload)))
    } else if (call.name === 'path_rename') {
      const { from, to } = this.renamePaths(call)
      if ((await this.statOrNull(from)) !== null) await settle(this.fileSystem.rename(from, to))
      this.renamed(from, to)
    } else if (call.name === 'path_open') {
      // Created by the first run: open it again, without O_EXCL.
      const args = [...call.args]
      args[2] = args[2]! & ~wasiOpenFlags.exclusive
      const payload = await this.operations.path_open!({ ...call, args }).catch((error: unknown) => {
        if (error instanceof CallFailure) return null
        throw error
      })
      if (payload === null || payload === undefined) return { result: wasiErrno.io }
    } else if (call.name === 'fd_write' && effect.offset !== undefined) {
      const opened = this.writableFile(call.args[0]!)
      await storage(
        this.fileSystem.write(this.storageFd(opened), call.payload ?? new Uint8Array(0), effect.offset),
      )
      opened.position = effect.offset + (call.payload?.length ?? 0)
    }
    return reply
  }

  private logEffect(effect: EffectRecord): void {
    if (this.options.journal === undefined) return
    if (this.journal.effects.length >= journalEffectsMax)
      throw new GuestFilesError(
        `more than ${journalEffectsMax} logged file calls since the thread's last save; it asked for a save and none came`,
      )
    this.journal.effects.push(effect)
    this.journalUnwritten = true
    if (this.journal.effects.length >= journalEffectsSaveAt) this.options.requestSave?.()
  }

  /** Writes the journal by compare-and-swap; losing it means another incarnation took over. */
  private async writeJournal(): Promise<void> {
    const journal = this.options.journal
    if (journal === undefined) return
    const bytes = encodeJournal(this.journal)
    if (bytes.length > journalBytesMax)
      throw new GuestFilesError(
        `the thread's open-file table takes ${bytes.length} bytes, more than ${journalBytesMax}; open fewer files at once or use shorter paths`,
      )
    for (let attempt = 1; ; attempt++) {
      let written: Awaited<ReturnType<CoordinationClient['cas']>> | undefined
      try {
        written = await journal.store.cas(journal.key, this.journalVersion, bytes)
      } catch (error) {
        // No answer in time: it may have applied. If the key holds our bytes, it did.
        const read = await journal.store.get(journal.key).catch(() => undefined)
        if (
          read?.version === this.journalVersion + 1 &&
          read.value !== null &&
          equalBytes(read.value, bytes)
        ) {
          this.journalVersion = read.version
          this.journalUnwritten = false
          return
        }
        if (attempt >= journalWriteAttemptsMax) throw error
        continue
      }
      if (!written.ok)
        throw new GuestFilesError(
          `file journal ${journal.key} was written by another incarnation of the thread; this one stops`,
        )
      this.journalVersion = written.version
      this.journalUnwritten = false
      return
    }
  }

  private record(sequence: number, reply: Promise<HostCallReply>): void {
    const recorded: RecordedReply = { reply, bytes: 0 }
    this.replies.set(sequence, recorded)
    void reply.then(
      (settled) => {
        if (this.replies.get(sequence) !== recorded) return
        recorded.bytes = settled.payload?.length ?? 0
        this.replyBytes += recorded.bytes
        this.forgetOldest()
      },
      () => {},
    )
    this.forgetOldest()
  }

  private forgetOldest(): void {
    for (const [sequence, recorded] of this.replies) {
      if (this.replies.size <= replayRepliesMax && this.replyBytes <= replayReplyBytesMax) return
      this.replies.delete(sequence)
      this.replyBytes -= recorded.bytes
    }
  }

  /** Calls before `sequence` lie behind the thread's latest save: no restore repeats them. */
  private forgetBefore(sequence: number): void {
    for (const [recordedSequence, recorded] of this.replies) {
      if (recordedSequence >= sequence) return
      this.replies.delete(recordedSequence)
      this.replyBytes -= recorded.bytes
    }
  }

  private descriptor(fd: number): OpenDescriptor {
    const found = this.descriptors.get(fd)
    if (found === undefined) throw new CallFailure(wasiErrno.badf)
    return found
  }

  private directory(fd: number): OpenDirectory {
    const found = this.descriptor(fd)
    if (found.kind !== 'directory') throw new CallFailure(wasiErrno.notdir)
    return found
  }

  private file(fd: number): OpenFile {
    const found = this.descriptor(fd)
    if (found.kind !== 'file') throw new CallFailure(wasiErrno.isdir)
    return found
  }

  private readableFile(fd: number): OpenFile {
    const opened = this.file(fd)
    if (!opened.readable) throw new CallFailure(wasiErrno.badf)
    return opened
  }

  private writableFile(fd: number): OpenFile {
    const opened = this.file(fd)
    if (!opened.writable) throw new CallFailure(wasiErrno.badf)
    return opened
  }

  private storageFd(opened: OpenFile): number {
    if (opened.storageFd === null) throw new CallFailure(wasiErrno.io)
    return opened.storageFd
  }

  /**
   * The storage path that `payload` names below the directory `fd`; a path that climbs out of it
   * with `..`, or an absolute one, is refused with ENOTCAPABLE (as for a mapped host directory).
   */
  private pathOf(fd: number, payload: Uint8Array | null): string {
    const base = this.directory(fd)
    if (payload === null) throw new CallFailure(wasiErrno.inval)
    if (payload.length > pathBytesMax) throw new CallFailure(wasiErrno.nametoolong)
    let guestPath: string
    try {
      guestPath = new TextDecoder('utf-8', { fatal: true }).decode(payload)
    } catch {
      throw new CallFailure(wasiErrno.inval)
    }
    if (guestPath.includes('\0')) throw new CallFailure(wasiErrno.inval)
    if (guestPath.length === 0) throw new CallFailure(wasiErrno.noent)
    if (guestPath.startsWith('/')) throw new CallFailure(wasiErrno.notcapable)
    const names: string[] = []
    for (const part of guestPath.split('/')) {
      if (part === '' || part === '.') continue
      if (part === '..') {
        if (names.length === 0) throw new CallFailure(wasiErrno.notcapable)
        names.pop()
      } else names.push(part)
    }
    const path = joinPath(base.path, names)
    // A trailing slash says "a directory" to the storage layer, as to POSIX.
    return names.length > 0 && /\/\.?$/.test(guestPath) ? `${path}/` : path
  }

  private renamePaths(call: HostCall): { from: string; to: string } {
    const [directoryFd = -1, newDirectoryFd = -1, oldPathBytes = 0] = call.args
    const payload = call.payload
    if (payload === null || oldPathBytes > payload.length) throw new CallFailure(wasiErrno.inval)
    return {
      from: this.pathOf(directoryFd, payload.subarray(0, oldPathBytes)),
      to: this.pathOf(newDirectoryFd, payload.subarray(oldPathBytes)),
    }
  }

  /** Descriptors keep their paths up to date with this thread's renames (journals without file ids reopen by path). */
  private renamed(from: string, to: string): void {
    for (const opened of this.descriptors.values()) {
      if (opened.kind === 'directory' && opened.preopen) continue
      opened.path = movedPath(opened.path, from, to)
    }
  }

  private lowestFreeDescriptor(): number {
    if (this.descriptors.size >= openDescriptorsPerThreadMax) throw new CallFailure(wasiErrno.mfile)
    let fd = firstPreopenFd + 1
    while (this.descriptors.has(fd)) fd++
    return fd
  }

  private async statOrNull(path: string): Promise<Stat | null> {
    try {
      return await this.fileSystem.stat(path)
    } catch (error) {
      if (error instanceof FileSystemError && error.code === 'ENOENT') return null
      throw new CallFailure(wasiErrnoOf(error))
    }
  }

  private async fileSize(opened: OpenFile): Promise<number> {
    return (await storage(this.fileSystem.fstat(this.storageFd(opened)))).size
  }

  private readonly operations: Record<string, (call: HostCall) => Promise<Uint8Array | null>> = {
    path_open: async ({ args: [directoryFd = -1, , openFlags = 0, rights = 0, fdFlags = 0], payload }) => {
      const path = this.pathOf(directoryFd, payload)
      const fd = this.lowestFreeDescriptor()
      const create = (openFlags & wasiOpenFlags.create) !== 0
      const exclusive = create && (openFlags & wasiOpenFlags.exclusive) !== 0
      const truncate = (openFlags & wasiOpenFlags.truncate) !== 0
      const wantsDirectory = (openFlags & wasiOpenFlags.directory) !== 0
      const writable = (rights & wasiRights.fdWrite) !== 0
      const readable = (rights & wasiRights.fdRead) !== 0 || !writable
      const existing = await this.statOrNull(path)
      if (existing?.type === 'directory' || wantsDirectory) {
        if (existing === null) throw new CallFailure(create ? wasiErrno.inval : wasiErrno.noent)
        if (existing.type !== 'directory') throw new CallFailure(wasiErrno.notdir)
        if (exclusive) throw new CallFailure(wasiErrno.exist)
        if (writable || truncate) throw new CallFailure(wasiErrno.isdir)
        this.descriptors.set(fd, {
          kind: 'directory',
          path: path.replace(/\/$/, ''),
          listing: null,
          preopen: false,
        })
        return encodeUint32(fd)
      }
      if (truncate && !writable) throw new CallFailure(wasiErrno.inval)
      if (existing !== null && exclusive) throw new CallFailure(wasiErrno.exist)
      let storageFd: number
      if (existing === null) {
        if (!create) throw new CallFailure(wasiErrno.noent)
        try {
          storageFd = await this.fileSystem.open(path, 'wx+')
        } catch (error) {
          // Created by another client since the stat: open it, unless the guest asked for a new file.
          if (!(error instanceof FileSystemError && error.code === 'EEXIST') || exclusive)
            throw new CallFailure(wasiErrnoOf(error))
          storageFd = await storage(this.fileSystem.open(path, writable ? 'r+' : 'r'))
        }
      } else {
        storageFd = await storage(this.fileSystem.open(path, writable ? 'r+' : 'r'))
        if (truncate) {
          try {
            await this.fileSystem.ftruncate(storageFd, 0)
          } catch (error) {
            await this.fileSystem.close(storageFd).catch(() => {})
            throw new CallFailure(wasiErrnoOf(error))
          }
        }
      }
      let id: string
      try {
        id = (await this.fileSystem.fstat(storageFd)).id
      } catch (error) {
        await this.fileSystem.close(storageFd).catch(() => {})
        throw new CallFailure(wasiErrnoOf(error))
      }
      this.descriptors.set(fd, {
        kind: 'file',
        path,
        storageFd,
        id,
        position: 0,
        append: (fdFlags & wasiFdFlags.append) !== 0,
        readable,
        writable,
      })
      return encodeUint32(fd)
    },

    fd_read: async ({ callSequence, args: [fd = -1, capacity = 0] }) => {
      const opened = this.readableFile(fd)
      const bytes = await storage(
        this.fileSystem.read(this.storageFd(opened), Math.min(capacity, transferBytesMax), opened.position),
      )
      opened.position += bytes.length
      this.noteRead(callSequence, 'fd_read', bytes)
      return bytes
    },

    fd_pread: async ({ callSequence, args: [fd = -1, capacity = 0, offset = 0] }) => {
      const opened = this.readableFile(fd)
      const bytes = await storage(
        this.fileSystem.read(
          this.storageFd(opened),
          Math.min(capacity, transferBytesMax),
          checkOffset(offset),
        ),
      )
      this.noteRead(callSequence, 'fd_pread', bytes)
      return bytes
    },

    fd_write: async ({ callSequence, args: [fd = -1], payload }) => {
      const opened = this.writableFile(fd)
      const data = payload ?? new Uint8Array(0)
      if (opened.append) {
        const offset = await this.fileSize(opened)
        // A re-run must write where this run did, not at the end as it will be then.
        this.logEffect({
          callSequence,
          name: 'fd_write',
          result: wasiErrno.success,
          payload: encodeUint32(data.length),
          offset,
        })
        opened.position = offset
      }
      await storage(this.fileSystem.write(this.storageFd(opened), data, opened.position))
      opened.position += data.length
      return encodeUint32(data.length)
    },

    fd_pwrite: async ({ args: [fd = -1, offset = 0], payload }) => {
      const opened = this.writableFile(fd)
      const data = payload ?? new Uint8Array(0)
      await storage(this.fileSystem.write(this.storageFd(opened), data, checkOffset(offset)))
      return encodeUint32(data.length)
    },

    fd_seek: async ({ args: [fd = -1, offset = 0, whence = -1] }) => {
      const opened = this.file(fd)
      let base: number
      if (whence === wasiWhence.set) base = 0
      else if (whence === wasiWhence.current) base = opened.position
      else if (whence === wasiWhence.end) base = await this.fileSize(opened)
      else throw new CallFailure(wasiErrno.inval)
      opened.position = checkOffset(base + offset)
      return encodeUint64(opened.position)
    },

    fd_tell: async ({ args: [fd = -1] }) => encodeUint64(this.file(fd).position),

    fd_close: async ({ args: [fd = -1] }) => {
      const opened = this.descriptor(fd)
      if (opened.kind === 'directory' && opened.preopen) throw new CallFailure(wasiErrno.notsup)
      this.descriptors.delete(fd)
      if (opened.kind === 'file' && opened.storageFd !== null) {
        if (opened.writable) await this.beforeCommit()
        await storage(this.fileSystem.close(opened.storageFd))
      }
      return null
    },

    fd_sync: async ({ args: [fd = -1] }) => this.sync(fd),
    fd_datasync: async ({ args: [fd = -1] }) => this.sync(fd),

    fd_fdstat_get: async ({ args: [fd = -1] }) => {
      const opened = this.descriptor(fd)
      if (opened.kind === 'directory')
        return encodeFdstat({ fileType: wasiFileType.directory, append: false })
      return encodeFdstat({ fileType: wasiFileType.regularFile, append: opened.append })
    },

    fd_fdstat_set_flags: async ({ args: [fd = -1, flags = 0] }) => {
      const opened = this.descriptor(fd)
      if (opened.kind === 'file') opened.append = (flags & wasiFdFlags.append) !== 0
      return null
    },

    fd_filestat_get: async ({ args: [fd = -1] }) => {
      const opened = this.descriptor(fd)
      if (opened.kind === 'directory') return filestatOf(await storage(this.fileSystem.stat(opened.path)))
      return filestatOf(await storage(this.fileSystem.fstat(this.storageFd(opened))))
    },

    fd_filestat_set_size: async ({ args: [fd = -1, size = 0] }) => {
      const opened = this.file(fd)
      if (!opened.writable) throw new CallFailure(wasiErrno.inval)
      await storage(this.fileSystem.ftruncate(this.storageFd(opened), checkOffset(size)))
      return null
    },

    // The storage layer keeps one modification time, set by commits.
    fd_filestat_set_times: async ({ args: [fd = -1] }) => {
      this.descriptor(fd)
      throw new CallFailure(wasiErrno.notsup)
    },

    path_filestat_get: async ({ args: [directoryFd = -1], payload }) =>
      filestatOf(await storage(this.fileSystem.stat(this.pathOf(directoryFd, payload)))),

    fd_readdir: async ({ args: [fd = -1, capacity = 0, cookie = 0] }) => {
      const opened = this.directory(fd)
      if (cookie === 0 || opened.listing === null)
        opened.listing = (await storage(this.fileSystem.readdir(opened.path))).slice(
          0,
          directoryEntriesMax - 2,
        )
      const parent = opened.path.replace(/\/[^/]*$/, '') || '/'
      const entries: Array<{ name: string; fileType: number; inode: bigint }> = [
        { name: '.', fileType: wasiFileType.directory, inode: inodeOf(opened.path) },
        {
          name: '..',
          fileType: wasiFileType.directory,
          inode: inodeOf(opened.preopen ? opened.path : parent),
        },
        ...opened.listing.map((entry) => ({
          name: entry.name,
          fileType: entry.type === 'directory' ? wasiFileType.directory : wasiFileType.regularFile,
          inode: inodeOf(joinPath(opened.path, [entry.name])),
        })),
      ]
      const out = new Uint8Array(Math.min(capacity, transferBytesMax))
      const encoder = new TextEncoder()
      let used = 0
      for (let index = checkOffset(cookie); index < entries.length && used < out.length; index++) {
        const entry = entries[index]!
        const name = encoder.encode(entry.name)
        const header = encodeDirentHeader({
          nextCookie: index + 1,
          inode: entry.inode,
          nameBytes: name.length,
          fileType: entry.fileType,
        })
        // The last entry may be cut short; the guest then asks again from its cookie.
        const bytes = new Uint8Array(direntHeaderBytes + name.length)
        bytes.set(header, 0)
        bytes.set(name, direntHeaderBytes)
        const take = Math.min(bytes.length, out.length - used)
        out.set(bytes.subarray(0, take), used)
        used += take
      }
      return out.subarray(0, used)
    },

    path_create_directory: async ({ args: [directoryFd = -1], payload }) => {
      await storage(this.fileSystem.mkdir(this.pathOf(directoryFd, payload)))
      return null
    },

    path_remove_directory: async ({ args: [directoryFd = -1], payload }) => {
      const path = this.pathOf(directoryFd, payload)
      if (path.replace(/\/$/, '') === this.directory(firstPreopenFd).path)
        throw new CallFailure(wasiErrno.busy)
      await storage(this.fileSystem.rmdir(path))
      return null
    },

    path_unlink_file: async ({ args: [directoryFd = -1], payload }) => {
      await storage(this.fileSystem.unlink(this.pathOf(directoryFd, payload)))
      return null
    },

    path_rename: async (call) => {
      const { from, to } = this.renamePaths(call)
      const root = this.directory(firstPreopenFd).path
      if (from.replace(/\/$/, '') === root || to.replace(/\/$/, '') === root)
        throw new CallFailure(wasiErrno.busy)
      await storage(this.fileSystem.rename(from, to))
      this.renamed(from, to)
      return null
    },
  }

  private async sync(fd: number): Promise<null> {
    const opened = this.descriptor(fd)
    if (opened.kind === 'file' && opened.writable) {
      await this.beforeCommit()
      await storage(this.fileSystem.fsync(this.storageFd(opened)))
    }
    return null
  }

  private noteRead(callSequence: number, name: string, bytes: Uint8Array): void {
    if (this.options.journal === undefined) return
    this.readBytesSinceCheckpoint += bytes.length
    if (this.readBytesSinceCheckpoint > readLogBytesMax) return
    this.readsSinceCheckpoint.push({ callSequence, name, result: wasiErrno.success, payload: bytes.slice() })
  }

  /**
   * A commit between saves makes the thread's writes visible, also to its own re-run: what it read
   * since its save, and where its appends went, go to the journal first.
   */
  private async beforeCommit(): Promise<void> {
    if (this.options.journal === undefined) return
    if (this.readBytesSinceCheckpoint > 0) {
      const reads = this.readsSinceCheckpoint
      const complete = this.readBytesSinceCheckpoint <= readLogBytesMax
      const fits =
        this.journal.effects.length + reads.length <= journalEffectsMax &&
        encodeJournal({ ...this.journal, effects: [...this.journal.effects, ...reads] }).length <=
          journalBytesMax
      if (complete && fits) {
        this.journal.effects.push(...reads)
        this.journalUnwritten = true
      } else {
        this.options.log?.(
          `files: ${this.options.journal.key}: ${this.readBytesSinceCheckpoint} bytes read since the last save are too many to log; a re-run may read what this commit writes`,
        )
        this.options.requestSave?.()
      }
      this.readsSinceCheckpoint = []
      this.readBytesSinceCheckpoint = 0
    }
    if (this.journalUnwritten) await this.writeJournal()
  }
}

/** Where `path` is after `from` was renamed to `to` (it may lie below `from`). */
function movedPath(path: string, from: string, to: string): string {
  const source = from.replace(/\/$/, '')
  const target = to.replace(/\/$/, '')
  if (source === '') return path
  if (path === source) return target
  if (path.startsWith(`${source}/`)) return target + path.slice(source.length)
  return path
}

// ---- what a node and a local process use

export interface GuestFilesComponents {
  fileSystem: FileSystem
  /** Holds each thread's journal; without it, files are not kept across nodes. */
  store?: Pick<CoordinationClient, 'get' | 'cas'>
  log?: (line: string) => void
}

export interface GuestFilesOptions {
  /** Guest name of the preopened directory; default {@link guestFilesMountDefault}. */
  mount?: string
  /** The storage directory it shows; default `/` (the whole volume). */
  directory?: string
}

/** A node's access for its threads to the cluster file system. */
export interface GuestFilesService {
  /** Guest names of the preopened directories, in fd order from 3. */
  readonly preopens: readonly string[]
  /**
   * The files of a thread that starts (`restoredCallSequence` null and `resumed` false) or resumes,
   * from a save taken at that call or from its start (`resumed` true, null).
   */
  session(options: {
    pid: string
    tid: string
    resumed: boolean
    restoredCallSequence: number | null
    requestSave?: () => void
  }): Promise<GuestFileSession>
}

export function createGuestFilesService(
  components: GuestFilesComponents,
  options: GuestFilesOptions = {},
): GuestFilesService {
  const mount = options.mount ?? guestFilesMountDefault
  return {
    preopens: [mount],
    async session({ pid, tid, resumed, restoredCallSequence, requestSave }) {
      const session = new GuestFileSession({
        fileSystem: components.fileSystem,
        directory: options.directory,
        journal:
          components.store === undefined
            ? undefined
            : { store: components.store, key: threadFilesKey(pid, tid) },
        requestSave,
        log: components.log,
      })
      if (resumed) await session.resume(restoredCallSequence)
      return session
    },
  }
}

/**
 * The cluster file system as a host `GuestFileSystem` for a process in this process (tests,
 * `LocalProcess`): one session per thread, kept in memory only.
 */
export function storageGuestFileSystem(
  fileSystem: FileSystem,
  options: GuestFilesOptions = {},
): GuestFileSystem & { close(): Promise<void> } {
  const sessions = new Map<number, GuestFileSession>()
  const sessionOf = (threadId: number) => {
    let session = sessions.get(threadId)
    if (session === undefined) {
      session = new GuestFileSession({ fileSystem, directory: options.directory })
      sessions.set(threadId, session)
    }
    return session
  }
  return {
    preopens: [options.mount ?? guestFilesMountDefault],
    handle: (threadId, call) => sessionOf(threadId).handle(call),
    threadEnded(threadId) {
      const session = sessions.get(threadId)
      sessions.delete(threadId)
      void session?.end().catch(() => {})
    },
    async close() {
      const all = [...sessions.values()]
      sessions.clear()
      await Promise.all(all.map((session) => session.end().catch(() => {})))
    },
  }
}
