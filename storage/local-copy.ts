/** Reading this node's own copy of a brick, the way repair, rebalancing and reads all need it. */

import type { AbortOptions, BlockStore } from './block-store.ts'
import type { CID } from './brick.ts'
import type { BrickPeers } from './brick-peers.ts'
import { BrickCorruptError } from './errors.ts'

export interface LocalCopy {
  /** The verified bytes, or undefined when this node holds no (intact) copy. */
  bytes: Uint8Array | undefined
  /** The copy failed its hash check: the store dropped it and this node no longer announces it. */
  corrupt: boolean
}

export async function readLocalCopy(
  store: BlockStore,
  peers: Pick<BrickPeers, 'withdraw'>,
  cid: CID,
  options: AbortOptions = {},
): Promise<LocalCopy> {
  try {
    return { bytes: await store.get(cid, options), corrupt: false }
  } catch (error) {
    if (!(error instanceof BrickCorruptError)) throw error
    await peers.withdraw(cid, options).catch(() => {})
    return { bytes: undefined, corrupt: true }
  }
}
