/** Shape checks for runtime messages from the network: anything else is refused before handling. */

import { noticeTypes, type RuntimeMessage, type RuntimeReply } from './messages.ts'

export const idLengthMax = 256
export const argumentsMax = 1024
export const argumentLengthMax = 64 * 1024
export const chainLengthMax = 4096
export const waitMsMax = 30_000
/** A coordination store key (the store takes 512 bytes). */
export const syncKeyLengthMax = 512
/** Logged values in one replay log (a save truncates it). */
export const logEntriesMax = 1_000_000
/** Entries in one `home-copy` message (a first copy carries a process's whole output so far). */
export const homeCopyEntriesMax = 1_000_000
/** Starts in one `starts` message (and replies in one `started`). */
export const startsPerMessageMax = 1024
/** Notices in one `notices` message. */
export const noticesPerMessageMax = 1024
/** A thread record in a `start` message (its argument included). */
export const recordBytesMax = 16 * 1024 * 1024

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null
const isId = (value: unknown): value is string =>
  typeof value === 'string' && value.length > 0 && value.length <= idLengthMax
const isCount = (value: unknown, max = Number.MAX_SAFE_INTEGER): value is number =>
  Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= max
const isBytes = (value: unknown): value is Uint8Array => value instanceof Uint8Array
const isLogEntries = (value: unknown): value is Array<[number, string]> =>
  Array.isArray(value) &&
  value.length <= logEntriesMax &&
  value.every(
    (entry) =>
      Array.isArray(entry) &&
      entry.length === 2 &&
      isCount(entry[0]) &&
      typeof entry[1] === 'string' &&
      /^-?[0-9]{1,40}$/.test(entry[1]),
  )
/** Logged `sync` replies: [call sequence, result, payload or null]. */
const isLoggedReplies = (value: unknown): value is Array<[number, number, Uint8Array | null]> =>
  value === undefined ||
  (Array.isArray(value) &&
    value.length <= logEntriesMax &&
    value.every(
      (entry) =>
        Array.isArray(entry) &&
        entry.length === 3 &&
        isCount(entry[0]) &&
        Number.isSafeInteger(entry[1]) &&
        (entry[2] === null || isBytes(entry[2])),
    ))
const isStrings = (value: unknown): value is string[] =>
  Array.isArray(value) &&
  value.length <= argumentsMax &&
  value.every((item) => typeof item === 'string' && item.length <= argumentLengthMax)

/** The fields of a `log` message (a start carries them too). */
const isLogFields = (value: unknown): boolean =>
  isObject(value) &&
  isId(value.pid) &&
  isId(value.tid) &&
  isCount(value.epoch) &&
  isCount(value.afterSequence) &&
  isLogEntries(value.entries) &&
  isLoggedReplies(value.replies) &&
  (value.from === undefined || isCount(value.from, logEntriesMax))

/**
 * A start, with the spawner's log it carries (its own `log`, or `logs[logIndex]` of its `starts`
 * message), which must be of the same process.
 */
const isStart = (value: unknown, logs: unknown[]): value is Record<string, unknown> => {
  if (
    !isObject(value) ||
    value.type !== 'start' ||
    !isId(value.pid) ||
    !isId(value.tid) ||
    !isCount(value.version) ||
    !isBytes(value.record) ||
    value.record.length > recordBytesMax
  )
    return false
  if (value.logIndex !== undefined && !isCount(value.logIndex, logs.length - 1)) return false
  const log = value.logIndex === undefined ? value.log : logs[value.logIndex]
  return log === undefined || (isLogFields(log) && (log as Record<string, unknown>).pid === value.pid)
}

export function isRuntimeMessage(value: unknown): value is RuntimeMessage {
  if (!isObject(value) || typeof value.type !== 'string') return false
  switch (value.type) {
    case 'start':
      return isStart(value, []) && value.logIndex === undefined
    case 'starts': {
      const logs = value.logs ?? []
      return (
        Array.isArray(logs) &&
        logs.length <= startsPerMessageMax &&
        logs.every(isLogFields) &&
        Array.isArray(value.starts) &&
        value.starts.length <= startsPerMessageMax &&
        value.starts.every((start) => isStart(start, logs) && start.log === undefined)
      )
    }
    case 'fetch-saves':
    case 'drop-saves':
      return isId(value.pid) && isId(value.tid)
    case 'ended':
      return (
        isId(value.pid) &&
        isId(value.tid) &&
        (value.early === undefined || typeof value.early === 'boolean') &&
        (value.outcome === undefined ||
          (isObject(value.outcome) &&
            (value.outcome.state === 'done' || value.outcome.state === 'failed') &&
            (value.outcome.result === null || isBytes(value.outcome.result))))
      )
    case 'save':
      return (
        isId(value.pid) &&
        isId(value.tid) &&
        isCount(value.epoch) &&
        isCount(value.sequence) &&
        (value.baseSequence === null || isCount(value.baseSequence)) &&
        isBytes(value.bytes)
      )
    case 'log':
      return isLogFields(value)
    case 'fetch-program':
      return isId(value.digest)
    case 'load-program':
      return typeof value.digest === 'string' && /^[0-9a-f]{64}$/.test(value.digest)
    case 'output':
      return (
        isId(value.pid) &&
        isId(value.tid) &&
        isCount(value.fd, 2) &&
        isCount(value.callSequence) &&
        isBytes(value.bytes)
      )
    case 'placed':
      return isId(value.pid) && isId(value.tid) && isId(value.node)
    case 'notices':
      return (
        Array.isArray(value.notices) &&
        value.notices.length <= noticesPerMessageMax &&
        value.notices.every(
          (notice) => isObject(notice) && noticeTypes.has(notice.type as string) && isRuntimeMessage(notice),
        )
      )
    case 'stop':
    case 'kill':
      return isId(value.pid)
    case 'submit':
      return isBytes(value.program) && isStrings(value.args) && isStrings(value.env)
    case 'attach':
      return isId(value.pid) && isCount(value.from) && isCount(value.waitMs, waitMsMax)
    case 'ps':
      return (
        (value.local === undefined || typeof value.local === 'boolean') &&
        (value.homed === undefined || typeof value.homed === 'boolean')
      )
    case 'sync-wake':
      return typeof value.key === 'string' && value.key.length > 0 && value.key.length <= syncKeyLengthMax
    case 'home-copy':
      return (
        isId(value.pid) &&
        (value.record === undefined || (isBytes(value.record) && value.record.length <= recordBytesMax)) &&
        (value.program === undefined || isBytes(value.program)) &&
        (value.replicas === undefined ||
          (Array.isArray(value.replicas) &&
            value.replicas.length <= argumentsMax &&
            value.replicas.every(isId))) &&
        Array.isArray(value.entries) &&
        value.entries.length <= homeCopyEntriesMax &&
        value.entries.every(isHomeCopyEntry)
      )
    case 'home-moved':
      return isId(value.pid) && isId(value.home)
    case 'fetch-home-copy':
      return isId(value.pid) && isCount(value.from)
    default:
      return false
  }
}

const isHomeCopyEntry = (value: unknown): boolean => {
  if (!isObject(value)) return false
  switch (value.kind) {
    case 'output':
      return (
        isCount(value.index) &&
        isId(value.tid) &&
        isCount(value.fd, 2) &&
        isCount(value.callSequence) &&
        isBytes(value.bytes)
      )
    case 'placed':
      return isId(value.tid) && isId(value.node)
    case 'ended':
      return isId(value.tid)
    case 'shown':
      return isId(value.tid) && isCount(value.fd, 2) && isCount(value.callSequence)
    default:
      return false
  }
}

export function isRuntimeReply(value: unknown): value is RuntimeReply {
  if (!isObject(value) || typeof value.type !== 'string') return false
  switch (value.type) {
    case 'ok':
      return true
    case 'refused':
      return typeof value.reason === 'string'
    case 'saves':
      return (
        Array.isArray(value.chain) &&
        value.chain.length <= chainLengthMax &&
        value.chain.every(isBytes) &&
        Number.isSafeInteger(value.epoch) &&
        (value.sequences === undefined ||
          (Array.isArray(value.sequences) &&
            value.sequences.length === value.chain.length &&
            value.sequences.every((sequence) => isCount(sequence)))) &&
        (value.log === undefined ||
          (isObject(value.log) &&
            isCount(value.log.epoch) &&
            isCount(value.log.afterSequence) &&
            isLogEntries(value.log.entries) &&
            isLoggedReplies(value.log.replies)))
      )
    case 'started':
      return (
        Array.isArray(value.replies) &&
        value.replies.length <= startsPerMessageMax &&
        value.replies.every((reply) => isObject(reply) && reply.type !== 'started' && isRuntimeReply(reply))
      )
    case 'claimed':
      return isId(value.node) && typeof value.state === 'string'
    case 'program':
      return isBytes(value.bytes)
    case 'submitted':
      return isId(value.pid)
    case 'output':
      return (
        Array.isArray(value.chunks) &&
        value.chunks.every(
          (chunk) => isObject(chunk) && isId(chunk.tid) && isCount(chunk.fd, 2) && isBytes(chunk.bytes),
        ) &&
        isCount(value.next) &&
        (value.result === null || (isObject(value.result) && Number.isSafeInteger(value.result.exitCode)))
      )
    case 'processes':
      return Array.isArray(value.processes)
    case 'home-copy-output':
      return (
        Array.isArray(value.entries) &&
        value.entries.length <= homeCopyEntriesMax &&
        value.entries.every((entry) => isObject(entry) && entry.kind === 'output' && isHomeCopyEntry(entry))
      )
    default:
      return false
  }
}
