/**
 * The runtime's services on a real fabric node: the coordination store (the node's own CASPaxos
 * proposer), the membership view, and request/response messaging over the libp2p protocol
 * `/fabric/runtime/1.0.0` (one stream per request; a length-prefixed CBOR frame each way, its length
 * checked before decoding, its shape checked before any handler sees it).
 */

import type { Libp2p, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { Decoder, Encoder } from 'cbor-x'
import type { Operation, OperationResult } from '../coord/register.ts'
import { MessageRejectedError } from '../errors.ts'
import type { FabricNode } from '../net/node.ts'
import { peerTurns } from '../net/peer-turns.ts'
import { createFrameReader } from '../net/wire.ts'
import { isRuntimeMessage, isRuntimeReply } from './message-validation.ts'
import type { RuntimeMessage, RuntimeReply } from './messages.ts'
import type { ClusterView, CoordinationClient, Messenger, PeerInfo, Register } from './services.ts'

export const runtimeProtocol = '/fabric/runtime/1.0.0'
export const runtimeWireVersion = 1
/** Largest runtime frame: a context save of a thread's whole memory travels in one. */
export const runtimeFrameBytesMax = 256 * 1024 * 1024
export const runtimeRequestTimeoutMs = 30_000
export const storeOperationTimeoutMs = 5000
export const runtimeInboundStreamsMax = 256

const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false } as never)
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true } as never)

const submitOptions = { timeoutMs: storeOperationTimeoutMs }

export function storeClient(node: FabricNode): CoordinationClient {
  let grants = 0
  const grant = () => `${node.peerId}/${grants++}`
  const run = (key: string, operation: Operation) =>
    new Promise<Register>((resolve, reject) => {
      node.store.submit(key, operation, submitOptions, (outcome) => {
        if (outcome.ok) resolve(outcome.result satisfies OperationResult)
        else reject(outcome.error)
      })
    })
  return {
    get: (key) => run(key, { kind: 'get' }),
    put: (key, value) => run(key, { kind: 'put', value }),
    cas: (key, expectedVersion, value) => run(key, { kind: 'cas', expectedVersion, value }),
    acquire: (key, holder, ttlMs) => run(key, { kind: 'acquire', holder, ttlMs, grant: grant() }),
    renew: (key, holder, token) => run(key, { kind: 'renew', holder, token, grant: grant() }),
    release: (key, holder, token) => run(key, { kind: 'release', holder, token }),
    delete: (key) => run(key, { kind: 'delete' }),
    entryCas: (key, entry, expectedVersion, value) =>
      run(key, { kind: 'entry-cas', entry, expectedVersion, value }),
    entryGet: (key, entry) => run(key, { kind: 'entry-get', entry }),
    forget: (groups) => node.store.forget(groups),
  }
}

export function clusterView(node: FabricNode): ClusterView {
  return {
    self: node.peerId,
    live: () =>
      node.membership
        .members()
        .filter((member) => member.status === 'alive')
        .map((member): PeerInfo => ({ id: member.id, kind: member.kind, capacity: member.capacity })),
    onDeparture: (listener) => {
      let active = true
      node.membership.onChange(({ member }) => {
        if (active && (member.status === 'dead' || member.status === 'left')) listener(member.id)
      })
      return () => {
        active = false
      }
    },
  }
}

function frame(body: unknown): Uint8Array {
  const payload = encoder.encode({ v: runtimeWireVersion, b: body }) as Uint8Array
  if (payload.length > runtimeFrameBytesMax) {
    throw new MessageRejectedError('too-large', `refusing to send a ${payload.length}-byte runtime message`)
  }
  const out = new Uint8Array(4 + payload.length)
  new DataView(out.buffer).setUint32(0, payload.length)
  out.set(payload, 4)
  return out
}

/** Reads exactly one frame from `stream`; rejects on an oversized, malformed or late frame. */
function readFrame(stream: Stream, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const parts: Uint8Array[] = []
    let received = 0
    let expected = -1
    const timer = setTimeout(() => finish(new Error(`no runtime reply within ${timeoutMs} ms`)), timeoutMs)
    const finish = (error: Error | null, value?: unknown) => {
      clearTimeout(timer)
      stream.removeEventListener('message', onMessage)
      stream.removeEventListener('close', onClose)
      if (error === null) resolve(value)
      else reject(error)
    }
    const onClose = () => finish(new Error('stream closed before a whole runtime frame arrived'))
    const onMessage = (event: { data: Uint8Array | { subarray(): Uint8Array } }) => {
      const chunk = event.data instanceof Uint8Array ? event.data : event.data.subarray()
      parts.push(chunk)
      received += chunk.length
      if (expected < 0 && received >= 4) {
        const head = new Uint8Array(4)
        let filled = 0
        for (const part of parts) {
          const take = Math.min(4 - filled, part.length)
          head.set(part.subarray(0, take), filled)
          filled += take
          if (filled === 4) break
        }
        expected = new DataView(head.buffer).getUint32(0)
        if (expected > runtimeFrameBytesMax) {
          return finish(
            new MessageRejectedError('too-large', `runtime frame of ${expected} bytes is over the limit`),
          )
        }
      }
      if (expected >= 0 && received >= 4 + expected) {
        const whole = new Uint8Array(received)
        let offset = 0
        for (const part of parts) {
          whole.set(part, offset)
          offset += part.length
        }
        let envelope: { v?: unknown; b?: unknown }
        try {
          envelope = decoder.decode(whole.subarray(4, 4 + expected))
        } catch (error) {
          return finish(
            new MessageRejectedError('malformed', `undecodable runtime frame: ${(error as Error).message}`),
          )
        }
        if (envelope?.v !== runtimeWireVersion) {
          return finish(
            new MessageRejectedError(
              'unknown-version',
              `runtime frame version ${String(envelope?.v).slice(0, 20)}`,
            ),
          )
        }
        finish(null, envelope.b)
      }
    }
    stream.addEventListener('message', onMessage)
    stream.addEventListener('close', onClose)
  })
}

async function sendFrame(stream: Stream, body: unknown): Promise<void> {
  if (!stream.send(frame(body))) await stream.onDrain()
}

/** Sends one runtime request to `to` over `libp2p` and returns its reply (clients use this too). */
export async function requestRuntime(
  libp2p: Libp2p,
  to: string,
  message: RuntimeMessage,
): Promise<RuntimeReply> {
  const stream = await libp2p.dialProtocol(peerIdFromString(to), runtimeProtocol, {
    signal: AbortSignal.timeout(5000),
  })
  try {
    const reply = readFrame(stream, runtimeRequestTimeoutMs)
    // Awaited below; when the send fails first, its rejection must not go unhandled (that ends the node).
    reply.catch(() => {})
    await sendFrame(stream, message)
    const body = await reply
    if (!isRuntimeReply(body))
      throw new MessageRejectedError('malformed', `malformed runtime reply from ${to}`)
    return body
  } finally {
    void stream.close().catch(() => {})
  }
}

/**
 * Small runtime messages (a thread's start, its end, output, notices) share one long-lived stream
 * per peer, each request tagged with an id its reply carries: opening a stream per request costs a
 * protocol negotiation and several packets, more than the request itself. Requests whose body or
 * reply may be large (saves, programs) keep a stream of their own, so they never hold the small
 * ones up.
 */
export const runtimeMuxProtocol = '/fabric/runtime-mux/1.0.0'
/** Largest request sent on the shared stream; larger ones get their own stream. */
export const muxRequestBytesMax = 64 * 1024
/** Requests a peer may have in flight on one shared stream; more are refused. */
export const muxInFlightMax = 4096
/**
 * Requests on streams of their own in flight to one peer; the next wait for one to end. libp2p
 * refuses to open more than 64 outbound streams of one protocol to a peer: a node that sent 300
 * saves of 100 KiB at once to one replica had all but 64 fail at once.
 */
export const ownStreamRequestsPerPeerMax = 32
/** Request types whose replies may be large: they always get their own stream. */
const ownStreamTypes: ReadonlySet<string> = new Set(['fetch-saves', 'fetch-program', 'submit', 'attach'])

/** Frames to one peer in one turn of the event loop go out as one write, up to this many bytes. */
export const muxCoalescedBytesMax = 64 * 1024

/**
 * Sends frames on `stream`, those of one turn of the event loop as one write: each write costs an
 * encryption, a yamux frame and a system call, more than a small request itself.
 */
function coalescingSender(stream: Stream, onError: (error: Error) => void): (frame: Uint8Array) => void {
  let frames: Uint8Array[] = []
  let bytes = 0
  const flush = () => {
    const batch = frames
    const total = bytes
    frames = []
    bytes = 0
    if (batch.length === 0 || stream.status !== 'open') return
    let chunk = batch[0]!
    if (batch.length > 1) {
      chunk = new Uint8Array(total)
      let offset = 0
      for (const frame of batch) {
        chunk.set(frame, offset)
        offset += frame.length
      }
    }
    try {
      stream.send(chunk)
    } catch (error) {
      onError(error as Error)
    }
  }
  return (frame) => {
    if (frames.length === 0) queueMicrotask(flush)
    frames.push(frame)
    bytes += frame.length
    if (bytes >= muxCoalescedBytesMax) flush()
  }
}

interface MuxConnection {
  stream: Stream
  send: (frame: Uint8Array) => void
  pending: Map<number, { resolve: (reply: RuntimeReply) => void; reject: (error: Error) => void }>
}

function muxFrame(body: unknown): Uint8Array {
  return frame(body)
}

/** Splits `stream`'s bytes into runtime frames and hands each decoded body to `onBody`. */
function readMuxFrames(
  stream: Stream,
  onBody: (body: unknown) => void,
  onError: (error: Error) => void,
): void {
  const reader = createFrameReader()
  stream.addEventListener('message', (event) => {
    const data = event.data
    let frames: Uint8Array[]
    try {
      frames = reader.push(data instanceof Uint8Array ? data : data.subarray())
    } catch (error) {
      onError(error as Error)
      return
    }
    for (const payload of frames) {
      let envelope: { v?: unknown; b?: unknown }
      try {
        envelope = decoder.decode(payload)
      } catch (error) {
        onError(
          new MessageRejectedError('malformed', `undecodable runtime frame: ${(error as Error).message}`),
        )
        return
      }
      if (envelope?.v !== runtimeWireVersion) {
        onError(
          new MessageRejectedError(
            'unknown-version',
            `runtime frame version ${String(envelope?.v).slice(0, 20)}`,
          ),
        )
        return
      }
      onBody(envelope.b)
    }
  })
}

function muxClient(node: FabricNode) {
  const connections = new Map<string, Promise<MuxConnection>>()
  let nextId = 1
  const connect = (to: string): Promise<MuxConnection> => {
    let pending = connections.get(to)
    if (pending !== undefined) return pending
    pending = (async () => {
      const stream = await node.network.libp2p.dialProtocol(peerIdFromString(to), runtimeMuxProtocol, {
        signal: AbortSignal.timeout(5000),
      })
      const connection: MuxConnection = { stream, send: () => {}, pending: new Map() }
      const fail = (error: Error) => {
        if (connections.get(to) === pending) connections.delete(to)
        for (const waiter of connection.pending.values()) waiter.reject(error)
        connection.pending.clear()
        stream.abort(error)
      }
      readMuxFrames(
        stream,
        (body) => {
          const { id, reply } = (body ?? {}) as { id?: unknown; reply?: unknown }
          const waiter = typeof id === 'number' ? connection.pending.get(id) : undefined
          if (waiter === undefined) return
          connection.pending.delete(id as number)
          if (isRuntimeReply(reply)) waiter.resolve(reply)
          else waiter.reject(new MessageRejectedError('malformed', `malformed runtime reply from ${to}`))
        },
        fail,
      )
      stream.addEventListener('close', () => fail(new Error(`runtime stream to ${to} closed`)))
      connection.send = coalescingSender(stream, fail)
      return connection
    })()
    connections.set(to, pending)
    pending.catch(() => {
      if (connections.get(to) === pending) connections.delete(to)
    })
    return pending
  }
  return async (to: string, message: RuntimeMessage): Promise<RuntimeReply | null> => {
    if (ownStreamTypes.has(message.type)) return null
    const id = nextId++
    const bytes = muxFrame({ id, message })
    if (bytes.length > muxRequestBytesMax) return null
    const connection = await connect(to)
    return new Promise<RuntimeReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        connection.pending.delete(id)
        reject(new Error(`no runtime reply from ${to} within ${runtimeRequestTimeoutMs} ms`))
      }, runtimeRequestTimeoutMs)
      connection.pending.set(id, {
        resolve: (reply) => {
          clearTimeout(timer)
          resolve(reply)
        },
        reject: (error) => {
          clearTimeout(timer)
          reject(error)
        },
      })
      connection.send(bytes)
    })
  }
}

/** Serves requests that arrive on a shared stream, each answered with its id as soon as it is done. */
function serveMux(
  stream: Stream,
  from: string,
  serveWith: (from: string, message: RuntimeMessage) => Promise<RuntimeReply>,
  log: (line: string) => void,
): void {
  let inFlight = 0
  // A peer that went away gets no answer, as if the request was lost.
  const send = coalescingSender(stream, () => {})
  const reply = (id: number, body: RuntimeReply) => {
    if (stream.status === 'open') send(muxFrame({ id, reply: body }))
  }
  readMuxFrames(
    stream,
    (body) => {
      const { id, message } = (body ?? {}) as { id?: unknown; message?: unknown }
      if (typeof id !== 'number' || !Number.isSafeInteger(id)) {
        log(`runtime: refused a request from ${from.slice(-8)}: no request id`)
        return
      }
      if (!isRuntimeMessage(message)) {
        reply(id, { type: 'refused', reason: 'malformed runtime message' })
        return
      }
      if (inFlight >= muxInFlightMax) {
        reply(id, { type: 'refused', reason: `more than ${muxInFlightMax} requests in flight` })
        return
      }
      inFlight++
      serveWith(from, message)
        .catch((error: Error): RuntimeReply => ({ type: 'refused', reason: error.message }))
        .then((answer) => {
          inFlight--
          reply(id, answer)
        })
    },
    (error) => {
      log(`runtime: refused a request from ${from.slice(-8)}: ${error.message}`)
      stream.abort(error)
    },
  )
}

export function libp2pMessenger(node: FabricNode, log: (line: string) => void): Messenger {
  let handler: ((from: string, message: RuntimeMessage) => Promise<RuntimeReply>) | null = null
  const requestShared = muxClient(node)
  const ownStreamTurn = peerTurns(ownStreamRequestsPerPeerMax)
  return {
    async request(to, message) {
      if (to === node.peerId) {
        if (handler === null) throw new Error('runtime is not serving yet')
        return handler(to, message)
      }
      return (
        (await requestShared(to, message)) ??
        ownStreamTurn(to, () => requestRuntime(node.network.libp2p, to, message))
      )
    },
    serve(serveWith) {
      handler = serveWith
      void node.network.libp2p.handle(
        runtimeMuxProtocol,
        (stream: Stream, connection) => serveMux(stream, connection.remotePeer.toString(), serveWith, log),
        { maxInboundStreams: runtimeInboundStreamsMax },
      )
      void node.network.libp2p.handle(
        runtimeProtocol,
        async (stream: Stream, connection) => {
          const from = connection.remotePeer.toString()
          try {
            const body = await readFrame(stream, runtimeRequestTimeoutMs)
            if (!isRuntimeMessage(body))
              throw new MessageRejectedError('malformed', 'malformed runtime message')
            let reply: RuntimeReply
            try {
              reply = await serveWith(from, body)
            } catch (error) {
              reply = { type: 'refused', reason: (error as Error).message }
            }
            await sendFrame(stream, reply)
            await stream.close()
          } catch (error) {
            log(`runtime: refused a request from ${from.slice(-8)}: ${(error as Error).message}`)
            stream.abort(error as Error)
          }
        },
        { maxInboundStreams: runtimeInboundStreamsMax },
      )
    },
  }
}
