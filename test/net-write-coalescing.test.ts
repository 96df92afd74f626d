/**
 * Write coalescing (fabric/net/write-coalescing.ts and the per-peer batches of network.ts): what a
 * node sends in one turn of the event loop leaves in one write, in order, and only after the
 * acceptor log is on disk; a noise message leaves in one socket write, and is read back by
 * fabric/net/noise-frames.ts.
 */

import { readFileSync } from 'node:fs'
import net from 'node:net'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { StreamMuxerFactory } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'
import { afterEach, describe, expect, it } from 'vitest'
import { openAcceptorLog } from '../fabric/net/acceptor-log.ts'
import { createNetwork, type Network } from '../fabric/net/network.ts'
import { NoiseFrameDecoder, noiseDecodersInstalled } from '../fabric/net/noise-frames.ts'
import { coalescedBytesMax, coalescingMuxer } from '../fabric/net/write-coalescing.ts'
import { temporaryDirectory } from './support/node-processes.ts'

const nextTurn = () => new Promise((resolve) => setTimeout(resolve, 5))

/** A muxer stand-in that records what reaches the connection below it. */
function recordingMuxer(events: string[]) {
  const muxer = {
    status: 'open',
    send(data: Uint8Array | Uint8ArrayList) {
      events.push(`write ${[...new Uint8ArrayList(data).subarray()].join(',')}`)
      return true
    },
  }
  const factory = coalescingMuxer(
    () => ({ protocol: '/test', createStreamMuxer: () => muxer }) as unknown as StreamMuxerFactory,
    () => events.push('beforeWrite'),
  )({})
  return { muxer: factory.createStreamMuxer({} as never) as unknown as typeof muxer, raw: muxer }
}

describe('coalescingMuxer', () => {
  it('sends the frames of one turn in one write, in order, after beforeWrite', async () => {
    const events: string[] = []
    const { muxer } = recordingMuxer(events)
    muxer.send(Uint8Array.of(1))
    muxer.send(new Uint8ArrayList(Uint8Array.of(2), Uint8Array.of(3)))
    muxer.send(Uint8Array.of(4))
    expect(events).toEqual([])
    await nextTurn()
    expect(events).toEqual(['beforeWrite', 'write 1,2,3,4'])
    muxer.send(Uint8Array.of(5))
    await nextTurn()
    expect(events).toEqual(['beforeWrite', 'write 1,2,3,4', 'beforeWrite', 'write 5'])
  })

  it(`writes at once when ${coalescedBytesMax} bytes are collected, keeping the order`, () => {
    const events: string[] = []
    const { muxer } = recordingMuxer(events)
    muxer.send(Uint8Array.of(1))
    muxer.send(new Uint8Array(coalescedBytesMax))
    expect(events.length).toBe(2)
    expect(events[0]).toBe('beforeWrite')
    expect(events[1]!.startsWith('write 1,0,0')).toBe(true)
  })

  it('lets nothing overtake the collected frames once the muxer closes (a go-away goes last)', () => {
    const events: string[] = []
    const { muxer, raw } = recordingMuxer(events)
    muxer.send(Uint8Array.of(1))
    raw.status = 'closing'
    muxer.send(Uint8Array.of(9))
    expect(events).toEqual(['beforeWrite', 'write 1', 'beforeWrite', 'write 9'])
  })
})

describe('acceptor log', () => {
  it('collects the records of a turn into one write, and flushes on close', async () => {
    const directory = temporaryDirectory()
    try {
      const log = openAcceptorLog(directory.path)
      const path = join(directory.path, 'acceptor.log')
      const record = (key: string) => ({
        type: 'slot' as const,
        shard: 1,
        key,
        slot: { promised: { epoch: 1, round: 1, proposer: 'p' }, accepted: null },
      })
      log.append([record('a')])
      log.append([record('b')])
      expect(readFileSync(path).length).toBe(0)
      log.flush()
      const afterFlush = readFileSync(path).length
      expect(afterFlush).toBeGreaterThan(0)
      await nextTurn()
      log.append([record('c')])
      log.close()
      expect(
        openAcceptorLog(directory.path)
          .load()
          .map((entry) => (entry as { key: string }).key),
      ).toEqual(['a', 'b', 'c'])
    } finally {
      directory.remove()
    }
  })
})

describe('network batches per peer', () => {
  const networks: Network[] = []
  afterEach(async () => {
    await Promise.all(networks.splice(0).map((network) => network.stop()))
  })

  async function pair(): Promise<[Network, Network]> {
    const make = async () => {
      const network = await createNetwork({
        privateKey: await generateKeyPair('Ed25519'),
        listen: ['/ip4/127.0.0.1/tcp/0'],
        protocols: new Set(['test']),
        log: () => {},
      })
      networks.push(network)
      return network
    }
    const sender = await make()
    const receiver = await make()
    sender.addAddresses(receiver.self, receiver.addresses())
    await sender.dial(receiver.addresses())
    return [sender, receiver]
  }

  async function until(condition: () => boolean): Promise<void> {
    const deadline = performance.now() + 10_000
    while (!condition()) {
      if (performance.now() > deadline)
        throw new Error(`timed out: ${JSON.stringify(networks.map((n) => n.stats()))}`)
      await nextTurn()
    }
  }

  it('delivers the messages of one turn in order, batched, including one larger than a write', async () => {
    const [sender, receiver] = await pair()
    const received: number[] = []
    let warm = false
    receiver.onMessage((_from, _protocol, body) => {
      const { n } = body as { n: number }
      if (n >= 0 || !warm) received.push(n)
    })
    // The first message opens the stream.
    await until(() => {
      sender.send(receiver.self, 'test', { n: -1 })
      return received.length > 0
    })
    received.length = 0
    warm = true // warm-up messages still on their way are left out
    const large = new Uint8Array(coalescedBytesMax + 1000)
    for (let n = 0; n < 100; n++) sender.send(receiver.self, 'test', n === 50 ? { n, large } : { n })
    await until(() => received.length === 100)
    expect(received).toEqual(Array.from({ length: 100 }, (_, n) => n))
    expect(sender.stats()['batches sent']).toBeGreaterThanOrEqual(1)
  })

  it('keeps a stream flowing past its receive window: 6 MiB sent in one turn all arrive, in order', async () => {
    const [sender, receiver] = await pair()
    const received: number[] = []
    receiver.onMessage((_from, _protocol, body) => {
      const { n, bytes } = body as { n: number; bytes?: Uint8Array }
      if (n >= 0 && bytes?.length === 1024 * 1024) received.push(n)
      else if (n < 0) received.push(n)
    })
    await until(() => {
      sender.send(receiver.self, 'test', { n: -1 })
      return received.length > 0
    })
    received.length = 0
    for (let n = 0; n < 6; n++) sender.send(receiver.self, 'test', { n, bytes: new Uint8Array(1024 * 1024) })
    await until(() => received.filter((n) => n >= 0).length === 6)
    expect(received.filter((n) => n >= 0)).toEqual(Array.from({ length: 6 }, (_, n) => n))
  })

  it('sends each noise message in one socket write, and reads it with the decoder of noise-frames.ts', async () => {
    const installedBefore = noiseDecodersInstalled()
    const [sender, receiver] = await pair()
    let received = 0
    receiver.onMessage(() => {
      received++
    })
    await until(() => {
      sender.send(receiver.self, 'test', { n: -1 })
      return received > 0
    })
    const writes: number[] = []
    const write = net.Socket.prototype.write
    net.Socket.prototype.write = function (this: net.Socket, chunk: Uint8Array, ...rest: never[]) {
      writes.push(chunk.length)
      return write.call(this, chunk, ...rest)
    } as typeof write
    try {
      for (let n = 0; n < 20; n++) {
        const before = received
        sender.send(receiver.self, 'test', { n })
        await until(() => received > before)
      }
    } finally {
      net.Socket.prototype.write = write
    }
    // One write per message (its frame, and nothing back): the receiver sends no window update
    // per frame (fabric/net/yamux-window.ts), only when half of its window is used.
    expect(writes.length).toBeLessThan(30)
    // A noise message is its 2-byte length then its ciphertext: never a write of the length alone.
    expect(writes.length).toBeGreaterThanOrEqual(20)
    expect(writes.filter((length) => length <= 2)).toEqual([])
    // Both ends of the connection read with it.
    expect(noiseDecodersInstalled() - installedBefore).toBeGreaterThanOrEqual(2)
  })
})

describe('noise messages', () => {
  it('are split out of chunks cut anywhere, as many as a chunk completes, none before it is whole', () => {
    const message = (length: number, fill: number) => {
      const bytes = new Uint8Array(2 + length).fill(fill)
      bytes[0] = length >> 8
      bytes[1] = length & 0xff
      return bytes
    }
    const stream = new Uint8ArrayList(message(3, 7), message(300, 8), message(0, 0), message(1, 9))
    const whole = stream.subarray()
    for (const cut of [1, 2, 3, 5, 6, 100, 306, 307, whole.length]) {
      const decoder = new NoiseFrameDecoder()
      const out: number[][] = []
      for (let start = 0; start < whole.length; start += cut)
        for (const piece of decoder.decode(whole.subarray(start, start + cut)))
          out.push([...piece.subarray()])
      // The empty message carries nothing and is skipped, as the package's decoder does.
      expect(out.map((bytes) => [bytes.length, bytes[0]])).toEqual([
        [3, 7],
        [300, 8],
        [1, 9],
      ])
    }
  })
})
