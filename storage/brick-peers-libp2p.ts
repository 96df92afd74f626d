/**
 * `BrickPeers` over libp2p: the protocol `/fabric/bricks/1` between the storage nodes of a fabric
 * node's cluster, and DHT provider records (the node's kad-dht, private protocol prefix) announcing
 * which node holds which brick.
 *
 * - One stream per request, so transfers to and from several nodes (striping) run in parallel on
 *   their own yamux streams. A request and its reply are one frame each (`stream-frames.ts`): the
 *   length is checked before decoding, the shape after, and a request that breaks either is
 *   refused with a log line and the stream reset; the node carries on.
 * - The live storage nodes are the live server members (membership) that answer this protocol:
 *   each new member is probed once with a `stats` request. Browser nodes are never listed, so they
 *   never count as replicas (they may cache bricks of their own).
 * - `announce` queues a DHT `provide` and returns; a queue of bounded length drains in the
 *   background, so writes do not wait for DHT round trips. `findProviders` asks the DHT, then asks
 *   each named live node whether it really holds the brick (a provider record outlives a dropped
 *   copy: the DHT has no withdrawal), and when no other node is confirmed, asks every live storage
 *   node directly, so a read right after a write does not depend on the announcements having
 *   spread yet.
 *
 *   const network = await startLibp2pBrickNetwork({ node, hasLocal: (cid) => store.has(cid), log })
 *   const bricks = createBrickNode({ store, connect: network.connect, clock, sleep })
 */

import type { Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import type { FabricNode } from '../fabric/net/node.ts'
import { peerTurns } from '../fabric/net/peer-turns.ts'
import { systemClock, systemTimers } from '../fabric/platform.ts'
import type { AbortOptions, BlockStoreStats } from './block-store.ts'
import { brickBytesMax, type CID, decodeBrickCid } from './brick.ts'
import type { BrickPeers, BrickRequestHandler, StoreBrickOptions } from './brick-peers.ts'
import { mapLimited } from './concurrency.ts'
import { BrickPeerUnreachableError, StorageError } from './errors.ts'
import type { NodeId } from './platform-types.ts'
import { replicaCountMax } from './replica-counts.ts'
import { encodeStorageFrame, readFrame, StorageWireError, writeFrame } from './stream-frames.ts'

export const brickProtocol = '/fabric/bricks/1'
/** Largest frame: a whole brick plus its envelope. */
export const brickFrameBytesMax = brickBytesMax + 64 * 1024
/** Longest binary CID accepted (a sha2-256 CIDv1 takes 36 bytes). */
export const cidBytesMax = 64
export const brickDialTimeoutMs = 5000
/** A whole request: the largest brick at a slow disk's pace. */
export const brickRequestTimeoutMs = 60_000
export const brickInboundStreamsMax = 64
export const brickOutboundStreamsMax = 64
/**
 * Requests to one node in flight at once; the others wait their turn. Below the stream limits, so
 * that a burst (a striped read checking holders) queues instead of being refused by libp2p.
 */
export const brickRequestsPerNodeInFlightMax = 32
/** Announcements waiting for the DHT; beyond this new ones are dropped (and counted) until it drains. */
export const announceQueueMax = 100_000
export const announcesInFlightMax = 16
export const announceTimeoutMs = 10_000
/** How long a DHT provider lookup may take before the nodes found so far are used. */
export const findProvidersTimeoutMs = 3000
/** Holders confirmed at once when checking provider records. */
export const holderChecksInFlightMax = 16
/** How often live members not yet known to run storage are probed. */
export const storageProbeIntervalMs = 1000
/** A member that did not answer the probe is asked again after this long. */
export const storageProbeRetryMs = 5000

/** A request on `/fabric/bricks/1`. CIDs travel in their binary form. */
export type BrickRequest =
  | { t: 'fetch'; cid: Uint8Array }
  | { t: 'has'; cid: Uint8Array }
  | { t: 'store'; cid: Uint8Array; bytes: Uint8Array; replicaCount?: number }
  | { t: 'drop'; cid: Uint8Array }
  | { t: 'stats' }

export type BrickReply =
  | { t: 'bytes'; bytes: Uint8Array | null }
  | { t: 'has'; has: boolean }
  | { t: 'stored'; created: boolean }
  | { t: 'dropped'; dropped: boolean }
  | { t: 'stats'; bricks: number; bytes: number }
  | { t: 'error'; code: string; message: string }

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null
const isCount = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0

function cidProblem(value: unknown): string | undefined {
  if (!(value instanceof Uint8Array) || value.length === 0 || value.length > cidBytesMax)
    return `cid must be 1 to ${cidBytesMax} bytes`
  try {
    decodeBrickCid(value)
  } catch (error) {
    return (error as Error).message
  }
  return undefined
}

/** Why `body` is not a valid brick request, or undefined when it is one. */
export function brickRequestProblem(body: unknown): string | undefined {
  if (!isObject(body) || typeof body.t !== 'string') return 'request is not a map with a type'
  switch (body.t) {
    case 'stats':
      return undefined
    case 'fetch':
    case 'has':
    case 'drop':
      return cidProblem(body.cid)
    case 'store': {
      const problem = cidProblem(body.cid)
      if (problem !== undefined) return problem
      if (!(body.bytes instanceof Uint8Array) || body.bytes.length > brickBytesMax)
        return `bytes must be at most ${brickBytesMax} bytes`
      if (
        body.replicaCount !== undefined &&
        (!Number.isSafeInteger(body.replicaCount) ||
          (body.replicaCount as number) < 1 ||
          (body.replicaCount as number) > replicaCountMax)
      )
        return `replicaCount must be an integer from 1 to ${replicaCountMax}`
      return undefined
    }
    default:
      return `unknown request type ${String(body.t).slice(0, 40)}`
  }
}

function isBrickReply(body: unknown): body is BrickReply {
  if (!isObject(body)) return false
  switch (body.t) {
    case 'bytes':
      return body.bytes === null || (body.bytes instanceof Uint8Array && body.bytes.length <= brickBytesMax)
    case 'has':
      return typeof body.has === 'boolean'
    case 'stored':
      return typeof body.created === 'boolean'
    case 'dropped':
      return typeof body.dropped === 'boolean'
    case 'stats':
      return isCount(body.bricks) && isCount(body.bytes)
    case 'error':
      return typeof body.code === 'string' && typeof body.message === 'string'
    default:
      return false
  }
}

export interface Libp2pBrickNetworkComponents {
  /**
   * A server node, or a browser node (`fabric/net/browser-node.ts`): a browser is no storage node,
   * in its own list as in everyone else's, so it never counts itself as a holder either.
   */
  node: Pick<FabricNode, 'peerId' | 'network' | 'membership'>
  /** Whether this node's block store holds the brick (its provider records may be stale). */
  hasLocal(cid: CID): Promise<boolean>
  log(line: string): void
}

export interface Libp2pBrickNetworkCounters {
  announcesQueued: number
  announcesDone: number
  announcesFailed: number
  announcesDropped: number
  /** Lookups where no other node was confirmed from provider records, so every live node was asked. */
  providerFallbacks: number
  requestsServed: number
  requestsRefused: number
}

export interface Libp2pBrickNetwork {
  /** Registers this node's handler (see `createBrickNode`'s `connect`). */
  connect(handler: BrickRequestHandler): BrickPeers
  /** Calls `listener` when a storage node joins or leaves the live list. */
  onChange(listener: (change: { node: NodeId; live: boolean }) => void): void
  /** Resolves when every queued announcement has gone out (or failed). */
  announced(options?: AbortOptions): Promise<void>
  counters(): Libp2pBrickNetworkCounters
  stop(): Promise<void>
}

interface Dht {
  provide(cid: CID, options?: { signal?: AbortSignal }): AsyncIterable<unknown>
  findProviders(
    cid: CID,
    options?: { signal?: AbortSignal },
  ): AsyncIterable<{ name: string; providers?: { id: { toString(): string } }[] }>
  cancelReprovide(cid: CID, options?: AbortOptions): Promise<void>
}

export async function startLibp2pBrickNetwork(
  components: Libp2pBrickNetworkComponents,
): Promise<Libp2pBrickNetwork> {
  const { node, hasLocal, log } = components
  const libp2p = node.network.libp2p
  const dht = libp2p.services.dht as unknown as Dht
  const self = node.peerId
  const selfStores = node.membership.member(self)?.kind === 'server'
  const counters: Libp2pBrickNetworkCounters = {
    announcesQueued: 0,
    announcesDone: 0,
    announcesFailed: 0,
    announcesDropped: 0,
    providerFallbacks: 0,
    requestsServed: 0,
    requestsRefused: 0,
  }
  let handler: BrickRequestHandler | undefined
  let stopped = false
  const stopController = new AbortController()
  const listeners: ((change: { node: NodeId; live: boolean }) => void)[] = []
  /** Live members that answered the brick protocol. */
  const storageNodes = new Set<NodeId>()
  /** Members that did not (yet): when they were last asked. */
  const probedAtMs = new Map<NodeId, number>()
  const probing = new Set<NodeId>()

  const refuse = (from: string, reason: string) => {
    counters.requestsRefused++
    node.network.refuse(from, `bricks: ${reason}`)
  }

  function isLiveServer(id: NodeId): boolean {
    const member = node.membership.member(id)
    return member?.status === 'alive' && member.kind === 'server'
  }

  function setStorageNode(id: NodeId, live: boolean): void {
    if (live === storageNodes.has(id)) return
    if (live) storageNodes.add(id)
    else storageNodes.delete(id)
    const count = storageNodes.size + (selfStores ? 1 : 0)
    log(`storage: node ${id.slice(-8)} ${live ? 'joined' : 'left'}; ${count} storage nodes`)
    for (const listener of listeners) listener({ node: id, live })
  }

  node.membership.onChange(({ member }) => {
    if (member.status === 'alive' || member.id === self) return
    probedAtMs.delete(member.id)
    if (storageNodes.has(member.id)) setStorageNode(member.id, false)
    // A server that left may have held bricks even if this node never saw it serve them (it joined
    // just before): the listeners hear of every departure.
    else if (member.kind === 'server')
      for (const listener of listeners) listener({ node: member.id, live: false })
  })

  async function serve(request: BrickRequest): Promise<BrickReply> {
    if (handler === undefined) return { t: 'error', code: 'NOT_READY', message: 'storage is starting' }
    switch (request.t) {
      case 'stats': {
        const stats = await handler.stats()
        return { t: 'stats', bricks: stats.bricks, bytes: stats.bytes }
      }
      case 'fetch':
        return { t: 'bytes', bytes: (await handler.fetch(decodeBrickCid(request.cid))) ?? null }
      case 'has':
        return { t: 'has', has: await hasLocal(decodeBrickCid(request.cid)) }
      case 'store':
        return {
          t: 'stored',
          created: await handler.store(decodeBrickCid(request.cid), request.bytes, {
            replicaCount: request.replicaCount,
          }),
        }
      case 'drop':
        return { t: 'dropped', dropped: await handler.drop(decodeBrickCid(request.cid)) }
    }
  }

  await libp2p.handle(
    brickProtocol,
    async (stream: Stream, connection) => {
      const from = connection.remotePeer.toString()
      let body: unknown
      try {
        body = await readFrame(stream, {
          bytesMax: brickFrameBytesMax,
          timeoutMs: brickRequestTimeoutMs,
          signal: stopController.signal,
        })
      } catch (error) {
        refuse(from, (error as Error).message)
        stream.abort(error as Error)
        return
      }
      const problem = brickRequestProblem(body)
      if (problem !== undefined) {
        refuse(from, problem)
        stream.abort(new StorageWireError('malformed', problem))
        return
      }
      // A member that asks us for bricks runs storage itself.
      if (isLiveServer(from)) setStorageNode(from, true)
      let reply: BrickReply
      try {
        reply = await serve(body as BrickRequest)
        counters.requestsServed++
      } catch (error) {
        const code = error instanceof StorageError ? error.code : 'INTERNAL'
        if (code === 'BRICK_CORRUPT') refuse(from, `a stored brick did not match its name`)
        reply = { t: 'error', code, message: (error as Error).message.slice(0, 1000) }
      }
      try {
        await writeFrame(stream, encodeStorageFrame(reply, brickFrameBytesMax))
        await stream.close()
      } catch (error) {
        stream.abort(error as Error)
      }
    },
    { maxInboundStreams: brickInboundStreamsMax, maxOutboundStreams: brickOutboundStreamsMax },
  )

  /** Per node: requests in flight, and the ones waiting for a turn. */
  const turn = peerTurns(brickRequestsPerNodeInFlightMax)

  async function request(to: NodeId, message: BrickRequest, signal?: AbortSignal): Promise<BrickReply> {
    if (stopped) throw new BrickPeerUnreachableError(to, 'this node is stopping')
    if (to === self) {
      const reply = await serve(message)
      if (reply.t === 'error') throw new BrickPeerUnreachableError(to, reply.message)
      return reply
    }
    return turn(to, () => requestNow(to, message, signal))
  }

  async function requestNow(to: NodeId, message: BrickRequest, signal?: AbortSignal): Promise<BrickReply> {
    const timeout = AbortSignal.timeout(brickDialTimeoutMs)
    let stream: Stream
    try {
      stream = await libp2p.dialProtocol(peerIdFromString(to), brickProtocol, {
        signal: signal === undefined ? timeout : AbortSignal.any([timeout, signal]),
      })
    } catch (error) {
      signal?.throwIfAborted()
      throw new BrickPeerUnreachableError(to, (error as Error).message.slice(0, 200))
    }
    try {
      const reply = readFrame(stream, {
        bytesMax: brickFrameBytesMax,
        timeoutMs: brickRequestTimeoutMs,
        signal,
      })
      reply.catch(() => {})
      await writeFrame(stream, encodeStorageFrame(message, brickFrameBytesMax), signal)
      const body = await reply
      if (!isBrickReply(body)) throw new StorageWireError('malformed', `malformed reply to ${message.t}`)
      if (body.t === 'error') throw new BrickPeerUnreachableError(to, `it refused: ${body.message}`)
      void stream.close().catch(() => {})
      return body
    } catch (error) {
      stream.abort(error as Error)
      signal?.throwIfAborted()
      if (error instanceof BrickPeerUnreachableError) throw error
      throw new BrickPeerUnreachableError(to, (error as Error).message.slice(0, 200))
    }
  }

  // ---- which members run storage

  async function probe(id: NodeId): Promise<void> {
    probing.add(id)
    probedAtMs.set(id, systemClock.now())
    try {
      await request(id, { t: 'stats' }, stopController.signal)
      if (isLiveServer(id)) setStorageNode(id, true)
    } catch {
      // Not (yet) a storage node, or not reachable: asked again later.
    } finally {
      probing.delete(id)
    }
  }

  function probeMembers(): void {
    const now = systemClock.now()
    for (const member of node.membership.members()) {
      const id = member.id
      if (id === self || member.status !== 'alive' || member.kind !== 'server') continue
      if (storageNodes.has(id) || probing.has(id)) continue
      if (now - (probedAtMs.get(id) ?? -Infinity) < storageProbeRetryMs) continue
      void probe(id)
    }
  }
  probeMembers()
  const probeTimer = systemTimers.every(storageProbeIntervalMs, probeMembers)

  function liveNodes(): NodeId[] {
    const live = selfStores ? [self] : []
    for (const id of storageNodes) if (isLiveServer(id)) live.push(id)
    return live.sort()
  }

  // ---- announcements

  const announceQueue = new Map<string, CID>()
  let announcing = 0
  const drainedWaiters: (() => void)[] = []

  function pumpAnnouncements(): void {
    while (!stopped && announcing < announcesInFlightMax && announceQueue.size > 0) {
      const [key, cid] = announceQueue.entries().next().value!
      announceQueue.delete(key)
      announcing++
      void provide(cid).finally(() => {
        announcing--
        pumpAnnouncements()
      })
    }
    if (announcing === 0 && announceQueue.size === 0)
      for (const resolve of drainedWaiters.splice(0)) resolve()
  }

  async function provide(cid: CID): Promise<void> {
    try {
      const signal = AbortSignal.any([AbortSignal.timeout(announceTimeoutMs), stopController.signal])
      for await (const _event of dht.provide(cid, { signal })) {
        // The events only report progress.
      }
      counters.announcesDone++
    } catch {
      counters.announcesFailed++
    }
  }

  async function findProviders(cid: CID, options?: AbortOptions): Promise<NodeId[]> {
    const signal = options?.signal
    const candidates = new Set<NodeId>()
    try {
      const lookupSignal = AbortSignal.any(
        [AbortSignal.timeout(findProvidersTimeoutMs), stopController.signal, signal].filter(
          (each): each is AbortSignal => each !== undefined,
        ),
      )
      for await (const event of dht.findProviders(cid, { signal: lookupSignal })) {
        if (event.name !== 'PROVIDER') continue
        for (const provider of event.providers ?? []) candidates.add(provider.id.toString())
      }
    } catch {
      // A lookup that timed out still named what it found.
    }
    signal?.throwIfAborted()
    const live = liveNodes()
    const holders: NodeId[] = []
    if (selfStores && (await hasLocal(cid))) holders.push(self)
    const named = live.filter((id) => id !== self && candidates.has(id))
    const confirm = async (ids: NodeId[]) => {
      const answers = await mapLimited(ids, holderChecksInFlightMax, async (id) => {
        try {
          const reply = await request(id, { t: 'has', cid: cid.bytes }, signal)
          return reply.t === 'has' && reply.has
        } catch (error) {
          signal?.throwIfAborted()
          if (error instanceof BrickPeerUnreachableError) return false
          throw error
        }
      })
      return ids.filter((_, index) => answers[index])
    }
    let others = await confirm(named)
    if (others.length === 0) {
      counters.providerFallbacks++
      others = await confirm(live.filter((id) => id !== self && !candidates.has(id)))
    }
    holders.push(...others)
    return holders.sort()
  }

  return {
    connect(nodeHandler) {
      handler = nodeHandler
      return {
        self,
        liveNodes,
        async fetch(to, cid, options) {
          const reply = await request(to, { t: 'fetch', cid: cid.bytes }, options?.signal)
          return reply.t === 'bytes' ? (reply.bytes ?? undefined) : undefined
        },
        async store(to, cid, bytes, options?: StoreBrickOptions) {
          const message: BrickRequest = { t: 'store', cid: cid.bytes, bytes }
          if (options?.replicaCount !== undefined) message.replicaCount = options.replicaCount
          const reply = await request(to, message, options?.signal)
          return reply.t === 'stored' && reply.created
        },
        async drop(to, cid, options) {
          const reply = await request(to, { t: 'drop', cid: cid.bytes }, options?.signal)
          return reply.t === 'dropped' && reply.dropped
        },
        async stats(to, options): Promise<BlockStoreStats> {
          const reply = await request(to, { t: 'stats' }, options?.signal)
          if (reply.t !== 'stats')
            throw new BrickPeerUnreachableError(to, 'answered stats with something else')
          return { bricks: reply.bricks, bytes: reply.bytes }
        },
        findProviders,
        async announce(cid) {
          const key = cid.toString()
          if (announceQueue.has(key)) return
          if (announceQueue.size >= announceQueueMax) {
            counters.announcesDropped++
            return
          }
          counters.announcesQueued++
          announceQueue.set(key, cid)
          pumpAnnouncements()
        },
        async withdraw(cid) {
          announceQueue.delete(cid.toString())
          await dht.cancelReprovide(cid).catch(() => {})
        },
      }
    },
    onChange(listener) {
      listeners.push(listener)
    },
    announced(options) {
      if (announcing === 0 && announceQueue.size === 0) return Promise.resolve()
      return new Promise((resolve, reject) => {
        drainedWaiters.push(resolve)
        options?.signal?.addEventListener('abort', () => reject(options.signal!.reason), { once: true })
      })
    },
    counters: () => ({ ...counters }),
    async stop() {
      if (stopped) return
      stopped = true
      stopController.abort(new BrickPeerUnreachableError(self, 'this node is stopping'))
      probeTimer.cancel()
      announceQueue.clear()
      for (const resolve of drainedWaiters.splice(0)) resolve()
      await libp2p.unhandle(brickProtocol).catch(() => {})
    },
  }
}
