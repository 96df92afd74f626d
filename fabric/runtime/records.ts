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
import { ByteReader, ByteWriter, binaryFormMarker, isBinaryForm } from '../net/byte-codec.ts'

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
  /** Set on a stored record whose result and error live on a key of their own (thread-records.ts). */
  outcomeStored?: true
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

/**
 * A record's bytes. A thread record, written and read several times in each thread's life (the
 * claim, the end, the store's messages that carry it), has a binary form of its own (about half
 * the bytes of its CBOR map, and cheaper to write and read); a process record is CBOR.
 */
export function encodeRecord(record: ProcessRecord | ThreadRecord): Uint8Array {
  if ('tid' in record) return encodeThread(record)
  return encoder.encode(record) as Uint8Array
}

const threadStates: readonly ThreadState[] = ['placed', 'running', 'done', 'failed']
/** Flags of a thread record's binary form: which optional fields follow. */
const hasResult = 1
const hasExitCode = 2
const hasError = 4
const hasSpawnerNode = 8
const hasGroup = 16
const outcomeStoredFlag = 32
const threadFlagsAll = 63

function encodeThread(record: ThreadRecord): Uint8Array {
  const writer = new ByteWriter({ sizeHint: 160 + record.arg.length + (record.result?.length ?? 0) })
  writer.byte(binaryFormMarker)
  writer.uint(record.formatVersion)
  writer.byte(
    (record.result === null ? 0 : hasResult) |
      (record.exitCode === null ? 0 : hasExitCode) |
      (record.error === null ? 0 : hasError) |
      (record.spawnerNode === undefined ? 0 : hasSpawnerNode) |
      (record.group === undefined ? 0 : hasGroup) |
      (record.outcomeStored === true ? outcomeStoredFlag : 0),
  )
  const state = threadStates.indexOf(record.state)
  if (state < 0) throw new InvalidArgumentError(`thread record with state ${String(record.state)}`)
  writer.byte(state)
  writer.string(record.pid)
  writer.string(record.tid)
  writer.string(record.entry)
  writer.bytes(record.arg)
  writer.string(record.node)
  writer.uint(record.epoch)
  writer.uint(record.saveReplicas.length)
  for (const node of record.saveReplicas) writer.string(node)
  if (record.result !== null) writer.bytes(record.result)
  if (record.exitCode !== null) writer.int(record.exitCode)
  if (record.error !== null) writer.string(record.error)
  if (record.spawnerNode !== undefined) writer.string(record.spawnerNode)
  if (record.group !== undefined) writer.string(record.group)
  return writer.finish()
}

/** Save replicas a record names are a handful; more is malformed. */
const saveReplicasMax = 64

function decodeThreadBinary(bytes: Uint8Array): ThreadRecord {
  const reader = new ByteReader(bytes, 1)
  const formatVersion = reader.uint()
  if (formatVersion !== recordFormatVersion) throw unknownFormat('thread', formatVersion)
  const flags = reader.byte()
  if (flags > threadFlagsAll) throw new Error(`unknown flags ${flags}`)
  const state = threadStates[reader.byte()]
  if (state === undefined) throw new Error('unknown state')
  const pid = reader.string()
  const tid = reader.string()
  const entry = reader.string()
  const arg = reader.bytes()
  const node = reader.string()
  const epoch = reader.uint()
  const saveReplicaCount = reader.uint()
  if (saveReplicaCount > saveReplicasMax) throw new Error(`${saveReplicaCount} save replicas`)
  const saveReplicas: string[] = []
  for (let index = 0; index < saveReplicaCount; index++) saveReplicas.push(reader.string())
  const result = (flags & hasResult) === 0 ? null : reader.bytes()
  const exitCode = (flags & hasExitCode) === 0 ? null : reader.int()
  const error = (flags & hasError) === 0 ? null : reader.string()
  const record: ThreadRecord = {
    formatVersion,
    pid,
    tid,
    entry,
    arg,
    state,
    node,
    epoch,
    saveReplicas,
    result,
    exitCode,
    error,
  }
  if ((flags & hasSpawnerNode) !== 0) record.spawnerNode = reader.string()
  if ((flags & hasGroup) !== 0) record.group = reader.string()
  if ((flags & outcomeStoredFlag) !== 0) record.outcomeStored = true
  reader.end()
  return record
}

function unknownFormat(what: string, formatVersion: unknown): InvalidArgumentError {
  return new InvalidArgumentError(
    `${what} record has format version ${String(formatVersion)}; this node reads ${recordFormatVersion}`,
  )
}

function decodeVersioned<T extends { formatVersion: number }>(bytes: Uint8Array, what: string): T {
  let record: T
  try {
    record = decoder.decode(bytes) as T
  } catch {
    throw new InvalidArgumentError(`${what} record is not valid CBOR`)
  }
  if (record?.formatVersion !== recordFormatVersion) throw unknownFormat(what, record?.formatVersion)
  return record
}

export function decodeProcess(bytes: Uint8Array): ProcessRecord {
  return decodeVersioned<ProcessRecord>(bytes, 'process')
}

/** A thread record from its binary form (or from CBOR, as records were written before it). */
export function decodeThread(bytes: Uint8Array): ThreadRecord {
  if (!isBinaryForm(bytes)) return decodeVersioned<ThreadRecord>(bytes, 'thread')
  try {
    return decodeThreadBinary(bytes)
  } catch (error) {
    if (error instanceof InvalidArgumentError) throw error
    throw new InvalidArgumentError(`thread record is malformed: ${(error as Error).message}`)
  }
}
