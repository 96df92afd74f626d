/**
 * The libp2p side of a node: TCP and WebSockets, noise, yamux, identify, ping, a kad-dht under a
 * private protocol prefix, gossipsub, and the private-network protector keyed by the cluster key.
 * Fabric messages travel as frames (see wire.ts) on one long-lived stream per peer and direction.
 */

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import type { Connection, ConnectionProtector, PrivateKey, Stream } from '@libp2p/interface'
import { kadDHT } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p, type Libp2p } from 'libp2p'
import { MessageRejectedError } from '../errors.ts'
import { createFrameReader, decodeEnvelope, encodeFrame } from './wire.ts'

export const wireProtocol = '/fabric/wire/1.0.0'
export const clientProtocol = '/fabric/client/1.0.0'
export const dhtProtocol = '/fabric/kad/1.0.0'
export const membersTopic = 'fabric/members/1'
/** Messages are dropped (the protocols tolerate loss) rather than buffered past this per peer. */
export const writeBufferBytesMax = 8 * 1024 * 1024
export const refusalLogIntervalMs = 1000
export const redialBackoffMs = 500

export type Log = (line: string) => void

export interface Network {
  libp2p: Libp2p
  self: string
  addresses(): string[]
  /** Sends a fabric message; silently dropped when the peer is unreachable (callers retry). */
  send(to: string, protocol: string, body: unknown): void
  onMessage(handler: (from: string, protocol: string, body: unknown) => void): void
  /** Dials multiaddrs and returns the peer ids that answered. */
  dial(addresses: readonly string[]): Promise<string[]>
  addAddresses(peer: string, addresses: readonly string[]): void
  /** Logs a refused message, at most once per second per peer. */
  refuse(from: string, reason: string): void
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
}

export async function createNetwork(options: NetworkOptions): Promise<Network> {
  const { log } = options
  const lastRefusalMs = new Map<string, number>()
  const refuse = (from: string, reason: string) => {
    const now = performance.now()
    if (now - (lastRefusalMs.get(from) ?? -Infinity) < refusalLogIntervalMs) return
    lastRefusalMs.set(from, now)
    log(`refused message from ${short(from)}: ${reason}`)
  }
  const protector =
    options.clusterKey === undefined
      ? undefined
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
              const onRaw = (event: { data: Uint8Array | { subarray(): Uint8Array } }) => {
                connection.removeEventListener('message', onRaw)
                const bytes = event.data instanceof Uint8Array ? event.data : event.data.subarray()
                if (startsWith(bytes, multistreamHeader))
                  refuseConnection('peer does not use the cluster key')
              }
              connection.addEventListener('message', onRaw)
              let wrapped: Awaited<ReturnType<typeof inner.protect>>
              try {
                wrapped = await inner.protect(connection, abort)
              } catch (error) {
                refuseConnection(`cluster key handshake failed (${(error as Error).message.slice(0, 80)})`)
                throw error
              }
              const onDecrypted = (event: { data: Uint8Array | { subarray(): Uint8Array } }) => {
                wrapped.removeEventListener('message', onDecrypted)
                const bytes = event.data instanceof Uint8Array ? event.data : event.data.subarray()
                if (
                  !startsWith(
                    bytes,
                    multistreamHeader.subarray(0, Math.min(bytes.length, multistreamHeader.length)),
                  )
                )
                  refuseConnection('peer has a different cluster key')
              }
              wrapped.addEventListener('message', onDecrypted)
              return wrapped
            },
          }
        }
  const libp2p = await createLibp2p({
    privateKey: options.privateKey,
    addresses: { listen: options.client ? [] : [...options.listen] },
    transports: [tcp(), webSockets()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionProtector: protector,
    connectionMonitor: { enabled: false },
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({ protocol: dhtProtocol, clientMode: options.client === true }),
      pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false }),
    },
  })
  const self = libp2p.peerId.toString()
  const handlers: ((from: string, protocol: string, body: unknown) => void)[] = []
  const outbound = new Map<
    string,
    { stream: Stream | undefined; pending: Uint8Array[]; opening: boolean; failedAtMs: number }
  >()

  const deliver = (from: string, protocol: string, body: unknown) => {
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
    libp2p
      .dialProtocol(peerIdFromString(to), wireProtocol, { signal: AbortSignal.timeout(3000) })
      .then((stream) => {
        entry.opening = false
        const previous = entry.stream
        if (previous !== undefined && previous !== stream) previous.abort(new Error('replaced'))
        entry.stream = stream
        stream.addEventListener('close', () => {
          if (entry.stream === stream) entry.stream = undefined
        })
        for (const frame of entry.pending.splice(0)) stream.send(frame)
      })
      .catch(() => {
        entry.opening = false
        entry.failedAtMs = performance.now()
        entry.pending.length = 0
      })
  }

  return {
    libp2p,
    self,
    addresses: () => libp2p.getMultiaddrs().map((address) => address.toString()),
    send(to, protocol, body) {
      const frame = encodeFrame(protocol, body)
      if (to === self) {
        queueMicrotask(() => deliver(self, protocol, body))
        return
      }
      let entry = outbound.get(to)
      if (entry === undefined) {
        entry = { stream: undefined, pending: [], opening: false, failedAtMs: -Infinity }
        outbound.set(to, entry)
      }
      const stream = entry.stream
      if (stream !== undefined && stream.status === 'open' && stream.writeStatus === 'writable') {
        if (stream.writeBufferLength > writeBufferBytesMax) return
        try {
          stream.send(frame)
        } catch {
          entry.stream = undefined
        }
        return
      }
      // An unreachable peer is not redialled for every message; the protocols retry on their own.
      if (performance.now() - entry.failedAtMs < redialBackoffMs) return
      if (entry.pending.length < 1024) entry.pending.push(frame)
      if (!entry.opening) open(to)
    },
    onMessage(handler) {
      handlers.push(handler)
    },
    async dial(addresses) {
      const peers: string[] = []
      await Promise.all(
        addresses.map(async (address) => {
          try {
            const connection = await libp2p.dial(multiaddr(address), { signal: AbortSignal.timeout(5000) })
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
          .catch(() => {})
      } catch {
        // A peer announcing unparsable addresses just stays unreachable by address.
      }
    },
    refuse,
    async stop() {
      await libp2p.stop()
    },
  }
}

const multistreamHeader = new TextEncoder().encode('\x13/multistream/1.0.0\n')

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  if (bytes.length < prefix.length) return false
  for (let index = 0; index < prefix.length; index++) if (bytes[index] !== prefix[index]) return false
  return true
}

export function short(peer: string): string {
  return peer.length > 12 ? `…${peer.slice(-8)}` : peer
}
