/**
 * The node side of `/fabric/fs/1`: serves the node's file system to `fabric fs` clients. Each
 * call is checked before it runs; a malformed one is refused with a log line. A client may hold
 * {@link descriptorsPerClientMax} descriptors, usable by it alone; when its connection ends they
 * are closed, and files it opened as temporary (an upload that had not finished) are removed.
 */

import type { Stream } from '@libp2p/interface'
import type { FabricNode } from '../fabric/net/node.ts'
import { FileSystemError, StorageError } from './errors.ts'
import {
  type DiskUsage,
  type FileReply,
  type FileRequest,
  fileFrameBytesMax,
  fileProtocol,
  fileRequestProblem,
} from './file-protocol.ts'
import type { FileSystem } from './file-system.ts'
import { encodeStorageFrame, readFrame, writeFrame } from './stream-frames.ts'

export const descriptorsPerClientMax = 64
export const fileInboundStreamsMax = 32
export const fileRequestTimeoutMs = 60_000
/** Entries `du` visits before it gives up (EFBIG). */
export const diskUsageEntriesMax = 1_000_000

export interface FileService {
  stop(): Promise<void>
}

interface Owned {
  peer: string
  path: string
  temporary: boolean
}

export async function startFileService(components: {
  node: FabricNode
  fileSystem: FileSystem
  log(line: string): void
}): Promise<FileService> {
  const { node, fileSystem } = components
  const libp2p = node.network.libp2p
  const owners = new Map<number, Owned>()

  function ownedBy(fd: number, peer: string, syscall: string): void {
    if (owners.get(fd)?.peer !== peer)
      throw new FileSystemError('EBADF', syscall, undefined, `descriptor ${fd}`)
  }

  async function diskUsage(path: string): Promise<DiskUsage> {
    const usage: DiskUsage = { files: 0, directories: 0, bytes: 0 }
    const pending = [path]
    let visited = 0
    while (pending.length > 0) {
      const next = pending.pop()!
      if (++visited > diskUsageEntriesMax)
        throw new FileSystemError('EFBIG', 'du', path, `more than ${diskUsageEntriesMax} entries`)
      const stat = await fileSystem.stat(next)
      if (stat.type === 'file') {
        usage.files++
        usage.bytes += stat.size
        continue
      }
      usage.directories++
      const prefix = next.endsWith('/') ? next : `${next}/`
      for (const entry of await fileSystem.readdir(next)) pending.push(prefix + entry.name)
    }
    return usage
  }

  async function serve(peer: string, request: FileRequest): Promise<unknown> {
    switch (request.t) {
      case 'stat':
        return fileSystem.stat(request.path)
      case 'readdir':
        return fileSystem.readdir(request.path)
      case 'mkdir':
        return fileSystem.mkdir(request.path)
      case 'rmdir':
        return fileSystem.rmdir(request.path)
      case 'unlink':
        return fileSystem.unlink(request.path)
      case 'du':
        return diskUsage(request.path)
      case 'rename':
        return fileSystem.rename(request.from, request.to)
      case 'open': {
        let held = 0
        for (const owned of owners.values()) if (owned.peer === peer) held++
        if (held >= descriptorsPerClientMax) throw new FileSystemError('EMFILE', 'open', request.path)
        const fd = await fileSystem.open(request.path, request.flags, { replicaCount: request.replicaCount })
        owners.set(fd, { peer, path: request.path, temporary: request.temporary === true })
        return fd
      }
      case 'read':
        ownedBy(request.fd, peer, 'read')
        return fileSystem.read(request.fd, request.length, request.position)
      case 'write':
        ownedBy(request.fd, peer, 'write')
        return fileSystem.write(request.fd, request.bytes, request.position)
      case 'close':
        ownedBy(request.fd, peer, 'close')
        owners.delete(request.fd)
        return fileSystem.close(request.fd)
    }
  }

  async function release(peer: string): Promise<void> {
    for (const [fd, owned] of [...owners]) {
      if (owned.peer !== peer) continue
      owners.delete(fd)
      await fileSystem.close(fd).catch(() => {})
      if (owned.temporary) await fileSystem.unlink(owned.path).catch(() => {})
    }
  }

  const onDisconnect = (event: CustomEvent<{ toString(): string }>) => void release(event.detail.toString())
  libp2p.addEventListener('peer:disconnect', onDisconnect)

  await libp2p.handle(
    fileProtocol,
    async (stream: Stream, connection) => {
      const from = connection.remotePeer.toString()
      let body: unknown
      try {
        body = await readFrame(stream, { bytesMax: fileFrameBytesMax, timeoutMs: fileRequestTimeoutMs })
      } catch (error) {
        node.network.refuse(from, `fs: ${(error as Error).message}`)
        stream.abort(error as Error)
        return
      }
      const problem = fileRequestProblem(body)
      let reply: FileReply
      if (problem !== undefined) {
        node.network.refuse(from, `fs: ${problem}`)
        reply = { t: 'error', code: 'EINVAL', message: `EINVAL: invalid argument (${problem})` }
      } else {
        try {
          reply = { t: 'ok', result: (await serve(from, body as FileRequest)) ?? null }
        } catch (error) {
          reply =
            error instanceof FileSystemError
              ? {
                  t: 'error',
                  code: error.code,
                  message: error.message,
                  syscall: error.syscall,
                  path: error.path,
                }
              : {
                  t: 'error',
                  code: error instanceof StorageError ? error.code : 'EIO',
                  message: (error as Error).message,
                }
        }
      }
      try {
        await writeFrame(stream, encodeStorageFrame(reply, fileFrameBytesMax))
        await stream.close()
      } catch (error) {
        stream.abort(error as Error)
      }
    },
    { maxInboundStreams: fileInboundStreamsMax },
  )

  return {
    async stop() {
      libp2p.removeEventListener('peer:disconnect', onDisconnect)
      await libp2p.unhandle(fileProtocol).catch(() => {})
      for (const owned of new Set([...owners.values()].map((each) => each.peer))) await release(owned)
    },
  }
}
