/**
 * A file's manifest: the brick that lists a file's chunks. Version 1:
 *
 *   { f: 'fabric-manifest', v: 1, size, chunk: chunkBytes, bricks: [[cid, length] | null, ...] }
 *
 * Chunk i covers bytes [i * chunk, min(size, (i + 1) * chunk)). Its content is the brick's bytes
 * followed by zeros up to the chunk's end (a brick may be shorter than its chunk, so growing a file
 * does not rewrite its last brick); `null` is a chunk of zeros, stored nowhere. Readers refuse
 * other versions with {@link StorageFormatError}.
 */

import { type CID, decodeBrickCid } from './brick.ts'
import { decodeCbor, encodeCbor, isRecord } from './cbor.ts'
import { StorageFormatError } from './errors.ts'

export const manifestFormat = 'fabric-manifest'
export const manifestVersion = 1
/** Smallest and largest chunk size a file may use. */
export const chunkBytesMin = 1
export const chunkBytesMax = 16 * 1024 * 1024
/** Chunks one manifest lists; with 1 MiB chunks a file may hold 256 GiB. */
export const manifestChunksMax = 256 * 1024
/** An encoded manifest at its largest: about 45 bytes per chunk. */
export const manifestBytesMax = 64 + manifestChunksMax * 48

export interface ChunkRef {
  cid: CID
  /** Bytes in the brick; the rest of the chunk is zeros. */
  length: number
}

export interface Manifest {
  size: number
  chunkBytes: number
  chunks: Array<ChunkRef | null>
}

export function chunkCountOf(size: number, chunkBytes: number): number {
  return Math.ceil(size / chunkBytes)
}

export function encodeManifest(manifest: Manifest): Uint8Array {
  checkManifest(manifest)
  return encodeCbor({
    f: manifestFormat,
    v: manifestVersion,
    size: manifest.size,
    chunk: manifest.chunkBytes,
    bricks: manifest.chunks.map((chunk) => (chunk === null ? null : [chunk.cid.bytes, chunk.length])),
  })
}

export function decodeManifest(bytes: Uint8Array, where: string): Manifest {
  const what = `manifest ${where}`
  const value = decodeCbor(bytes, what, manifestBytesMax)
  if (!isRecord(value) || value.f !== manifestFormat)
    throw new StorageFormatError(what, 'not a file manifest')
  if (value.v !== manifestVersion)
    throw new StorageFormatError(
      what,
      `format version ${String(value.v)}; this node reads version ${manifestVersion}`,
    )
  const { size, chunk, bricks } = value
  if (!Number.isSafeInteger(size) || (size as number) < 0) throw new StorageFormatError(what, 'bad size')
  if (!Number.isSafeInteger(chunk) || (chunk as number) < chunkBytesMin || (chunk as number) > chunkBytesMax)
    throw new StorageFormatError(what, 'bad chunk size')
  if (!Array.isArray(bricks)) throw new StorageFormatError(what, 'no brick list')
  const chunks = bricks.map((entry, index): ChunkRef | null => {
    if (entry === null) return null
    if (!Array.isArray(entry) || entry.length !== 2 || !(entry[0] instanceof Uint8Array))
      throw new StorageFormatError(what, `bad entry ${index}`)
    let cid: CID
    try {
      cid = decodeBrickCid(entry[0])
    } catch {
      throw new StorageFormatError(what, `entry ${index} is not a brick name`)
    }
    return { cid, length: entry[1] as number }
  })
  const manifest: Manifest = { size: size as number, chunkBytes: chunk as number, chunks }
  try {
    checkManifest(manifest)
  } catch (error) {
    throw new StorageFormatError(what, (error as Error).message)
  }
  return manifest
}

function checkManifest(manifest: Manifest): void {
  const count = chunkCountOf(manifest.size, manifest.chunkBytes)
  if (manifest.chunks.length !== count)
    throw new Error(`invariant: ${manifest.chunks.length} chunks listed for ${count} needed`)
  if (count > manifestChunksMax) throw new Error(`invariant: ${count} chunks, more than ${manifestChunksMax}`)
  manifest.chunks.forEach((chunk, index) => {
    if (chunk === null) return
    const extent = Math.min(manifest.chunkBytes, manifest.size - index * manifest.chunkBytes)
    if (!Number.isSafeInteger(chunk.length) || chunk.length < 0 || chunk.length > extent)
      throw new Error(`invariant: chunk ${index} has ${chunk.length} bytes for an extent of ${extent}`)
  })
}
