/**
 * Writing and reading fixed message shapes as bytes: unsigned integers as LEB128 varints, strings
 * and byte strings with a varint length, and within one message a table of the strings already
 * written, so a repeated string (a peer id that is a ballot's proposer, its next ballot's and the
 * prefix of a write id) costs a byte or two after its first time. The shapes that a node sends and
 * logs most (the store's accepts and replies, the acceptor's records, thread records) go this way
 * instead of through a self-describing codec: measured on 3 local nodes running tiny threads, the
 * generic CBOR encoder and decoder took about a fifth of the nodes' main-thread CPU.
 *
 * A reader treats its input as hostile: every length is checked against what is left, and a
 * malformed input throws `MessageRejectedError('malformed', ...)` naming what was wrong.
 *
 *   const writer = new ByteWriter()
 *   writer.uint(7); writer.string('key'); writer.bytes(value)
 *   const encoded = writer.finish()
 *   const reader = new ByteReader(encoded)
 *   reader.uint(); reader.string(); reader.bytes(); reader.end()
 */

import { MessageRejectedError } from '../errors.ts'

/**
 * The first byte of every binary form (store messages, acceptor records, thread records): a zero,
 * which no CBOR map starts with, so a reader of either tells them apart by it.
 */
export const binaryFormMarker = 0

/** Whether `bytes` are a binary form (else CBOR). */
export function isBinaryForm(bytes: Uint8Array): boolean {
  return bytes.length > 0 && bytes[0] === binaryFormMarker
}

/** Strings a message remembers for back references; later strings are written out in full. */
const stringTableSize = 16
/**
 * A string's kind, in the low bits of its header: written out, a back reference, or a reference
 * followed by a suffix.
 */
const literal = 0
const reference = 1
const referencePlusSuffix = 2
const kindBits = 2

/** The largest magnitude `int` takes: its zigzag form stays a safe integer. */
const zigzagMagnitudeMax = Math.floor(Number.MAX_SAFE_INTEGER / 2)

const textEncoder = new TextEncoder()
const textDecoder = new TextDecoder()
/** Shorter ASCII strings are decoded by `String.fromCharCode`, longer ones by the TextDecoder. */
const shortStringBytesMax = 64

/**
 * Short ASCII strings read lately, by a hash of their bytes, so that one read again (a peer id, a
 * key, in every message about it) is the same string, not a new one: decoding them was 10% of what a
 * node's main thread allocated on 3 local nodes running tiny threads, and a string met again keeps
 * its hash for the maps it is looked up in. One slot per hash; a collision replaces the entry.
 */
const recentStringsSlots = 1024
const recentStringsBytes = new Uint8Array(recentStringsSlots * shortStringBytesMax)
const recentStringsLengths = new Int32Array(recentStringsSlots).fill(-1)
const recentStrings: string[] = new Array(recentStringsSlots).fill('')

/** The string of the ASCII bytes `buffer[start..end)` whose hash is `hash`, from the recent strings if there. */
function recentString(buffer: Uint8Array, start: number, end: number, hash: number): string {
  const slot = (hash ^ (hash >>> 16)) & (recentStringsSlots - 1)
  const length = end - start
  const at = slot * shortStringBytesMax
  if (recentStringsLengths[slot] === length) {
    let same = true
    for (let index = 0; index < length; index++)
      if (recentStringsBytes[at + index] !== buffer[start + index]) {
        same = false
        break
      }
    if (same) return recentStrings[slot]!
  }
  const text = String.fromCharCode.apply(null, buffer.subarray(start, end) as never)
  for (let index = 0; index < length; index++) recentStringsBytes[at + index] = buffer[start + index]!
  recentStringsLengths[slot] = length
  recentStrings[slot] = text
  return text
}

/**
 * The buffer writers write into, one at a time (a writer made while another holds it gets a buffer
 * of its own): `finish` copies the bytes out and hands it back. A buffer per message (besides that
 * copy) was about 4% of the bytes the nodes' main threads allocated on 3 local nodes running tiny
 * threads, and each one larger than V8 keeps on its heap is an ArrayBuffer that scavenges sweep.
 */
let spareBuffer: Uint8Array | null = new Uint8Array(16 * 1024)
const noBytes = new Uint8Array(0)
/** Larger buffers are not kept as the spare (a rare large message would hold its memory). */
const spareBufferBytesMax = 64 * 1024

export class ByteWriter {
  private buffer: Uint8Array
  private view: DataView | null = null
  private position: number
  private readonly strings: string[] = []

  private readonly lengthPrefix: boolean

  /**
   * `lengthPrefix`: the bytes begin with 4 that `finish` fills with the length of the rest
   * (big-endian), as a frame's prefix.
   */
  constructor(options: { lengthPrefix?: boolean; sizeHint?: number } = {}) {
    this.lengthPrefix = options.lengthPrefix === true
    this.position = this.lengthPrefix ? 4 : 0
    const size = Math.max(64, this.position + (options.sizeHint ?? 256))
    if (spareBuffer !== null && spareBuffer.length >= size) {
      this.buffer = spareBuffer
      spareBuffer = null
    } else this.buffer = new Uint8Array(size)
  }

  private ensure(bytes: number): void {
    if (this.position + bytes <= this.buffer.length) return
    const grown = new Uint8Array(Math.max(this.buffer.length * 2, this.position + bytes))
    grown.set(this.buffer.subarray(0, this.position))
    this.release()
    this.buffer = grown
    this.view = null
  }

  byte(value: number): void {
    this.ensure(1)
    this.buffer[this.position++] = value
  }

  /** A non-negative safe integer. */
  uint(value: number): void {
    if (!Number.isSafeInteger(value) || value < 0)
      throw new RangeError(`Expected a non-negative safe integer, got ${value}`)
    this.ensure(8)
    let rest = value
    while (rest >= 0x80) {
      this.buffer[this.position++] = (rest % 0x80) | 0x80
      rest = Math.floor(rest / 0x80)
    }
    this.buffer[this.position++] = rest
  }

  /** A safe integer of either sign (zigzag: 0, -1, 1, -2, ... as 0, 1, 2, 3, ...). */
  int(value: number): void {
    if (!Number.isSafeInteger(value) || Math.abs(value) > zigzagMagnitudeMax)
      throw new RangeError(`Expected an integer of magnitude at most ${zigzagMagnitudeMax}, got ${value}`)
    this.uint(value >= 0 ? value * 2 : -value * 2 - 1)
  }

  float(value: number): void {
    this.ensure(8)
    this.view ??= new DataView(this.buffer.buffer, this.buffer.byteOffset, this.buffer.byteLength)
    this.view.setFloat64(this.position, value)
    this.position += 8
  }

  bytes(value: Uint8Array): void {
    this.uint(value.length)
    this.ensure(value.length)
    this.buffer.set(value, this.position)
    this.position += value.length
  }

  /** A string: a back reference when this message wrote it (or a prefix of it) already. */
  string(value: string): void {
    const strings = this.strings
    for (let index = 0; index < strings.length; index++) {
      const known = strings[index]!
      if (known === value) {
        this.uint((index << kindBits) | reference)
        return
      }
      if (value.length > known.length && known.length >= 8 && value.startsWith(known)) {
        this.uint((index << kindBits) | referencePlusSuffix)
        this.text(value.slice(known.length))
        this.remember(value)
        return
      }
    }
    this.uint(literal)
    this.text(value)
    this.remember(value)
  }

  private remember(value: string): void {
    if (this.strings.length < stringTableSize) this.strings.push(value)
  }

  /** UTF-8 with its length; ASCII without the TextEncoder's call. */
  private text(value: string): void {
    const length = value.length
    this.ensure(length + 8)
    const start = this.position
    // Length first, assuming ASCII (1 byte per char); redone below when it is not.
    this.uint(length)
    const bodyAt = this.position
    for (let index = 0; index < length; index++) {
      const code = value.charCodeAt(index)
      if (code >= 0x80) {
        this.position = start
        const encoded = textEncoder.encode(value)
        this.bytes(encoded)
        return
      }
      this.buffer[bodyAt + index] = code
    }
    this.position = bodyAt + length
  }

  /** The bytes written, in a buffer of their own (after their length prefix, if asked for). */
  finish(): Uint8Array {
    const out = this.buffer.slice(0, this.position)
    if (this.lengthPrefix) {
      const length = this.position - 4
      out[0] = length >>> 24
      out[1] = (length >>> 16) & 0xff
      out[2] = (length >>> 8) & 0xff
      out[3] = length & 0xff
    }
    this.release()
    return out
  }

  /** Hands the buffer back as the spare (this writer writes no more). */
  private release(): void {
    if (spareBuffer === null && this.buffer.length <= spareBufferBytesMax) spareBuffer = this.buffer
    this.buffer = noBytes
    this.view = null
  }
}

export class ByteReader {
  private readonly buffer: Uint8Array
  private view: DataView | null = null
  private position: number
  private readonly strings: string[] = []

  constructor(buffer: Uint8Array, offset = 0) {
    this.buffer = buffer
    this.position = offset
  }

  private malformed(what: string): never {
    throw new MessageRejectedError('malformed', `malformed message: ${what} at byte ${this.position}`)
  }

  byte(): number {
    if (this.position >= this.buffer.length) this.malformed('ends early')
    return this.buffer[this.position++]!
  }

  uint(): number {
    let value = 0
    let scale = 1
    for (let count = 0; count < 8; count++) {
      const byte = this.byte()
      value += (byte & 0x7f) * scale
      if (byte < 0x80) {
        if (!Number.isSafeInteger(value)) this.malformed('integer too large')
        return value
      }
      scale *= 0x80
    }
    return this.malformed('integer too long')
  }

  int(): number {
    const zigzag = this.uint()
    return zigzag % 2 === 0 ? zigzag / 2 : -(zigzag + 1) / 2
  }

  float(): number {
    if (this.position + 8 > this.buffer.length) this.malformed('ends early')
    this.view ??= new DataView(this.buffer.buffer, this.buffer.byteOffset, this.buffer.byteLength)
    const value = this.view.getFloat64(this.position)
    this.position += 8
    return value
  }

  /** A byte string: a view into the input (which the caller owns). */
  bytes(): Uint8Array {
    const length = this.uint()
    if (length > this.buffer.length - this.position) this.malformed('byte string longer than the message')
    const value = this.buffer.subarray(this.position, this.position + length)
    this.position += length
    return value
  }

  string(): string {
    const header = this.uint()
    const kind = header % (1 << kindBits)
    const index = Math.floor(header / (1 << kindBits))
    if (kind === literal && index === 0) return this.remember(this.text())
    if (index >= this.strings.length) this.malformed('reference to an unknown string')
    const known = this.strings[index]!
    if (kind === reference) return known
    if (kind !== referencePlusSuffix) this.malformed('unknown string kind')
    return this.remember(known + this.text())
  }

  /** Keeps `value` for back references (as the writer did), and returns it. */
  private remember(value: string): string {
    if (this.strings.length < stringTableSize) this.strings.push(value)
    return value
  }

  private text(): string {
    const length = this.uint()
    if (length > this.buffer.length - this.position) this.malformed('string longer than the message')
    const start = this.position
    this.position += length
    if (length <= shortStringBytesMax) {
      const buffer = this.buffer
      const end = start + length
      let hash = length
      let ascii = true
      for (let index = start; index < end; index++) {
        const byte = buffer[index]!
        if (byte >= 0x80) {
          ascii = false
          break
        }
        hash = Math.imul(hash ^ byte, 0x01000193)
      }
      if (ascii) return recentString(buffer, start, end, hash)
    }
    return textDecoder.decode(this.buffer.subarray(start, start + length))
  }

  /** Throws unless every byte was read. */
  end(): void {
    if (this.position !== this.buffer.length) this.malformed('bytes after the end')
  }
}
