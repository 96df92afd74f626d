/**
 * The acceptor side of CASPaxos, for every shard this node replicates, plus the acceptor's part of
 * a shard's reconfiguration (seal, decide next members, install).
 *
 * Safety rule for crashes: every change is appended to `storage` before the reply that depends on
 * it is sent, so a restarted acceptor remembers every promise and vote it gave. A node that lost
 * its storage must come back under a new node id (a new member), never under its old one.
 */

import type { Clock } from '../platform.ts'
import { type Ballot, compareBallots, zeroBallot } from './ballot.ts'
import type { RegisterEntry, ShardView, StoreMessage } from './messages.ts'
import type { NodeId, RegisterState } from './register.ts'
import { Slots } from './slots.ts'

export interface Slot {
  promised: Ballot
  accepted: { ballot: Ballot; state: RegisterState } | null
}

interface ShardReplica {
  epoch: number
  members: NodeId[]
  installed: boolean
  /** Highest seal ballot promised; a sealed replica takes no more reads or writes in this epoch. */
  sealBallot: Ballot | null
  next: { ballot: Ballot; members: NodeId[] } | null
  slots: Slots
}

export type AcceptorRecord =
  | { type: 'slot'; shard: number; key: string; slot: Slot }
  | {
      type: 'shard'
      shard: number
      epoch: number
      members: NodeId[]
      installed: boolean
      sealBallot: Ballot | null
      next: { ballot: Ballot; members: NodeId[] } | null
    }
  | { type: 'install'; shard: number; epoch: number; members: NodeId[]; registers: RegisterEntry[] }
  /** The slots of these key groups were dropped (`Acceptor.forget`). */
  | { type: 'forget'; groups: string[] }

/** Durable, synchronous, append-only storage: `append` returns only once the records would survive a crash. */
export interface AcceptorStorage {
  append(records: AcceptorRecord[]): void
  load(): AcceptorRecord[]
}

export interface Acceptor {
  /** Handles acceptor-bound messages; returns false for messages that are not for the acceptor. */
  receive(from: NodeId, message: StoreMessage): boolean
  /** Installs epoch-1 configurations for every shard where `self` is a member of `configs`. */
  genesis(configs: ReadonlyMap<number, NodeId[]>): void
  view(shard: number): ShardView | null
  /** Records that rebuild the current state; used to compact the storage. */
  snapshot(): AcceptorRecord[]
  slotCount(): number
  /**
   * Drops the slots of every key in `groups` (slots.ts: `threads/<pid>/` and the like), in every
   * shard this node holds, for keys nobody reads or writes any more (an ended process's). No
   * agreement is asked for: a read of such a key afterwards finds nothing, and a late write creates
   * it again (and leaves it until the group is forgotten again). Returns how many slots went.
   */
  forget(groups: readonly string[]): number
}

export interface AcceptorComponents {
  self: NodeId
  clock: Clock
  storage: AcceptorStorage
  send(to: NodeId, message: StoreMessage): void
}

export function createAcceptor(components: AcceptorComponents): Acceptor {
  const { self, clock, storage, send } = components
  const replicas = new Map<number, ShardReplica>()
  /** When this acceptor first saw each accepted lease grant (by shard, then key), by its own clock. Volatile on purpose. */
  const grantSeenAt = new Map<number, Map<string, { grant: string; atMs: number }>>()

  for (const record of storage.load()) replay(record)

  function replay(record: AcceptorRecord): void {
    if (record.type === 'slot') {
      const replica = replicas.get(record.shard)
      if (replica === undefined) throw new Error(`acceptor log: slot for unknown shard ${record.shard}`)
      replica.slots.set(record.key, record.slot)
    } else if (record.type === 'forget') {
      forgetGroups(record.groups)
    } else if (record.type === 'shard') {
      const replica = replicas.get(record.shard)
      replicas.set(record.shard, {
        epoch: record.epoch,
        members: record.members,
        installed: record.installed,
        sealBallot: record.sealBallot,
        next: record.next,
        slots: replica !== undefined && replica.epoch === record.epoch ? replica.slots : new Slots(),
      })
    } else {
      replicas.set(record.shard, {
        epoch: record.epoch,
        members: record.members,
        installed: true,
        sealBallot: null,
        next: null,
        slots: Slots.of(
          record.registers.map((entry) => [
            entry.key,
            { promised: entry.ballot, accepted: { ballot: entry.ballot, state: entry.state } },
          ]),
        ),
      })
    }
  }

  function persist(record: AcceptorRecord): void {
    storage.append([record])
  }

  function shardRecord(shard: number, replica: ShardReplica): AcceptorRecord {
    return {
      type: 'shard',
      shard,
      epoch: replica.epoch,
      members: replica.members,
      installed: replica.installed,
      sealBallot: replica.sealBallot,
      next: replica.next,
    }
  }

  function viewOf(replica: ShardReplica | undefined): ShardView | null {
    if (replica === undefined) return null
    return {
      epoch: replica.epoch,
      members: replica.members,
      installed: replica.installed,
      sealed: replica.sealBallot !== null,
    }
  }

  function forget(groups: readonly string[]): number {
    const forgotten = forgetGroups(groups)
    if (forgotten > 0) persist({ type: 'forget', groups: [...groups] })
    return forgotten
  }

  /** Drops the slots of `groups` in every replica; returns how many went. */
  function forgetGroups(groups: readonly string[]): number {
    let forgotten = 0
    for (const [shard, replica] of replicas) {
      const seenInShard = grantSeenAt.get(shard)
      for (const group of groups) {
        const keys = replica.slots.forget(group)
        forgotten += keys.length
        if (seenInShard !== undefined) for (const key of keys) seenInShard.delete(key)
      }
    }
    return forgotten
  }

  function noteGrant(shard: number, key: string, state: RegisterState, fresh: boolean): void {
    // Per shard, by key: an accept of a register without a lease (most of them) costs a lookup in
    // the shard's map, not a string built and hashed.
    let seenInShard = grantSeenAt.get(shard)
    if (state.lease === null) {
      seenInShard?.delete(key)
      return
    }
    if (seenInShard === undefined) {
      seenInShard = new Map()
      grantSeenAt.set(shard, seenInShard)
    }
    const seen = seenInShard.get(key)
    if (fresh || seen === undefined || seen.grant !== state.lease.grant)
      seenInShard.set(key, { grant: state.lease.grant, atMs: clock.now() })
  }

  function leaseElapsedMs(shard: number, key: string, state: RegisterState | undefined): number {
    if (state?.lease == null) return 0
    const seen = grantSeenAt.get(shard)?.get(key)
    // Unknown (e.g. after a restart): count from now, which can only make the lease last longer.
    if (seen === undefined || seen.grant !== state.lease.grant) {
      noteGrant(shard, key, state, true)
      return 0
    }
    return clock.now() - seen.atMs
  }

  /** Why this replica cannot take a read or write at `epoch`, or null when it can. */
  function refusal(
    replica: ShardReplica | undefined,
    epoch: number,
  ): 'epoch' | 'sealed' | 'not-installed' | null {
    if (replica === undefined || replica.epoch !== epoch) return 'epoch'
    if (!replica.members.includes(self)) return 'epoch'
    if (!replica.installed) return 'not-installed'
    if (replica.sealBallot !== null) return 'sealed'
    return null
  }

  function receive(from: NodeId, message: StoreMessage): boolean {
    switch (message.type) {
      case 'prepare': {
        const replica = replicas.get(message.shard)
        const reason = refusal(replica, message.epoch)
        if (reason !== null) {
          send(from, reject(message, reason, null, replica))
          return true
        }
        const slot = replica!.slots.get(message.key) ?? { promised: zeroBallot, accepted: null }
        if (compareBallots(message.ballot, slot.promised) < 0) {
          send(from, reject(message, 'ballot', slot.promised, replica))
          return true
        }
        const updated: Slot = { promised: message.ballot, accepted: slot.accepted }
        replica!.slots.set(message.key, updated)
        persist({ type: 'slot', shard: message.shard, key: message.key, slot: updated })
        send(from, {
          type: 'promise',
          shard: message.shard,
          key: message.key,
          ballot: message.ballot,
          accepted: slot.accepted,
          leaseElapsedMs: leaseElapsedMs(message.shard, message.key, slot.accepted?.state),
        })
        return true
      }
      case 'accept': {
        const replica = replicas.get(message.shard)
        const reason = refusal(replica, message.epoch)
        if (reason !== null) {
          send(from, reject(message, reason, null, replica))
          return true
        }
        const slot = replica!.slots.get(message.key) ?? { promised: zeroBallot, accepted: null }
        // A create at round 0 (store.ts, "Creates in one round trip") goes only into a key this
        // replica has never promised or accepted anything for; it is chosen only if every replica
        // took it, and round 0 is below every ballot a prepare can use, so a value chosen or
        // promised before it always wins over it.
        const createOverSomething = message.ballot.round === 0 && replica!.slots.has(message.key)
        if (createOverSomething || compareBallots(message.ballot, slot.promised) < 0) {
          send(from, reject(message, 'ballot', slot.promised, replica))
          return true
        }
        // Accepting `ballot` and promising `next` at once is what a prepare of `next` would do
        // right after this accept: nothing can be accepted between the two.
        const next =
          message.next !== undefined && compareBallots(message.next, message.ballot) > 0
            ? message.next
            : undefined
        const updated: Slot = {
          promised: next ?? message.ballot,
          accepted: { ballot: message.ballot, state: message.state },
        }
        replica!.slots.set(message.key, updated)
        persist({ type: 'slot', shard: message.shard, key: message.key, slot: updated })
        noteGrant(message.shard, message.key, message.state, false)
        send(from, {
          type: 'accepted',
          shard: message.shard,
          key: message.key,
          ballot: message.ballot,
          ...(next === undefined ? {} : { next }),
        })
        return true
      }
      case 'seal': {
        const replica = sealable(from, message)
        if (replica === undefined) return true
        replica.sealBallot = message.ballot
        persist(shardRecord(message.shard, replica))
        const registers: RegisterEntry[] = []
        for (const [key, slot] of replica.slots)
          if (slot.accepted !== null)
            registers.push({ key, ballot: slot.accepted.ballot, state: slot.accepted.state })
        send(from, {
          type: 'seal-promise',
          shard: message.shard,
          epoch: message.epoch,
          ballot: message.ballot,
          next: replica.next,
          registers,
        })
        return true
      }
      case 'seal-accept': {
        const replica = sealable(from, message)
        if (replica === undefined) return true
        replica.sealBallot = message.ballot
        replica.next = { ballot: message.ballot, members: message.members }
        persist(shardRecord(message.shard, replica))
        send(from, {
          type: 'seal-accepted',
          shard: message.shard,
          epoch: message.epoch,
          ballot: message.ballot,
        })
        return true
      }
      case 'install': {
        const replica = replicas.get(message.shard)
        if (replica !== undefined && replica.epoch > message.epoch) {
          send(from, { type: 'view', shard: message.shard, view: viewOf(replica) })
          return true
        }
        const member = message.members.includes(self)
        if (message.registers === null || !member) {
          // A notice: the shard moved on to `members` without this node, or we only learn the config.
          if (replica === undefined || replica.epoch < message.epoch) {
            const notified: ShardReplica = {
              epoch: message.epoch,
              members: message.members,
              installed: false,
              sealBallot: null,
              next: null,
              slots: new Slots(),
            }
            replicas.set(message.shard, notified)
            persist(shardRecord(message.shard, notified))
          }
          return true
        }
        if (replica !== undefined && replica.epoch === message.epoch && replica.installed) {
          // A second reconfigurer's copy of the same decision: keep the higher ballot per key.
          for (const entry of message.registers) {
            const slot = replica.slots.get(entry.key)
            if (slot?.accepted == null || compareBallots(entry.ballot, slot.accepted.ballot) > 0) {
              const promised =
                slot !== undefined && compareBallots(slot.promised, entry.ballot) > 0
                  ? slot.promised
                  : entry.ballot
              const updated: Slot = { promised, accepted: { ballot: entry.ballot, state: entry.state } }
              replica.slots.set(entry.key, updated)
              persist({ type: 'slot', shard: message.shard, key: entry.key, slot: updated })
              noteGrant(message.shard, entry.key, entry.state, true)
            }
          }
        } else {
          const installed: ShardReplica = {
            epoch: message.epoch,
            members: message.members,
            installed: true,
            sealBallot: null,
            next: null,
            slots: new Slots(),
          }
          for (const entry of message.registers) {
            installed.slots.set(entry.key, {
              promised: entry.ballot,
              accepted: { ballot: entry.ballot, state: entry.state },
            })
            noteGrant(message.shard, entry.key, entry.state, true)
          }
          replicas.set(message.shard, installed)
          persist({
            type: 'install',
            shard: message.shard,
            epoch: message.epoch,
            members: message.members,
            registers: message.registers,
          })
        }
        send(from, { type: 'installed', shard: message.shard, epoch: message.epoch })
        return true
      }
      case 'query':
        send(from, { type: 'view', shard: message.shard, view: viewOf(replicas.get(message.shard)) })
        return true
      case 'forget':
        forget(message.groups)
        return true
      default:
        return false
    }
  }

  function reject(
    message: { shard: number; key: string; ballot: Ballot },
    reason: 'ballot' | 'epoch' | 'sealed' | 'not-installed',
    promised: Ballot | null,
    replica: ShardReplica | undefined,
  ): StoreMessage {
    return {
      type: 'reject',
      shard: message.shard,
      key: message.key,
      ballot: message.ballot,
      reason,
      promised,
      view: viewOf(replica),
    }
  }

  /**
   * The installed replica of the message's shard and epoch, if a seal at the message's ballot may
   * proceed there; otherwise the sender is told why (seal-reject) and the result is undefined.
   */
  function sealable(
    from: NodeId,
    message: { shard: number; epoch: number; ballot: Ballot },
  ): ShardReplica | undefined {
    const replica = replicas.get(message.shard)
    if (replica === undefined || replica.epoch !== message.epoch || !replica.installed) {
      send(from, sealReject(message, null, replica))
      return undefined
    }
    if (replica.sealBallot !== null && compareBallots(message.ballot, replica.sealBallot) < 0) {
      send(from, sealReject(message, replica.sealBallot, replica))
      return undefined
    }
    return replica
  }

  function sealReject(
    message: { shard: number; epoch: number; ballot: Ballot },
    promised: Ballot | null,
    replica: ShardReplica | undefined,
  ): StoreMessage {
    return {
      type: 'seal-reject',
      shard: message.shard,
      epoch: message.epoch,
      ballot: message.ballot,
      promised,
      view: viewOf(replica),
    }
  }

  return {
    receive,
    genesis(configs) {
      for (const [shard, members] of configs) {
        if (replicas.has(shard)) continue
        const replica: ShardReplica = {
          epoch: 1,
          members: [...members].sort(),
          installed: members.includes(self),
          sealBallot: null,
          next: null,
          slots: new Slots(),
        }
        replicas.set(shard, replica)
        persist({ type: 'install', shard, epoch: 1, members: replica.members, registers: [] })
        if (!replica.installed) persist(shardRecord(shard, replica))
      }
    },
    view: (shard) => viewOf(replicas.get(shard)),
    snapshot() {
      const records: AcceptorRecord[] = []
      for (const [shard, replica] of replicas) {
        records.push(shardRecord(shard, replica))
        for (const [key, slot] of replica.slots) records.push({ type: 'slot', shard, key, slot })
      }
      return records
    },
    forget,
    slotCount() {
      let count = 0
      for (const replica of replicas.values()) count += replica.slots.size
      return count
    },
  }
}
