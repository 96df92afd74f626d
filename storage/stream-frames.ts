/**
 * Frames on libp2p streams for the storage protocols (`/fabric/bricks/1`, `/fabric/fs/1`): a
 * 4-byte big-endian length, then a cbor-x envelope `{ v, b }` (format version, body). The length
 * is checked against the protocol's limit before a byte of the body is decoded, and the decoded
 * body is only returned; each protocol checks its shape before acting on it.
 *
 *   await writeFrame(stream, encodeStorageFrame({ t: 'stats' }, brickFrameBytesMax))
 *   const reply = await readFrame(stream, { bytesMax: brickFrameBytesMax, timeoutMs: 30_000 })
 */

import type { Stream } from '@libp2p/interface'
import { Decoder, Encoder } from 'cbor-x'
import { StorageError } from './errors.ts'

/** Version of the envelope; a reader refuses others. */
export const storageWireVersion = 1

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false } as never)
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true } as never)

/** A frame broke the protocol: too large, undecodable, of an unknown version, or cut short. */
export class StorageWireError extends StorageError {
  readonly reason: 'too-large' | 'malformed' | 'unknown-version' | 'closed' | 'timeout'
  constructor(reason: StorageWireError['reason'], message: string) {
    super('STORAGE_WIRE', message)
    this.reason = reason
  }
}

export function encodeStorageFrame(body: unknown, bytesMax: number): Uint8Array {
  const payload = encoder.encode({ v: storageWireVersion, b: body }) as Uint8Array
  if (payload.length > bytesMax)
    throw new StorageWireError(
      'too-large',
      `refusing to send a ${payload.length}-byte frame (max ${bytesMax})`,
    )
  const frame = new Uint8Array(4 + payload.length)
  new DataView(frame.buffer).setUint32(0, payload.length)
  frame.set(payload, 4)
  return frame
}

/** Sends a frame, waiting for the stream to drain when its buffer is full. */
export async function writeFrame(stream: Stream, frame: Uint8Array, signal?: AbortSignal): Promise<void> {
  if (!stream.send(frame)) await stream.onDrain({ signal })
}

export interface ReadFrameOptions {
  bytesMax: number
  timeoutMs: number
  signal?: AbortSignal
}

/** Reads the next frame from `stream` and returns its body; rejects on an oversized, malformed, late or missing frame. */
export function readFrame(stream: Stream, options: ReadFrameOptions): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const parts: Uint8Array[] = []
    let received = 0
    let expected = -1
    const timer = setTimeout(
      () => finish(new StorageWireError('timeout', `no whole frame within ${options.timeoutMs} ms`)),
      options.timeoutMs,
    )
    const onAbort = () => finish(options.signal!.reason as Error)
    const finish = (error: Error | null, value?: unknown) => {
      clearTimeout(timer)
      stream.removeEventListener('message', onMessage)
      stream.removeEventListener('close', onClose)
      options.signal?.removeEventListener('abort', onAbort)
      if (error === null) resolve(value)
      else reject(error)
    }
    const onClose = () =>
      finish(new StorageWireError('closed', 'the stream closed before a whole frame arrived'))
    const onMessage = (event: { data: Uint8Array | { subarray(): Uint8Array } }) => {
      const chunk = event.data instanceof Uint8Array ? event.data : event.data.subarray()
      parts.push(chunk)
      received += chunk.length
      if (expected < 0 && received >= 4) {
        const head = concat(parts, 4)
        expected = new DataView(head.buffer, head.byteOffset, 4).getUint32(0)
        if (expected > options.bytesMax)
          return finish(
            new StorageWireError(
              'too-large',
              `frame of ${expected} bytes is over the limit of ${options.bytesMax}`,
            ),
          )
      }
      if (expected < 0 || received < 4 + expected) return
      if (received > 4 + expected)
        return finish(new StorageWireError('malformed', 'bytes after the frame where one frame was expected'))
      const whole = concat(parts, received)
      let envelope: { v?: unknown; b?: unknown }
      try {
        envelope = decoder.decode(whole.subarray(4))
      } catch (error) {
        return finish(new StorageWireError('malformed', `undecodable frame: ${(error as Error).message}`))
      }
      if (typeof envelope !== 'object' || envelope === null)
        return finish(new StorageWireError('malformed', 'frame is not a map'))
      if (envelope.v !== storageWireVersion)
        return finish(
          new StorageWireError(
            'unknown-version',
            `frame format version ${String(envelope.v).slice(0, 20)} is not supported (this node speaks ${storageWireVersion})`,
          ),
        )
      finish(null, envelope.b)
    }
    if (options.signal?.aborted) return reject(options.signal.reason)
    options.signal?.addEventListener('abort', onAbort, { once: true })
    stream.addEventListener('message', onMessage)
    stream.addEventListener('close', onClose)
  })
}

function concat(parts: Uint8Array[], length: number): Uint8Array {
  if (parts[0]!.length >= length) return parts[0]!.subarray(0, length)
  const whole = new Uint8Array(length)
  let offset = 0
  for (const part of parts) {
    const take = Math.min(part.length, length - offset)
    whole.set(part.subarray(0, take), offset)
    offset += take
    if (offset === length) break
  }
  return whole
}
