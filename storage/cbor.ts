/**
 * CBOR for everything storage writes (metadata values, manifests, directory listings). Decoding
 * treats its input as hostile: size is checked first, and any failure becomes a
 * {@link StorageFormatError} naming what was being read.
 */

import { Decoder, Encoder } from 'cbor-x'
import { StorageFormatError } from './errors.ts'

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false } as never)
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true } as never)

export function encodeCbor(value: unknown): Uint8Array {
  // A copy: the encoder's output may share its working buffer.
  return Uint8Array.from(encoder.encode(value))
}

export function decodeCbor(bytes: Uint8Array, what: string, bytesMax: number): unknown {
  if (bytes.length > bytesMax)
    throw new StorageFormatError(what, `${bytes.length} bytes, more than ${bytesMax}`)
  try {
    return decoder.decode(bytes)
  } catch (error) {
    throw new StorageFormatError(what, `malformed CBOR (${(error as Error).message})`)
  }
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return (
    typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array)
  )
}

/** A byte string as a plain Uint8Array of its own (decoded Buffers may share the input's memory). */
export function ownBytes(value: Uint8Array): Uint8Array {
  return new Uint8Array(value)
}

/** Bytes of `text` in UTF-8, without encoding it. */
export function utf8Length(text: string): number {
  let bytes = 0
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i)
    if (code < 0x80) bytes += 1
    else if (code < 0x800) bytes += 2
    else if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      bytes += 4
      i++
    } else bytes += 3
  }
  return bytes
}
