/**
 * What the file system keeps under its metadata keys, each value versioned (version 1):
 *
 * - a file's head, under `<prefix>i/<id>`:
 *   `{ f: 'fabric-file', v: 1, size, manifest: cid | null, mtime, gen, r? }`; `gen` counts commits,
 *   so a writer knows whether the file changed since it opened it; `r`, when present, is the
 *   replica count the file asked for. No value means an empty file with the default replica count.
 * - a directory, under `<prefix>i/<id>` (the root's id is `root`):
 *   `{ f: 'fabric-dir', v: 1, entries: [[name, id, 'f' | 'd'], ...] | null, listing: cid | null, count, removed, mtime }`.
 *   Entries are kept in the value while it stays under {@link directoryInlineBytesMax}; a bigger
 *   directory keeps them in a listing brick (`{ f: 'fabric-dir-listing', v: 1, entries }`) named
 *   by `listing`, and every change writes a new listing brick. No value means an empty directory;
 *   `removed` marks a directory that rmdir took away, so that nothing is created in it afterwards.
 */

import { type CID, decodeBrickCid } from './brick.ts'
import { decodeCbor, encodeCbor, isRecord } from './cbor.ts'
import { StorageFormatError } from './errors.ts'
import { transactionDataBytesMax } from './metadata-transactions.ts'

/** A directory's entries stay in its metadata value up to this encoded size, then move to a listing brick. */
export const directoryInlineBytesMax = 24 * 1024
/** Entries one directory may hold (its listing brick then stays well under the brick limit). */
export const directoryEntriesMax = 1_000_000
/** Longest name of one entry, in UTF-8 bytes (POSIX NAME_MAX). */
export const nameBytesMax = 255
const listingBytesMax = 16 * 1024 * 1024

export type EntryKind = 'file' | 'directory'

export interface DirectoryEntry {
  id: string
  kind: EntryKind
}

export interface FileHead {
  size: number
  manifest: CID | null
  mtimeMs: number
  generation: number
  /** Replicas of the file's bricks when the file asked for other than the default. */
  replicaCount?: number
}

export interface DirectoryRecord {
  /** Entries by name, when loaded (always for an inline directory). */
  entries: Map<string, DirectoryEntry>
  removed: boolean
  mtimeMs: number
}

export const emptyFileHead: FileHead = { size: 0, manifest: null, mtimeMs: 0, generation: 0 }

export function emptyDirectory(): DirectoryRecord {
  return { entries: new Map(), removed: false, mtimeMs: 0 }
}

export function encodeFileHead(head: FileHead): Uint8Array {
  return encodeCbor({
    f: 'fabric-file',
    v: 1,
    size: head.size,
    manifest: head.manifest?.bytes ?? null,
    mtime: head.mtimeMs,
    gen: head.generation,
    ...(head.replicaCount === undefined ? {} : { r: head.replicaCount }),
  })
}

export function decodeFileHead(data: Uint8Array | null, id: string): FileHead {
  if (data === null) return emptyFileHead
  const what = `file head ${id}`
  const value = decodeCbor(data, what, transactionDataBytesMax)
  if (!isRecord(value) || value.f !== 'fabric-file') throw new StorageFormatError(what, 'not a file head')
  if (value.v !== 1)
    throw new StorageFormatError(what, `format version ${String(value.v)}; this node reads 1`)
  if (!Number.isSafeInteger(value.size) || (value.size as number) < 0)
    throw new StorageFormatError(what, 'bad size')
  if (!Number.isSafeInteger(value.gen)) throw new StorageFormatError(what, 'bad generation')
  let manifest: CID | null = null
  if (value.manifest !== null) {
    if (!(value.manifest instanceof Uint8Array)) throw new StorageFormatError(what, 'bad manifest name')
    manifest = decodeBrickCid(value.manifest)
  }
  if (value.r !== undefined && (!Number.isInteger(value.r) || (value.r as number) < 1))
    throw new StorageFormatError(what, 'bad replica count')
  return {
    size: value.size as number,
    manifest,
    mtimeMs: typeof value.mtime === 'number' ? value.mtime : 0,
    generation: value.gen as number,
    ...(value.r === undefined ? {} : { replicaCount: value.r as number }),
  }
}

function encodeEntries(entries: Map<string, DirectoryEntry>): Array<[string, string, string]> {
  return [...entries]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([name, entry]) => [name, entry.id, entry.kind === 'directory' ? 'd' : 'f'])
}

function decodeEntries(value: unknown, what: string): Map<string, DirectoryEntry> {
  if (!Array.isArray(value)) throw new StorageFormatError(what, 'no entry list')
  if (value.length > directoryEntriesMax) throw new StorageFormatError(what, 'too many entries')
  const entries = new Map<string, DirectoryEntry>()
  for (const entry of value) {
    if (
      !Array.isArray(entry) ||
      typeof entry[0] !== 'string' ||
      typeof entry[1] !== 'string' ||
      (entry[2] !== 'f' && entry[2] !== 'd')
    )
      throw new StorageFormatError(what, 'bad entry')
    entries.set(entry[0], { id: entry[1], kind: entry[2] === 'd' ? 'directory' : 'file' })
  }
  return entries
}

/**
 * Encodes a directory. When its entries do not fit inline, `putListing` stores them as a brick
 * and the value names it.
 */
export async function encodeDirectory(
  record: DirectoryRecord,
  putListing: (bytes: Uint8Array) => Promise<CID>,
): Promise<Uint8Array> {
  const entries = encodeEntries(record.entries)
  const base = {
    f: 'fabric-dir',
    v: 1,
    removed: record.removed,
    mtime: record.mtimeMs,
    count: entries.length,
  }
  const inline = encodeCbor({ ...base, entries, listing: null })
  if (inline.length <= directoryInlineBytesMax) return inline
  const listing = await putListing(encodeCbor({ f: 'fabric-dir-listing', v: 1, entries }))
  return encodeCbor({ ...base, entries: null, listing: listing.bytes })
}

/** Decodes a directory, fetching its listing brick when the entries are not inline. */
export async function decodeDirectory(
  data: Uint8Array | null,
  id: string,
  getListing: (cid: CID) => Promise<Uint8Array>,
): Promise<DirectoryRecord> {
  if (data === null) return emptyDirectory()
  const what = `directory ${id}`
  const value = decodeCbor(data, what, transactionDataBytesMax)
  if (!isRecord(value) || value.f !== 'fabric-dir') throw new StorageFormatError(what, 'not a directory')
  if (value.v !== 1)
    throw new StorageFormatError(what, `format version ${String(value.v)}; this node reads 1`)
  const base = { removed: value.removed === true, mtimeMs: typeof value.mtime === 'number' ? value.mtime : 0 }
  if (value.listing === null || value.listing === undefined)
    return { ...base, entries: decodeEntries(value.entries, what) }
  if (!(value.listing instanceof Uint8Array)) throw new StorageFormatError(what, 'bad listing name')
  const listingBytes = await getListing(decodeBrickCid(value.listing))
  const listing = decodeCbor(listingBytes, `${what} listing`, listingBytesMax)
  if (!isRecord(listing) || listing.f !== 'fabric-dir-listing' || listing.v !== 1)
    throw new StorageFormatError(`${what} listing`, 'not a directory listing of version 1')
  const entries = decodeEntries(listing.entries, `${what} listing`)
  if (entries.size !== value.count) throw new StorageFormatError(what, 'listing does not match its count')
  return { ...base, entries }
}
