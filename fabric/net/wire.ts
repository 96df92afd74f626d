/**
 * The wire format: length-prefixed frames (4-byte big-endian length, then a cbor-x body) carrying
 * an envelope `{ v, p, b }` — format version, protocol, body. The length is checked against
 * `frameBytesMax` before a byte of the body is decoded; every decoder treats input as hostile.
 */

import { Decoder, Encoder } from 'cbor-x'
import { MessageRejectedError } from '../errors.ts'

export const wireVersion = 1
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
  const payload = encoder.encode({ v: wireVersion, p: protocol, b: body } satisfies Envelope)
  if (payload.length > frameBytesMax)
    throw new MessageRejectedError(
      'too-large',
      `refusing to send a ${payload.length}-byte message (max ${frameBytesMax})`,
    )
  const frame = new Uint8Array(4 + payload.length)
  new DataView(frame.buffer).setUint32(0, payload.length)
  frame.set(payload, 4)
  return frame
}

export function decodeEnvelope(payload: Uint8Array, protocols: ReadonlySet<string>): Envelope {
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

/** Splits a byte stream into frames; throws MessageRejectedError on an oversized length prefix. */
export function createFrameReader(): { push(chunk: Uint8Array): Uint8Array[] } {
  let buffer = new Uint8Array(0)
  return {
    push(chunk) {
      if (buffer.length + chunk.length > readBufferBytesMax + 4)
        throw new MessageRejectedError(
          'too-large',
          `more than ${readBufferBytesMax} bytes buffered for one frame`,
        )
      const joined = new Uint8Array(buffer.length + chunk.length)
      joined.set(buffer)
      joined.set(chunk, buffer.length)
      buffer = joined
      const frames: Uint8Array[] = []
      let offset = 0
      while (buffer.length - offset >= 4) {
        const length = new DataView(buffer.buffer, buffer.byteOffset + offset).getUint32(0)
        if (length > frameBytesMax)
          throw new MessageRejectedError('too-large', `frame of ${length} bytes exceeds ${frameBytesMax}`)
        if (buffer.length - offset - 4 < length) break
        frames.push(buffer.slice(offset + 4, offset + 4 + length))
        offset += 4 + length
      }
      buffer = buffer.slice(offset)
      return frames
    },
  }
}
