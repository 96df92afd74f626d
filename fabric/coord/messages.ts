/** Messages between the store's proposers, acceptors and reconfigurers. */

import type { Ballot } from './ballot.ts'
import type { NodeId, RegisterState } from './register.ts'

/** What an acceptor knows of a shard's configuration. Any epoch it reports has been decided. */
export interface ShardView {
  epoch: number
  members: NodeId[]
  installed: boolean
  sealed: boolean
}

export interface RegisterEntry {
  key: string
  ballot: Ballot
  state: RegisterState
}

export type StoreMessage =
  | { type: 'prepare'; shard: number; epoch: number; key: string; ballot: Ballot }
  | {
      type: 'promise'
      shard: number
      key: string
      ballot: Ballot
      accepted: { ballot: Ballot; state: RegisterState } | null
      /** Time since this acceptor first saw the accepted lease grant, by its own clock. */
      leaseElapsedMs: number
    }
  | {
      type: 'accept'
      shard: number
      epoch: number
      key: string
      ballot: Ballot
      state: RegisterState
      /**
       * The proposer's next ballot for this key (higher than `ballot`): an acceptor that accepts
       * also promises it, so the proposer's next operation on the key skips the prepare round.
       */
      next?: Ballot
    }
  /** `next` echoes the accept's next ballot when this acceptor promised it too. */
  | { type: 'accepted'; shard: number; key: string; ballot: Ballot; next?: Ballot }
  | {
      type: 'reject'
      shard: number
      key: string
      ballot: Ballot
      reason: 'ballot' | 'epoch' | 'sealed' | 'not-installed'
      promised: Ballot | null
      view: ShardView | null
    }
  | { type: 'seal'; shard: number; epoch: number; ballot: Ballot }
  | {
      type: 'seal-promise'
      shard: number
      epoch: number
      ballot: Ballot
      next: { ballot: Ballot; members: NodeId[] } | null
      registers: RegisterEntry[]
    }
  | { type: 'seal-accept'; shard: number; epoch: number; ballot: Ballot; members: NodeId[] }
  | { type: 'seal-accepted'; shard: number; epoch: number; ballot: Ballot }
  | {
      type: 'seal-reject'
      shard: number
      epoch: number
      ballot: Ballot
      promised: Ballot | null
      view: ShardView | null
    }
  | { type: 'install'; shard: number; epoch: number; members: NodeId[]; registers: RegisterEntry[] | null }
  | { type: 'installed'; shard: number; epoch: number }
  | { type: 'query'; shard: number }
  | { type: 'view'; shard: number; view: ShardView | null }
  /** To every acceptor: drop the slots of these key groups (Acceptor.forget); no reply. */
  | { type: 'forget'; groups: string[] }

export type StoreMessageType = StoreMessage['type']

export const storeMessageTypes: ReadonlySet<string> = new Set<StoreMessageType>([
  'prepare',
  'promise',
  'accept',
  'accepted',
  'reject',
  'seal',
  'seal-promise',
  'seal-accept',
  'seal-accepted',
  'seal-reject',
  'install',
  'installed',
  'query',
  'view',
  'forget',
])
