/**
 * The libp2p side of a node: TCP and WebSockets, noise, yamux, identify, ping, a kad-dht under a
 * private protocol prefix, gossipsub, and the private-network protector keyed by the cluster key.
 * Fabric messages travel as frames (see wire.ts) on one long-lived stream per peer and direction.
 */

import { type ICryptoInterface, noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import type {
  Connection,
  ConnectionProtector,
  MessageStream,
  PrivateKey,
  Stream,
  StreamMessageEvent,
  StreamMuxer,
} from '@libp2p/interface'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p, type Libp2p } from 'libp2p'
import { Uint8ArrayList } from 'uint8arraylist'
import { MessageRejectedError } from '../errors.ts'
import { createNodeDatastore } from './node-datastore.ts'
import { withNoiseFrameDecoder } from './noise-frames.ts'
import { createFrameReader, decodeEnvelope, encodeFrame } from './wire.ts'
import { coalescingMuxer, eachMuxer, FramesPerTurn, joinFrames } from './write-coalescing.ts'
import { sendWindowUpdatesAtHalf } from './yamux-window.ts'

export const wireProtocol = '/fabric/wire/1.0.0'
export const clientProtocol = '/fabric/client/1.0.0'
/** The one fabric protocol inside client request and reply frames (made once, not per frame). */
export const clientProtocols: ReadonlySet<string> = new Set(['client'])
export const dhtProtocol = '/fabric/kad/1.0.0'
export const membersTopic = 'fabric/members/1'
/** Messages are dropped (the protocols tolerate loss) rather than buffered past this per peer. */
export const writeBufferBytesMax = 8 * 1024 * 1024
/** Refused messages are logged, at most this many lines per peer per interval; the rest are counted. */
export const refusalLogLinesPerPeerMax = 8
export const refusalLogIntervalMs = 1000
export const refusalPeersTrackedMax = 1024
export const redialBackoffMs = 500
export const streamOpenTimeoutMs = 3000
/** How long a dial of a node's address may take; a peer refused for want of the cluster key takes all of it. */
export const dialTimeoutMs = 5000
/** Frames queued for a peer while its stream opens; more are dropped (the protocols retry). */
export const pendingFramesPerPeerMax = 1024
export const addressedPeersMax = 100_000
/**
 * libp2p refuses more than 5 new connections per second from one host by default, which a local
 * cluster (every node on 127.0.0.1) or nodes behind one NAT exceed as soon as they start together.
 */
export const inboundConnectionsPerHostPerSecondMax = 200
export const inboundConnectionsPendingMax = 64
/**
 * Streams a peer may open on a new connection before this side's libp2p listens for them. libp2p's
 * default is 10, and past it the whole connection is aborted, with every stream on it: a node that
 * sent 16 saves of 1 MiB at once (each on a stream of its own) to a peer it had just connected to
 * lost the connection, and the saves, the store's messages and everything else to that peer with it.
 */
export const earlyStreamsMax = 512

export type Log = (line: string) => void

export interface Network {
  libp2p: Libp2p
  self: string
  addresses(): string[]
  /** Sends a fabric message; silently dropped when the peer is unreachable (callers retry). */
  send(to: string, protocol: string, body: unknown): void
  onMessage(handler: (from: string, protocol: string, body: unknown) => void): void
  /** Called when libp2p has lost every connection to `peer` (a peer whose process died, among others). */
  onPeerDisconnected(handler: (peer: string) => void): void
  /** Called when libp2p has a connection to `peer` again (or for the first time). */
  onPeerConnected(handler: (peer: string) => void): void
  /** Dials multiaddrs and returns the peer ids that answered within `timeoutMs` (default {@link dialTimeoutMs}). */
  dial(addresses: readonly string[], timeoutMs?: number): Promise<string[]>
  addAddresses(peer: string, addresses: readonly string[]): void
  /** Logs a refused message (a few lines per second per peer at most; the rest are counted). */
  refuse(from: string, reason: string): void
  /** Counters for diagnosis: frames sent and dropped by reason, streams opened and lost. */
  stats(): Record<string, number>
  stop(): Promise<void>
}

export interface NetworkOptions {
  privateKey: PrivateKey
  listen: readonly string[]
  clusterKey?: Uint8Array
  protocols: ReadonlySet<string>
  log: Log
  /** Clients neither listen nor run the DHT server. */
  client?: boolean
  /**
   * A node in a web page: WebSockets is its only transport (TCP throws in a browser), it listens
   * on nothing and runs the DHT as a client, like `client`. libp2p's browser build refuses to dial
   * private addresses by default; a cluster on a LAN or on loopback is made of nothing else.
   */
  browser?: boolean
  /** Runs before bytes leave on any connection (the node writes its acceptor log there). */
  beforeWrite?: () => void
  /** The noise layer's cipher implementation (same cipher; see noise-crypto.ts); the package's default when absent. */
  noiseCrypto?: ICryptoInterface
}

export async function createNetwork(options: NetworkOptions): Promise<Network> {
  const { log } = options
  sendWindowUpdatesAtHalf()
  const refusalWindows = new Map<string, { startMs: number; lines: number; suppressed: number }>()
  const refuse = (from: string, reason: string) => {
    const now = performance.now()
    let window = refusalWindows.get(from)
    if (window === undefined || now - window.startMs >= refusalLogIntervalMs) {
      const suppressed = window?.suppressed ?? 0
      if (refusalWindows.size >= refusalPeersTrackedMax) refusalWindows.clear()
      window = { startMs: now, lines: 0, suppressed: 0 }
      refusalWindows.set(from, window)
      if (suppressed > 0) log(`refused ${suppressed} more messages from ${short(from)} (not logged)`)
    }
    if (window.lines >= refusalLogLinesPerPeerMax) {
      window.suppressed++
      return
    }
    window.lines++
    log(`refused message from ${short(from)}: ${reason}`)
  }
  const protector =
    options.clusterKey === undefined
      ? (): ConnectionProtector => ({
          async protect(connection) {
            sendInOneWrite(connection)
            return connection
          },
        })
      : (): ConnectionProtector => {
          const inner = preSharedKey({ psk: options.clusterKey! })()
          return {
            async protect(connection, abort) {
              // Watch (without consuming) the first bytes in each direction of the pnet layer, to
              // tell a peer without the key apart and say so in the log.
              const remote = String((connection as { remoteAddr?: unknown }).remoteAddr ?? 'unknown address')
              let refused = false
              const refuseConnection = (why: string) => {
                if (refused) return
                refused = true
                log(`refused connection from ${remote}: ${why}`)
                connection.abort(new Error(why))
              }
              peekFirstMessage(connection, (bytes) => {
                if (startsWith(bytes, multistreamHeader))
                  refuseConnection('peer does not use the cluster key')
              })
              let wrapped: Awaited<ReturnType<typeof inner.protect>>
              try {
                wrapped = await inner.protect(connection, abort)
              } catch (error) {
                refuseConnection(`cluster key handshake failed (${(error as Error).message.slice(0, 80)})`)
                throw error
              }
              encryptInPieces(wrapped)
              peekFirstMessage(wrapped, (bytes) => {
                const expected = multistreamHeader.subarray(
                  0,
                  Math.min(bytes.length, multistreamHeader.length),
                )
                if (!startsWith(bytes, expected)) refuseConnection('peer has a different cluster key')
              })
              return wrapped
            },
          }
        }
  const browser = options.browser === true
  const libp2p = await createLibp2p({
    privateKey: options.privateKey,
    // Provider records indexed by content and bounded (the default store scans them all per lookup).
    datastore: createNodeDatastore({ self: peerIdFromPrivateKey(options.privateKey).toString() }),
    addresses: { listen: options.client || browser ? [] : [...options.listen] },
    transports: browser ? [webSockets()] : [tcp(), webSockets()],
    ...(browser ? { connectionGater: { denyDialMultiaddr: () => false } } : {}),
    connectionEncrypters: [
      withNoiseFrameDecoder(noise(options.noiseCrypto === undefined ? {} : { crypto: options.noiseCrypto })),
    ],
    streamMuxers: [
      eachMuxer(
        coalescingMuxer(yamux({ maxEarlyStreams: earlyStreamsMax }), options.beforeWrite),
        closeWithMuxer,
      ),
    ],
    connectionProtector: protector,
    connectionMonitor: { enabled: false },
    connectionManager: {
      inboundConnectionThreshold: inboundConnectionsPerHostPerSecondMax,
      maxIncomingPendingConnections: inboundConnectionsPendingMax,
    },
    services: {
      identify: identify(),
      ping: ping(),
      // Every address a member announces counts: kad-dht by default drops private ones, which on a
      // LAN or loopback cluster leaves the routing table empty and every query waiting.
      dht: kadDHT({
        protocol: dhtProtocol,
        clientMode: options.client === true || browser,
        peerInfoMapper: passthroughMapper,
      }),
      pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false }),
    },
  })
  const self = libp2p.peerId.toString()
  const handlers: ((from: string, protocol: string, body: unknown) => void)[] = []
  const outbound = new Map<string, Outbound>()

  /** Peers whose addresses are in the peer store, so that a dial goes straight to them. */
  const addressed = new Set<string>()
  const counters: Record<string, number> = {}
  const count = (name: string) => {
    counters[name] = (counters[name] ?? 0) + 1
  }
  const deliver = (from: string, protocol: string, body: unknown) => {
    count(`received ${protocol}`)
    for (const handler of handlers) handler(from, protocol, body)
  }

  function readFrames(stream: Stream, from: string, onBody: (protocol: string, body: unknown) => void): void {
    const reader = createFrameReader()
    stream.addEventListener('message', (event) => {
      const data = event.data
      const chunk = data instanceof Uint8Array ? data : data.subarray()
      let frames: Uint8Array[]
      try {
        frames = reader.push(chunk)
      } catch (error) {
        refuse(from, (error as Error).message)
        stream.abort(error as Error)
        return
      }
      for (const payload of frames) {
        try {
          const envelope = decodeEnvelope(payload, options.protocols)
          onBody(envelope.p, envelope.b)
        } catch (error) {
          if (error instanceof MessageRejectedError) refuse(from, error.message)
          else refuse(from, `handler failed: ${(error as Error).message}`)
        }
      }
    })
  }

  await libp2p.handle(
    wireProtocol,
    (stream: Stream, connection: Connection) => {
      const from = connection.remotePeer.toString()
      readFrames(stream, from, (protocol, body) => deliver(from, protocol, body))
    },
    { maxInboundStreams: 16 },
  )

  function open(to: string): void {
    const entry = outbound.get(to)!
    entry.opening = true
    count('stream opens')
    libp2p
      .dialProtocol(peerIdFromString(to), wireProtocol, { signal: AbortSignal.timeout(streamOpenTimeoutMs) })
      .then((stream) => {
        entry.opening = false
        const previous = entry.stream
        if (previous !== undefined && previous !== stream) {
          count('streams replaced')
          previous.abort(new Error('replaced'))
        }
        entry.stream = stream
        stream.addEventListener('close', () => {
          count('outbound streams closed')
          if (entry.stream === stream) entry.stream = undefined
        })
        count('frames flushed after open')
        const pending = entry.pending.splice(0)
        if (pending.length > 0) stream.send(joinFrames(pending))
      })
      .catch((error) => {
        count(`stream open failures: ${(error as Error).name}`)
        counters['frames dropped on open failure'] =
          (counters['frames dropped on open failure'] ?? 0) + entry.pending.length
        entry.opening = false
        entry.failedAtMs = performance.now()
        entry.pending.length = 0
      })
  }

  /** Sends what this turn gathered for a peer (see FramesPerTurn). */
  function sendBatch(entry: Outbound, piece: Uint8Array | Uint8ArrayList, frameCount: number): void {
    const stream = entry.stream
    if (stream === undefined || !writable(stream)) {
      counters['frames dropped: stream closed before the turn ended'] =
        (counters['frames dropped: stream closed before the turn ended'] ?? 0) + frameCount
      return
    }
    if (frameCount > 1) count('batches sent')
    try {
      if (!stream.send(piece)) count('send returned false')
    } catch {
      counters['frames dropped: send threw'] = (counters['frames dropped: send threw'] ?? 0) + frameCount
      entry.stream = undefined
    }
  }

  return {
    libp2p,
    self,
    addresses: () => libp2p.getMultiaddrs().map((address) => address.toString()),
    send(to, protocol, body) {
      if (to === self) {
        // No wire in between: not encoded (a proposer's accept to its own acceptor, and the reply).
        queueMicrotask(() => deliver(self, protocol, body))
        return
      }
      const frame = encodeFrame(protocol, body)
      let entry = outbound.get(to)
      if (entry === undefined) {
        const created: Outbound = {
          stream: undefined,
          pending: [],
          opening: false,
          failedAtMs: -Infinity,
          batch: new FramesPerTurn((piece, frameCount) => sendBatch(created, piece, frameCount)),
        }
        entry = created
        outbound.set(to, entry)
      }
      const stream = entry.stream
      count(`sent ${protocol}`)
      if (stream !== undefined && writable(stream)) {
        if (stream.writeBufferLength + entry.batch.bytes > writeBufferBytesMax)
          return count('frames dropped: write buffer full')
        // The frames for one peer of this turn go to its stream in one send.
        entry.batch.push(frame)
        return
      }
      if (stream !== undefined) count(`send on stream ${stream.status}/${stream.writeStatus}`)
      // An unreachable peer is not redialled for every message; the protocols retry on their own.
      if (performance.now() - entry.failedAtMs < redialBackoffMs)
        return count('frames dropped: redial backoff')
      if (!entry.opening && !addressed.has(to) && libp2p.getConnections(peerIdFromString(to)).length === 0)
        // Without an address libp2p would look the peer up in the DHT and hold every frame for
        // it until the dial times out, even once membership tells us where the peer is.
        return count('frames dropped: no address yet')
      if (entry.pending.length < pendingFramesPerPeerMax) entry.pending.push(frame)
      else count('frames dropped: pending full')
      if (!entry.opening) open(to)
    },
    onMessage(handler) {
      handlers.push(handler)
    },
    onPeerConnected(handler) {
      libp2p.addEventListener('peer:connect', (event) => handler(event.detail.toString()))
    },
    onPeerDisconnected(handler) {
      libp2p.addEventListener('peer:disconnect', (event) => handler(event.detail.toString()))
    },
    async dial(addresses, timeoutMs = dialTimeoutMs) {
      const peers: string[] = []
      await Promise.all(
        addresses.map(async (address) => {
          try {
            const connection = await libp2p.dial(multiaddr(address), {
              signal: AbortSignal.timeout(timeoutMs),
            })
            peers.push(connection.remotePeer.toString())
          } catch (error) {
            log(`could not reach ${address}: ${(error as Error).message.slice(0, 120)}`)
          }
        }),
      )
      return peers
    },
    addAddresses(peer, addresses) {
      if (peer === self || addresses.length === 0) return
      try {
        void libp2p.peerStore
          .merge(peerIdFromString(peer), { multiaddrs: addresses.map((address) => multiaddr(address)) })
          .then(() => {
            if (addressed.size >= addressedPeersMax) addressed.clear()
            addressed.add(peer)
          })
          .catch(() => {})
      } catch {
        // A peer announcing unparsable addresses just stays unreachable by address.
      }
    },
    refuse,
    stats: () => ({ ...counters }),
    async stop() {
      await libp2p.stop()
    },
  }
}

interface Outbound {
  stream: Stream | undefined
  /** Frames waiting for the stream to open. */
  pending: Uint8Array[]
  opening: boolean
  failedAtMs: number
  /** Frames for the open stream, sent together at the end of the turn. */
  batch: FramesPerTurn
}

function writable(stream: Stream | undefined): boolean {
  return stream !== undefined && stream.status === 'open' && stream.writeStatus === 'writable'
}

const multistreamHeader = new TextEncoder().encode('\x13/multistream/1.0.0\n')

/**
 * Largest piece the cluster-key layer encrypts at once. Its cipher (the `xsalsa20` package) keeps
 * one WebAssembly memory for all connections and grows it for a large input; after that, the other
 * connections' views of the memory are stale and each of their updates grows it again, until it
 * passes its 64 MiB maximum and the process dies. Inputs below its initial 640 KiB never grow it,
 * and a stream cipher gives the same bytes whether it encrypts a buffer whole or in pieces.
 */
export const pnetPieceBytesMax = 256 * 1024

function encryptInPieces(stream: unknown): void {
  type Pieces = { byteLength: number; sublist(start: number, end: number): Pieces }
  type Sent = { sentBytes: number; canSendMore: boolean }
  const box = stream as { sendData?: (data: Pieces) => Sent }
  const sendData = box.sendData?.bind(stream)
  if (sendData === undefined) return
  box.sendData = (data) => {
    if (data.byteLength <= pnetPieceBytesMax) return sendData(data)
    let canSendMore = true
    for (let start = 0; start < data.byteLength; start += pnetPieceBytesMax)
      canSendMore = sendData(
        data.sublist(start, Math.min(start + pnetPieceBytesMax, data.byteLength)),
      ).canSendMore
    return { sentBytes: data.byteLength, canSendMore }
  }
}

/**
 * Closes a connection whose muxer was aborted. libp2p leaves such a connection open, its muxer
 * refusing every new stream ("The connection muxer is closed"): after a peer opened too many early
 * streams, every request to it failed at once for as long as the test ran (9 s), and no new
 * connection was dialled, since libp2p still counted this one.
 */
function closeWithMuxer(muxer: StreamMuxer, connection: MessageStream): void {
  const abort = muxer.abort.bind(muxer)
  muxer.abort = (error) => {
    abort(error)
    connection.abort(error)
  }
}

/**
 * Hands what the connection's encrypter sends in one call to its transport as one buffer. Noise
 * gives each message as two pieces (its 2-byte length, then the ciphertext), and the TCP and
 * WebSockets transports write each piece on its own: two system calls per message, and on
 * loopback the receiver woke for the length alone and again for the rest. (The cluster-key layer
 * encrypts the pieces as one buffer, so a cluster with a key already wrote them together.)
 */
function sendInOneWrite(stream: unknown): void {
  const box = stream as { sendData?: (data: Uint8ArrayList) => unknown }
  const sendData = box.sendData?.bind(stream)
  if (sendData === undefined) return
  // `subarray` copies the pieces into one buffer (a lone piece is returned as it is).
  box.sendData = (data) => sendData(new Uint8ArrayList(data.subarray()))
}

/**
 * Shows the first chunk that arrives on `stream` to `inspect` without taking it from the stream's
 * reader. A libp2p message stream hands buffered bytes to whichever 'message' listeners exist when
 * they arrive; if ours is the only one (the upgrader attaches its own a little later), the bytes
 * would be ours alone and the handshake would wait for them until it times out. So when no other
 * reader saw them, they go back to the front of the stream's buffer for the next reader.
 */
function peekFirstMessage(stream: MessageStream, inspect: (bytes: Uint8Array) => void): void {
  const onMessage = (event: StreamMessageEvent) => {
    stream.removeEventListener('message', onMessage)
    const chunk = event.data
    if (stream.listenerCount('message') === 0) stream.unshift(chunk)
    inspect(chunk instanceof Uint8Array ? chunk : chunk.subarray())
  }
  stream.addEventListener('message', onMessage)
}

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  if (bytes.length < prefix.length) return false
  for (let index = 0; index < prefix.length; index++) if (bytes[index] !== prefix[index]) return false
  return true
}

export function short(peer: string): string {
  return peer.length > 12 ? `…${peer.slice(-8)}` : peer
}
