import { describe, expect, test } from 'vitest'
import { ownBytes } from '../host/thread-runner.ts'

describe('bytes sent to a worker', () => {
  test('a small view into a large buffer goes as a copy of its own bytes, a whole buffer as it is', () => {
    // A structured clone copies a view's whole buffer: a 3-byte arg from a 64 KiB frame cost 64 KiB.
    const frame = new Uint8Array(64 * 1024).map((_, index) => index % 256)
    const arg = frame.subarray(1000, 1003)
    const sent = ownBytes(arg)
    expect(sent.buffer.byteLength).toBe(3)
    expect([...sent]).toEqual([...arg])
    // Node's Buffer.slice is a view: the copy must not be one.
    const buffered = Buffer.from(frame.buffer, 2000, 10)
    expect(ownBytes(buffered).buffer.byteLength).toBe(10)
    expect([...ownBytes(buffered)]).toEqual([...buffered])
    // Most of a buffer, or all of it, is not copied again.
    const whole = new Uint8Array(100)
    expect(ownBytes(whole)).toBe(whole)
    const most = frame.subarray(0, 40 * 1024)
    expect(ownBytes(most)).toBe(most)
  })
})
