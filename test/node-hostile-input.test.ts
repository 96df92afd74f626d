import { connect } from 'node:net'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { Encoder } from 'cbor-x'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { StoreMessage } from '../fabric/coord/messages.ts'
import { connectClient } from '../fabric/net/client.ts'
import { generateClusterKey, loadClusterKey } from '../fabric/net/cluster-key.ts'
import { createNetwork, type Network, wireProtocol } from '../fabric/net/network.ts'
import { type FabricNode, startNode } from '../fabric/net/node.ts'
import { encodeStoreMessage } from '../fabric/net/store-codec.ts'
import { frameBytesMax } from '../fabric/net/wire.ts'

const clusterKey = generateClusterKey()
const lines: string[] = []
let node: FabricNode
let address: string
let attacker: Network

beforeAll(async () => {
  node = await startNode({
    listen: ['/ip4/127.0.0.1/tcp/0'],
    bootstrap: [],
    clusterKey: loadClusterKey(clusterKey),
    log: (line) => lines.push(line),
  })
  address = node.addresses()[0]!
  // A peer that has the key but speaks garbage on the fabric protocol.
  attacker = await createNetwork({
    privateKey: await generateKeyPair('Ed25519'),
    listen: [],
    clusterKey: loadClusterKey(clusterKey),
    protocols: new Set(),
    log: () => {},
    client: true,
  })
  attacker.addAddresses(node.peerId, [address])
})
afterAll(async () => {
  await attacker?.stop()
  await node?.stop()
})

/** The first log line matching `pattern` (from line `from` on), waiting up to 5 s for it. */
async function waitForLine(pattern: RegExp, from = 0): Promise<string> {
  for (let waited = 0; waited < 5000; waited += 20) {
    const line = lines.slice(from).find((text) => pattern.test(text))
    if (line !== undefined) return line
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`no log line matching ${pattern} in:\n${lines.join('\n')}`)
}

function frame(payload: Uint8Array): Uint8Array {
  const framed = new Uint8Array(4 + payload.length)
  new DataView(framed.buffer).setUint32(0, payload.length)
  framed.set(payload, 4)
  return framed
}

const encoder = new Encoder({ useRecords: false })

/** Sends raw bytes on the fabric wire protocol, as a peer with the cluster key could. */
async function sendOnWire(bytes: Uint8Array): Promise<void> {
  const stream = await attacker.libp2p.dialProtocol(peerIdFromString(node.peerId), wireProtocol, {
    signal: AbortSignal.timeout(5000),
  })
  stream.send(bytes)
  await new Promise((resolve) => setTimeout(resolve, 50))
  stream.abort(new Error('done'))
}

async function expectStillServing(key: string): Promise<void> {
  const client = await connectClient({ nodes: [address], clusterKey })
  try {
    const written = await client.put(key, new TextEncoder().encode('yes'))
    expect(written.version).toBe(1)
    expect(new TextDecoder().decode((await client.get(key)).value!)).toBe('yes')
  } finally {
    await client.close()
  }
}

describe('a node facing hostile input', () => {
  it('refuses a connection from a peer without the cluster key, with a log line', async () => {
    // A libp2p peer without the key opens with multistream-select in the clear.
    const port = Number(/\/tcp\/(\d+)/.exec(address)![1])
    const socket = connect(port, '127.0.0.1')
    socket.on('error', () => {})
    socket.write('\x13/multistream/1.0.0\n\x07/noise\n')
    await waitForLine(/refused connection .*does not use the cluster key/)
    socket.destroy()
    await expectStillServing('after-no-key')
  })

  it('refuses a libp2p peer with a different cluster key, with a log line', async () => {
    const stranger = await createNetwork({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [],
      clusterKey: loadClusterKey(generateClusterKey()),
      protocols: new Set(),
      log: () => {},
      client: true,
    })
    try {
      await expect(stranger.dial([address])).resolves.toEqual([])
      await waitForLine(/refused connection .*(different cluster key|cluster key handshake failed)/)
    } finally {
      await stranger.stop()
    }
    await expectStillServing('after-other-key')
  })

  it('refuses an undecodable message with a log line', async () => {
    await sendOnWire(frame(new Uint8Array([0xff, 0xfe, 0x00, 0x13])))
    await waitForLine(/refused message .*(undecodable|not a map)/)
  })

  it('refuses a message of an unknown format version with a log line', async () => {
    await sendOnWire(frame(encoder.encode({ v: 99, p: 'store', b: {} })))
    await waitForLine(/refused message .*version 99 is not supported/)
  })

  it('refuses a well-formed envelope whose store message is malformed, with a log line', async () => {
    await sendOnWire(frame(encoder.encode({ v: 1, p: 'store', b: { type: 'accept', shard: 0, epoch: 'x' } })))
    await waitForLine(/refused message .*malformed store message/)
  })

  it('refuses a binary store message that is cut short, or that names a shard the cluster lacks, with a log line', async () => {
    const accept: StoreMessage = {
      type: 'accept',
      shard: 999_999,
      epoch: 1,
      key: 'k',
      ballot: { epoch: 1, round: 1, proposer: 'p' },
      state: { version: 1, value: new Uint8Array(40), lease: null, token: 0 },
    }
    const encoded = encodeStoreMessage(accept)!
    let from = lines.length
    await sendOnWire(frame(encoded.subarray(0, encoded.length - 10)))
    await waitForLine(/refused message .*malformed message: byte string longer than the message/, from)
    from = lines.length
    await sendOnWire(frame(encoded))
    await waitForLine(/refused message .*malformed store message/, from)
  })

  it('refuses a frame longer than the limit before reading its body, with a log line', async () => {
    const oversized = new Uint8Array(8)
    new DataView(oversized.buffer).setUint32(0, frameBytesMax + 1)
    await sendOnWire(oversized)
    await waitForLine(/refused message .*exceeds/)
  })

  it('keeps serving clients after all of the above', async () => {
    await expectStillServing('still-serving')
  })
})
