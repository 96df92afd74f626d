/**
 * The messages of `/fabric/fs/1`, the protocol by which `fabric fs` (a libp2p client holding the
 * cluster key) uses the file system of the node it joins: one stream per call, one request frame
 * and one reply frame (`stream-frames.ts`). Descriptors belong to the client that opened them and
 * are closed when its connection ends.
 */

import type { OpenFlags } from './file-system.ts'
import { replicaCountMax } from './replica-counts.ts'

export const fileProtocol = '/fabric/fs/1'
/** Most bytes one read or write carries. */
export const fileTransferBytesMax = 4 * 1024 * 1024
/** Largest frame: a transfer plus its envelope. */
export const fileFrameBytesMax = fileTransferBytesMax + 64 * 1024
export const pathLengthMax = 4096

export type FileRequest =
  | { t: 'stat' | 'readdir' | 'mkdir' | 'rmdir' | 'unlink' | 'du'; path: string }
  | { t: 'rename'; from: string; to: string }
  | { t: 'open'; path: string; flags: OpenFlags; replicaCount?: number; temporary?: boolean }
  | { t: 'read'; fd: number; length: number; position: number }
  | { t: 'write'; fd: number; bytes: Uint8Array; position: number }
  | { t: 'close'; fd: number }

export type FileReply =
  | { t: 'ok'; result: unknown }
  | { t: 'error'; code: string; message: string; syscall?: string; path?: string }

export interface DiskUsage {
  files: number
  directories: number
  bytes: number
}

const openFlags = new Set(['r', 'r+', 'rs+', 'w', 'wx', 'w+', 'wx+', 'a', 'ax', 'a+', 'ax+'])
const pathCalls = new Set(['stat', 'readdir', 'mkdir', 'rmdir', 'unlink', 'du'])

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null
const isPath = (value: unknown): value is string =>
  typeof value === 'string' && value.length > 0 && value.length <= pathLengthMax
const isCount = (value: unknown, max = Number.MAX_SAFE_INTEGER): value is number =>
  Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= max

/** Why `body` is not a valid request, or undefined when it is one. */
export function fileRequestProblem(body: unknown): string | undefined {
  if (!isObject(body) || typeof body.t !== 'string') return 'request is not a map with a type'
  if (pathCalls.has(body.t))
    return isPath(body.path) ? undefined : 'path must be a string of 1 to 4096 characters'
  switch (body.t) {
    case 'rename':
      return isPath(body.from) && isPath(body.to) ? undefined : 'from and to must be paths'
    case 'open':
      if (!isPath(body.path)) return 'path must be a string of 1 to 4096 characters'
      if (typeof body.flags !== 'string' || !openFlags.has(body.flags)) return 'unknown open flags'
      if (
        body.replicaCount !== undefined &&
        (!isCount(body.replicaCount, replicaCountMax) || body.replicaCount === 0)
      )
        return `replicaCount must be from 1 to ${replicaCountMax}`
      if (body.temporary !== undefined && typeof body.temporary !== 'boolean')
        return 'temporary must be a boolean'
      return undefined
    case 'read':
      return isCount(body.fd) && isCount(body.length, fileTransferBytesMax) && isCount(body.position)
        ? undefined
        : `read takes fd, length (at most ${fileTransferBytesMax}) and position`
    case 'write':
      return isCount(body.fd) &&
        body.bytes instanceof Uint8Array &&
        body.bytes.length <= fileTransferBytesMax &&
        isCount(body.position)
        ? undefined
        : `write takes fd, bytes (at most ${fileTransferBytesMax}) and position`
    case 'close':
      return isCount(body.fd) ? undefined : 'close takes fd'
    default:
      return `unknown request type ${body.t.slice(0, 40)}`
  }
}

export function isFileReply(body: unknown): body is FileReply {
  if (!isObject(body)) return false
  if (body.t === 'ok') return 'result' in body
  return body.t === 'error' && typeof body.code === 'string' && typeof body.message === 'string'
}
