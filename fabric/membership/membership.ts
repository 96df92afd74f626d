/**
 * Membership and failure detection: who is in the cluster, who is alive, and what each node offers.
 *
 * Every `probeIntervalMs` each node pings its `monitorCount` predecessors on a ring ordered by
 * keyspace position (they answer with a heartbeat) and sends a heartbeat to one random member. News
 * (joins, deaths, departures, capacity updates) rides on heartbeats, each item a bounded number of
 * times (infection-style dissemination), and a paged anti-entropy exchange repairs what gossip
 * missed. Per-node traffic is a constant number of bounded messages per interval, whatever the
 * cluster size.
 *
 * A node declares another dead on one of two pieces of evidence:
 * - the transport lost every connection to it (`disconnected`) and nothing came from it in the
 *   `disconnectedTimeoutMs` since, though it was probed (a probe makes the transport dial again, so
 *   a live node whose connection merely dropped answers, and a new connection (`connected`) is
 *   proof enough that its process runs): a process that dies (SIGKILL, a crash)
 *   has its connections closed by its operating system at once, so every node connected to it
 *   finds the death by itself within a second, without waiting for gossip;
 * - a predecessor it watches has been silent for `failureTimeoutMs` with its connection open: a
 *   host that vanished, or a network partition. This timeout is long on purpose: a live process
 *   that does not run for a while (a loaded machine, a GC pause, a stalled event loop: on 2 shared
 *   cores, stalls near a second are common) looks exactly like this, and must not be taken for
 *   dead. Silence alone cannot tell a slow process from a dead one; a closed connection can.
 *
 * A node wrongly declared dead hears about it and refutes by raising its incarnation.
 *
 *   const membership = createMembership({ self, clock, random, send })
 *   membership.join(['seed-node-id'])
 *   every(membership.tickIntervalMs, () => membership.tick())
 */

import { keyspacePoint } from '../coord/shards.ts'
import type { Clock, Random } from '../platform.ts'

export type NodeId = string
export type MemberKind = 'server' | 'browser'
export type MemberStatus = 'alive' | 'dead' | 'left'

export interface Capacity {
  cores: number
  memoryBytes: number
  /** Operations per millisecond of a fixed benchmark loop; higher is faster. */
  speedScore: number
}

export interface MemberInfo {
  id: NodeId
  incarnation: number
  status: MemberStatus
  kind: MemberKind
  capacity: Capacity
  /** Where to reach the node (multiaddrs); opaque to this module. */
  addresses: string[]
}

export type MembershipMessage =
  | { type: 'heartbeat'; sender: MemberInfo; news: MemberInfo[] }
  | { type: 'ping'; sender: MemberInfo; news: MemberInfo[] }
  | { type: 'join'; sender: MemberInfo }
  | { type: 'sync'; sender: MemberInfo; entries: MemberInfo[]; reply: boolean; aliveCount: number }

export const membershipMessageTypes: ReadonlySet<string> = new Set(['heartbeat', 'ping', 'join', 'sync'])

/** How often a node checks its evidence (silences, lost connections): the tick. */
export const heartbeatIntervalMsDefault = 100
/**
 * How often a node probes its predecessors and heartbeats a random member (news rides on these).
 * Deaths of processes are found through lost connections, so probes only need to beat the long
 * silence timeout and could be rarer, but news (joins above all) would then take longer to
 * drain: at 300 ms, a 1,000-node cluster still carried its join news 15 s later.
 */
export const probeIntervalMsDefault = 100
/** Silence, with the connection open, after which a predecessor is declared dead (see above). */
export const failureTimeoutMsDefault = 3000
/** Silence after the transport lost every connection to a predecessor, after which it is declared dead. */
export const disconnectedTimeoutMsDefault = 500
export const monitorCountDefault = 3
export const newsPerMessageMax = 8
export const newsQueueMax = 256
export const newsRetransmitFactor = 3
export const syncIntervalMs = 1000
export const syncEntriesMax = 16
export const joinEntriesMax = 1024
/**
 * A node that admits a newcomer, or finds a death itself, tells this many live members at once,
 * besides gossip: in a small cluster that is everyone, so views converge in one hop, however
 * slowly gossip's rounds run on a loaded machine; in a large one gossip carries it on from them.
 */
export const announceFanout = 16
export const tombstoneMs = 30_000
/** Timer jitter up to this share of the heartbeat interval is not credited back to silent members. */
export const tickLatenessToleranceRatio = 0.1
export const addressesMax = 16

export interface MembershipChange {
  member: MemberInfo
  previous: MemberStatus | 'unknown'
}

export interface MembershipComponents {
  self: Omit<MemberInfo, 'status'>
  clock: Clock
  random: Random
  send(to: NodeId, message: MembershipMessage): void
}

export interface MembershipOptions {
  heartbeatIntervalMs?: number
  probeIntervalMs?: number
  failureTimeoutMs?: number
  disconnectedTimeoutMs?: number
  monitorCount?: number
}

export interface Membership {
  readonly tickIntervalMs: number
  receive(from: NodeId, message: MembershipMessage): void
  tick(): void
  /** Announces this node to `seeds` (already reachable node ids); repeat until some member answers. */
  join(seeds: readonly NodeId[]): void
  /** Tells the others this node leaves now, so they drop it at once instead of waiting for a timeout. */
  leave(): void
  /**
   * The transport lost every connection to `id` (the driver calls this; any message from `id`
   * afterwards cancels it). Evidence of death once `id` has also been silent for a while.
   */
  disconnected(id: NodeId): void
  /**
   * The transport connected to `id` again: its process is running (a dead one cannot finish a
   * handshake), so a lost connection is no longer evidence of its death.
   */
  connected(id: NodeId): void
  updateSelf(update: Partial<Pick<MemberInfo, 'capacity' | 'addresses'>>): void
  member(id: NodeId): MemberInfo | undefined
  members(): MemberInfo[]
  alive(): NodeId[]
  liveServers(): NodeId[]
  onChange(listener: (change: MembershipChange) => void): void
  /** Bumps whenever the set of live members changes. */
  readonly generation: number
}

const statusRank: Record<MemberStatus, number> = { alive: 0, dead: 1, left: 2 }

export function createMembership(
  components: MembershipComponents,
  options: MembershipOptions = {},
): Membership {
  const { clock, random, send } = components
  const heartbeatIntervalMs = options.heartbeatIntervalMs ?? heartbeatIntervalMsDefault
  const failureTimeoutMs = options.failureTimeoutMs ?? failureTimeoutMsDefault
  const probeIntervalMs = options.probeIntervalMs ?? probeIntervalMsDefault
  let nextProbeMs = clock.now()
  const disconnectedTimeoutMs = options.disconnectedTimeoutMs ?? disconnectedTimeoutMsDefault
  const monitorCount = options.monitorCount ?? monitorCountDefault
  let self: MemberInfo = { ...components.self, status: 'alive' }
  const table = new Map<NodeId, MemberInfo & { changedAtMs: number }>()
  const lastHeardMs = new Map<NodeId, number>()
  /** Members whose every connection the transport reported lost (when it did), and nothing heard from since. */
  const disconnectedMembers = new Map<NodeId, number>()
  /** The predecessors this node watched at its last tick. */
  let watching = new Set<NodeId>()
  const news: { info: MemberInfo; sendsLeft: number }[] = []
  const listeners: ((change: MembershipChange) => void)[] = []
  /** Live members (self included), sorted by id, and the same set in ring order; kept incrementally. */
  const aliveById: NodeId[] = [self.id]
  const ring: NodeId[] = [self.id]
  let generation = 0
  let lastTickMs = clock.now()
  let nextSyncMs = clock.now() + syncIntervalMs
  let syncCursor = 0

  function ringBefore(a: NodeId, b: NodeId): boolean {
    const pointA = keyspacePoint(a)
    const pointB = keyspacePoint(b)
    return pointA < pointB || (pointA === pointB && a < b)
  }

  function insertSorted(list: NodeId[], id: NodeId, less: (a: NodeId, b: NodeId) => boolean): void {
    let low = 0
    let high = list.length
    while (low < high) {
      const middle = (low + high) >> 1
      if (less(list[middle]!, id)) low = middle + 1
      else high = middle
    }
    if (list[low] !== id) list.splice(low, 0, id)
  }

  function setAlive(id: NodeId, isAlive: boolean): void {
    if (isAlive) {
      insertSorted(aliveById, id, (a, b) => a < b)
      insertSorted(ring, id, ringBefore)
    } else {
      const byId = aliveById.indexOf(id)
      if (byId >= 0) aliveById.splice(byId, 1)
      const inRing = ring.indexOf(id)
      if (inRing >= 0) ring.splice(inRing, 1)
    }
    generation++
  }

  function retransmits(): number {
    return newsRetransmitFactor * Math.ceil(Math.log2(table.size + 2))
  }

  function spread(info: MemberInfo): void {
    const existing = news.findIndex((item) => item.info.id === info.id)
    if (existing >= 0) news.splice(existing, 1)
    news.push({ info, sendsLeft: retransmits() })
    if (news.length > newsQueueMax) news.shift()
  }

  /**
   * Merges what someone says about a member; returns true when it changed our view. News is passed
   * on; bulk lists (join answers, anti-entropy pages) are not, or every join would flood the queue.
   */
  function merge(info: MemberInfo, isNews = true): boolean {
    if (!isMemberInfo(info)) return false
    if (info.id === self.id) {
      if (info.status !== 'alive' && self.status === 'alive' && info.incarnation >= self.incarnation) {
        // Someone thinks we are gone: refute with a higher incarnation.
        self = { ...self, incarnation: info.incarnation + 1 }
        spread(self)
      }
      return false
    }
    const known = table.get(info.id)
    const newer =
      known === undefined ||
      info.incarnation > known.incarnation ||
      (info.incarnation === known.incarnation && statusRank[info.status] > statusRank[known.status]) ||
      (info.incarnation === known.incarnation &&
        info.status === known.status &&
        info.status === 'alive' &&
        (info.capacity.cores !== known.capacity.cores ||
          info.capacity.memoryBytes !== known.capacity.memoryBytes ||
          info.capacity.speedScore !== known.capacity.speedScore ||
          info.addresses.length !== known.addresses.length ||
          info.addresses.some((address, index) => address !== known.addresses[index])))
    if (!newer) return false
    if (known === undefined && info.status !== 'alive') {
      // A tombstone for someone we never knew: remember it so the member is not revived by old news.
      table.set(info.id, { ...info, changedAtMs: clock.now() })
      return false
    }
    table.set(info.id, {
      ...info,
      addresses: info.addresses.slice(0, addressesMax),
      changedAtMs: clock.now(),
    })
    const previous = known?.status ?? 'unknown'
    if (info.status === 'alive' && previous !== 'alive') lastHeardMs.set(info.id, clock.now())
    if (previous !== info.status) {
      if (previous === 'alive' || info.status === 'alive') setAlive(info.id, info.status === 'alive')
      for (const listener of listeners) listener({ member: info, previous })
    }
    if (isNews || info.status !== 'alive') spread(info)
    return true
  }

  function declareDead(id: NodeId): void {
    const known = table.get(id)
    if (known === undefined || known.status !== 'alive') return
    const dead: MemberInfo = { ...known, status: 'dead' }
    merge(dead)
    announce(dead, id)
  }

  /** Tells up to `announceFanout` random live members (not `about` itself) the news `info`. */
  function announce(info: MemberInfo, about: NodeId): void {
    const others = aliveById.filter((id) => id !== self.id && id !== about)
    for (let count = 0; count < announceFanout && others.length > 0; count++) {
      const [target] = others.splice(Math.floor(random.next() * others.length), 1)
      send(target!, { type: 'heartbeat', sender: self, news: [info] })
    }
  }

  function neighbours(direction: 1 | -1): NodeId[] {
    const order = ring
    const index = order.indexOf(self.id)
    const result: NodeId[] = []
    for (let step = 1; step <= Math.min(monitorCount, order.length - 1); step++)
      result.push(order[(index + direction * step + order.length * step) % order.length]!)
    return result
  }

  function takeNews(): MemberInfo[] {
    const taken: MemberInfo[] = []
    for (let index = news.length - 1; index >= 0 && taken.length < newsPerMessageMax; index--) {
      const item = news[index]!
      taken.push(item.info)
      item.sendsLeft--
      if (item.sendsLeft <= 0) news.splice(index, 1)
    }
    return taken
  }

  function heartbeat(to: NodeId): void {
    send(to, { type: 'heartbeat', sender: self, news: takeNews() })
  }

  function page(count: number): MemberInfo[] {
    const entries = [...table.values()]
    if (entries.length === 0) return []
    const result: MemberInfo[] = []
    for (let index = 0; index < Math.min(count, entries.length); index++) {
      const { changedAtMs: _, ...info } = entries[(syncCursor + index) % entries.length]!
      result.push(info)
    }
    syncCursor = (syncCursor + count) % Math.max(1, entries.length)
    return result
  }

  function randomAlive(): NodeId | undefined {
    if (aliveById.length < 2) return undefined
    const pick = aliveById[Math.floor(random.next() * aliveById.length)]!
    return pick === self.id ? aliveById[(aliveById.indexOf(pick) + 1) % aliveById.length] : pick
  }

  function heard(from: NodeId, sender: MemberInfo): void {
    const known = table.get(from)
    if (known !== undefined && known.status !== 'alive' && sender.incarnation <= known.incarnation) {
      // It does not know it was declared dead yet; tell it, so it can refute.
      send(from, { type: 'heartbeat', sender: self, news: [known] })
      return
    }
    merge(sender)
    lastHeardMs.set(from, clock.now())
    disconnectedMembers.delete(from)
  }

  return {
    tickIntervalMs: heartbeatIntervalMs,
    get generation() {
      return generation
    },
    receive(from, message) {
      if (!isMemberInfo(message.sender) || message.sender.id !== from) return
      switch (message.type) {
        case 'heartbeat':
        case 'ping':
          heard(from, message.sender)
          if (Array.isArray(message.news))
            for (const info of message.news.slice(0, newsPerMessageMax)) merge(info)
          if (message.type === 'ping') heartbeat(from)
          return
        case 'join': {
          const known = table.get(from)
          heard(from, message.sender)
          if (
            known === undefined ||
            known.status !== 'alive' ||
            known.incarnation < message.sender.incarnation
          )
            announce(message.sender, from)
          send(from, {
            type: 'sync',
            sender: self,
            entries: page(joinEntriesMax),
            reply: true,
            aliveCount: aliveById.length,
          })
          return
        }
        case 'sync':
          heard(from, message.sender)
          if (Array.isArray(message.entries))
            for (const info of message.entries.slice(0, joinEntriesMax)) merge(info, false)
          if (!message.reply) {
            // The asker knows fewer live members than we do: send it everything, once.
            const behind = typeof message.aliveCount === 'number' && message.aliveCount < aliveById.length
            send(from, {
              type: 'sync',
              sender: self,
              entries: behind ? page(joinEntriesMax) : page(syncEntriesMax),
              reply: true,
              aliveCount: aliveById.length,
            })
          }
          return
      }
    },
    tick() {
      if (self.status !== 'alive') return
      const now = clock.now()
      const lateMs = now - lastTickMs - heartbeatIntervalMs
      // Members whose connections closed get no such credit: no stall of ours explains that.
      if (lateMs > 3 * heartbeatIntervalMs) {
        // We were not running (a pause, a stall): silence from others says nothing about them.
        for (const id of lastHeardMs.keys()) if (!disconnectedMembers.has(id)) lastHeardMs.set(id, now)
      } else if (lateMs > heartbeatIntervalMs * tickLatenessToleranceRatio) {
        // A late tick means this node was busy, and what others sent meanwhile may still wait in
        // its buffers (timers run before pending I/O): the delay is not counted as their silence.
        for (const [id, heardMs] of lastHeardMs)
          if (!disconnectedMembers.has(id)) lastHeardMs.set(id, heardMs + lateMs)
      }
      lastTickMs = now
      // Probe the predecessors we watch; they answer with a heartbeat. Who watches whom then
      // depends only on the watcher's own view, so views that differ cannot starve a watcher.
      if (now >= nextProbeMs) {
        // On the tick nearest the interval (ticks come with jitter): every tick when they are equal.
        nextProbeMs = now + probeIntervalMs - heartbeatIntervalMs / 2
        for (const predecessor of neighbours(-1))
          send(predecessor, { type: 'ping', sender: self, news: takeNews() })
        const extra = randomAlive()
        if (extra !== undefined) heartbeat(extra)
      }
      const predecessors = neighbours(-1)
      for (const predecessor of predecessors) {
        const heardMs = lastHeardMs.get(predecessor)
        // A node we only start watching now (the ring changed: a death, a join) gets a whole
        // timeout from now; when we last heard from it in passing says nothing about its silence.
        if (heardMs === undefined || !watching.has(predecessor)) lastHeardMs.set(predecessor, now)
        else if (now - heardMs > failureTimeoutMs) declareDead(predecessor)
      }
      watching = new Set(predecessors)
      for (const [id, lostAtMs] of disconnectedMembers) {
        if (table.get(id)?.status !== 'alive') disconnectedMembers.delete(id)
        else if (now - lostAtMs > disconnectedTimeoutMs) declareDead(id)
        else send(id, { type: 'ping', sender: self, news: [] })
      }
      if (now >= nextSyncMs) {
        nextSyncMs = now + syncIntervalMs
        const partner = randomAlive()
        if (partner !== undefined)
          send(partner, {
            type: 'sync',
            sender: self,
            entries: page(syncEntriesMax),
            reply: false,
            aliveCount: aliveById.length,
          })
        for (const [id, info] of table)
          if (info.status !== 'alive' && now - info.changedAtMs > tombstoneMs) {
            table.delete(id)
            lastHeardMs.delete(id)
            disconnectedMembers.delete(id)
          }
      }
    },
    disconnected(id) {
      if (table.get(id)?.status !== 'alive' || disconnectedMembers.has(id)) return
      disconnectedMembers.set(id, clock.now())
      // A live node answers, over a new connection; a dead one cannot.
      send(id, { type: 'ping', sender: self, news: [] })
    },
    connected(id) {
      disconnectedMembers.delete(id)
    },
    join(seeds) {
      for (const seed of seeds) if (seed !== self.id) send(seed, { type: 'join', sender: self })
    },
    leave() {
      if (self.status !== 'alive') return
      self = { ...self, status: 'left' }
      const targets = new Set([...neighbours(1), ...neighbours(-1)])
      for (let index = 0; index < 8; index++) {
        const extra = randomAlive()
        if (extra !== undefined) targets.add(extra)
      }
      for (const target of targets) send(target, { type: 'heartbeat', sender: self, news: [self] })
    },
    updateSelf(update) {
      self = { ...self, ...update, incarnation: self.incarnation + 1 }
      spread(self)
    },
    member: (id) => (id === self.id ? self : table.get(id)),
    members: () => [self, ...[...table.values()].map(({ changedAtMs: _, ...info }) => info)],
    alive: () => [...aliveById],
    liveServers() {
      return aliveById.filter((id) => (id === self.id ? self.kind : table.get(id)?.kind) === 'server')
    },
    onChange(listener) {
      listeners.push(listener)
    },
  }
}

function isMemberInfo(value: unknown): value is MemberInfo {
  if (typeof value !== 'object' || value === null) return false
  const info = value as MemberInfo
  return (
    typeof info.id === 'string' &&
    info.id.length > 0 &&
    info.id.length <= 128 &&
    Number.isSafeInteger(info.incarnation) &&
    (info.status === 'alive' || info.status === 'dead' || info.status === 'left') &&
    (info.kind === 'server' || info.kind === 'browser') &&
    typeof info.capacity === 'object' &&
    info.capacity !== null &&
    Array.isArray(info.addresses) &&
    info.addresses.every((address) => typeof address === 'string')
  )
}
