/**
 * How the noise layer splits what a connection receives into its messages (a 2-byte length, then
 * the ciphertext), without an exception per chunk.
 *
 * The package's decoder reads each length with a function that throws a RangeError when fewer than
 * two bytes are left, and it asks once more after the last whole message of every chunk: so every
 * chunk that arrives costs a new error and its stack trace. Profiles of 3 node processes running
 * sequential thread starts put 10% of the nodes' main-thread time there. This decoder reads the
 * same frames and stops when the bytes run out. It replaces the package's on each connection that
 * noise secures (its `decoder` field; the package reads it at each chunk), carrying over any bytes
 * that the package's decoder already held.
 */

import type { ConnectionEncrypter, SecuredConnection } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'

/** Bytes held while waiting for the rest of a message: the package's own limit. */
export const noiseReadBufferBytesMax = 16 * 1024 * 1024
const lengthBytes = 2
let decodersInstalled = 0

/** How many secured connections got this decoder in this process (tests check that it is used). */
export function noiseDecodersInstalled(): number {
  return decodersInstalled
}

export class NoiseFrameDecoder {
  private readonly buffer: Uint8ArrayList

  constructor(held: Uint8ArrayList = new Uint8ArrayList()) {
    this.buffer = held
  }

  /** The whole messages (ciphertexts) that `chunk` completes, in order. */
  *decode(chunk: Uint8Array | Uint8ArrayList): Generator<Uint8ArrayList> {
    this.buffer.append(chunk)
    if (this.buffer.byteLength > noiseReadBufferBytesMax)
      throw new RangeError(
        `noise read buffer of ${this.buffer.byteLength} bytes exceeds ${noiseReadBufferBytesMax}`,
      )
    while (this.buffer.byteLength >= lengthBytes) {
      const length = (this.buffer.get(0) << 8) | this.buffer.get(1)
      const end = lengthBytes + length
      if (this.buffer.byteLength < end) break
      const message = this.buffer.sublist(lengthBytes, end)
      this.buffer.consume(end)
      if (message.byteLength > 0) yield message
    }
  }
}

type EncrypterFactory = (components: never) => ConnectionEncrypter

/** `noise(...)` with this decoder on every connection it secures. */
export function withNoiseFrameDecoder<Factory extends EncrypterFactory>(factory: Factory): Factory {
  return ((components: never) => {
    const encrypter = factory(components)
    const secureInbound = encrypter.secureInbound.bind(encrypter)
    const secureOutbound = encrypter.secureOutbound.bind(encrypter)
    encrypter.secureInbound = async (...args: Parameters<typeof secureInbound>) =>
      replaceDecoder(await secureInbound(...args))
    encrypter.secureOutbound = async (...args: Parameters<typeof secureOutbound>) =>
      replaceDecoder(await secureOutbound(...args))
    return encrypter
  }) as Factory
}

function replaceDecoder<Secured extends SecuredConnection>(secured: Secured): Secured {
  const box = secured.connection as unknown as { decoder?: { buffer?: unknown; decode?: unknown } }
  // Another version of the package may read its messages otherwise: then it keeps its own.
  if (typeof box.decoder?.decode !== 'function') return secured
  const held = box.decoder.buffer instanceof Uint8ArrayList ? box.decoder.buffer : undefined
  box.decoder = new NoiseFrameDecoder(held) as unknown as typeof box.decoder
  decodersInstalled++
  return secured
}
