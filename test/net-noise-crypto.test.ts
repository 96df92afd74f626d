import { asCrypto, defaultCrypto } from '@chainsafe/libp2p-noise/crypto'
import { Uint8ArrayList } from 'uint8arraylist'
import { describe, expect, test } from 'vitest'
import { noiseWebAssemblyBytesMax, serverNoiseCrypto } from '../fabric/net/noise-crypto.ts'

const key = new Uint8Array(32).map((_, index) => index * 7)
const nonce = new Uint8Array(12).fill(3)
const ad = new Uint8Array([1, 2, 3])

function message(size: number): Uint8Array {
  return new Uint8Array(size).map((_, index) => (index * 31) % 251)
}

describe("server nodes' noise cipher", () => {
  test('seals and opens as the package does, on both sides of the size threshold', () => {
    for (const size of [0, 1, noiseWebAssemblyBytesMax - 1, noiseWebAssemblyBytesMax, 5000, 70_000]) {
      const plaintext = message(size)
      const sealed = serverNoiseCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, key)
      // The same bytes as the package's pure WebAssembly cipher: a peer on either side opens them.
      expect(Buffer.from(sealed.subarray())).toEqual(
        Buffer.from(asCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, key).subarray()),
      )
      const opened = defaultCrypto.chaCha20Poly1305Decrypt(sealed, nonce, ad, key)
      expect(Buffer.from(opened.subarray())).toEqual(Buffer.from(plaintext))
      const back = serverNoiseCrypto.chaCha20Poly1305Decrypt(sealed, nonce, ad, key)
      expect(Buffer.from(back.subarray())).toEqual(Buffer.from(plaintext))
    }
  })

  test('takes a message in pieces, and each session key as its own', () => {
    const plaintext = message(3000)
    // (The package types its own copy of uint8arraylist.)
    const pieces = new Uint8ArrayList(plaintext.subarray(0, 1000), plaintext.subarray(1000))
    const sealed = serverNoiseCrypto.chaCha20Poly1305Encrypt(pieces as never, nonce, ad, key)
    expect(Buffer.from(sealed.subarray())).toEqual(
      Buffer.from(asCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, key).subarray()),
    )
    // A second session key (a key object is kept per key) seals differently, and opens only its own.
    const otherKey = key.map((byte) => byte ^ 0xff)
    const other = serverNoiseCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, otherKey)
    expect(Buffer.from(other.subarray())).not.toEqual(Buffer.from(sealed.subarray()))
    expect(() => serverNoiseCrypto.chaCha20Poly1305Decrypt(other, nonce, ad, key)).toThrow()
    const opened = serverNoiseCrypto.chaCha20Poly1305Decrypt(other, nonce, ad, otherKey)
    expect(Buffer.from(opened.subarray())).toEqual(Buffer.from(plaintext))
  })

  test('refuses a tampered message', () => {
    for (const size of [100, 5000]) {
      const sealed = Uint8Array.from(
        serverNoiseCrypto.chaCha20Poly1305Encrypt(message(size), nonce, ad, key).subarray(),
      )
      sealed[size >> 1]! ^= 1
      expect(() => serverNoiseCrypto.chaCha20Poly1305Decrypt(sealed, nonce, ad, key)).toThrow()
    }
  })
})
