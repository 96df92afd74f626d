/**
 * The TypeScript client of the coordination store, used by the rest of the system and by
 * `fabric kv`. It connects to one or more nodes over libp2p and sends each request to one of them,
 * which runs the protocol on the client's behalf. Requests for a key go to the node of the list
 * closest to the key's shard (the shard's leader, and a replica, when the list holds every
 * server), so one proposer keeps serving a key and skips the prepare round (see coord/store.ts);
 * a node that fails is passed over for `nodeRetryAfterMs`.
 *
 *   const client = await connectClient({ nodes: ['/ip4/127.0.0.1/tcp/4001/p2p/12D3…'], clusterKey })
 *   const { version } = await client.put('config/x', new TextEncoder().encode('1'))
 *   const swapped = await client.cas('config/x', version, new TextEncoder().encode('2'))
 *   const lease = await client.acquire('lock/a', { holder: 'worker-7', ttlMs: 2000 })
 *   await client.close()
 */

import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import type { Operation, OperationResult } from '../coord/register.ts'
import { nodesByDistance, shardCountDefault, shardOfKey } from '../coord/shards.ts'
import { leaseMarginRatio, operationTimeoutMsDefault } from '../coord/store.ts'
import {
  FabricError,
  InvalidArgumentError,
  NodeUnreachableError,
  StoreOverloadedError,
  StoreTimeoutError,
} from '../errors.ts'
import { loadClusterKey } from './cluster-key.ts'
import { clientProtocol, clientProtocols, createNetwork, type Network } from './network.ts'
import { createFrameReader, decodeEnvelope, encodeFrame } from './wire.ts'
import { FramesPerTurn } from './write-coalescing.ts'

export interface ClientOptions {
  /** Multiaddrs of nodes, each ending in /p2p/<peer id>. */
  nodes: readonly string[]
  /** The cluster key: 64 hex digits, a key file's path, or the encoded pre-shared key. */
  clusterKey?: Uint8Array | string
  timeoutMs?: number
  log?: (line: string) => void
  /**
   * A libp2p network to send the requests over (a browser node's own); the client then leaves it
   * running when it closes. Without it the client starts a network of its own.
   */
  network?: Network
}

export interface Lease {
  key: string
  holder: string
  token: number
  ttlMs: number
  /** `performance.now()` after which the holder must assume it no longer holds the lease. */
  validUntilMs: number
}

export interface CallOptions {
  signal?: AbortSignal
  timeoutMs?: number
}

export interface FabricClient {
  get(key: string, options?: CallOptions): Promise<{ version: number; value: Uint8Array | null }>
  put(key: string, value: Uint8Array, options?: CallOptions): Promise<{ version: number }>
  /** Writes `value` if the key is at `expectedVersion`; returns the key's state either way. */
  cas(
    key: string,
    expectedVersion: number,
    value: Uint8Array,
    options?: CallOptions,
  ): Promise<{ ok: boolean; version: number; value: Uint8Array | null }>
  /** Takes the lease, or returns null with the current holder when someone else holds it. */
  acquire(key: string, lease: { holder: string; ttlMs: number }, options?: CallOptions): Promise<Lease | null>
  /** Extends the lease; returns null when it was lost (expired and taken, or released). */
  renew(lease: Lease, options?: CallOptions): Promise<Lease | null>
  release(lease: Lease, options?: CallOptions): Promise<boolean>
  /** Runs one raw operation. */
  run(key: string, operation: Operation, options?: CallOptions): Promise<OperationResult>
  close(): Promise<void>
}

interface Connection {
  peer: string
  stream: Stream | undefined
  opening: Promise<Stream> | undefined
  /** `performance.now()` before which this node is tried only after the others. */
  avoidUntilMs: number
  /** Request frames waiting for the end of this turn (made with the stream). */
  queued: FramesPerTurn | undefined
}

/** How long a node that failed a request is tried last. */
export const nodeRetryAfterMs = 1000

export async function connectClient(options: ClientOptions): Promise<FabricClient> {
  if (options.nodes.length === 0) throw new InvalidArgumentError('Expected at least one node address')
  const ownNetwork = options.network === undefined
  const network: Network =
    options.network ??
    (await createNetwork({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [],
      clusterKey:
        typeof options.clusterKey === 'string' ? loadClusterKey(options.clusterKey) : options.clusterKey,
      protocols: new Set(['client']),
      log: options.log ?? (() => {}),
      client: true,
    }))
  const connections: Connection[] = options.nodes.map((address) => {
    const peer = multiaddr(address)
      .getComponents()
      .find((component) => component.name === 'p2p')?.value
    if (peer === undefined) throw new InvalidArgumentError(`Expected ${address} to end in /p2p/<peer id>`)
    network.addAddresses(peer, [address])
    return { peer, stream: undefined, opening: undefined, avoidUntilMs: 0, queued: undefined }
  })
  const byPeer = new Map(connections.map((connection) => [connection.peer, connection]))
  /** Per shard, the connections from closest to farthest from the shard's id. */
  const preference = new Map<number, Connection[]>()
  const peers = connections.map((connection) => connection.peer)

  /** The nodes to try for `key`, in order: closest to its shard first, recently failed ones last. */
  function nodesFor(key: string): Connection[] {
    const shard = shardOfKey(key, shardCountDefault)
    let ordered = preference.get(shard)
    if (ordered === undefined) {
      ordered = nodesByDistance(shard, shardCountDefault, peers).map((peer) => byPeer.get(peer)!)
      preference.set(shard, ordered)
    }
    const now = performance.now()
    if (ordered.every((connection) => connection.avoidUntilMs <= now)) return ordered
    return [
      ...ordered.filter((connection) => connection.avoidUntilMs <= now),
      ...ordered.filter((connection) => connection.avoidUntilMs > now),
    ]
  }
  const pending = new Map<
    number,
    { resolve(result: OperationResult): void; reject(error: Error): void; peer: string }
  >()
  let nextId = 1
  let grants = 0
  const clientId = Math.random().toString(36).slice(2)

  function failPeer(peer: string, error: Error): void {
    for (const [id, request] of pending)
      if (request.peer === peer) {
        pending.delete(id)
        request.reject(error)
      }
  }

  async function streamTo(connection: Connection): Promise<Stream> {
    if (connection.stream !== undefined && connection.stream.status === 'open') return connection.stream
    if (connection.opening !== undefined) return connection.opening
    connection.opening = (async () => {
      const { peerIdFromString } = await import('@libp2p/peer-id')
      const stream = await network.libp2p.dialProtocol(peerIdFromString(connection.peer), clientProtocol, {
        signal: AbortSignal.timeout(3000),
      })
      const reader = createFrameReader()
      stream.addEventListener('message', (event) => {
        const data = event.data
        for (const payload of reader.push(data instanceof Uint8Array ? data : data.subarray())) {
          const body = decodeEnvelope(payload, clientProtocols).b as {
            id: number
            result?: OperationResult
            error?: { code: string; message: string }
          }
          const request = pending.get(body.id)
          if (request === undefined) continue
          pending.delete(body.id)
          if (body.result !== undefined) request.resolve(body.result)
          else request.reject(remoteError(body.error))
        }
      })
      stream.addEventListener('close', () => {
        if (connection.stream === stream) connection.stream = undefined
        failPeer(
          connection.peer,
          new NodeUnreachableError(
            `lost the connection to node ${connection.peer}; the operation may or may not have taken effect`,
          ),
        )
      })
      connection.stream = stream
      return stream
    })()
    try {
      return await connection.opening
    } finally {
      connection.opening = undefined
    }
  }

  /** The requests of one turn to one node leave in one send (see FramesPerTurn). */
  function queueRequest(connection: Connection, stream: Stream, frame: Uint8Array): void {
    if (stream.status !== 'open') throw new Error(`stream is ${stream.status}`)
    connection.queued ??= new FramesPerTurn((piece) => {
      try {
        if (connection.stream === undefined) throw new Error('stream closed')
        connection.stream.send(piece)
      } catch (error) {
        failPeer(
          connection.peer,
          new NodeUnreachableError(`could not send to node ${connection.peer}: ${(error as Error).message}`),
        )
      }
    })
    connection.queued.push(frame)
  }

  async function run(
    key: string,
    operation: Operation,
    callOptions: CallOptions = {},
  ): Promise<OperationResult> {
    const timeoutMs = callOptions.timeoutMs ?? options.timeoutMs ?? operationTimeoutMsDefault
    callOptions.signal?.throwIfAborted()
    // Try nodes in turn until one takes the request; once sent, the outcome is the node's.
    let lastError: Error | undefined
    for (const connection of nodesFor(key)) {
      const avoid = () => {
        connection.avoidUntilMs = performance.now() + nodeRetryAfterMs
      }
      let stream: Stream
      try {
        stream = await streamTo(connection)
      } catch (error) {
        lastError = error as Error
        avoid()
        continue
      }
      const id = nextId++
      return await new Promise<OperationResult>((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id)
          reject(new StoreTimeoutError(key, timeoutMs))
        }, timeoutMs + 500)
        const onAbort = () => {
          pending.delete(id)
          clearTimeout(timer)
          reject(callOptions.signal!.reason)
        }
        callOptions.signal?.addEventListener('abort', onAbort, { once: true })
        pending.set(id, {
          peer: connection.peer,
          resolve: (result) => {
            clearTimeout(timer)
            callOptions.signal?.removeEventListener('abort', onAbort)
            resolve(result)
          },
          reject: (error) => {
            clearTimeout(timer)
            callOptions.signal?.removeEventListener('abort', onAbort)
            // The next requests go elsewhere if this node is in trouble.
            if (!(error instanceof StoreTimeoutError) || error.code !== 'STORE_TIMEOUT') avoid()
            reject(error)
          },
        })
        try {
          queueRequest(connection, stream, encodeFrame('client', { id, key, operation, timeoutMs }))
        } catch (error) {
          pending.delete(id)
          clearTimeout(timer)
          avoid()
          reject(
            new NodeUnreachableError(
              `could not send to node ${connection.peer}: ${(error as Error).message}`,
            ),
          )
        }
      })
    }
    throw new NodeUnreachableError(
      `none of the ${connections.length} nodes answered (${lastError?.message ?? 'no error'}); check the addresses and the cluster key`,
    )
  }

  const grant = () => `${clientId}/${grants++}`

  return {
    run,
    async get(key, callOptions) {
      const result = await run(key, { kind: 'get' }, callOptions)
      return { version: result.version, value: result.value }
    },
    async put(key, value, callOptions) {
      const result = await run(key, { kind: 'put', value }, callOptions)
      return { version: result.version }
    },
    async cas(key, expectedVersion, value, callOptions) {
      const result = await run(key, { kind: 'cas', expectedVersion, value }, callOptions)
      return { ok: result.ok, version: result.version, value: result.value }
    },
    async acquire(key, lease, callOptions) {
      const startedMs = performance.now()
      const result = await run(
        key,
        { kind: 'acquire', holder: lease.holder, ttlMs: lease.ttlMs, grant: grant() },
        callOptions,
      )
      if (!result.ok) return null
      return {
        key,
        holder: lease.holder,
        token: result.token,
        ttlMs: lease.ttlMs,
        validUntilMs: startedMs + lease.ttlMs * (1 - leaseMarginRatio),
      }
    },
    async renew(lease, callOptions) {
      const startedMs = performance.now()
      const result = await run(
        lease.key,
        { kind: 'renew', holder: lease.holder, token: lease.token, grant: grant() },
        callOptions,
      )
      if (!result.ok) return null
      return { ...lease, validUntilMs: startedMs + lease.ttlMs * (1 - leaseMarginRatio) }
    },
    async release(lease, callOptions) {
      const result = await run(
        lease.key,
        { kind: 'release', holder: lease.holder, token: lease.token },
        callOptions,
      )
      return result.ok
    },
    async close() {
      for (const [id, request] of pending) {
        pending.delete(id)
        request.reject(new NodeUnreachableError('client closed'))
      }
      if (ownNetwork) await network.stop()
    },
  }
}

function remoteError(body: { code: string; message: string } | undefined): Error {
  if (body?.code === 'STORE_TIMEOUT') {
    const error = new StoreTimeoutError('?', 0)
    error.message = body.message
    return error
  }
  if (body?.code === 'STORE_OVERLOADED') return new StoreOverloadedError(0)
  return new FabricError(body?.code ?? 'INTERNAL', body?.message ?? 'unknown error from node')
}
