/**
 * The content of one open file: its manifest as of the open, plus this client's changes, as
 * chunks. Reads fetch the chunks they span in parallel and read ahead when the reader moves
 * sequentially; writes change chunks in memory and write full ones out in the background once more
 * than {@link dirtyChunksMax} are waiting; `flush` writes every changed chunk (in parallel) and
 * returns the new manifest.
 *
 * Not safe for concurrent use: the file system runs one operation per open file at a time.
 *
 *   const image = createFileImage({ bricks, stripeSeed }, { base: manifest, size: 0, chunkBytes: 1 << 20 })
 *   await image.write(0, bytes)
 *   const manifest = await image.flush()
 */

import type { CID } from './brick.ts'
import { mapLimited } from './concurrency.ts'
import { StorageFormatError } from './errors.ts'
import { type ChunkRef, chunkCountOf, type Manifest } from './manifest.ts'

/** Changed chunks held in memory before the oldest are written out while writing goes on. */
export const dirtyChunksMax = 16
/** Read chunks kept in memory per open file. */
export const cachedChunksMax = 16
/** Chunks fetched ahead of a sequential reader. */
export const readAheadChunks = 4
/** Bricks one open file reads or writes at once. */
export const brickTransfersInFlightMax = 8

/** Brick access as a file needs it: a stripe number per chunk places and finds the replicas. */
export interface ChunkBricks {
  put(
    bytes: Uint8Array,
    options: { stripe: number; replicaCount?: number; signal?: AbortSignal },
  ): Promise<CID>
  get(cid: CID, options: { stripe: number; signal?: AbortSignal }): Promise<Uint8Array>
}

export interface FileImageComponents {
  bricks: ChunkBricks
  /** Chunk i is placed with stripe number `stripeSeed + i`. */
  stripeSeed: number
  /** Replicas per chunk; the storage node's default when absent. */
  replicaCount?: number
}

export interface FileImageOptions {
  base: Manifest | null
  /** The file's size when no manifest exists (a new or empty file): 0. */
  size: number
  /** Chunk size for a file without a manifest; a manifest's own chunk size wins. */
  chunkBytes: number
}

export interface FileImage {
  readonly size: number
  readonly chunkBytes: number
  /** Up to `length` bytes from `offset`; fewer at the end of the file. */
  read(offset: number, length: number): Promise<Uint8Array>
  /** Writes `data` at `offset`; a gap past the end reads as zeros. */
  write(offset: number, data: Uint8Array): Promise<void>
  truncate(size: number): Promise<void>
  /** Writes every changed chunk and returns the manifest of the content. */
  flush(): Promise<Manifest>
}

type Chunk = { kind: 'clean'; ref: ChunkRef | null } | { kind: 'dirty'; bytes: Uint8Array }

export function createFileImage(components: FileImageComponents, options: FileImageOptions): FileImage {
  const { bricks, stripeSeed, replicaCount } = components
  const base = options.base
  const chunkBytes = base?.chunkBytes ?? options.chunkBytes
  let size = base?.size ?? options.size
  /** Base chunks at or past this index were cut off by a truncate and read as zeros when the file grows again. */
  let baseChunksValid = base?.chunks.length ?? 0
  const chunks = new Map<number, Chunk>()
  const dirty = new Set<number>()
  /** Brick contents by CID, least recently used first. */
  const cache = new Map<string, Uint8Array>()
  const fetching = new Map<string, Promise<Uint8Array>>()
  let lastReadEnd = -1

  function extentOf(index: number, fileSize = size): number {
    return Math.max(0, Math.min(chunkBytes, fileSize - index * chunkBytes))
  }

  function chunkOf(index: number): Chunk {
    const chunk = chunks.get(index)
    if (chunk !== undefined) return chunk
    return { kind: 'clean', ref: index < baseChunksValid ? base!.chunks[index]! : null }
  }

  function remember(key: string, bytes: Uint8Array): void {
    cache.delete(key)
    cache.set(key, bytes)
    while (cache.size > cachedChunksMax) cache.delete(cache.keys().next().value!)
  }

  function fetchBrick(ref: ChunkRef, index: number): Promise<Uint8Array> {
    const key = ref.cid.toString()
    const cached = cache.get(key)
    if (cached !== undefined) {
      remember(key, cached)
      return Promise.resolve(cached)
    }
    let pending = fetching.get(key)
    if (pending === undefined) {
      pending = bricks
        .get(ref.cid, { stripe: stripeSeed + index })
        .then((bytes) => {
          if (bytes.length !== ref.length)
            throw new StorageFormatError(
              `chunk ${index}`,
              `brick ${key} has ${bytes.length} bytes, manifest says ${ref.length}`,
            )
          remember(key, bytes)
          return bytes
        })
        .finally(() => fetching.delete(key))
      fetching.set(key, pending)
    }
    return pending
  }

  /** The chunk's bytes as stored (the rest of its extent is zeros). */
  async function contentOf(index: number): Promise<Uint8Array> {
    const chunk = chunkOf(index)
    if (chunk.kind === 'dirty') return chunk.bytes
    if (chunk.ref === null) return new Uint8Array(0)
    return fetchBrick(chunk.ref, index)
  }

  function readAhead(fromIndex: number): void {
    const last = chunkCountOf(size, chunkBytes) - 1
    for (let index = fromIndex; index <= Math.min(last, fromIndex + readAheadChunks - 1); index++) {
      const chunk = chunkOf(index)
      if (chunk.kind === 'clean' && chunk.ref !== null && fetching.size < brickTransfersInFlightMax)
        // A failed read-ahead is retried by the read that needs the chunk, which then reports the error.
        fetchBrick(chunk.ref, index).catch(() => {})
    }
  }

  /** Brick writes in progress, per chunk version, so that one version is never written twice. */
  const writing = new Map<Chunk, Promise<void>>()
  let backgroundFailure: { error: unknown } | undefined

  function writeOut(index: number): Promise<void> {
    const chunk = chunks.get(index)
    if (chunk === undefined || chunk.kind !== 'dirty') return Promise.resolve()
    const running = writing.get(chunk)
    if (running !== undefined) return running
    const task = (async () => {
      const bytes = chunk.bytes
      let ref: ChunkRef | null = null
      if (!isAllZero(bytes)) {
        const cid = await bricks.put(bytes, { stripe: stripeSeed + index, replicaCount })
        ref = { cid, length: bytes.length }
        remember(cid.toString(), bytes)
      }
      // The chunk may have changed while its brick was written; then it stays dirty.
      if (chunks.get(index) === chunk) {
        chunks.set(index, { kind: 'clean', ref })
        dirty.delete(index)
      }
    })().finally(() => writing.delete(chunk))
    writing.set(chunk, task)
    return task
  }

  /** Starts writing a chunk out while the writer goes on; a failure surfaces at the next write or flush. */
  function writeOutInBackground(index: number): void {
    writeOut(index).catch((error: unknown) => {
      backgroundFailure ??= { error }
    })
  }

  function throwBackgroundFailure(): void {
    if (backgroundFailure !== undefined) throw backgroundFailure.error
  }

  return {
    get size() {
      return size
    },
    chunkBytes,

    async read(offset, length) {
      const end = Math.min(size, offset + length)
      if (end <= offset) return new Uint8Array(0)
      const first = Math.floor(offset / chunkBytes)
      const last = Math.floor((end - 1) / chunkBytes)
      const indexes = Array.from({ length: last - first + 1 }, (_, i) => first + i)
      if (offset === lastReadEnd || offset === 0) readAhead(last + 1)
      const contents = await mapLimited(indexes, brickTransfersInFlightMax, (index) => contentOf(index))
      const result = new Uint8Array(end - offset)
      indexes.forEach((index, position) => {
        const chunkStart = index * chunkBytes
        const content = contents[position]!
        const from = Math.max(offset, chunkStart) - chunkStart
        const to = Math.min(end, chunkStart + chunkBytes) - chunkStart
        if (from < content.length)
          result.set(content.subarray(from, Math.min(to, content.length)), chunkStart + from - offset)
      })
      lastReadEnd = end
      return result
    },

    async write(offset, data) {
      // As pwrite(2): writing nothing changes nothing, not even past the end.
      if (data.length === 0) return
      const end = offset + data.length
      const newSize = Math.max(size, end)
      const first = Math.floor(offset / chunkBytes)
      const last = Math.floor((end - 1) / chunkBytes)
      const indexes = Array.from({ length: last - first + 1 }, (_, i) => first + i)
      // Chunks written only in part need their old content; fetch those in parallel.
      const partial = indexes.filter((index) => {
        const chunkStart = index * chunkBytes
        return offset > chunkStart || end < chunkStart + extentOf(index, newSize)
      })
      const olds = new Map<number, Uint8Array>()
      await mapLimited(partial, brickTransfersInFlightMax, async (index) => {
        olds.set(index, await contentOf(index))
      })
      for (const index of indexes) {
        const chunkStart = index * chunkBytes
        const from = Math.max(offset, chunkStart) - chunkStart
        const to = Math.min(end, chunkStart + chunkBytes) - chunkStart
        const old = olds.get(index) ?? new Uint8Array(0)
        const bytes = new Uint8Array(Math.max(old.length, to))
        bytes.set(old.subarray(0, Math.min(old.length, bytes.length)))
        bytes.set(data.subarray(chunkStart + from - offset, chunkStart + to - offset), from)
        chunks.set(index, { kind: 'dirty', bytes })
        dirty.delete(index)
        dirty.add(index)
      }
      size = newSize
      // A chunk this write finished (it wrote up to the chunk's end) goes out now, overlapping the writer's next writes.
      for (const index of indexes)
        if (end >= (index + 1) * chunkBytes && extentOf(index) === chunkBytes) writeOutInBackground(index)
      while (writing.size >= brickTransfersInFlightMax) await Promise.race(writing.values()).catch(() => {})
      if (dirty.size > dirtyChunksMax) {
        // Write out the oldest changed chunks, keeping the newest (likely still being written) in memory.
        const oldest = [...dirty].slice(0, dirty.size - dirtyChunksMax / 2)
        await mapLimited(oldest, brickTransfersInFlightMax, writeOut)
      }
      throwBackgroundFailure()
    },

    async truncate(newSize) {
      if (newSize >= size) {
        size = newSize
        return
      }
      const count = chunkCountOf(newSize, chunkBytes)
      for (const index of [...chunks.keys()]) if (index >= count) chunks.delete(index)
      for (const index of [...dirty]) if (index >= count) dirty.delete(index)
      baseChunksValid = Math.min(baseChunksValid, count)
      const boundary = count - 1
      const keep = newSize - boundary * chunkBytes
      if (boundary >= 0 && keep < chunkBytes) {
        // Cut the last chunk now, so that bytes past the new end read as zeros if the file grows again.
        const content = await contentOf(boundary)
        if (content.length > keep) {
          chunks.set(boundary, { kind: 'dirty', bytes: content.slice(0, keep) })
          dirty.add(boundary)
        }
      }
      size = newSize
    },

    async flush() {
      await Promise.allSettled(writing.values())
      throwBackgroundFailure()
      await mapLimited([...dirty], brickTransfersInFlightMax, writeOut)
      const count = chunkCountOf(size, chunkBytes)
      const refs: Array<ChunkRef | null> = []
      for (let index = 0; index < count; index++) {
        const chunk = chunkOf(index)
        if (chunk.kind === 'dirty') throw new Error(`invariant: chunk ${index} still dirty after flush`)
        refs.push(chunk.ref)
      }
      return { size, chunkBytes, chunks: refs }
    },
  }
}

function isAllZero(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false
  return true
}
