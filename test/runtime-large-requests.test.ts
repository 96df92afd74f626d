/**
 * Runtime requests too large for the shared stream (saves over 64 KiB, programs) each open a stream
 * of their own (fabric/runtime/node-services.ts). Many at once to one peer must all arrive: neither
 * a burst on a connection that was just made nor more than libp2p opens at once may lose them. And
 * a connection whose muxer failed must give way to a new one (fabric/net/network.ts).
 */

import { peerIdFromString } from '@libp2p/peer-id'
import { afterEach, describe, expect, it } from 'vitest'
import { type FabricNode, startNode } from '../fabric/net/node.ts'
import type { RuntimeMessage } from '../fabric/runtime/messages.ts'
import { libp2pMessenger, ownStreamRequestsPerPeerMax } from '../fabric/runtime/node-services.ts'

const started: FabricNode[] = []

afterEach(async () => {
  await Promise.all(started.splice(0).map((node) => node.stop()))
})

/** Two nodes; the receiver keeps the size of every save it is sent, by sequence. */
async function pair() {
  const sender = await startNode({ listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], log: () => {} })
  const receiver = await startNode({ listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], log: () => {} })
  started.push(sender, receiver)
  const received = new Map<number, number>()
  libp2pMessenger(receiver, () => {}).serve(async (_from, message) => {
    if (message.type === 'save') received.set(message.sequence, message.bytes.length)
    return { type: 'ok' }
  })
  return { sender, receiver, received, messenger: libp2pMessenger(sender, () => {}) }
}

function save(sequence: number, bytes: number): RuntimeMessage {
  return {
    type: 'save',
    pid: 'p',
    tid: String(sequence),
    epoch: 1,
    sequence,
    baseSequence: null,
    bytes: new Uint8Array(bytes).fill(sequence % 251),
  }
}

/** Sends `count` saves of `bytes` at once and returns their replies' types. */
async function burst(setup: Awaited<ReturnType<typeof pair>>, count: number, bytes: number) {
  const replies = await Promise.allSettled(
    Array.from({ length: count }, (_, index) =>
      setup.messenger.request(setup.receiver.peerId, save(index + 1, bytes)),
    ),
  )
  return replies.map((reply) => (reply.status === 'fulfilled' ? reply.value.type : reply.reason.message))
}

describe('runtime requests on streams of their own', () => {
  it('16 saves of 1 MiB sent at once on a connection just made all arrive', async () => {
    const setup = await pair()
    await setup.sender.network.dial(setup.receiver.addresses())
    // libp2p aborted the whole connection when a peer opened more than 10 streams before the
    // receiving side listened for them.
    const replies = await burst(setup, 16, 1 << 20)
    expect(replies).toEqual(Array(16).fill('ok'))
    expect([...setup.received.values()]).toEqual(Array(16).fill(1 << 20))
  })

  it(`more saves at once to one peer than libp2p opens streams for all arrive, ${ownStreamRequestsPerPeerMax} at a time`, async () => {
    const setup = await pair()
    await setup.sender.network.dial(setup.receiver.addresses())
    const count = 200
    const replies = await burst(setup, count, 100 * 1024)
    expect(replies).toEqual(Array(count).fill('ok'))
    expect(setup.received.size).toBe(count)
    // The connection still serves what comes next.
    expect(await burst(setup, 4, 100 * 1024)).toEqual(Array(4).fill('ok'))
  })

  it('a connection whose muxer was aborted is replaced by a new one', async () => {
    const setup = await pair()
    await setup.sender.network.dial(setup.receiver.addresses())
    expect(await burst(setup, 2, 100 * 1024)).toEqual(['ok', 'ok'])
    const peer = peerIdFromString(setup.receiver.peerId)
    const [connection] = setup.sender.network.libp2p.getConnections(peer)
    // As libp2p does on a muxer error (too many early streams, a malformed frame).
    ;(connection as unknown as { muxer: { abort(error: Error): void } }).muxer.abort(new Error('test'))
    // libp2p kept such a connection open, every new stream on it refused, and dialled no other.
    const replies = await burst(setup, 2, 100 * 1024)
    expect(replies).toEqual(['ok', 'ok'])
    expect(setup.sender.network.libp2p.getConnections(peer)).not.toContain(connection)
  })
})
