/**
 * The wire format: length-prefixed frames (4-byte big-endian length, then a cbor-x body) carrying
 * an envelope `{ v, p, b }` — format version, protocol, body. The store's frequent messages are
 * the exception: their body is their binary form (store-codec.ts, with a version of its own),
 * without the envelope. The length is checked against `frameBytesMax` before a byte of the body is
 * decoded; every decoder treats input as hostile.
 */

import { Decoder, Encoder } from 'cbor-x'
import type { StoreMessage } from '../coord/messages.ts'
import { MessageRejectedError } from '../errors.ts'
import { isBinaryForm } from './byte-codec.ts'
import { decodeStoreMessage, encodeStoreMessage } from './store-codec.ts'

export const wireVersion = 1
/** The protocol whose messages `encodeFrame` writes in their binary form where they have one. */
export const storeProtocol = 'store'
export const frameBytesMax = 4 * 1024 * 1024
/** Bytes buffered per stream while waiting for the rest of a frame. */
export const readBufferBytesMax = frameBytesMax + 4

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false })
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true })

export interface Envelope {
  v: number
  p: string
  b: unknown
}

export function encodeFrame(protocol: string, body: unknown): Uint8Array {
  // The store's frequent messages have a binary form of their own (store-codec.ts).
  if (protocol === storeProtocol) {
    const frame = encodeStoreMessage(body as StoreMessage, true)
    if (frame !== null) return checkedFrameSize(frame, frame.length - 4)
  }
  const payload = encoder.encode({ v: wireVersion, p: protocol, b: body } satisfies Envelope)
  const frame = new Uint8Array(4 + payload.length)
  new DataView(frame.buffer).setUint32(0, payload.length)
  frame.set(payload, 4)
  return checkedFrameSize(frame, payload.length)
}

function checkedFrameSize(frame: Uint8Array, payloadBytes: number): Uint8Array {
  if (payloadBytes > frameBytesMax)
    throw new MessageRejectedError(
      'too-large',
      `refusing to send a ${payloadBytes}-byte message (max ${frameBytesMax})`,
    )
  return frame
}

export function decodeEnvelope(payload: Uint8Array, protocols: ReadonlySet<string>): Envelope {
  if (isBinaryForm(payload)) {
    if (!protocols.has(storeProtocol)) throw new MessageRejectedError('malformed', 'unexpected store message')
    return { v: wireVersion, p: storeProtocol, b: decodeStoreMessage(payload) }
  }
  let value: unknown
  try {
    value = decoder.decode(payload)
  } catch (error) {
    throw new MessageRejectedError('malformed', `undecodable message: ${(error as Error).message}`)
  }
  if (typeof value !== 'object' || value === null)
    throw new MessageRejectedError('malformed', 'message is not a map')
  const envelope = value as Envelope
  if (envelope.v !== wireVersion)
    throw new MessageRejectedError(
      'unknown-version',
      `message format version ${String(envelope.v).slice(0, 20)} is not supported (this node speaks ${wireVersion})`,
    )
  if (typeof envelope.p !== 'string' || !protocols.has(envelope.p))
    throw new MessageRejectedError('malformed', `unknown protocol ${String(envelope.p).slice(0, 40)}`)
  return envelope
}

/** No bytes held (shared: a reader only ever replaces its buffer, never writes into an empty one). */
const noBytes = new Uint8Array(0)

/**
 * Splits a byte stream into frames; throws MessageRejectedError on an oversized length prefix.
 * Each frame comes out as bytes of its own (a decoded message may keep views into them). A chunk
 * that ends on a frame boundary, the usual case, is read where it is; the bytes of a frame that is
 * not whole yet are kept in a buffer that grows by doubling, so a large frame arriving in many
 * chunks (even of a byte each) is copied a bounded number of times, not once per chunk, and holds
 * at most twice its size.
 */
export function createFrameReader(): { push(chunk: Uint8Array): Uint8Array[] } {
  /** The bytes of the unfinished frame: the first `held` of `buffer`. */
  let buffer = noBytes
  let held = 0
  const lengthAt = (data: Uint8Array, offset: number): number => {
    const length =
      ((data[offset]! << 24) | (data[offset + 1]! << 16) | (data[offset + 2]! << 8) | data[offset + 3]!) >>> 0
    if (length > frameBytesMax)
      throw new MessageRejectedError('too-large', `frame of ${length} bytes exceeds ${frameBytesMax}`)
    return length
  }
  return {
    push(chunk) {
      if (held + chunk.length > readBufferBytesMax + 4)
        throw new MessageRejectedError(
          'too-large',
          `more than ${readBufferBytesMax} bytes buffered for one frame`,
        )
      let data = chunk
      if (held > 0) {
        if (held + chunk.length > buffer.length) {
          const grown = new Uint8Array(Math.max(held + chunk.length, 2 * buffer.length))
          grown.set(buffer.subarray(0, held))
          buffer = grown
        }
        buffer.set(chunk, held)
        held += chunk.length
        if (held < 4 || held < 4 + lengthAt(buffer, 0)) return []
        data = buffer.subarray(0, held)
        held = 0
      }
      const frames: Uint8Array[] = []
      let offset = 0
      while (data.length - offset >= 4) {
        const length = lengthAt(data, offset)
        if (data.length - offset - 4 < length) break
        // A copy (not `slice`: a Node Buffer's is a view).
        frames.push(new Uint8Array(data.subarray(offset + 4, offset + 4 + length)))
        offset += 4 + length
      }
      // The rest is kept in a buffer of this reader's own (the chunk's belongs to the transport);
      // a large one that held a finished frame is let go.
      buffer = offset < data.length ? new Uint8Array(data.subarray(offset)) : noBytes
      held = buffer.length
      return frames
    },
  }
}
