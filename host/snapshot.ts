/**
 * Context saves: the versioned binary format of a suspended thread's state.
 *
 * A save holds the guest memory pages (all of them, or only those written since the previous save),
 * the guest's mutable globals, the Asyncify data (the unwound call stack) and the host's record of
 * the thread. It travels as CBOR: `{ formatVersion, digest, body }`, where `digest` is the SHA-256
 * of `body` and is checked before anything in `body` is trusted.
 *
 * Restoring takes a chain: one full save followed by the deltas taken after it, in order.
 */

import { Decoder, Encoder } from 'cbor-x'
import { SnapshotError } from './errors.ts'
import { wasmPageBytes } from './memory-layout.ts'

export const snapshotFormatVersion = 1
/** Upper bound on one encoded save: 4 GiB of memory plus slack is not something we accept. */
export const snapshotBytesMax = 1024 * 1024 * 1024

/** The host's record of a thread: what it needs besides the instance to continue it. */
export interface ThreadRecord {
  /** The export the thread started at. */
  entry: string
  /** The thread's argument. */
  arg: Uint8Array
  /** The thread's number within its process. */
  threadId: number
  /** Seed of the thread's deterministic random stream (replays see the same numbers). */
  seed: number
  /** The result the thread set so far (for `join`). */
  result: Uint8Array | null
}

/** The blocking call a suspended thread is in; re-issued after a restore. */
export interface PendingCall {
  module: string
  name: string
  args: number[]
}

export interface ContextSave {
  moduleDigest: string
  threadId: number
  /** 1, 2, 3, ... per thread. */
  sequence: number
  /** The save this one is a delta on, or null for a full save. */
  baseSequence: number | null
  /** Number of host calls the thread had made when the save was taken (op id of the next is +1). */
  callSequence: number
  memoryPages: number
  /** Indexes of the pages in `pageData`, ascending. */
  pageIndexes: Uint32Array
  /** The pages, 64 KiB each, concatenated. */
  pageData: Uint8Array
  globals: Array<number | bigint>
  asyncifyData: Uint8Array
  pendingCall: PendingCall
  record: ThreadRecord
  /** Unix ms when taken (for `ps` and for learning the save cost). */
  takenAtMs: number
}

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false } as never)
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true } as never)

/** Encoded save: magic "FBSV", format version (u16, little-endian), SHA-256 of the body, CBOR body. */
const magic = [0x46, 0x42, 0x53, 0x56]
const digestBytes = 32
const headerBytes = magic.length + 2 + digestBytes

/** What the host keeps next to an encoded save, so it need not decode it to manage chains. */
export interface SaveSummary {
  threadId: number
  sequence: number
  baseSequence: number | null
  callSequence: number
  memoryPages: number
  pageCount: number
  takenAtMs: number
}

export interface EncodedSave {
  summary: SaveSummary
  bytes: Uint8Array
}

export function summarize(save: ContextSave): SaveSummary {
  return {
    threadId: save.threadId,
    sequence: save.sequence,
    baseSequence: save.baseSequence,
    callSequence: save.callSequence,
    memoryPages: save.memoryPages,
    pageCount: save.pageIndexes.length,
    takenAtMs: save.takenAtMs,
  }
}

async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>))
}

export function equalBytes(left: Uint8Array, right: Uint8Array): boolean {
  if (left.length !== right.length) return false
  for (let index = 0; index < left.length; index++) if (left[index] !== right[index]) return false
  return true
}

export async function encodeSave(save: ContextSave): Promise<Uint8Array> {
  const body = encoder.encode(save) as Uint8Array
  const out = new Uint8Array(headerBytes + body.length)
  out.set(magic, 0)
  new DataView(out.buffer).setUint16(magic.length, snapshotFormatVersion, true)
  out.set(body, headerBytes)
  out.set(await sha256(out.subarray(headerBytes)), magic.length + 2)
  return out
}

export async function decodeSave(bytes: Uint8Array): Promise<ContextSave> {
  if (bytes.length > snapshotBytesMax)
    throw new SnapshotError(`context save of ${bytes.length} bytes is over the limit`)
  if (bytes.length < headerBytes || magic.some((byte, index) => bytes[index] !== byte)) {
    throw new SnapshotError('not a Fabric context save (bad magic or too short)')
  }
  const version = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint16(magic.length, true)
  if (version !== snapshotFormatVersion) {
    throw new SnapshotError(
      `context save has format version ${version}; this host reads ${snapshotFormatVersion}`,
    )
  }
  const body = bytes.subarray(headerBytes)
  const digest = bytes.subarray(magic.length + 2, headerBytes)
  if (!equalBytes(await sha256(body), digest)) {
    throw new SnapshotError('context save digest does not match its contents (damaged in storage or transit)')
  }
  let save: ContextSave
  try {
    save = decoder.decode(body) as ContextSave
  } catch {
    throw new SnapshotError('context save body is not valid CBOR')
  }
  checkShape(save)
  return save
}

function checkShape(save: ContextSave): void {
  const ok =
    typeof save === 'object' &&
    typeof save.moduleDigest === 'string' &&
    Number.isInteger(save.sequence) &&
    Number.isInteger(save.memoryPages) &&
    save.pageIndexes instanceof Uint32Array &&
    save.pageData instanceof Uint8Array &&
    save.pageData.length === save.pageIndexes.length * wasmPageBytes &&
    Array.isArray(save.globals) &&
    save.asyncifyData instanceof Uint8Array &&
    typeof save.record === 'object'
  if (!ok) throw new SnapshotError('context save is missing fields or has fields of the wrong type')
}

/** Checks that a chain (full save first, then deltas in order) fits together; returns its last save. */
export function checkChain(chain: readonly ContextSave[]): ContextSave {
  const first = chain[0]
  if (first === undefined || first.baseSequence !== null)
    throw new SnapshotError('a restore needs a full save first')
  let previous: ContextSave | undefined
  for (const save of chain) {
    if (previous !== undefined && save.baseSequence !== previous.sequence) {
      throw new SnapshotError(
        `save ${save.sequence} is a delta on ${save.baseSequence}, not on ${previous.sequence}`,
      )
    }
    if (save.moduleDigest !== first.moduleDigest || save.threadId !== first.threadId) {
      throw new SnapshotError('saves in one chain belong to different modules or threads')
    }
    previous = save
  }
  return previous!
}

/** Writes the pages of a checked chain into `memory` (sized to the last save's `memoryPages`). */
export function applyChain(chain: readonly ContextSave[], memory: Uint8Array): void {
  const pagesMax = memory.length / wasmPageBytes
  for (const save of chain) {
    for (let index = 0; index < save.pageIndexes.length; index++) {
      const page = save.pageIndexes[index]!
      if (page >= pagesMax)
        throw new SnapshotError(`save ${save.sequence} holds page ${page} past the memory's end`)
      memory.set(
        save.pageData.subarray(index * wasmPageBytes, (index + 1) * wasmPageBytes),
        page * wasmPageBytes,
      )
    }
  }
}
