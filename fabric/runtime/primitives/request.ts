/**
 * Decoding and checking a guest's `sync` request (layout in host/abi.ts). The bytes come straight
 * from guest memory, so every length and operand is checked; a bad request decodes to a `SyncError`
 * number for the guest, never to an exception.
 */

import {
  SyncError,
  SyncOp,
  syncHeaderBytes,
  syncNameBytesMax,
  syncRequestVersion,
  syncValueBytesMax,
} from '../../../host/abi.ts'

/** Shortest lock TTL a guest may ask for (the store's own minimum lease). */
export const lockTtlMsMin = 100
/** Longest lock TTL a guest may ask for: a dead holder blocks others at most this long. */
export const lockTtlMsMax = 10 * 60 * 1000
/** Items a queue holds when the first push names no capacity. */
export const queueCapacityDefault = 1024
/** Largest capacity a queue may be given (its items must also fit in one store register). */
export const queueCapacityMax = 65_536
/** Most threads one barrier may wait for. */
export const barrierPartiesMax = 4096

export type SyncKind = 'var' | 'lock' | 'fenced' | 'queue' | 'barrier'

export type SyncOperation =
  | { op: 'group' }
  | { op: 'var_get' }
  | { op: 'var_set'; value: Uint8Array }
  | { op: 'var_cas'; expected: Uint8Array | null; value: Uint8Array }
  | { op: 'var_add'; delta: bigint }
  | { op: 'lock_acquire'; ttlMs: number; timeoutMs: number }
  | { op: 'lock_renew'; token: number; ttlMs: number }
  | { op: 'lock_release'; token: number }
  /** `token` 0: a plain read; else a lock holder's read, which raises the fence to its token. */
  | { op: 'fenced_get'; token: number }
  | { op: 'fenced_set'; token: number; value: Uint8Array }
  | { op: 'queue_push'; item: Uint8Array; capacity: number; timeoutMs: number }
  | { op: 'queue_pop'; timeoutMs: number }
  | { op: 'queue_close' }
  | { op: 'queue_length' }
  | { op: 'barrier_wait'; parties: number }

export interface SyncRequest {
  /** Context group ('' is the process's global context). */
  group: string
  name: string
  operation: SyncOperation
}

export type DecodeResult = { ok: true; request: SyncRequest } | { ok: false; error: number }

const utf8 = new TextDecoder('utf-8', { fatal: true })

/** The kind of object an operation works on (part of its store key). */
export function kindOf(operation: SyncOperation): SyncKind | null {
  if (operation.op === 'group') return null
  if (operation.op.startsWith('var_')) return 'var'
  if (operation.op.startsWith('lock_')) return 'lock'
  if (operation.op.startsWith('fenced_')) return 'fenced'
  if (operation.op.startsWith('queue_')) return 'queue'
  return 'barrier'
}

/** A timeout operand: -1 waits for ever, 0 tries once, n > 0 waits n ms; anything else is invalid. */
function timeout(value: bigint): number | null {
  if (value === -1n) return Number.POSITIVE_INFINITY
  if (value < 0n || value > BigInt(Number.MAX_SAFE_INTEGER)) return null
  return Number(value)
}

function ttl(value: bigint): number | null {
  if (value < BigInt(lockTtlMsMin) || value > BigInt(lockTtlMsMax)) return null
  return Number(value)
}

/** A fencing token operand: the store's tokens are positive safe integers. */
function token(value: bigint): number | null {
  if (value < 1n || value > BigInt(Number.MAX_SAFE_INTEGER)) return null
  return Number(value)
}

export function decodeSyncRequest(bytes: Uint8Array | null): DecodeResult {
  const invalid = { ok: false as const, error: SyncError.invalid }
  if (bytes === null || bytes.length < syncHeaderBytes) return invalid
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (view.getUint8(0) !== syncRequestVersion) return invalid
  const opNumber = view.getUint8(1)
  const groupLength = view.getUint16(2, true)
  const nameLength = view.getUint16(4, true)
  if (view.getUint16(6, true) !== 0) return invalid
  const a = view.getBigInt64(8, true)
  const b = view.getBigInt64(16, true)
  const valueLength = view.getUint32(24, true)
  const value2Length = view.getUint32(28, true)
  if (groupLength > syncNameBytesMax || nameLength > syncNameBytesMax) return invalid
  if (valueLength > syncValueBytesMax || value2Length > syncValueBytesMax)
    return { ok: false, error: SyncError.tooLarge }
  const total = syncHeaderBytes + groupLength + nameLength + valueLength + value2Length
  if (total !== bytes.length) return invalid
  let offset = syncHeaderBytes
  const take = (length: number) => {
    const slice = bytes.slice(offset, offset + length)
    offset += length
    return slice
  }
  let group: string
  let name: string
  try {
    group = utf8.decode(take(groupLength))
    name = utf8.decode(take(nameLength))
  } catch {
    return invalid
  }
  const value = take(valueLength)
  const value2 = take(value2Length)
  const needsName = opNumber !== SyncOp.group
  if (needsName && name.length === 0) return invalid
  if (!needsName && group.length === 0) return invalid
  let operation: SyncOperation
  switch (opNumber) {
    case SyncOp.group:
      operation = { op: 'group' }
      break
    case SyncOp.varGet:
      operation = { op: 'var_get' }
      break
    case SyncOp.varSet:
      operation = { op: 'var_set', value }
      break
    case SyncOp.varCas:
      if (a !== 0n && a !== 1n) return invalid
      operation = { op: 'var_cas', expected: a === 1n ? null : value, value: value2 }
      break
    case SyncOp.varAdd:
      operation = { op: 'var_add', delta: a }
      break
    case SyncOp.lockAcquire: {
      const ttlMs = ttl(a)
      const timeoutMs = timeout(b)
      if (ttlMs === null || timeoutMs === null) return invalid
      operation = { op: 'lock_acquire', ttlMs, timeoutMs }
      break
    }
    case SyncOp.lockRenew: {
      const tokenValue = token(a)
      const ttlMs = ttl(b)
      if (tokenValue === null || ttlMs === null) return invalid
      operation = { op: 'lock_renew', token: tokenValue, ttlMs }
      break
    }
    case SyncOp.lockRelease: {
      const tokenValue = token(a)
      if (tokenValue === null) return invalid
      operation = { op: 'lock_release', token: tokenValue }
      break
    }
    case SyncOp.fencedGet: {
      const tokenValue = a === 0n ? 0 : token(a)
      if (tokenValue === null) return invalid
      operation = { op: 'fenced_get', token: tokenValue }
      break
    }
    case SyncOp.fencedSet: {
      const tokenValue = token(a)
      if (tokenValue === null) return invalid
      operation = { op: 'fenced_set', token: tokenValue, value }
      break
    }
    case SyncOp.queuePush: {
      if (a < 0n || a > BigInt(queueCapacityMax)) return invalid
      const timeoutMs = timeout(b)
      if (timeoutMs === null) return invalid
      operation = {
        op: 'queue_push',
        item: value,
        capacity: a === 0n ? queueCapacityDefault : Number(a),
        timeoutMs,
      }
      break
    }
    case SyncOp.queuePop: {
      const timeoutMs = timeout(a)
      if (timeoutMs === null) return invalid
      operation = { op: 'queue_pop', timeoutMs }
      break
    }
    case SyncOp.queueClose:
      operation = { op: 'queue_close' }
      break
    case SyncOp.queueLength:
      operation = { op: 'queue_length' }
      break
    case SyncOp.barrierWait:
      if (a < 1n || a > BigInt(barrierPartiesMax)) return invalid
      operation = { op: 'barrier_wait', parties: Number(a) }
      break
    default:
      return invalid
  }
  return { ok: true, request: { group, name, operation } }
}

/** Encodes a request (tests and tools; guests build theirs with the SDK). */
export function encodeSyncRequest(input: {
  op: number
  group?: string
  name?: string
  a?: bigint
  b?: bigint
  value?: Uint8Array
  value2?: Uint8Array
}): Uint8Array {
  const encoder = new TextEncoder()
  const group = encoder.encode(input.group ?? '')
  const name = encoder.encode(input.name ?? '')
  const value = input.value ?? new Uint8Array(0)
  const value2 = input.value2 ?? new Uint8Array(0)
  const bytes = new Uint8Array(syncHeaderBytes + group.length + name.length + value.length + value2.length)
  const view = new DataView(bytes.buffer)
  view.setUint8(0, syncRequestVersion)
  view.setUint8(1, input.op)
  view.setUint16(2, group.length, true)
  view.setUint16(4, name.length, true)
  view.setBigInt64(8, input.a ?? 0n, true)
  view.setBigInt64(16, input.b ?? 0n, true)
  view.setUint32(24, value.length, true)
  view.setUint32(28, value2.length, true)
  let offset = syncHeaderBytes
  for (const part of [group, name, value, value2]) {
    bytes.set(part, offset)
    offset += part.length
  }
  return bytes
}
