/**
 * Shape checks for messages that arrive from the network, run before any state machine sees them,
 * so a malformed message is refused instead of corrupting (or crashing) protocol state.
 */

import type { Ballot } from '../coord/ballot.ts'
import { isEntryName } from '../coord/entries.ts'
import type { RegisterEntry, ShardView, StoreMessage } from '../coord/messages.ts'
import { storeMessageTypes } from '../coord/messages.ts'
import type { Operation, RegisterState } from '../coord/register.ts'
import { forgetGroupsPerMessageMax, isGroup } from '../coord/slots.ts'
import { keyBytesMax, valueBytesMax } from '../coord/store.ts'

export const registersPerMessageMax = 100_000
/** Recent writes a received register state may list (a proposer keeps `writersMax`, fewer). */
export const writersReceivedMax = 64
const membersMax = 16

const isInteger = (value: unknown, max = Number.MAX_SAFE_INTEGER): value is number =>
  Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= max
const isId = (value: unknown): value is string =>
  typeof value === 'string' && value.length > 0 && value.length <= 128
const isKey = (value: unknown): value is string =>
  typeof value === 'string' && value.length > 0 && value.length <= keyBytesMax
const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null
const isBytes = (value: unknown): value is Uint8Array =>
  value instanceof Uint8Array && value.length <= valueBytesMax

function isBallot(value: unknown): value is Ballot {
  return (
    isObject(value) &&
    isInteger(value.epoch) &&
    isInteger(value.round) &&
    typeof value.proposer === 'string' &&
    value.proposer.length <= 128
  )
}

function isMembers(value: unknown): value is string[] {
  return Array.isArray(value) && value.length > 0 && value.length <= membersMax && value.every(isId)
}

function isState(value: unknown): value is RegisterState {
  if (!isObject(value) || !isInteger(value.version) || !isInteger(value.token)) return false
  if (value.value !== null && !isBytes(value.value)) return false
  if (value.lease !== null) {
    const lease = value.lease
    if (
      !isObject(lease) ||
      !isId(lease.holder) ||
      !isInteger(lease.token) ||
      typeof lease.grant !== 'string' ||
      !isInteger(lease.ttlMs)
    )
      return false
  }
  if (value.writers !== undefined) {
    if (!Array.isArray(value.writers) || value.writers.length > writersReceivedMax) return false
    if (
      !value.writers.every(
        (pair) => Array.isArray(pair) && pair.length === 2 && pair.every((part) => typeof part === 'string'),
      )
    )
      return false
  }
  return true
}

function isView(value: unknown): value is ShardView | null {
  if (value === null) return true
  return (
    isObject(value) &&
    isInteger(value.epoch) &&
    Array.isArray(value.members) &&
    value.members.length <= membersMax &&
    value.members.every(isId) &&
    typeof value.installed === 'boolean' &&
    typeof value.sealed === 'boolean'
  )
}

function isEntries(value: unknown): value is RegisterEntry[] {
  return (
    Array.isArray(value) &&
    value.length <= registersPerMessageMax &&
    value.every(
      (entry) => isObject(entry) && isKey(entry.key) && isBallot(entry.ballot) && isState(entry.state),
    )
  )
}

export function isStoreMessage(value: unknown, shardCount: number): value is StoreMessage {
  if (!isObject(value) || typeof value.type !== 'string' || !storeMessageTypes.has(value.type)) return false
  const m = value
  // The one message of no shard (it names key groups of every shard).
  if (m.type === 'forget')
    return (
      Array.isArray(m.groups) &&
      m.groups.length > 0 &&
      m.groups.length <= forgetGroupsPerMessageMax &&
      m.groups.every((group) => isKey(group) && isGroup(group as string))
    )
  if (!isInteger(m.shard, shardCount - 1)) return false
  switch (m.type) {
    case 'prepare':
      return isInteger(m.epoch) && isKey(m.key) && isBallot(m.ballot)
    case 'promise':
      return (
        isKey(m.key) &&
        isBallot(m.ballot) &&
        typeof m.leaseElapsedMs === 'number' &&
        Number.isFinite(m.leaseElapsedMs) &&
        (m.accepted === null ||
          (isObject(m.accepted) && isBallot(m.accepted.ballot) && isState(m.accepted.state)))
      )
    case 'accept':
      return (
        isInteger(m.epoch) &&
        isKey(m.key) &&
        isBallot(m.ballot) &&
        isState(m.state) &&
        (m.next === undefined || isBallot(m.next))
      )
    case 'accepted':
      return isKey(m.key) && isBallot(m.ballot) && (m.next === undefined || isBallot(m.next))
    case 'reject':
      return (
        isKey(m.key) &&
        isBallot(m.ballot) &&
        ['ballot', 'epoch', 'sealed', 'not-installed'].includes(m.reason as string) &&
        (m.promised === null || isBallot(m.promised)) &&
        isView(m.view)
      )
    case 'seal':
    case 'seal-accepted':
      return isInteger(m.epoch) && isBallot(m.ballot)
    case 'seal-promise':
      return (
        isInteger(m.epoch) &&
        isBallot(m.ballot) &&
        (m.next === null || (isObject(m.next) && isBallot(m.next.ballot) && isMembers(m.next.members))) &&
        isEntries(m.registers)
      )
    case 'seal-accept':
      return isInteger(m.epoch) && isBallot(m.ballot) && isMembers(m.members)
    case 'seal-reject':
      return (
        isInteger(m.epoch) &&
        isBallot(m.ballot) &&
        (m.promised === null || isBallot(m.promised)) &&
        isView(m.view)
      )
    case 'install':
      return isInteger(m.epoch) && isMembers(m.members) && (m.registers === null || isEntries(m.registers))
    case 'installed':
      return isInteger(m.epoch)
    case 'query':
      return true
    case 'view':
      return isView(m.view)
    default:
      return false
  }
}

export function isOperation(value: unknown): value is Operation {
  if (!isObject(value)) return false
  switch (value.kind) {
    case 'get':
      return true
    case 'put':
      return isBytes(value.value)
    case 'cas':
      return isBytes(value.value) && isInteger(value.expectedVersion)
    case 'acquire':
      return (
        isId(value.holder) &&
        typeof value.ttlMs === 'number' &&
        typeof value.grant === 'string' &&
        value.grant.length <= 128
      )
    case 'renew':
      return (
        isId(value.holder) &&
        isInteger(value.token) &&
        typeof value.grant === 'string' &&
        value.grant.length <= 128
      )
    case 'release':
      return isId(value.holder) && isInteger(value.token)
    case 'entry-cas':
      return (
        isEntryName(value.entry) &&
        isInteger(value.expectedVersion) &&
        (value.value === null || isBytes(value.value))
      )
    case 'entry-get':
      return isEntryName(value.entry)
    default:
      return false
  }
}
