/**
 * The store's most frequent messages (prepare, promise, accept, accepted) and the acceptor's slot
 * records, as fixed shapes of bytes (byte-codec.ts) rather than CBOR maps: every thread start and
 * end is a store write, each sends accepts to the other replicas and logs a slot record on each,
 * and their CBOR form spelt out every field name and a peer id three or four times (an accept of
 * a tiny thread's record took 715 bytes; 221 now, with the record in its own binary form). The rarer
 * messages (rejects, reconfiguration) stay CBOR.
 *
 * An encoding starts with `binaryFormMarker` (a zero byte, which no CBOR map starts with), then the
 * codec's version and the message kind:
 *
 *   const payload = encodeStoreMessage(message)        // null: the message has no binary form
 *   if (isBinaryForm(payload)) decodeStoreMessage(payload)
 */

import type { AcceptorRecord, Slot } from '../coord/acceptor.ts'
import type { Ballot } from '../coord/ballot.ts'
import type { StoreMessage } from '../coord/messages.ts'
import type { LeaseState, RegisterState } from '../coord/register.ts'
import { MessageRejectedError } from '../errors.ts'
import { ByteReader, ByteWriter, binaryFormMarker } from './byte-codec.ts'
import { writersReceivedMax } from './validate.ts'

export const storeCodecVersion = 1

const kinds = { prepare: 1, promise: 2, accept: 3, accepted: 4, slot: 16 } as const

/** Flags of a register state: which optional parts follow. */
const hasValue = 1
const hasLease = 2
const hasWriters = 4
/** Flag of a message or record: an optional ballot (or accepted value) follows. */
const hasOptional = 1

/**
 * About the most bytes a message or record with `key`, one ballot's proposer and `state` takes
 * (ASCII strings; a longer one grows the buffer): the writer's first buffer, which a short guess
 * made it copy into one twice as large for most accepts and slot records.
 */
function sizeHint(key: string, proposer: string, state: RegisterState | null | undefined): number {
  let bytes = 128 + key.length + proposer.length
  if (state == null) return bytes
  bytes += 24 + (state.value?.length ?? 0)
  if (state.lease !== null) bytes += 24 + state.lease.holder.length + state.lease.grant.length
  if (state.writers !== undefined)
    for (const [writer, write] of state.writers) bytes += 4 + writer.length + write.length
  return bytes
}

function writeBallot(writer: ByteWriter, ballot: Ballot): void {
  writer.uint(ballot.epoch)
  writer.uint(ballot.round)
  writer.string(ballot.proposer)
}

function readBallot(reader: ByteReader): Ballot {
  const epoch = reader.uint()
  const round = reader.uint()
  return { epoch, round, proposer: reader.string() }
}

function writeOptionalBallot(writer: ByteWriter, ballot: Ballot | undefined): void {
  writer.byte(ballot === undefined ? 0 : hasOptional)
  if (ballot !== undefined) writeBallot(writer, ballot)
}

function readOptionalBallot(reader: ByteReader): Ballot | undefined {
  const flags = reader.byte()
  if (flags === 0) return undefined
  if (flags !== hasOptional) malformed('unknown ballot flags')
  return readBallot(reader)
}

/** A value accepted at a ballot, or none: a promise's `accepted`, a slot's. */
type Accepted = { ballot: Ballot; state: RegisterState } | null

function writeAccepted(writer: ByteWriter, accepted: Accepted): void {
  writer.byte(accepted === null ? 0 : hasOptional)
  if (accepted === null) return
  writeBallot(writer, accepted.ballot)
  writeState(writer, accepted.state)
}

function readAccepted(reader: ByteReader): Accepted {
  const flags = reader.byte()
  if (flags === 0) return null
  if (flags !== hasOptional) malformed('unknown accepted-value flags')
  const ballot = readBallot(reader)
  return { ballot, state: readState(reader) }
}

function writeState(writer: ByteWriter, state: RegisterState): void {
  const flags =
    (state.value === null ? 0 : hasValue) |
    (state.lease === null ? 0 : hasLease) |
    (state.writers === undefined ? 0 : hasWriters)
  writer.byte(flags)
  writer.uint(state.version)
  writer.uint(state.token)
  if (state.value !== null) writer.bytes(state.value)
  if (state.lease !== null) {
    writer.string(state.lease.holder)
    writer.uint(state.lease.token)
    writer.string(state.lease.grant)
    writer.uint(state.lease.ttlMs)
  }
  if (state.writers !== undefined) {
    writer.uint(state.writers.length)
    for (const [proposer, write] of state.writers) {
      writer.string(proposer)
      writer.string(write)
    }
  }
}

function readState(reader: ByteReader): RegisterState {
  const flags = reader.byte()
  if (flags > (hasValue | hasLease | hasWriters)) malformed('unknown register flags')
  const version = reader.uint()
  const token = reader.uint()
  const value = (flags & hasValue) === 0 ? null : reader.bytes()
  let lease: LeaseState | null = null
  if ((flags & hasLease) !== 0) {
    const holder = reader.string()
    const leaseToken = reader.uint()
    const grant = reader.string()
    lease = { holder, token: leaseToken, grant, ttlMs: reader.uint() }
  }
  const state: RegisterState = { version, value, lease, token }
  if ((flags & hasWriters) !== 0) {
    const count = reader.uint()
    if (count > writersReceivedMax) malformed(`${count} writers`)
    const writers: [string, string][] = []
    for (let index = 0; index < count; index++) {
      const proposer = reader.string()
      writers.push([proposer, reader.string()])
    }
    state.writers = writers
  }
  return state
}

function malformed(what: string): never {
  throw new MessageRejectedError('malformed', `malformed store message: ${what}`)
}

function startWriter(kind: number, sizeHint: number, lengthPrefix: boolean): ByteWriter {
  const writer = new ByteWriter({ lengthPrefix, sizeHint })
  writer.byte(binaryFormMarker)
  writer.byte(storeCodecVersion)
  writer.byte(kind)
  return writer
}

function startReader(payload: Uint8Array): { reader: ByteReader; kind: number } {
  const reader = new ByteReader(payload)
  if (reader.byte() !== binaryFormMarker) malformed('not a binary store message')
  const version = reader.byte()
  if (version !== storeCodecVersion)
    throw new MessageRejectedError(
      'unknown-version',
      `store message format ${version} is not supported (this node speaks ${storeCodecVersion})`,
    )
  return { reader, kind: reader.byte() }
}

/**
 * `message` as bytes, or null for a message kind that has no binary form; `lengthPrefix`: after a
 * 4-byte length (a frame).
 */
export function encodeStoreMessage(message: StoreMessage, lengthPrefix = false): Uint8Array | null {
  let writer: ByteWriter
  switch (message.type) {
    case 'prepare':
      writer = startWriter(kinds.prepare, sizeHint(message.key, message.ballot.proposer, null), lengthPrefix)
      writer.uint(message.shard)
      writer.uint(message.epoch)
      writer.string(message.key)
      writeBallot(writer, message.ballot)
      break
    case 'promise':
      writer = startWriter(
        kinds.promise,
        sizeHint(message.key, message.ballot.proposer, message.accepted?.state),
        lengthPrefix,
      )
      writer.uint(message.shard)
      writer.string(message.key)
      writeBallot(writer, message.ballot)
      writer.float(message.leaseElapsedMs)
      writeAccepted(writer, message.accepted)
      break
    case 'accept':
      writer = startWriter(
        kinds.accept,
        sizeHint(message.key, message.ballot.proposer, message.state),
        lengthPrefix,
      )
      writer.uint(message.shard)
      writer.uint(message.epoch)
      writer.string(message.key)
      writeBallot(writer, message.ballot)
      writeState(writer, message.state)
      writeOptionalBallot(writer, message.next)
      break
    case 'accepted':
      writer = startWriter(kinds.accepted, sizeHint(message.key, message.ballot.proposer, null), lengthPrefix)
      writer.uint(message.shard)
      writer.string(message.key)
      writeBallot(writer, message.ballot)
      writeOptionalBallot(writer, message.next)
      break
    default:
      return null
  }
  return writer.finish()
}

/** Decodes what `encodeStoreMessage` wrote (without its header); throws MessageRejectedError. */
export function decodeStoreMessage(payload: Uint8Array): StoreMessage {
  const { reader, kind } = startReader(payload)
  let message: StoreMessage
  switch (kind) {
    case kinds.prepare: {
      const shard = reader.uint()
      const epoch = reader.uint()
      const key = reader.string()
      message = { type: 'prepare', shard, epoch, key, ballot: readBallot(reader) }
      break
    }
    case kinds.promise: {
      const shard = reader.uint()
      const key = reader.string()
      const ballot = readBallot(reader)
      const leaseElapsedMs = reader.float()
      const accepted = readAccepted(reader)
      message = { type: 'promise', shard, key, ballot, accepted, leaseElapsedMs }
      break
    }
    case kinds.accept: {
      const shard = reader.uint()
      const epoch = reader.uint()
      const key = reader.string()
      const ballot = readBallot(reader)
      const state = readState(reader)
      const next = readOptionalBallot(reader)
      message =
        next === undefined
          ? { type: 'accept', shard, epoch, key, ballot, state }
          : { type: 'accept', shard, epoch, key, ballot, state, next }
      break
    }
    case kinds.accepted: {
      const shard = reader.uint()
      const key = reader.string()
      const ballot = readBallot(reader)
      const next = readOptionalBallot(reader)
      message =
        next === undefined
          ? { type: 'accepted', shard, key, ballot }
          : { type: 'accepted', shard, key, ballot, next }
      break
    }
    default:
      return malformed(`unknown kind ${kind}`)
  }
  reader.end()
  return message
}

/** An acceptor's slot record as bytes (after a 4-byte length if `lengthPrefix`), or null for others. */
export function encodeAcceptorRecord(record: AcceptorRecord, lengthPrefix = false): Uint8Array | null {
  if (record.type !== 'slot') return null
  const accepted = record.slot.accepted
  const writer = startWriter(
    kinds.slot,
    sizeHint(record.key, record.slot.promised.proposer, accepted?.state),
    lengthPrefix,
  )
  writer.uint(record.shard)
  writer.string(record.key)
  writeBallot(writer, record.slot.promised)
  writeAccepted(writer, accepted)
  return writer.finish()
}

/** Decodes what `encodeAcceptorRecord` wrote (without its header); throws MessageRejectedError. */
export function decodeAcceptorRecord(payload: Uint8Array): AcceptorRecord {
  const { reader, kind } = startReader(payload)
  if (kind !== kinds.slot) malformed(`unknown record kind ${kind}`)
  const shard = reader.uint()
  const key = reader.string()
  const slot: Slot = { promised: readBallot(reader), accepted: readAccepted(reader) }
  reader.end()
  return { type: 'slot', shard, key, slot }
}
