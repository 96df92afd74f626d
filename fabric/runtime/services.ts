/**
 * What the process runtime needs from the fabric core, as interfaces: the coordination store, a
 * view of live members, and request/response messaging between nodes. The libp2p node implements
 * them (fabric/net); tests use the in-process implementation (in-process-cluster.ts).
 */

import type { EntryRefusal } from '../coord/register.ts'
import type { Capacity, MemberKind, NodeId } from '../membership/membership.ts'
import type { RuntimeMessage, RuntimeReply } from './messages.ts'

export type { Capacity, MemberKind, NodeId }

/** A register of the coordination store as an operation left it (see fabric/coord/register.ts). */
export interface Register {
  /** Whether the operation applied (a failed cas or acquire leaves the register as it was). */
  ok: boolean
  /** Successful data writes so far; 0 means never written. */
  version: number
  value: Uint8Array | null
  /** Current lease holder, if any. */
  holder: string | null
  /** The fencing token of the current (or last) lease. */
  token: number
  /** Why an entry write with the right version did not apply (the map would be too large, or the key holds a plain value). */
  refused?: EntryRefusal
}

export interface CoordinationClient {
  get(key: string): Promise<Register>
  put(key: string, value: Uint8Array): Promise<Register>
  cas(key: string, expectedVersion: number, value: Uint8Array): Promise<Register>
  acquire(key: string, holder: string, ttlMs: number): Promise<Register>
  renew(key: string, holder: string, token: number): Promise<Register>
  release(key: string, holder: string, token: number): Promise<Register>
  /** Empties the key: no value, no lease (the version and the fencing token count on). */
  delete(key: string): Promise<Register>
  /**
   * On a register of named entries (fabric/coord/entries.ts): writes `entry` (null deletes it) if its
   * version is `expectedVersion` (0: absent). The result's version and value are the entry's.
   * Writes of entries of one key submitted together go in one store round.
   */
  entryCas(key: string, entry: string, expectedVersion: number, value: Uint8Array | null): Promise<Register>
  /** Reads one entry of a register of entries: its version (0: absent) and value. */
  entryGet(key: string, entry: string): Promise<Register>
  /**
   * Drops the keys of `groups` (each two path segments with their slashes, `threads/<pid>/`) from
   * the store for good, keys nobody uses any more (Store.forget): best effort, no answer. A read of
   * such a key afterwards finds nothing; a write made after it creates the key again.
   */
  forget(groups: readonly string[]): void
}

export interface PeerInfo {
  id: NodeId
  kind: MemberKind
  capacity: Capacity
}

export interface ClusterView {
  readonly self: NodeId
  /** Live members, this node included. */
  live(): PeerInfo[]
  /** Called when a member is declared dead or leaves; returns an unsubscribe function. */
  onDeparture(listener: (id: NodeId) => void): () => void
}

export interface Messenger {
  /** Sends `message` to `to` and resolves with its reply; rejects when `to` cannot be reached. */
  request(to: NodeId, message: RuntimeMessage): Promise<RuntimeReply>
  /** Serves requests from other nodes. */
  serve(handler: (from: NodeId, message: RuntimeMessage) => Promise<RuntimeReply>): void
}
