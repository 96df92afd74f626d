/**
 * The cluster key: a 32-byte pre-shared key. Connections are wrapped in libp2p's private-network
 * protector (XSalsa20 keyed with it), so a node or client without the key cannot even start the
 * noise handshake. A browser node holds the key too (as 64 hex digits; there are no key files in a
 * page), so this file has no static Node import: it reaches `node:fs` only for a key file.
 */

import { ClusterKeyError } from '../errors.ts'

/** `node:fs`'s readFileSync when running in Node; undefined in a browser. */
function nodeReadFile(): ((path: string, encoding: 'utf8') => string) | undefined {
  const nodeProcess = (globalThis as { process?: { getBuiltinModule?(id: string): unknown } }).process
  const fs = nodeProcess?.getBuiltinModule?.('node:fs') as
    | { readFileSync(path: string, encoding: 'utf8'): string }
    | undefined
  return fs?.readFileSync
}

const hexKey = /^[0-9a-fA-F]{64}$/

/** Accepts 64 hex digits, or the path of a file holding them (or a libp2p swarm.key file). */
export function loadClusterKey(keyOrPath: string): Uint8Array {
  let text = keyOrPath.trim()
  if (!hexKey.test(text)) {
    try {
      const readFile = nodeReadFile()
      if (readFile === undefined) throw new Error('no file system here')
      text = readFile(keyOrPath, 'utf8')
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
