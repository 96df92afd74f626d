/**
 * The cluster key: a 32-byte pre-shared key. Connections are wrapped in libp2p's private-network
 * protector (XSalsa20 keyed with it), so a node or client without the key cannot even start the
 * noise handshake.
 */

import { readFileSync } from 'node:fs'
import { ClusterKeyError } from '../errors.ts'

const hexKey = /^[0-9a-fA-F]{64}$/

/** Accepts 64 hex digits, or the path of a file holding them (or a libp2p swarm.key file). */
export function loadClusterKey(keyOrPath: string): Uint8Array {
  let text = keyOrPath.trim()
  if (!hexKey.test(text)) {
    try {
      text = readFileSync(keyOrPath, 'utf8')
    } catch {
      throw new ClusterKeyError(
        `--cluster-key takes 64 hex digits or a file that holds them; "${keyOrPath.slice(0, 80)}" is neither. ` +
          'Generate one with `fabric cluster-key`.',
      )
    }
    const hex = text
      .split('\n')
      .map((line) => line.trim())
      .find((line) => hexKey.test(line))
    if (hex === undefined) throw new ClusterKeyError(`${keyOrPath} holds no 64-hex-digit cluster key`)
    text = hex
  }
  return new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${text.toLowerCase()}`)
}

export function generateClusterKey(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(32))
  return [...bytes].map((byte) => byte.toString(16).padStart(2, '0')).join('')
}
