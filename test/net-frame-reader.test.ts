import { describe, expect, test } from 'vitest'
import { MessageRejectedError } from '../fabric/errors.ts'
import { createFrameReader, frameBytesMax } from '../fabric/net/wire.ts'

/** A deterministic stream of numbers below `n`. */
function numbers(seed: number): (n: number) => number {
  let state = seed
  return (n) => {
    state = (state * 1103515245 + 12345) & 0x7fffffff
    return state % n
  }
}

function framed(frames: readonly Uint8Array[]): Uint8Array {
  const stream = new Uint8Array(frames.reduce((sum, frame) => sum + 4 + frame.length, 0))
  let offset = 0
  for (const frame of frames) {
    new DataView(stream.buffer).setUint32(offset, frame.length)
    stream.set(frame, offset + 4)
    offset += 4 + frame.length
  }
  return stream
}

describe('frame reader', () => {
  test('gives back every frame, whole and in order, however the stream is cut, each in bytes of its own', () => {
    const random = numbers(7)
    for (let trial = 0; trial < 100; trial++) {
      const frames = Array.from({ length: 1 + random(8) }, () =>
        new Uint8Array(random(5) === 0 ? random(70_000) : random(300)).map(() => random(256)),
      )
      const stream = framed(frames)
      const reader = createFrameReader()
      const read: Uint8Array[] = []
      for (let offset = 0; offset < stream.length; ) {
        // Cuts inside length prefixes too (chunks of 1 to 3 bytes), and chunks of many frames.
        const size = random(4) === 0 ? 1 + random(3) : 1 + random(9000)
        const chunk = Buffer.from(stream.subarray(offset, offset + size))
        read.push(...reader.push(chunk))
        // The chunk's buffer is the transport's, which may reuse it: the reader must not keep it.
        chunk.fill(0)
        offset += size
      }
      expect(read.map((frame) => Buffer.from(frame))).toEqual(frames.map((frame) => Buffer.from(frame)))
      for (const frame of read) expect(frame.buffer.byteLength).toBe(frame.length)
    }
  })

  test('refuses an oversized length prefix, also when it arrives in pieces', () => {
    const prefix = new Uint8Array(4)
    new DataView(prefix.buffer).setUint32(0, frameBytesMax + 1)
    expect(() => createFrameReader().push(prefix)).toThrow(MessageRejectedError)
    const reader = createFrameReader()
    expect(reader.push(prefix.subarray(0, 2))).toEqual([])
    expect(() => reader.push(prefix.subarray(2))).toThrow(MessageRejectedError)
  })
})
