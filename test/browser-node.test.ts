/**
 * Browser nodes never count as replicas (issue 6), also when a page misbehaves: the browser-node
 * code runs here in Node (WebSockets works in Node too) against 3 in-process server nodes over
 * real libp2p. A page that caches a file's bricks and then announces them as a provider is still
 * no holder in the servers' eyes (provider lookups, replica counts), and when a server leaves,
 * repair copies its bricks to the remaining servers as if the page held nothing.
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { nodeCommand, withWebSocketsPort } from '../fabric/cli/node-command.ts'
import { InvalidArgumentError } from '../fabric/errors.ts'
import { type BrowserNode, startBrowserNode } from '../fabric/net/browser-node.ts'
import { generateClusterKey, loadClusterKey } from '../fabric/net/cluster-key.ts'
import { type FabricNode, startNode } from '../fabric/net/node.ts'
import { brickCid, type CID } from '../storage/brick.ts'
import { type BrowserStorage, startBrowserStorage } from '../storage/browser-storage.ts'
import { type NodeStorage, startNodeStorage } from '../storage/node-storage.ts'
import { waitFor } from './support/node-processes.ts'

const clusterKeyHex = generateClusterKey()
const brickReplicas = 2
/** The file system's default chunk. */
const chunkBytes = 1024 * 1024
const fileBytes = 3 * chunkBytes + 100
const setupTimeoutMs = 60_000
const testTimeoutMs = 60_000
/** From a server's departure to every chunk on r servers again. */
const repairBoundMs = 30_000

interface Server {
  node: FabricNode
  storage: NodeStorage
}

let servers: Server[] = []
let page: BrowserNode | undefined
let pageStorage: BrowserStorage | undefined
const content = new Uint8Array(fileBytes).map((_, index) => (index * 2654435761) >>> 24)
let chunkCids: CID[] = []

async function startServer(bootstrap: string[]): Promise<Server> {
  const node = await startNode({
    listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws'],
    bootstrap,
    clusterKey: loadClusterKey(clusterKeyHex),
    log: () => {},
  })
  const storage = await startNodeStorage(node, { replicaCount: brickReplicas })
  return { node, storage }
}

const webSocketsAddress = (server: Server) =>
  server.node.addresses().find((address) => address.includes('/ws/'))!

beforeAll(async () => {
  const first = await startServer([])
  servers = [first, await startServer(first.node.addresses()), await startServer(first.node.addresses())]
  await waitFor(
    () => servers.every((server) => server.storage.bricks.peers.liveNodes().length === 3),
    30_000,
    'every server to see 3 storage nodes',
  )
  await first.storage.fileSystem.mkdir('/data')
  const fd = await first.storage.fileSystem.open('/data/file.bin', 'w')
  await first.storage.fileSystem.write(fd, content)
  await first.storage.fileSystem.close(fd)
  chunkCids = []
  for (let offset = 0; offset < fileBytes; offset += chunkBytes)
    chunkCids.push(await brickCid(content.subarray(offset, offset + chunkBytes)))
  page = await startBrowserNode({ bootstrap: [webSocketsAddress(first)], clusterKey: clusterKeyHex })
  pageStorage = await startBrowserStorage(page)
}, setupTimeoutMs)

afterAll(async () => {
  await pageStorage?.stop()
  await page?.stop()
  for (const server of servers) {
    await server.storage.stop()
    await server.node.stop()
  }
})

/** Byte-wise equality (vitest's deep equality takes seconds per MiB of a typed array). */
const sameBytes = (a: Uint8Array, b: Uint8Array) => Buffer.compare(a, b) === 0

/** Chunks of the file whose live holders, as `server` finds them, number fewer than r. */
async function chunksShortOfReplicas(server: Server): Promise<number> {
  let short = 0
  for (const cid of chunkCids)
    if ((await server.storage.bricks.liveHolders(cid)).length < brickReplicas) short++
  return short
}

describe('fabric node --ws-port', () => {
  it('adds a WebSockets address on the host of the first listen address', () => {
    expect(withWebSocketsPort(['/ip4/127.0.0.1/tcp/4001'], 4002)).toEqual([
      '/ip4/127.0.0.1/tcp/4001',
      '/ip4/127.0.0.1/tcp/4002/ws',
    ])
    expect(withWebSocketsPort(['/ip6/::1/tcp/0'], 0)).toEqual(['/ip6/::1/tcp/0', '/ip6/::1/tcp/0/ws'])
  })

  it('refuses a port out of range with usage exit code 2', async () => {
    const written: string[] = []
    const write = process.stderr.write
    process.stderr.write = ((text: string) => written.push(text) > 0) as typeof process.stderr.write
    try {
      expect(await nodeCommand(['--ws-port', '70000'])).toBe(2)
    } finally {
      process.stderr.write = write
    }
    expect(written.join('')).toMatch(/--ws-port takes a port from 0 to 65535, got 70000/)
  })
})

describe('startBrowserNode', () => {
  it('refuses a bootstrap address it cannot dial from a page, naming it', async () => {
    const tcp = servers[0]!.node.addresses().find((address) => !address.includes('/ws'))!
    await expect(startBrowserNode({ bootstrap: [tcp], clusterKey: clusterKeyHex })).rejects.toThrow(
      /not a WebSockets address/,
    )
    const withoutPeer = webSocketsAddress(servers[0]!).replace(/\/p2p\/.*$/, '')
    await expect(startBrowserNode({ bootstrap: [withoutPeer], clusterKey: clusterKeyHex })).rejects.toThrow(
      InvalidArgumentError,
    )
    await expect(startBrowserNode({ bootstrap: ['not an address'] })).rejects.toThrow(/not a multiaddr/)
    await expect(startBrowserNode({ bootstrap: [] })).rejects.toThrow(/at least one server node/)
  })
})

describe('a browser node that caches bricks, and announces them though it must not', () => {
  it(
    'reads the file through the servers, then from its cache',
    async () => {
      const storage = pageStorage!
      expect(sameBytes(await storage.fileSystem.readFile('/data/file.bin'), content)).toBe(true)
      const fetched = storage.counters().bricksFetched
      expect(fetched).toBe(chunkCids.length + 1)
      expect(sameBytes(await storage.fileSystem.readFile('/data/file.bin'), content)).toBe(true)
      expect(storage.counters().bricksFetched).toBe(fetched)
      expect(storage.counters().cacheHits).toBe(chunkCids.length + 1)
    },
    testTimeoutMs,
  )

  it(
    'is in membership as kind browser, but in no server list of storage nodes, nor in its own',
    async () => {
      const id = page!.peerId
      await waitFor(
        () =>
          pageStorage!.peers.liveNodes().length === 3 &&
          servers.every((server) => server.node.membership.member(id)?.status === 'alive'),
        10_000,
        'the page and the servers to know each other',
      )
      for (const server of servers) {
        expect(server.node.membership.member(id)).toMatchObject({ status: 'alive', kind: 'browser' })
        expect(server.node.membership.liveServers()).not.toContain(id)
        expect(server.storage.bricks.peers.liveNodes()).not.toContain(id)
      }
      expect(pageStorage!.peers.liveNodes()).toHaveLength(3)
      expect(pageStorage!.peers.liveNodes()).not.toContain(id)
    },
    testTimeoutMs,
  )

  it(
    'announcing its cached bricks does not make it a holder: provider lookups and replica counts name servers only',
    async () => {
      for (const cid of chunkCids) await pageStorage!.peers.announce(cid)
      await pageStorage!.network.announced()
      expect(pageStorage!.network.counters().announcesDone).toBeGreaterThan(0)
      // Whether or not the servers' DHT keeps these records (the page has no address to give),
      // holders are confirmed among live storage servers only, so the page is never one.
      for (const server of servers)
        for (const cid of chunkCids) {
          const holders = await server.storage.bricks.liveHolders(cid)
          expect(holders).not.toContain(page!.peerId)
          expect(holders.length).toBeGreaterThanOrEqual(brickReplicas)
        }
    },
    testTimeoutMs,
  )

  it(
    'when a server leaves, its bricks are copied back to r on the other servers, the page not counted',
    async () => {
      // A holder other than the page's way in.
      const leaving = servers
        .slice(1)
        .find((server) => chunkCids.some((cid) => server.storage.bricks.store.has(cid)))!
      const staying = servers.filter((server) => server !== leaving)
      const heldByLeaving = []
      for (const cid of chunkCids) if (await leaving.storage.bricks.store.has(cid)) heldByLeaving.push(cid)
      expect(heldByLeaving.length).toBeGreaterThan(0)
      await leaving.storage.stop()
      await leaving.node.stop()
      servers = staying
      const started = Date.now()
      let short = chunkCids.length
      while (short > 0 && Date.now() - started < repairBoundMs) {
        await new Promise((resolve) => setTimeout(resolve, 250))
        short = await chunksShortOfReplicas(staying[0]!)
      }
      expect(short).toBe(0)
      for (const cid of chunkCids)
        for (const server of staying) expect(await server.storage.bricks.store.has(cid)).toBe(true)
    },
    testTimeoutMs,
  )
})
