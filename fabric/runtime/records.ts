/**
 * Process and thread records: the store keys that say what runs where. A record carries a format
 * version; readers refuse versions they do not know.
 *
 * Keys: `proc/<pid>` (the process), `node/<id>` (a node's liveness lease); thread records live
 * where thread-records.ts puts them (entries of shared registers, or `thread/<pid>/<tid>` for a
 * thread with a large arg), read and written only through it. A thread id is the path of spawns that made it: the main thread is `0`, and the
 * thread a thread `t` spawned with its call number `n` is `t.n`, so a spawn replayed after a
 * restore names the same child.
 */

import { Decoder, Encoder } from 'cbor-x'
import { InvalidArgumentError } from '../errors.ts'

export const recordFormatVersion = 1

export type ThreadState = 'placed' | 'running' | 'done' | 'failed'

export interface ProcessRecord {
  formatVersion: number
  pid: string
  /** SHA-256 (hex) of the program's module; nodes fetch it from `home`. */
  programDigest: string
  args: string[]
  env: string[]
  /** The node that accepted the submission: keeps the output, watches the threads. */
  home: string
  seed: number
  state: 'running' | 'done' | 'failed'
  exitCode: number | null
  error: string | null
  saveIntervalMs: number
  memoryPagesMax: number
  cpuBudgetMs: number
}

export interface ThreadRecord {
  formatVersion: number
  pid: string
  tid: string
  entry: string
  arg: Uint8Array
  state: ThreadState
  /** Where it is placed or runs. */
  node: string
  /** Raised by each claim: a stale incarnation's writes (cas on an older version) fail. */
  epoch: number
  /** Nodes that hold the thread's context saves. */
  saveReplicas: string[]
  result: Uint8Array | null
  exitCode: number | null
  error: string | null
  /** The node the spawning thread ran on when it spawned this one (told when this one ends). */
  spawnerNode?: string
  /** The thread's context group (`group` sync op); children inherit their spawner's. */
  group?: string
}

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false } as never)
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true } as never)

export const keys = {
  process: (pid: string) => `proc/${pid}`,
  /** A thread record's own key (thread-records.ts decides when a record lives there). */
  thread: (pid: string, tid: string) => `thread/${pid}/${tid}`,
  node: (id: string) => `node/${id}`,
}

export function childThreadId(parent: string, callSequence: number): string {
  return `${parent}.${callSequence}`
}

export function parentThreadId(tid: string): string | null {
  const cut = tid.lastIndexOf('.')
  return cut < 0 ? null : tid.slice(0, cut)
}

/** The number a guest sees from `thread_id()` and that seeds its random stream: 0 for main. */
export function threadNumber(tid: string): number {
  if (tid === '0') return 0
  let hash = 0x811c9dc5
  for (let index = 0; index < tid.length; index++) hash = Math.imul(hash ^ tid.charCodeAt(index), 0x01000193)
  return (hash >>> 1) | 1
}

export function encodeRecord(record: ProcessRecord | ThreadRecord): Uint8Array {
  return encoder.encode(record) as Uint8Array
}

function decodeVersioned<T extends { formatVersion: number }>(bytes: Uint8Array, what: string): T {
  let record: T
  try {
    record = decoder.decode(bytes) as T
  } catch {
    throw new InvalidArgumentError(`${what} record is not valid CBOR`)
  }
  if (record?.formatVersion !== recordFormatVersion) {
    throw new InvalidArgumentError(
      `${what} record has format version ${String(record?.formatVersion)}; this node reads ${recordFormatVersion}`,
    )
  }
  return record
}

export function decodeProcess(bytes: Uint8Array): ProcessRecord {
  return decodeVersioned<ProcessRecord>(bytes, 'process')
}

export function decodeThread(bytes: Uint8Array): ThreadRecord {
  return decodeVersioned<ThreadRecord>(bytes, 'thread')
}
