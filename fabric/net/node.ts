/**
 * A fabric node: libp2p networking, membership and failure detection, and the coordination store,
 * with its peer identity and acceptor state in a data directory.
 *
 *   const node = await startNode({ listen: ['/ip4/0.0.0.0/tcp/4001'], bootstrap: [], dataDirectory: './data' })
 *   console.log(node.addresses())
 *   await node.stop()
 */

import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { availableParallelism, totalmem } from 'node:os'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey, Stream } from '@libp2p/interface'
import { createStore, type Store, type StoreOptions } from '../coord/store.ts'
import { DataDirectoryError, FabricError } from '../errors.ts'
import {
  type Capacity,
  createMembership,
  type MemberInfo,
  type Membership,
} from '../membership/membership.ts'
import { systemClock, systemRandom, systemTimers, type TimerHandle } from '../platform.ts'
import { type AcceptorLog, openAcceptorLog } from './acceptor-log.ts'
import { joinMembersTopic, receiveMembershipMessage } from './members-topic.ts'
import { clientProtocol, clientProtocols, createNetwork, type Log, type Network, short } from './network.ts'
import { serverNoiseCrypto } from './noise-crypto.ts'
import { isOperation, isStoreMessage } from './validate.ts'
import { createFrameReader, decodeEnvelope, encodeFrame, storeProtocol } from './wire.ts'
import { FramesPerTurn } from './write-coalescing.ts'

export const storeTickIntervalMs = 10
export const announceIntervalMs = 2000
export const clientRequestsInFlightMax = 1024
export const clientTimeoutMsMax = 60_000
export const compactionCheckIntervalMs = 10_000
/** A node that leaves waits at most this long for its shards to move to other replicas. */
export const handOverTimeoutMs = 5000
/** A membership tick this much later than due is logged: the node was not running (a stall). */
export const stallLogThresholdMs = 250

export interface NodeOptions {
  listen: readonly string[]
  bootstrap: readonly string[]
  /** Where the peer identity and the acceptor log live; a temporary identity when absent. */
  dataDirectory?: string
  clusterKey?: Uint8Array
  store?: StoreOptions
  fsync?: boolean
  log?: Log
}

export interface FabricNode {
  peerId: string
  addresses(): string[]
  membership: Membership
  store: Store
  network: Network
  stop(): Promise<void>
}

async function loadIdentity(directory: string | undefined): Promise<PrivateKey> {
  if (directory === undefined) return await generateKeyPair('Ed25519')
  const path = join(directory, 'peer-key')
  if (existsSync(path)) {
    try {
      return privateKeyFromProtobuf(readFileSync(path))
    } catch (error) {
      throw new DataDirectoryError(`${path} is not a libp2p private key: ${(error as Error).message}`)
    }
  }
  const key = await generateKeyPair('Ed25519')
  writeFileSync(path, privateKeyToProtobuf(key), { mode: 0o600 })
  return key
}

function nextIncarnation(directory: string | undefined): number {
  if (directory === undefined) return Date.now()
  const path = join(directory, 'incarnation')
  const previous = existsSync(path) ? Number(readFileSync(path, 'utf8')) : 0
  const incarnation = Math.max(Number.isSafeInteger(previous) ? previous + 1 : 1, 1)
  writeFileSync(path, String(incarnation))
  return incarnation
}

/** Windows the speed probe times; the fastest one counts. */
export const speedProbeWindowCount = 10
/** Length of one window of the speed probe. */
export const speedProbeWindowMs = 2

/**
 * A quick, fixed CPU loop: iterations per microsecond, as a relative speed score. The fastest of
 * several short windows counts: the first ones run before the loop is compiled, and the OS may
 * take the core away during any of them, both of which read low (one 20 ms window read 8 to 52 on
 * one loaded machine, 7x apart, and the fastest of ten 2 ms windows 213 to 230).
 */
export function measureSpeedScore(): number {
  let accumulator = 0
  let best = 0
  for (let window = 0; window < speedProbeWindowCount; window++) {
    const start = performance.now()
    let iterations = 0
    let elapsedMs = 0
    do {
      for (let index = 0; index < 10_000; index++) accumulator = (accumulator * 31 + index) | 0
      iterations += 10_000
      elapsedMs = performance.now() - start
    } while (elapsedMs < speedProbeWindowMs)
    best = Math.max(best, iterations / elapsedMs / 1000)
  }
  return Math.round(best * 100 + (accumulator & 0)) / 100
}

export async function startNode(options: NodeOptions): Promise<FabricNode> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`))
  const directory = options.dataDirectory
  if (directory !== undefined) mkdirSync(directory, { recursive: true })
  const privateKey = await loadIdentity(directory)
  const acceptorLog: AcceptorLog | undefined =
    directory === undefined ? undefined : openAcceptorLog(directory, { fsync: options.fsync })
  // Without a data directory the acceptor state lives in memory: a restart is a new member anyway.
  const storage = acceptorLog ?? { append: () => {}, load: () => [] }
  const firstStart = storage.load().length === 0

  const network = await createNetwork({
    privateKey,
    listen: options.listen,
    clusterKey: options.clusterKey,
    protocols: new Set(['membership', storeProtocol]),
    log,
    // Votes reach the disk before any reply that reports them leaves the node.
    beforeWrite: acceptorLog?.flush,
    noiseCrypto: serverNoiseCrypto,
  })
  const self = network.self
  const capacity: Capacity = {
    cores: availableParallelism(),
    memoryBytes: totalmem(),
    speedScore: measureSpeedScore(),
  }
  const membership = createMembership({
    self: {
      id: self,
      incarnation: nextIncarnation(directory),
      kind: 'server',
      capacity,
      addresses: network.addresses(),
    },
    clock: systemClock,
    random: systemRandom,
    send: (to, body) => network.send(to, 'membership', body),
  })
  const store = createStore(
    {
      self,
      clock: systemClock,
      random: systemRandom,
      send: (to, body) => network.send(to, storeProtocol, body),
      servers: () => membership.liveServers(),
      storage,
    },
    options.store,
  )
  const shardCount = store.shardCount

  membership.onChange(({ member, previous }) => {
    if (member.status === 'alive') network.addAddresses(member.id, member.addresses)
    log(
      `membership: ${short(member.id)} ${previous === 'unknown' ? 'joined' : `${previous} -> ${member.status}`}${describe(member)}; ${membership.alive().length} alive`,
    )
  })

  // A process that dies has its connections closed by its operating system: the fast evidence
  // of death that membership waits for before it trusts a short silence (see membership.ts).
  network.onPeerDisconnected((peer) => {
    if (membership.member(peer)?.status !== 'alive') return
    log(`connections to ${short(peer)} lost`)
    membership.disconnected(peer)
  })
  // A connection that comes back (libp2p may also drop idle ones) proves the process runs.
  network.onPeerConnected((peer) => membership.connected(peer))

  network.onMessage((from, protocol, body) => {
    if (protocol === 'membership') receiveMembershipMessage(network, membership, from, body)
    else if (protocol === storeProtocol) {
      if (!isStoreMessage(body, shardCount)) return network.refuse(from, 'malformed store message')
      store.receive(from, body)
    }
  })

  // Client requests: request/response frames on a stream the client opens.
  await network.libp2p.handle(
    clientProtocol,
    (stream: Stream, connection) => serveClient(stream, connection.remotePeer.toString()),
    { maxInboundStreams: 64 },
  )

  function serveClient(stream: Stream, from: string): void {
    const reader = createFrameReader()
    let inFlight = 0
    // The replies of one turn leave in one send.
    const replies = new FramesPerTurn((piece) => {
      if (stream.status !== 'open') return
      try {
        stream.send(piece)
      } catch {
        // The client went away; nothing to tell it.
      }
    })
    const reply = (body: unknown) => {
      if (stream.status !== 'open') return
      try {
        replies.push(encodeFrame('client', body))
      } catch {
        return // a reply over the frame limit cannot be: values are at most valueBytesMax
      }
    }
    stream.addEventListener('message', (event) => {
      const data = event.data
      let frames: Uint8Array[]
      try {
        frames = reader.push(data instanceof Uint8Array ? data : data.subarray())
      } catch (error) {
        network.refuse(from, (error as Error).message)
        stream.abort(error as Error)
        return
      }
      for (const payload of frames) {
        let request: { id: number; key: string; operation: unknown; timeoutMs?: number }
        try {
          request = decodeEnvelope(payload, clientProtocols).b as typeof request
        } catch (error) {
          network.refuse(from, (error as Error).message)
          continue
        }
        if (
          typeof request !== 'object' ||
          request === null ||
          !Number.isSafeInteger(request.id) ||
          typeof request.key !== 'string' ||
          !isOperation(request.operation)
        ) {
          network.refuse(from, 'malformed client request')
          if (typeof request?.id === 'number')
            reply({ id: request.id, error: { code: 'MESSAGE_MALFORMED', message: 'malformed request' } })
          continue
        }
        if (inFlight >= clientRequestsInFlightMax) {
          reply({
            id: request.id,
            error: { code: 'STORE_OVERLOADED', message: 'too many requests in flight on this stream' },
          })
          continue
        }
        inFlight++
        const timeoutMs = Math.min(clientTimeoutMsMax, Math.max(1, Number(request.timeoutMs) || 5000))
        try {
          store.submit(request.key, request.operation, { timeoutMs }, (outcome) => {
            inFlight--
            if (outcome.ok) reply({ id: request.id, result: outcome.result })
            else reply({ id: request.id, error: errorBody(outcome.error) })
          })
        } catch (error) {
          inFlight--
          reply({ id: request.id, error: errorBody(error as Error) })
        }
      }
    })
  }

  const announce = joinMembersTopic(network, membership, self)

  if (firstStart && options.bootstrap.length === 0) {
    store.genesis([self])
    log(`created a new cluster; this node holds every shard until others join`)
  }

  const timers: TimerHandle[] = []
  let lastMembershipTickMs = performance.now()
  timers.push(
    systemTimers.every(membership.tickIntervalMs, () => {
      const now = performance.now()
      const lateMs = now - lastMembershipTickMs - membership.tickIntervalMs
      lastMembershipTickMs = now
      // Others may have taken this node for dead meanwhile; the line says why.
      if (lateMs > stallLogThresholdMs)
        log(`event loop stalled: membership tick ${Math.round(lateMs)} ms late`)
      membership.tick()
    }),
  )
  timers.push(systemTimers.every(storeTickIntervalMs, () => store.tick()))
  timers.push(systemTimers.every(announceIntervalMs, announce))
  if (acceptorLog !== undefined)
    timers.push(
      systemTimers.every(compactionCheckIntervalMs, () =>
        acceptorLog.compactIfLarge(() => store.acceptor!.snapshot()),
      ),
    )

  const joinWith = async () => {
    const peers = await network.dial(options.bootstrap)
    membership.join(peers)
    return peers.length
  }
  if (options.bootstrap.length > 0) {
    // Keep trying until some bootstrap peer answers.
    let answered = await joinWith()
    while (answered === 0) {
      await new Promise((resolve) => setTimeout(resolve, 1000))
      answered = await joinWith()
    }
  }
  membership.updateSelf({ addresses: network.addresses() })

  let stopped = false
  return {
    peerId: self,
    addresses: () => network.addresses(),
    membership,
    store,
    network,
    async stop() {
      if (stopped) return
      stopped = true
      // Gone from the others' views at once, so nobody places anything here any more; then, still
      // answering as an acceptor, move every shard this node replicates to the others, so a key
      // keeps all its replicas (a later crash of one of them leaves a majority).
      membership.leave()
      store.leave()
      const handOverStartedMs = performance.now()
      const shardsHeld = store.shardsToHandOver()
      while (store.shardsToHandOver() > 0 && performance.now() - handOverStartedMs < handOverTimeoutMs)
        await new Promise((resolve) => setTimeout(resolve, storeTickIntervalMs))
      const shardsLeft = store.shardsToHandOver()
      log(
        shardsLeft === 0
          ? `handed over ${shardsHeld} shards in ${Math.round(performance.now() - handOverStartedMs)} ms`
          : `left with ${shardsLeft} of ${shardsHeld} shards not handed over after ${handOverTimeoutMs} ms; their other replicas move them`,
      )
      await new Promise((resolve) => setTimeout(resolve, 100))
      for (const timer of timers) timer.cancel()
      await network.stop()
      acceptorLog?.close()
    },
  }
}

function describe(member: MemberInfo): string {
  const gib = (member.capacity.memoryBytes / 2 ** 30).toFixed(1)
  return member.status === 'alive'
    ? ` (${member.kind}, ${member.capacity.cores} cores, ${gib} GiB, speed ${member.capacity.speedScore})`
    : ''
}

function errorBody(error: Error): { code: string; message: string } {
  return { code: error instanceof FabricError ? error.code : 'INTERNAL', message: error.message }
}
