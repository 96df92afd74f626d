/**
 * Bricks: immutable blocks of bytes named by their content, a CIDv1 with the raw codec and a
 * sha2-256 multihash. Whoever holds a brick can check it against its name, so every read verifies,
 * and a copy that does not match is dropped rather than returned.
 *
 *   const cid = await brickCid(bytes)
 *   await verifyBrick(cid, bytes, 'node-b')   // throws BrickCorruptError when the bytes do not match
 */

import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { BrickCorruptError, StorageArgumentError } from './errors.ts'

/** Largest brick any node accepts: chunks are at most this big, and so is a file's manifest. */
export const brickBytesMax = 16 * 1024 * 1024

export type { CID }

/** Computes the name of `bytes`. */
export async function brickCid(bytes: Uint8Array): Promise<CID> {
  if (bytes.length > brickBytesMax)
    throw new StorageArgumentError(`Expected a brick of at most ${brickBytesMax} bytes, got ${bytes.length}`)
  const digest = await sha256.digest(bytes)
  return CID.createV1(raw.code, digest)
}

/** True when `cid` names a brick this layer can verify (CIDv1, raw codec, a whole sha2-256 digest). */
export function isBrickCid(cid: CID): boolean {
  return (
    cid.version === 1 &&
    cid.code === raw.code &&
    cid.multihash.code === sha256.code &&
    cid.multihash.size === 32
  )
}

/** Checks `bytes` against `cid`; throws {@link BrickCorruptError} naming `where` the copy came from. */
export async function verifyBrick(cid: CID, bytes: Uint8Array, where: string): Promise<void> {
  if (!isBrickCid(cid)) throw new StorageArgumentError(`Expected a CIDv1 raw sha2-256 brick name, got ${cid}`)
  if (bytes.length > brickBytesMax) throw new BrickCorruptError(cid.toString(), where)
  const digest = await sha256.digest(bytes)
  if (!equalBytes(digest.digest, cid.multihash.digest)) throw new BrickCorruptError(cid.toString(), where)
}

/** Parses a brick name from its string form, refusing anything that is not a brick CID. */
export function parseBrickCid(text: string): CID {
  let cid: CID
  try {
    cid = CID.parse(text)
  } catch {
    throw new StorageArgumentError(`Expected a brick CID, got "${text.slice(0, 100)}"`)
  }
  if (!isBrickCid(cid))
    throw new StorageArgumentError(`Expected a CIDv1 raw sha2-256 brick name, got ${text}`)
  return cid
}

/** Decodes a brick name from its binary form (as stored in manifests), refusing anything else. */
export function decodeBrickCid(bytes: Uint8Array): CID {
  let cid: CID
  try {
    cid = CID.decode(bytes)
  } catch {
    throw new StorageArgumentError('Expected a binary brick CID')
  }
  if (!isBrickCid(cid)) throw new StorageArgumentError(`Expected a CIDv1 raw sha2-256 brick name, got ${cid}`)
  return cid
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}
