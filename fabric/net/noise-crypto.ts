/**
 * The noise layer's ChaCha20-Poly1305 for server nodes (Node only; a browser keeps the package's
 * default): the same cipher from the same package, with Node's OpenSSL implementation given a key
 * object made once per session key instead of the raw key on every message.
 *
 * Node's `createCipheriv` with a raw key builds a key object on each call: about 10 µs of set-up
 * per message, which is why the package (and this file, before) sealed messages of up to a few KiB
 * with its WebAssembly implementation (about 220 MB/s). With the key object cached, a seal plus an
 * open costs about 5.5 µs plus 0.6 ns per byte; measured here (encrypt + decrypt of one message),
 * the WebAssembly one is ahead only below about 512 bytes (128 bytes: 3.2 against 5.4 µs; 4 KiB:
 * 37 against 8.8 µs; 8 KiB: 72 against 10.7 µs).
 */

import { createSecretKey, type KeyObject } from 'node:crypto'
import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import { asCrypto, defaultCrypto, nodeCrypto } from '@chainsafe/libp2p-noise/crypto'

/** Messages below this many bytes are sealed and opened by the WebAssembly implementation. */
export const noiseWebAssemblyBytesMax = 512

/** The key object of each session key (a cipher state keeps its key array for the session). */
const keyObjects = new WeakMap<Uint8Array, KeyObject>()

/** `key` as Node's crypto takes it without building a key object per call (passed where the package's type says bytes). */
function keyObjectOf(key: Uint8Array): Uint8Array {
  let keyObject = keyObjects.get(key)
  if (keyObject === undefined) {
    keyObject = createSecretKey(key)
    keyObjects.set(key, keyObject)
  }
  return keyObject as unknown as Uint8Array
}

export const serverNoiseCrypto: ICryptoInterface = {
  ...defaultCrypto,
  chaCha20Poly1305Encrypt(plaintext, nonce, ad, k) {
    return plaintext.byteLength < noiseWebAssemblyBytesMax
      ? asCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k)
      : nodeCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, keyObjectOf(k))
  },
  chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst) {
    return ciphertext.byteLength < noiseWebAssemblyBytesMax
      ? asCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst)
      : nodeCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, keyObjectOf(k), dst)
  },
}
