/**
 * One node's part of the coordination store: a CASPaxos proposer for the requests this node
 * serves, an acceptor for the shards it replicates (server nodes only), and a reconfigurer for
 * the shards it leads (the live server closest to the shard's id).
 *
 * The store is an I/O-free state machine: the driver feeds it messages (`receive`) and ticks
 * (`tick`), and it sends through the injected `send`. Results come back through callbacks, so the
 * simulator can run it without a promise in sight.
 *
 * The protocol per key is CASPaxos: a prepare round (promises, each with the acceptor's accepted
 * value) then an accept round of the new value computed from the highest accepted one. Requests
 * queued on one key while a round runs go together in the next round (up to `batchRequestsMax`).
 * One round trip per operation in the steady state: every accept carries the proposer's next
 * ballot `next`, and an acceptor that accepts also promises `next` in the same persisted step. A
 * quorum that acknowledged both has therefore done exactly what a prepare of `next` would have
 * done at that instant, and its highest accepted value is the one just accepted; so the proposer
 * remembers (`next`, that value, the members) and sends its next operation on the key straight
 * as an accept at `next`. A read whose prepare found a chosen value keeps its unused promise the
 * same way. Safety is ordinary Paxos: a prepare quorum for `next` exists, no acceptor of it can
 * accept a ballot below `next` afterwards, and any higher ballot that gets a quorum makes ours
 * fail. If another proposer has prepared since (or the shard's configuration moved on), the accept
 * is rejected and the proposer runs both rounds at once; a retried write is recognised by its
 * write id in `writers`, never applied twice. An acquire or renew on a key that holds a lease needs the
 * acceptors' clocks (reported with promises) to tell whether the lease expired, so it always
 * prepares. Clients send a key's requests to the node closest to its shard (net/client.ts), so in
 * the steady state one proposer serves a key and these accepts are rarely refused. One rule keeps
 * retries honest: a round that has sent an accept never answers from a read-only prepare that
 * does not show that accept (some acceptor may hold it, and a later proposer that sees it as the
 * highest ballot would choose it after we answered without it); it writes the value it read at
 * its higher ballot instead, which buries the old accept.
 *
 * Creates in one round trip: a round whose requests all expect the key to be absent (a cas or an
 * entry cas on version 0), on a key this proposer holds no promise for, skips the prepare. It sends
 * its accept at round 0 of the configuration's epoch, computed from the empty register, to every
 * replica; an acceptor takes a round-0 accept only into a key it holds nothing for (no promise, no
 * value), and the value counts as chosen only when every replica took it (then every later prepare
 * quorum reports it: each replica took it before promising anything higher). Round 0 is below every
 * ballot a prepare uses, so a value some prepare quorum accepted, or a promise, always wins over a
 * round-0 value; and a prepare quorum that shows a round-0 value everywhere does not take it as
 * chosen (the replica outside the quorum may not hold it) but writes it again at its own ballot. If
 * a replica refuses, or not all have answered after `thriftyWidenMs`, the round runs the ordinary
 * two rounds (its write id tells it if the create was chosen after all). A thread's claim creates
 * its record this way: one round trip instead of two.
 *
 * Many keys at once: operations on different keys submitted in the same turn of the event loop
 * travel together. Each key runs its own rounds (linearizable on its own, as ever), but the node
 * sends its messages for one peer in one frame per turn, and an acceptor writes the records of a
 * turn in one write and its answers in one frame (net/network.ts, net/acceptor-log.ts). So a
 * caller with many keys to write (a batch of thread records) submits them all before awaiting any:
 * that is the batched operation, with no separate API and no cross-key atomicity.
 *
 * Shards move by reconfiguration: the reconfigurer seals a quorum of the old members (they stop
 * taking operations and hand their accepted values over), a quorum of them accepts the next
 * members, and the next members install the merged values at epoch + 1 (every ballot of a newer
 * epoch is higher than every ballot of an older one). The leader of a shard moves it when
 * membership asks for other replicas, and also when a live member answers from an older
 * configuration, or is sealed or not installed in the current one (it missed an install: without
 * it the shard stands on a bare quorum). The shard serves again once a quorum installed; the
 * other new members keep hearing the install until they answer. A node that leaves cleanly
 * (`leave`) is the reconfigurer of every shard it replicates, towards the replicas the other live
 * servers give, before it goes: its keys keep all their replicas, so one more crash leaves them a
 * majority.
 *
 *   const store = createStore({ self, clock, random, send, servers: () => membership.liveServers(), storage })
 *   store.submit('lock/a', { kind: 'get' }, { timeoutMs: 2000 }, (outcome) => console.log(outcome))
 */

import { InvalidArgumentError, StoreOverloadedError, StoreTimeoutError } from '../errors.ts'
import type { Clock, Random } from '../platform.ts'
import { type Acceptor, type AcceptorStorage, createAcceptor } from './acceptor.ts'
import { type Ballot, compareBallots } from './ballot.ts'
import { entryNameBytesMax, isEntryName, utf8BytesAtMost } from './entries.ts'
import type { RegisterEntry, ShardView, StoreMessage } from './messages.ts'
import {
  applyOperation,
  emptyRegister,
  type NodeId,
  type Operation,
  type OperationResult,
  type RegisterState,
  valueBytesMax,
} from './register.ts'
import { replicaCountDefault, replicasOfShard, shardCountDefault, shardOfKey } from './shards.ts'
import { forgetGroupsPerMessageMax, isGroup } from './slots.ts'

export const keyBytesMax = 512
export { valueBytesMax }
export const leaseTtlMsMin = 100
export const leaseTtlMsMax = 10 * 60 * 1000
/** Both sides of a lease allow for clocks that run this much fast or slow. */
export const leaseMarginRatio = 0.05
export const operationTimeoutMsDefault = 5000
export const attemptTimeoutMsDefault = 400
export const backoffMsBase = 2
export const backoffMsMax = 100
export const pendingRequestsMax = 10_000
export const batchRequestsMax = 64
export const reconfigureIntervalMsDefault = 500
export const reconfigurationTimeoutMs = 3000
export const reconfigurationsInFlightMax = 8
/** A node that leaves hands its shards over this many at a time, starting the next as each ends. */
export const handOversInFlightMax = 16
/** How often the leader of a settled shard (replicas as desired, all installed) checks it again. */
export const settledShardCheckIntervalMs = 5000
/** A shard moves only once the replica set membership asks for has held this long (damps flapping). */
export const desiredStableMs = 1000
/**
 * A node that does not know a shard's configuration asks the replicas the shard should have, then,
 * attempt by attempt, twice as many of the servers closest to the shard (earlier configurations were
 * made of nodes close to it), up to this many, plus a few others at random (a genesis node can be
 * far from the shard).
 */
export const configQueryClosestMax = 32
export const configQueryRandomCount = 4
/** Proposers remembered per key for retry detection; a proposer must not be pushed out by this many others mid-round. */
export const writersMax = 16
/**
 * A round's prepare or accept goes first to the fewest members that make a quorum (this node's own
 * replica and those that answered fastest), and to the others only if one of those refuses or has
 * not answered after this long. Each message to a replica is a socket write, a log write and a
 * reply: on 3 local node processes, asking 2 of 3 replicas instead of all took a store read from
 * 0.82 to 0.56 ms p50.
 */
export const thriftyWidenMs = 20
/** Replicas whose answer times this proposer keeps (more are forgotten at once). */
export const answerTimesKeptMax = 1024
/**
 * After a replica left a round unanswered for `thriftyWidenMs`, creates on its shards take the
 * ordinary two rounds for this long (a create needs every replica; a dead one would cost each create
 * that wait until membership and reconfiguration replace it).
 */
export const createPauseAfterMissMs = 1000

/**
 * Keys for which this proposer remembers a promised next ballot and the value chosen under the
 * previous one (so its next operation on them skips the prepare round); the oldest are forgotten.
 */
export const keysLedMax = 4096

export type Outcome = { ok: true; result: OperationResult } | { ok: false; error: Error }

export interface SubmitOptions {
  timeoutMs?: number
}

export interface StoreComponents {
  self: NodeId
  clock: Clock
  random: Random
  send(to: NodeId, message: StoreMessage): void
  /** Live server nodes, this node included when it is one. */
  servers(): readonly NodeId[]
  /** Present on server nodes, which replicate shards; absent on browser nodes and clients. */
  storage?: AcceptorStorage
}

export interface StoreOptions {
  shardCount?: number
  replicaCount?: number
  attemptTimeoutMs?: number
  reconfigureIntervalMs?: number
}

export interface Store {
  submit(
    key: string,
    operation: Operation,
    options: SubmitOptions,
    callback: (outcome: Outcome) => void,
  ): void
  receive(from: NodeId, message: StoreMessage): void
  tick(): void
  /** For a node that creates a cluster: every shard starts with `members` as its replicas. */
  genesis(members: readonly NodeId[]): void
  /** The configuration this node believes each shard has, as far as it knows. */
  knownConfig(shard: number): { epoch: number; members: NodeId[] } | undefined
  /**
   * A clean leave: this node moves every shard it replicates to the replicas the other live
   * servers give (it keeps answering as an acceptor meanwhile, and proposes no new members
   * including itself). Tick on until `shardsToHandOver()` is 0.
   */
  leave(): void
  /**
   * Shards this node still has to hand over: its known configuration counts this node as a
   * replica, or a move this node made is not installed on every new replica yet (0 on a node
   * that is the only live server: there is nobody to hand them to).
   */
  shardsToHandOver(): number
  /**
   * Asks every replica to drop the slots of the keys in `groups` (each two path segments with
   * their slashes, `threads/<pid>/`; Acceptor.forget): for keys nobody uses any more, whose slots
   * would otherwise stay in every replica's memory and log for good. Best effort: a replica the
   * message does not reach keeps them. No answer.
   */
  forget(groups: readonly string[]): void
  acceptor: Acceptor | undefined
  pendingCount(): number
  readonly shardCount: number
}

interface Request {
  key: string
  operation: Operation
  startedAtMs: number
  deadlineMs: number
  timeoutMs: number
  callback(outcome: Outcome): void
}

interface Round {
  key: string
  shard: number
  requests: Request[]
  phase: 'prepare' | 'accept' | 'waiting'
  ballot: Ballot
  members: NodeId[]
  /** This attempt's promises, from the first one (most attempts, a create's or a lead's, get none). */
  promises: Map<NodeId, Extract<StoreMessage, { type: 'promise' }>> | null
  /** The members that accepted this attempt's accept (a few: an array is smaller than a set). */
  accepted: NodeId[]
  /** The members that refused this attempt, from the first one. */
  refused: Set<NodeId> | null
  attempts: number
  attemptDeadlineMs: number
  retryAtMs: number
  results: OperationResult[]
  /** Results of each state this round proposed, by write id. */
  proposals: Map<string, OperationResult[]>
  /** This attempt skipped the prepare round, on a ballot promised with the previous accept. */
  fast: boolean
  /** This attempt skipped the prepare round as a create at round 0, which every member must take. */
  create: boolean
  /** The state sent in this attempt's accept, and the next ballot the accept asks to be promised. */
  proposed: RegisterState | null
  next: Ballot | null
  /** The members that promised `next` with their accept. */
  nextPromised: NodeId[]
  /** An earlier attempt of this round sent an accept, which some acceptor may hold. */
  sentAccept: boolean
  /** The current phase's message, the members it went to, when, and when it goes to the rest. */
  phaseMessage: StoreMessage | null
  targets: readonly NodeId[]
  phaseSentAtMs: number
  widenAtMs: number
}

/** A key this proposer may write without a prepare: a quorum promised `ballot` and holds `state`. */
interface Lead {
  ballot: Ballot
  members: NodeId[]
  state: RegisterState
}

interface Reconfiguration {
  shard: number
  epoch: number
  members: NodeId[]
  target: NodeId[]
  ballot: Ballot
  phase: 'seal' | 'decide' | 'install'
  promises: Map<NodeId, Extract<StoreMessage, { type: 'seal-promise' }>>
  acks: Set<NodeId>
  refused: Set<NodeId>
  next: NodeId[]
  registers: RegisterEntry[]
  deadlineMs: number
  /** When the current phase's messages go again to the members that have not answered. */
  resendAtMs: number
}

/** A set of members that holds none (`thriftyTargets` without preferred members). */
const noneOf: { has(member: NodeId): boolean } = { has: () => false }

export function quorumOf(memberCount: number): number {
  return Math.floor(memberCount / 2) + 1
}

export function createStore(components: StoreComponents, options: StoreOptions = {}): Store {
  const { self, clock, random, send, servers } = components
  const shardCount = options.shardCount ?? shardCountDefault
  const replicaCount = options.replicaCount ?? replicaCountDefault
  const attemptTimeoutMs = options.attemptTimeoutMs ?? attemptTimeoutMsDefault
  const reconfigureIntervalMs = options.reconfigureIntervalMs ?? reconfigureIntervalMsDefault
  if (replicaCount < 1 || replicaCount > 7)
    throw new InvalidArgumentError(`replicaCount must be 1..7, got ${replicaCount}`)

  const acceptor =
    components.storage === undefined
      ? undefined
      : createAcceptor({ self, clock, storage: components.storage, send })
  const configs = new Map<number, { epoch: number; members: NodeId[] }>()
  const queues = new Map<string, Request[]>()
  const rounds = new Map<string, Round>()
  const leads = new Map<string, Lead>()
  const reconfigurations = new Map<number, Reconfiguration>()
  /** Latest view each member reported per shard, for the shards this node leads. */
  const memberViews = new Map<number, Map<NodeId, ShardView | null>>()
  const desiredSince = new Map<number, { members: string; sinceMs: number }>()
  let pending = 0
  let highestRound = 0
  let writeCounter = 0
  // Write ids must not repeat across restarts of this node, or a retry could mistake an old write for its own.
  const incarnation = Math.floor(random.next() * 2 ** 48).toString(36)
  let nextReconfigureCheckMs = 0
  /** Consecutive reconfiguration checks of a shard this node leads without knowing its configuration. */
  const unknownChecks = new Map<number, number>()
  /** Shards led here whose replicas all answered in the current configuration, checked less often. */
  const settled = new Map<number, { members: string; untilMs: number }>()
  let leaving = false
  /** How long each replica took to answer this proposer (a moving average, ms). */
  const answerMs = new Map<NodeId, number>()
  /** When each replica last left a round of this proposer unanswered for `thriftyWidenMs`. */
  const missedAtMs = new Map<NodeId, number>()

  function adoptView(shard: number, view: ShardView | null): boolean {
    if (view === null || view.epoch === 0) return false
    const known = configs.get(shard)
    if (known !== undefined && known.epoch >= view.epoch) return false
    configs.set(shard, { epoch: view.epoch, members: view.members })
    // Views gathered before the move describe the old configuration: gather them again.
    memberViews.delete(shard)
    return true
  }

  function configFor(shard: number): { epoch: number; members: NodeId[] } {
    // This node's own replica may have been installed (or told) of a configuration newer than
    // the last one its proposer heard of.
    const own = acceptor?.view(shard)
    if (own != null) adoptView(shard, own)
    const known = configs.get(shard)
    if (known !== undefined) return known
    // Unknown: ask the replicas the shard should have; they answer with the configuration they know.
    return { epoch: 0, members: replicasOfShard(shard, shardCount, servers(), replicaCount) }
  }

  /** Whom to ask for a shard's configuration on the `widening`-th try (see configQueryClosestMax). */
  function configQueryTargets(shard: number, widening: number): NodeId[] {
    const live = servers()
    const closest = Math.min(configQueryClosestMax, replicaCount * 2 ** Math.min(widening, 10))
    const targets = new Set(replicasOfShard(shard, shardCount, live, closest))
    if (widening > 0)
      for (let index = 0; index < configQueryRandomCount && targets.size < live.length; index++)
        targets.add(live[Math.floor(random.next() * live.length)]!)
    return [...targets]
  }

  function submit(
    key: string,
    operation: Operation,
    submitOptions: SubmitOptions,
    callback: (o: Outcome) => void,
  ) {
    validate(key, operation)
    if (pending >= pendingRequestsMax) {
      callback({ ok: false, error: new StoreOverloadedError(pendingRequestsMax) })
      return
    }
    const now = clock.now()
    const timeoutMs = submitOptions.timeoutMs ?? operationTimeoutMsDefault
    const request: Request = {
      key,
      operation,
      startedAtMs: now,
      deadlineMs: now + timeoutMs,
      timeoutMs,
      callback,
    }
    pending++
    let queue = queues.get(key)
    if (queue === undefined) {
      queue = []
      queues.set(key, queue)
    }
    queue.push(request)
    if (!rounds.has(key)) startRound(key)
  }

  function finish(request: Request, outcome: Outcome): void {
    pending--
    request.callback(outcome)
  }

  function startRound(key: string): void {
    const queue = queues.get(key)
    if (queue === undefined || queue.length === 0) {
      queues.delete(key)
      return
    }
    const requests = queue.splice(0, batchRequestsMax)
    if (queue.length === 0) queues.delete(key)
    const round: Round = {
      key,
      shard: shardOfKey(key, shardCount),
      requests,
      phase: 'waiting',
      ballot: { epoch: 0, round: 0, proposer: self },
      members: [],
      promises: null,
      accepted: [],
      refused: null,
      attempts: 0,
      attemptDeadlineMs: 0,
      retryAtMs: 0,
      results: [],
      proposals: new Map(),
      fast: false,
      create: false,
      proposed: null,
      next: null,
      nextPromised: [],
      sentAccept: false,
      phaseMessage: null,
      targets: [],
      phaseSentAtMs: 0,
      widenAtMs: 0,
    }
    rounds.set(key, round)
    beginAttempt(round)
  }

  function remember(key: string, lead: Lead): void {
    leads.delete(key)
    if (leads.size >= keysLedMax) leads.delete(leads.keys().next().value!)
    leads.set(key, lead)
  }

  function beginAttempt(round: Round): void {
    const config = configFor(round.shard)
    round.attempts++
    round.create = false
    round.members = config.members
    // A new attempt starts from nothing heard (a round's first attempt has its empty set already).
    round.promises = null
    if (round.accepted.length > 0) round.accepted = []
    round.refused = null
    round.attemptDeadlineMs = clock.now() + attemptTimeoutMs
    const lead = leads.get(round.key)
    leads.delete(round.key)
    round.fast =
      lead !== undefined &&
      round.attempts === 1 &&
      lead.ballot.epoch === config.epoch &&
      sameMembers(lead.members, config.members) &&
      !dependsOnLeaseExpiry(lead.state, round.requests)
    if (round.fast) {
      // A quorum promised `lead.ballot` when it accepted `lead.state`: that is a finished prepare
      // round whose highest accepted value is `lead.state`, so go straight to the accept.
      round.ballot = lead!.ballot
      sendAccept(round, propose(round, lead!.state, false))
      return
    }
    const now = clock.now()
    round.create =
      lead === undefined &&
      round.attempts === 1 &&
      config.epoch > 0 &&
      round.requests.every((request) => expectsAbsent(request.operation)) &&
      round.members.every((member) => now - (missedAtMs.get(member) ?? -Infinity) >= createPauseAfterMissMs)
    if (round.create) {
      round.ballot = { epoch: config.epoch, round: 0, proposer: self }
      sendAccept(round, propose(round, emptyRegister, false))
      return
    }
    round.ballot = { epoch: config.epoch, round: ++highestRound, proposer: self }
    round.phase = 'prepare'
    if (config.epoch === 0) {
      // Nobody answers for an unknown configuration; ask and wait for views.
      for (const member of configQueryTargets(round.shard, round.attempts - 1))
        send(member, { type: 'query', shard: round.shard })
      backOff(round)
      return
    }
    sendPhase(round, thriftyTargets(round.members), {
      type: 'prepare',
      shard: round.shard,
      epoch: config.epoch,
      key: round.key,
      ballot: round.ballot,
    })
  }

  /**
   * This node's replica (if it is one) and the fewest others, fastest first, that make a quorum
   * (`preferred` first: the members that promised). The members themselves when all are needed.
   */
  function thriftyTargets(
    members: readonly NodeId[],
    preferred: { has(member: NodeId): boolean } = noneOf,
  ): readonly NodeId[] {
    const own = members.includes(self)
    const needed = quorumOf(members.length) - (own ? 1 : 0)
    const othersCount = members.length - (own ? 1 : 0)
    if (needed >= othersCount) return members
    const rank = (member: NodeId) => (preferred.has(member) ? -1 : (answerMs.get(member) ?? 0))
    const before = (a: NodeId, b: NodeId) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0)
    if (needed === 1) {
      // The common case (3 replicas, this node one of them): the best other, without a sort.
      let best: NodeId | undefined
      for (const member of members)
        if (member !== self && (best === undefined || before(member, best) < 0)) best = member
      return own ? [self, best!] : [best!]
    }
    const others = members.filter((member) => member !== self).sort(before)
    return own ? [self, ...others.slice(0, needed)] : others.slice(0, needed)
  }

  function sendPhase(round: Round, targets: readonly NodeId[], message: StoreMessage): void {
    round.phaseMessage = message
    round.targets = targets
    round.phaseSentAtMs = clock.now()
    round.widenAtMs = round.phaseSentAtMs + thriftyWidenMs
    for (const member of targets) send(member, message)
  }

  /** The current phase's message to the members it has not gone to yet. */
  function widen(round: Round): void {
    if (round.phaseMessage === null || round.targets.length >= round.members.length) return
    for (const member of round.members) if (!round.targets.includes(member)) send(member, round.phaseMessage)
    round.targets = [...round.members]
  }

  /** Members asked in this phase that have not answered: slow or gone, they rank last until they answer quickly again. */
  function noteMisses(round: Round, now: number): void {
    for (const member of round.targets) {
      if (member === self || round.promises?.has(member) === true || round.accepted.includes(member)) continue
      if (!missedAtMs.has(member) && missedAtMs.size >= answerTimesKeptMax) missedAtMs.clear()
      missedAtMs.set(member, now)
      answerMs.set(member, Math.max(answerMs.get(member) ?? 0, thriftyWidenMs * 2))
    }
  }

  function noteAnswer(from: NodeId, round: Round): void {
    if (from === self) return
    const tookMs = Math.max(0, clock.now() - round.phaseSentAtMs)
    const before = answerMs.get(from)
    if (before === undefined && answerMs.size >= answerTimesKeptMax) answerMs.clear()
    answerMs.set(from, before === undefined ? tookMs : before * 0.8 + tookMs * 0.2)
  }

  function backOff(round: Round): void {
    round.phase = 'waiting'
    const ceiling = Math.min(backoffMsMax, backoffMsBase * 2 ** Math.min(round.attempts, 10))
    round.retryAtMs = clock.now() + random.next() * ceiling
  }

  function currentRound(key: string, ballot: Ballot): Round | undefined {
    const round = rounds.get(key)
    if (round === undefined || compareBallots(round.ballot, ballot) !== 0) return undefined
    return round
  }

  function onPromise(from: NodeId, message: Extract<StoreMessage, { type: 'promise' }>): void {
    const round = currentRound(message.key, message.ballot)
    if (round === undefined || round.phase !== 'prepare' || !round.members.includes(from)) return
    noteAnswer(from, round)
    round.promises ??= new Map()
    const promises = round.promises
    promises.set(from, message)
    if (promises.size < quorumOf(round.members.length)) return
    let chosen: { ballot: Ballot; state: typeof emptyRegister } | null = null
    let unanimous = true
    let first: Ballot | null | undefined
    for (const promise of promises.values()) {
      const ballot = promise.accepted?.ballot ?? null
      // A create (round 0) is chosen only if every replica took it, which a quorum cannot tell.
      if (ballot?.round === 0) unanimous = false
      if (first === undefined) first = ballot
      else if (
        (first === null) !== (ballot === null) ||
        (first !== null && compareBallots(first, ballot!) !== 0)
      )
        unanimous = false
      if (
        promise.accepted !== null &&
        (chosen === null || compareBallots(promise.accepted.ballot, chosen.ballot) > 0)
      )
        chosen = promise.accepted
    }
    const current = chosen?.state ?? emptyRegister
    let leaseExpired = false
    if (current.lease !== null) {
      let elapsedMs = 0
      for (const promise of promises.values())
        if (promise.accepted?.state.lease?.grant === current.lease.grant)
          elapsedMs = Math.max(elapsedMs, promise.leaseElapsedMs)
      leaseExpired = elapsedMs > current.lease.ttlMs * (1 + leaseMarginRatio)
    }
    const ownWrite = current.writers?.find(([proposer]) => proposer === self)?.[1]
    const holdsEarlierAttempt = ownWrite !== undefined && round.proposals.has(ownWrite)
    const state = propose(round, current, leaseExpired)
    if (state === current && (chosen === null || unanimous) && (holdsEarlierAttempt || !round.sentAccept)) {
      // Every promise in the quorum holds the same accepted value (or none), so it is chosen: a
      // read needs no write. Not so when an earlier attempt of this round sent an accept that this
      // quorum does not show: some acceptor may hold it, and a later proposer could still choose
      // it (it is the highest ballot it would see) after this round answered without it. Writing
      // the value at this higher ballot buries it. The quorum's promise of this ballot stays
      // unused: keep it for the next operation on the key.
      remember(round.key, { ballot: round.ballot, members: round.members, state: current })
      complete(round)
      return
    }
    sendAccept(round, state)
  }

  /** Applies the round's requests to `current` (the value chosen so far) and returns the state to propose. */
  function propose(round: Round, current: RegisterState, leaseExpiredAtStart: boolean): RegisterState {
    let leaseExpired = leaseExpiredAtStart
    let state = current
    const ownWrite = current.writers?.find(([proposer]) => proposer === self)?.[1]
    const earlier = ownWrite === undefined ? undefined : round.proposals.get(ownWrite)
    if (earlier !== undefined) {
      // An earlier attempt of this round was accepted; finish it rather than apply it again.
      round.results = earlier
      return state
    }
    round.results = []
    for (const request of round.requests) {
      const applied = applyOperation(state, request.operation, leaseExpired)
      if (applied.state.lease !== state.lease) leaseExpired = false
      state = applied.state
      round.results.push(applied.result)
    }
    if (state !== current) {
      // Unique with its proposer, which `writers` pairs it with: [self, writeId].
      const writeId = `${incarnation}#${++writeCounter}`
      const writers = (current.writers ?? []).filter(([proposer]) => proposer !== self)
      writers.push([self, writeId])
      state = { ...state, writers: writers.slice(-writersMax) }
      round.proposals.set(writeId, round.results)
    }
    return state
  }

  function sendAccept(round: Round, state: RegisterState): void {
    round.phase = 'accept'
    round.sentAccept = true
    round.proposed = state
    round.next = { epoch: round.ballot.epoch, round: ++highestRound, proposer: self }
    if (round.nextPromised.length > 0) round.nextPromised = []
    // After a prepare, to the members that promised (they will not refuse for a newer promise); a
    // create to every member.
    const targets = round.create ? round.members : thriftyTargets(round.members, round.promises ?? noneOf)
    sendPhase(round, targets, {
      type: 'accept',
      shard: round.shard,
      epoch: round.ballot.epoch,
      key: round.key,
      ballot: round.ballot,
      state,
      next: round.next,
    })
  }

  function onAccepted(from: NodeId, message: Extract<StoreMessage, { type: 'accepted' }>): void {
    const round = currentRound(message.key, message.ballot)
    if (round === undefined || round.phase !== 'accept' || !round.members.includes(from)) return
    noteAnswer(from, round)
    if (!round.accepted.includes(from)) round.accepted.push(from)
    if (message.next !== undefined && round.next !== null && compareBallots(message.next, round.next) === 0)
      if (!round.nextPromised.includes(from)) round.nextPromised.push(from)
    const quorum = round.create ? round.members.length : quorumOf(round.members.length)
    if (round.accepted.length < quorum) return
    if (round.nextPromised.length >= quorum && round.proposed !== null)
      remember(round.key, { ballot: round.next!, members: round.members, state: round.proposed })
    complete(round)
  }

  function complete(round: Round): void {
    rounds.delete(round.key)
    round.requests.forEach((request, index) => {
      finish(request, { ok: true, result: round.results[index]! })
    })
    startRound(round.key)
  }

  function onReject(from: NodeId, message: Extract<StoreMessage, { type: 'reject' }>): void {
    if (message.promised !== null) highestRound = Math.max(highestRound, message.promised.round)
    const moved = adoptView(message.shard, message.view)
    const round = currentRound(message.key, message.ballot)
    if (round === undefined || round.phase === 'waiting') return
    if (round.fast || round.create) {
      // The promise this attempt relied on is gone (another proposer, or a new configuration), or
      // a replica holds something for the key: run the ordinary two rounds now rather than back off.
      beginAttempt(round)
      return
    }
    if (moved && round.attempts < 16) {
      beginAttempt(round)
      return
    }
    // A member that refuses does not count towards the quorum: ask the others now.
    widen(round)
    if (!moved && (message.reason === 'sealed' || message.reason === 'not-installed'))
      // The shard is being (or was) moved on and this replica missed the outcome: ask around for
      // the configuration that followed, or the next attempt meets the same refusal.
      for (const member of configQueryTargets(round.shard, round.attempts))
        send(member, { type: 'query', shard: round.shard })
    round.refused ??= new Set()
    const refused = round.refused
    refused.add(from)
    if (refused.size > round.members.length - quorumOf(round.members.length)) backOff(round)
  }

  function tick(): void {
    const now = clock.now()
    for (const round of [...rounds.values()]) {
      // Requests whose deadline passed outside an accept phase fail (the rest stay, in order).
      if (round.phase !== 'accept' && round.requests.some((request) => now >= request.deadlineMs))
        round.requests = round.requests.filter((request) => {
          if (now < request.deadlineMs) return true
          finish(request, { ok: false, error: new StoreTimeoutError(request.key, request.timeoutMs) })
          return false
        })
      if (round.requests.length === 0 && round.phase !== 'accept') {
        rounds.delete(round.key)
        startRound(round.key)
        continue
      }
      if (round.phase === 'waiting' && now >= round.retryAtMs) beginAttempt(round)
      else if (round.create && now >= round.widenAtMs) {
        // A replica has not answered the create: the ordinary rounds need only a quorum.
        noteMisses(round, now)
        beginAttempt(round)
      } else if (
        round.phase !== 'waiting' &&
        now < round.attemptDeadlineMs &&
        now >= round.widenAtMs &&
        round.targets.length < round.members.length
      ) {
        noteMisses(round, now)
        widen(round)
      } else if (round.phase !== 'waiting' && now >= round.attemptDeadlineMs) {
        if (round.phase === 'accept') {
          // Requests whose deadline passed during the accept phase learn nothing more: indeterminate.
          round.requests = round.requests.filter((request) => {
            if (now < request.deadlineMs) return true
            finish(request, { ok: false, error: new StoreTimeoutError(request.key, request.timeoutMs) })
            return false
          })
        }
        backOff(round)
      }
    }
    for (const [key, queue] of queues) {
      if (rounds.has(key)) continue
      const live = queue.filter((request) => {
        if (now < request.deadlineMs) return true
        finish(request, { ok: false, error: new StoreTimeoutError(request.key, request.timeoutMs) })
        return false
      })
      if (live.length === 0) queues.delete(key)
      else {
        queues.set(key, live)
        startRound(key)
      }
    }
    if (leaving) handOver(now)
    else if (acceptor !== undefined && now >= nextReconfigureCheckMs) {
      nextReconfigureCheckMs = now + reconfigureIntervalMs
      checkShards(now)
    }
    for (const reconfiguration of [...reconfigurations.values()])
      if (now >= reconfiguration.deadlineMs) reconfigurations.delete(reconfiguration.shard)
      else if (now >= reconfiguration.resendAtMs) resendPhase(reconfiguration, now)
  }

  /**
   * A sealed replica refuses ordinary operations until the shard's next configuration is
   * installed, so a reconfiguration that lost a message must not wait for its deadline: the
   * members that have not answered hear the current phase again (each phase is idempotent).
   */
  function resendPhase(reconfiguration: Reconfiguration, now: number): void {
    reconfiguration.resendAtMs = now + attemptTimeoutMs
    const { shard, epoch, ballot } = reconfiguration
    if (reconfiguration.phase === 'seal') {
      for (const member of reconfiguration.members)
        if (!reconfiguration.promises.has(member)) send(member, { type: 'seal', shard, epoch, ballot })
    } else if (reconfiguration.phase === 'decide') {
      for (const member of reconfiguration.members)
        if (!reconfiguration.acks.has(member))
          send(member, { type: 'seal-accept', shard, epoch, ballot, members: reconfiguration.next })
    } else {
      for (const member of reconfiguration.next)
        if (!reconfiguration.acks.has(member))
          send(member, {
            type: 'install',
            shard,
            epoch: epoch + 1,
            members: reconfiguration.next,
            registers: reconfiguration.registers,
          })
    }
  }

  // ---- reconfiguration: the leader of a shard moves it to the replicas the membership asks for ----

  /** The highest configuration of `shard` this node has seen, or undefined if none. */
  function knownConfigOf(shard: number): { epoch: number; members: NodeId[] } | undefined {
    const config = configFor(shard)
    return config.epoch > 0 ? config : undefined
  }

  /**
   * A leaving node is its shards' reconfigurer, whoever leads them: it cannot wait for the
   * leaders' periodic checks (and their damping of flapping membership), and it knows where its
   * shards are. Each shard goes to the replicas the other live servers give; a shard with no
   * other live server stays (there is nobody to hand it to).
   */
  function handOver(now: number): void {
    const others = servers().filter((id) => id !== self)
    if (others.length === 0) return
    for (let shard = 0; shard < shardCount; shard++) {
      if (reconfigurations.size >= handOversInFlightMax) return
      if (reconfigurations.has(shard)) continue
      const config = knownConfigOf(shard)
      if (config === undefined || !config.members.includes(self)) continue
      startReconfiguration(shard, config, replicasOfShard(shard, shardCount, others, replicaCount), now)
    }
  }

  function checkShards(now: number): void {
    const live = servers()
    if (!live.includes(self)) return
    for (let shard = 0; shard < shardCount; shard++) {
      const leader = replicasOfShard(shard, shardCount, live, 1)[0]
      if (leader !== self) {
        memberViews.delete(shard)
        continue
      }
      const desired = replicasOfShard(shard, shardCount, live, replicaCount)
      const desiredKey = desired.join()
      const since = desiredSince.get(shard)
      if (since === undefined || since.members !== desiredKey)
        desiredSince.set(shard, { members: desiredKey, sinceMs: now })
      const stable = now - (desiredSince.get(shard)?.sinceMs ?? now) >= desiredStableMs
      const quiet = settled.get(shard)
      if (quiet !== undefined && quiet.members === desiredKey && now < quiet.untilMs) continue
      settled.delete(shard)
      const config = configFor(shard)
      const views = memberViews.get(shard)
      if (config.epoch > 0 && views !== undefined && !reconfigurations.has(shard)) {
        const differs = !sameMembers(config.members, desired)
        const healthy = config.members.every((member) => {
          const view = views.get(member)
          return view != null && view.epoch === config.epoch && view.installed && !view.sealed
        })
        if (!differs && healthy) {
          // Every replica answered in the current configuration: check again later, or as soon as
          // membership asks for other replicas.
          settled.set(shard, { members: desiredKey, untilMs: now + settledShardCheckIntervalMs })
          continue
        }
        // A live member that answered from an older configuration (or none) missed an install; one
        // still sealed or not installed in this one missed the end of a reconfiguration. Either
        // way it takes no part in quorums until a reconfiguration installs it again.
        const lagging = config.members.some((member) => {
          if (!live.includes(member) || !views.has(member)) return false
          const view = views.get(member)
          return (
            view == null ||
            view.epoch < config.epoch ||
            (view.epoch === config.epoch && (!view.installed || view.sealed))
          )
        })
        if (((differs && stable) || lagging) && reconfigurations.size < reconfigurationsInFlightMax)
          startReconfiguration(shard, config, desired, now)
      }
      memberViews.set(shard, new Map())
      const asked = new Set([...desired, ...config.members])
      if (config.epoch === 0) {
        // Leading a shard whose configuration this node never learned (it joined while the shard
        // still sat elsewhere): look further afield, or the shard would never move.
        const checks = unknownChecks.get(shard) ?? 0
        unknownChecks.set(shard, checks + 1)
        for (const member of configQueryTargets(shard, checks + 1)) asked.add(member)
      } else unknownChecks.delete(shard)
      for (const member of asked) send(member, { type: 'query', shard })
    }
  }

  function startReconfiguration(
    shard: number,
    config: { epoch: number; members: NodeId[] },
    target: NodeId[],
    now: number,
  ): void {
    const reconfiguration: Reconfiguration = {
      shard,
      epoch: config.epoch,
      members: config.members,
      target,
      ballot: { epoch: config.epoch, round: ++highestRound, proposer: self },
      phase: 'seal',
      promises: new Map(),
      acks: new Set(),
      refused: new Set(),
      next: [],
      registers: [],
      deadlineMs: now + reconfigurationTimeoutMs,
      resendAtMs: now + attemptTimeoutMs,
    }
    reconfigurations.set(shard, reconfiguration)
    for (const member of config.members)
      send(member, { type: 'seal', shard, epoch: config.epoch, ballot: reconfiguration.ballot })
  }

  function currentReconfiguration(shard: number, epoch: number, ballot: Ballot): Reconfiguration | undefined {
    const reconfiguration = reconfigurations.get(shard)
    if (reconfiguration === undefined || reconfiguration.epoch !== epoch) return undefined
    if (compareBallots(reconfiguration.ballot, ballot) !== 0) return undefined
    return reconfiguration
  }

  function onSealPromise(from: NodeId, message: Extract<StoreMessage, { type: 'seal-promise' }>): void {
    const reconfiguration = currentReconfiguration(message.shard, message.epoch, message.ballot)
    if (reconfiguration === undefined || reconfiguration.phase !== 'seal') return
    if (!reconfiguration.members.includes(from)) return
    reconfiguration.promises.set(from, message)
    if (reconfiguration.promises.size < quorumOf(reconfiguration.members.length)) return
    let next: { ballot: Ballot; members: NodeId[] } | null = null
    const merged = new Map<string, RegisterEntry>()
    for (const promise of reconfiguration.promises.values()) {
      if (promise.next !== null && (next === null || compareBallots(promise.next.ballot, next.ballot) > 0))
        next = promise.next
      for (const entry of promise.registers) {
        const known = merged.get(entry.key)
        if (known === undefined || compareBallots(entry.ballot, known.ballot) > 0)
          merged.set(entry.key, entry)
      }
    }
    reconfiguration.next = next?.members ?? reconfiguration.target
    reconfiguration.registers = [...merged.values()]
    reconfiguration.phase = 'decide'
    reconfiguration.refused = new Set()
    for (const member of reconfiguration.members)
      send(member, {
        type: 'seal-accept',
        shard: reconfiguration.shard,
        epoch: reconfiguration.epoch,
        ballot: reconfiguration.ballot,
        members: reconfiguration.next,
      })
  }

  function onSealAccepted(from: NodeId, message: Extract<StoreMessage, { type: 'seal-accepted' }>): void {
    const reconfiguration = currentReconfiguration(message.shard, message.epoch, message.ballot)
    if (reconfiguration === undefined || reconfiguration.phase !== 'decide') return
    if (!reconfiguration.members.includes(from)) return
    reconfiguration.acks.add(from)
    if (reconfiguration.acks.size < quorumOf(reconfiguration.members.length)) return
    reconfiguration.phase = 'install'
    reconfiguration.acks = new Set()
    for (const member of reconfiguration.next)
      send(member, {
        type: 'install',
        shard: reconfiguration.shard,
        epoch: reconfiguration.epoch + 1,
        members: reconfiguration.next,
        registers: reconfiguration.registers,
      })
  }

  function onInstalled(from: NodeId, message: Extract<StoreMessage, { type: 'installed' }>): void {
    const reconfiguration = reconfigurations.get(message.shard)
    if (reconfiguration === undefined || reconfiguration.phase !== 'install') return
    if (message.epoch !== reconfiguration.epoch + 1 || !reconfiguration.next.includes(from)) return
    reconfiguration.acks.add(from)
    if (reconfiguration.acks.size === reconfiguration.next.length) reconfigurations.delete(message.shard)
    if (reconfiguration.acks.size !== quorumOf(reconfiguration.next.length)) return
    // Decided and installed on a quorum: the shard serves again. The other new replicas keep
    // hearing the install until they answer (or the deadline passes), or the shard would stand on
    // a bare quorum, one crash away from being stuck.
    adoptView(message.shard, {
      epoch: message.epoch,
      members: reconfiguration.next,
      installed: true,
      sealed: false,
    })
    for (const member of reconfiguration.members)
      if (!reconfiguration.next.includes(member))
        send(member, {
          type: 'install',
          shard: message.shard,
          epoch: message.epoch,
          members: reconfiguration.next,
          registers: null,
        })
  }

  function onSealReject(from: NodeId, message: Extract<StoreMessage, { type: 'seal-reject' }>): void {
    if (message.promised !== null) highestRound = Math.max(highestRound, message.promised.round)
    adoptView(message.shard, message.view)
    const reconfiguration = currentReconfiguration(message.shard, message.epoch, message.ballot)
    if (reconfiguration === undefined) return
    reconfiguration.refused.add(from)
    const members = reconfiguration.members
    if (reconfiguration.refused.size > members.length - quorumOf(members.length))
      reconfigurations.delete(message.shard)
  }

  function receive(from: NodeId, message: StoreMessage): void {
    if (acceptor?.receive(from, message)) return
    switch (message.type) {
      case 'promise':
        onPromise(from, message)
        return
      case 'accepted':
        onAccepted(from, message)
        return
      case 'reject':
        onReject(from, message)
        return
      case 'seal-promise':
        onSealPromise(from, message)
        return
      case 'seal-accepted':
        onSealAccepted(from, message)
        return
      case 'seal-reject':
        onSealReject(from, message)
        return
      case 'installed':
        onInstalled(from, message)
        return
      case 'view': {
        adoptView(message.shard, message.view)
        memberViews.get(message.shard)?.set(from, message.view)
        return
      }
      default:
        // Acceptor-bound messages reaching a node without an acceptor: nothing to answer with.
        if (message.type === 'query') send(from, { type: 'view', shard: message.shard, view: null })
    }
  }

  return {
    submit,
    receive,
    tick,
    genesis(members) {
      if (acceptor === undefined) throw new InvalidArgumentError('only a server node can create a cluster')
      const initial = new Map<number, NodeId[]>()
      for (let shard = 0; shard < shardCount; shard++)
        initial.set(shard, replicasOfShard(shard, shardCount, members, replicaCount))
      acceptor.genesis(initial)
    },
    knownConfig: (shard) => configs.get(shard),
    forget(groups) {
      for (const group of groups)
        if (!isGroup(group))
          throw new InvalidArgumentError(`Expected a key group like "a/b/", got "${group}"`)
      // Every node that replicates some shard, as far as this node knows, and the live servers.
      const replicas = new Set<NodeId>(servers())
      for (let shard = 0; shard < shardCount; shard++)
        for (const member of knownConfigOf(shard)?.members ?? []) replicas.add(member)
      for (let first = 0; first < groups.length; first += forgetGroupsPerMessageMax) {
        const message: StoreMessage = {
          type: 'forget',
          groups: groups.slice(first, first + forgetGroupsPerMessageMax),
        }
        for (const replica of replicas) send(replica, message)
      }
    },
    leave() {
      leaving = true
    },
    shardsToHandOver() {
      if (acceptor === undefined || servers().every((id) => id === self)) return 0
      let count = 0
      for (let shard = 0; shard < shardCount; shard++)
        if (reconfigurations.has(shard) || knownConfigOf(shard)?.members.includes(self)) count++
      return count
    },
    acceptor,
    pendingCount: () => pending,
    shardCount,
  }
}

/**
 * Whether the requests' outcome may depend on the current lease having expired, which only the
 * acceptors' clocks tell (through their promises): then the prepare round cannot be skipped.
 */
/** A request that succeeds only on a key that does not exist yet (a create). */
function expectsAbsent(operation: Operation): boolean {
  return (operation.kind === 'cas' || operation.kind === 'entry-cas') && operation.expectedVersion === 0
}

function dependsOnLeaseExpiry(state: RegisterState, requests: readonly Request[]): boolean {
  return (
    state.lease !== null &&
    requests.some((request) => request.operation.kind === 'acquire' || request.operation.kind === 'renew')
  )
}

/** Whether two lists of distinct members hold the same ones (in any order). */
function sameMembers(a: readonly NodeId[], b: readonly NodeId[]): boolean {
  if (a.length !== b.length) return false
  for (const member of a) if (!b.includes(member)) return false
  return true
}

function validate(key: string, operation: Operation): void {
  if (typeof key !== 'string' || key.length === 0 || !utf8BytesAtMost(key, keyBytesMax))
    throw new InvalidArgumentError(`Expected key to be a non-empty string of at most ${keyBytesMax} bytes`)
  if ('value' in operation && !(operation.kind === 'entry-cas' && operation.value === null)) {
    if (!(operation.value instanceof Uint8Array) || operation.value.length > valueBytesMax)
      throw new InvalidArgumentError(`Expected value to be a Uint8Array of at most ${valueBytesMax} bytes`)
  }
  if ((operation.kind === 'entry-cas' || operation.kind === 'entry-get') && !isEntryName(operation.entry))
    throw new InvalidArgumentError(
      `Expected entry to be a non-empty string of at most ${entryNameBytesMax} bytes`,
    )
  if (
    (operation.kind === 'cas' || operation.kind === 'entry-cas') &&
    (!Number.isInteger(operation.expectedVersion) || operation.expectedVersion < 0)
  )
    throw new InvalidArgumentError(
      `Expected expectedVersion to be an integer >= 0, got ${operation.expectedVersion}`,
    )
  if (
    operation.kind === 'acquire' &&
    (!Number.isFinite(operation.ttlMs) || operation.ttlMs < leaseTtlMsMin || operation.ttlMs > leaseTtlMsMax)
  )
    throw new InvalidArgumentError(
      `Expected ttlMs to be a number from ${leaseTtlMsMin} to ${leaseTtlMsMax}, got ${operation.ttlMs}`,
    )
}
