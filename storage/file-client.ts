/**
 * The client side of `/fabric/fs/1`: the cluster file system from outside the cluster (what
 * `fabric fs` uses). It joins as a libp2p client with the cluster key, like the coordination-store
 * client, and sends each call to the first node that answers; that node does the work (its copy
 * of each brick it writes is the "writer's replica"). Copies move in pieces of
 * {@link transferBytesDefault}, several in flight, and report progress through `onProgress`.
 * An upload goes to a temporary name beside the target and is renamed over it at the end, so a
 * reader never sees half a copy and an interrupted upload leaves nothing behind.
 *
 *   const files = await connectFileClient({ nodes: ['/ip4/127.0.0.1/tcp/4001/p2p/12D3…'], clusterKey })
 *   await files.putFile('./big.bin', '/data/big.bin', { onProgress: ({ bytes, total }) => draw(bytes, total) })
 *   const entries = await files.readdir('/data')
 *   await files.close()
 */

import { createReadStream, createWriteStream } from 'node:fs'
import { stat as statLocal } from 'node:fs/promises'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { loadClusterKey } from '../fabric/net/cluster-key.ts'
import { createNetwork, type Network } from '../fabric/net/network.ts'
import { systemRandom } from '../fabric/platform.ts'
import { FileSystemError, type PosixErrorCode, StorageArgumentError, StorageError } from './errors.ts'
import {
  type DiskUsage,
  type FileReply,
  type FileRequest,
  fileFrameBytesMax,
  fileProtocol,
  fileTransferBytesMax,
  isFileReply,
} from './file-protocol.ts'
import type { DirectoryListingEntry, Stat } from './file-system.ts'
import { encodeStorageFrame, readFrame, writeFrame } from './stream-frames.ts'

/** Bytes per read or write request of a copy. */
export const transferBytesDefault = 1024 * 1024
/** Requests of one copy in flight at once. */
export const transfersInFlightMax = 4
export const fileDialTimeoutMs = 5000
export const fileCallTimeoutMs = 120_000

export interface FileClientOptions {
  /** Multiaddrs of nodes, each ending in /p2p/<peer id>. */
  nodes: readonly string[]
  /** The cluster key: 64 hex digits, a key file's path, or the encoded pre-shared key. */
  clusterKey?: Uint8Array | string
  log?: (line: string) => void
}

export interface CopyProgress {
  bytes: number
  /** The size of the whole copy. */
  total: number
}

export interface CopyOptions {
  onProgress?(progress: CopyProgress): void
  signal?: AbortSignal
}

export interface PutOptions extends CopyOptions {
  /** Replicas of the new file's bricks; default the cluster's. */
  replicaCount?: number
}

export interface FileClient {
  stat(path: string): Promise<Stat>
  readdir(path: string): Promise<DirectoryListingEntry[]>
  mkdir(path: string): Promise<void>
  rmdir(path: string): Promise<void>
  unlink(path: string): Promise<void>
  rename(from: string, to: string): Promise<void>
  du(path: string): Promise<DiskUsage>
  /** Creates or replaces a small file in one open, write and close (no temporary name). */
  writeFile(path: string, bytes: Uint8Array): Promise<void>
  /** Copies a local file into the cluster file system; returns the bytes copied. */
  putFile(localPath: string, remotePath: string, options?: PutOptions): Promise<number>
  /** Copies a cluster file to `sink` in order (a local path, or a writable such as stdout). */
  getFile(remotePath: string, sink: string | NodeJS.WritableStream, options?: CopyOptions): Promise<number>
  close(): Promise<void>
}

export async function connectFileClient(options: FileClientOptions): Promise<FileClient> {
  if (options.nodes.length === 0) throw new StorageArgumentError('Expected at least one node address')
  const peers = options.nodes.map((address) => {
    let peer: string | undefined
    try {
      peer = multiaddr(address)
        .getComponents()
        .find((component) => component.name === 'p2p')?.value
    } catch (error) {
      throw new StorageArgumentError(`Expected a multiaddr, got ${address}: ${(error as Error).message}`)
    }
    if (peer === undefined) throw new StorageArgumentError(`Expected ${address} to end in /p2p/<peer id>`)
    return { peer, address }
  })
  const network: Network = await createNetwork({
    privateKey: await generateKeyPair('Ed25519'),
    listen: [],
    clusterKey:
      typeof options.clusterKey === 'string' ? loadClusterKey(options.clusterKey) : options.clusterKey,
    protocols: new Set(),
    log: options.log ?? (() => {}),
    client: true,
  })
  for (const { peer, address } of peers) network.addAddresses(peer, [address])
  let current = 0

  async function openStream(): Promise<Stream> {
    let lastError: Error | undefined
    for (let attempt = 0; attempt < peers.length; attempt++) {
      const { peer } = peers[current % peers.length]!
      try {
        return await network.libp2p.dialProtocol(peerIdFromString(peer), fileProtocol, {
          signal: AbortSignal.timeout(fileDialTimeoutMs),
        })
      } catch (error) {
        lastError = error as Error
        current++
      }
    }
    throw new StorageError(
      'NODE_UNREACHABLE',
      `none of the ${peers.length} nodes answered (${lastError?.message.slice(0, 200) ?? 'no error'}); check the address and the cluster key`,
    )
  }

  async function call<T>(request: FileRequest, signal?: AbortSignal): Promise<T> {
    signal?.throwIfAborted()
    const stream = await openStream()
    let body: unknown
    try {
      const reply = readFrame(stream, { bytesMax: fileFrameBytesMax, timeoutMs: fileCallTimeoutMs, signal })
      reply.catch(() => {})
      await writeFrame(stream, encodeStorageFrame(request, fileFrameBytesMax), signal)
      body = await reply
      void stream.close().catch(() => {})
    } catch (error) {
      stream.abort(error as Error)
      throw error
    }
    if (!isFileReply(body)) throw new StorageError('STORAGE_WIRE', `malformed reply to ${request.t}`)
    return resultOf(body) as T
  }

  async function putFile(
    localPath: string,
    remotePath: string,
    putOptions: PutOptions = {},
  ): Promise<number> {
    const { signal } = putOptions
    const total = (await statLocal(localPath)).size
    const slash = remotePath.lastIndexOf('/')
    const temporary = `${remotePath.slice(0, slash + 1)}.${remotePath.slice(slash + 1)}.fabric-put-${Math.floor(systemRandom.next() * 2 ** 40).toString(36)}`
    let fd: number
    try {
      fd = await call<number>(
        { t: 'open', path: temporary, flags: 'wx', temporary: true, replicaCount: putOptions.replicaCount },
        signal,
      )
    } catch (error) {
      // Name the target, not the temporary file the user never asked for.
      if (error instanceof FileSystemError)
        throw new FileSystemError(error.code as PosixErrorCode, 'open', remotePath)
      throw error
    }
    let sent = 0
    try {
      const inFlight = new Set<Promise<void>>()
      let failure: unknown
      let position = 0
      putOptions.onProgress?.({ bytes: 0, total })
      for await (const chunk of createReadStream(localPath, { highWaterMark: transferBytesDefault })) {
        if (failure !== undefined) break
        // A Buffer is a Uint8Array: sent as it is, without a copy.
        const bytes = chunk as Buffer
        const at = position
        position += bytes.length
        const write: Promise<void> = call<number>({ t: 'write', fd, bytes, position: at }, signal)
          .then(() => {
            sent += bytes.length
            putOptions.onProgress?.({ bytes: sent, total })
          })
          .catch((error: unknown) => {
            failure ??= error
          })
          .finally(() => inFlight.delete(write))
        inFlight.add(write)
        if (inFlight.size >= transfersInFlightMax) await Promise.race(inFlight)
      }
      await Promise.all(inFlight)
      if (failure !== undefined) throw failure
      await call({ t: 'close', fd }, signal)
    } catch (error) {
      await call({ t: 'close', fd }).catch(() => {})
      await call({ t: 'unlink', path: temporary }).catch(() => {})
      throw error
    }
    try {
      await call({ t: 'rename', from: temporary, to: remotePath }, signal)
    } catch (error) {
      await call({ t: 'unlink', path: temporary }).catch(() => {})
      throw error
    }
    return sent
  }

  async function getFile(
    remotePath: string,
    sink: string | NodeJS.WritableStream,
    copyOptions: CopyOptions = {},
  ): Promise<number> {
    const { signal } = copyOptions
    const fd = await call<number>({ t: 'open', path: remotePath, flags: 'r' }, signal)
    try {
      // The size as this descriptor sees it: the file as it was committed when it was opened.
      const total = (await call<Stat>({ t: 'stat', path: remotePath }, signal)).size
      const output: NodeJS.WritableStream = typeof sink === 'string' ? createWriteStream(sink) : sink
      let received = 0
      copyOptions.onProgress?.({ bytes: 0, total })
      const pending: Promise<Uint8Array>[] = []
      let requested = 0
      const requestNext = () => {
        const length = Math.min(transferBytesDefault, fileTransferBytesMax)
        const read = call<Uint8Array>({ t: 'read', fd, length, position: requested }, signal)
        read.catch(() => {})
        pending.push(read)
        requested += length
      }
      for (;;) {
        while (pending.length < transfersInFlightMax && requested < Math.max(total, 1)) requestNext()
        if (pending.length === 0) break
        const bytes = await pending.shift()!
        if (bytes.length === 0) break
        received += bytes.length
        if (!output.write(bytes)) await new Promise((resolve) => output.once('drain', resolve))
        copyOptions.onProgress?.({ bytes: received, total })
        // A file that grew since the stat is read to its end as this descriptor sees it.
        if (pending.length === 0 && bytes.length === transferBytesDefault && requested >= total) requestNext()
      }
      await Promise.allSettled(pending)
      if (typeof sink === 'string')
        await new Promise<void>((resolve, reject) => {
          output.once('error', reject)
          output.end(resolve)
        })
      return received
    } finally {
      await call({ t: 'close', fd }).catch(() => {})
    }
  }

  return {
    stat: (path) => call<Stat>({ t: 'stat', path }),
    readdir: (path) => call<DirectoryListingEntry[]>({ t: 'readdir', path }),
    mkdir: (path) => call<void>({ t: 'mkdir', path }),
    rmdir: (path) => call<void>({ t: 'rmdir', path }),
    unlink: (path) => call<void>({ t: 'unlink', path }),
    rename: (from, to) => call<void>({ t: 'rename', from, to }),
    du: (path) => call<DiskUsage>({ t: 'du', path }),
    async writeFile(path, bytes) {
      if (bytes.length > fileTransferBytesMax)
        throw new StorageArgumentError(`writeFile takes at most ${fileTransferBytesMax} bytes; use putFile`)
      const fd = await call<number>({ t: 'open', path, flags: 'w' })
      try {
        await call({ t: 'write', fd, bytes, position: 0 })
      } finally {
        await call({ t: 'close', fd })
      }
    },
    putFile,
    getFile,
    async close() {
      await network.stop()
    },
  }
}

const posixCodes = new Set([
  'ENOENT',
  'EEXIST',
  'ENOTDIR',
  'EISDIR',
  'ENOTEMPTY',
  'EBADF',
  'EINVAL',
  'ENAMETOOLONG',
  'EBUSY',
  'EFBIG',
  'EMFILE',
  'EIO',
  'EAGAIN',
])

function resultOf(reply: FileReply): unknown {
  if (reply.t === 'ok') return reply.result ?? undefined
  if (posixCodes.has(reply.code)) {
    const error = new FileSystemError(reply.code as PosixErrorCode, reply.syscall ?? 'fs', reply.path)
    error.message = reply.message
    throw error
  }
  throw new StorageError(reply.code, reply.message)
}
