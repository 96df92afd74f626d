/**
 * The noise layer's ChaCha20-Poly1305 for server nodes (Node only; a browser keeps the package's
 * default): the same cipher from the same package, with the WebAssembly implementation used up to
 * a larger size than the package's 1,200 bytes. Node's `createCipheriv` costs ~40 us of set-up per
 * message (a key object and a context each time), which the WebAssembly one does not pay; measured
 * here (encrypt + decrypt, CPU time) they break even near 4 KiB. Frames merged per event-loop turn
 * (write-coalescing.ts) mostly fall between the two thresholds.
 */

import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import { asCrypto, defaultCrypto } from '@chainsafe/libp2p-noise/crypto'

/** Messages below this many bytes are sealed and opened by the WebAssembly implementation. */
export const noiseWebAssemblyBytesMax = 4096

export const serverNoiseCrypto: ICryptoInterface = {
  ...defaultCrypto,
  chaCha20Poly1305Encrypt(plaintext, nonce, ad, k) {
    return plaintext.byteLength < noiseWebAssemblyBytesMax
      ? asCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k)
      : defaultCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k)
  },
  chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst) {
    return ciphertext.byteLength < noiseWebAssemblyBytesMax
      ? asCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst)
      : defaultCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst)
  },
}
