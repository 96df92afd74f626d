/**
 * When repair starts on its own in a node's storage (storage/node-storage.ts), with in-process
 * fabric nodes over real libp2p: bricks written while fewer than r storage nodes were live get
 * their missing replicas within seconds of a node coming (back), with no repair asked for and no
 * rebalancing to do it on the way (before, they waited for the 10-minute scan; issue 6).
 */

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { generateClusterKey, loadClusterKey } from '../fabric/net/cluster-key.ts'
import { type FabricNode, startNode } from '../fabric/net/node.ts'
import { brickCid } from '../storage/brick.ts'
import { type NodeStorage, startNodeStorage } from '../storage/node-storage.ts'
import { waitFor } from './support/node-processes.ts'

const clusterKey = loadClusterKey(generateClusterKey())
const chunkBytes = 1024 * 1024
/** From the join to every chunk on 3 live nodes. */
const toppedUpBoundMs = 20_000
const testTimeoutMs = 60_000

interface Server {
  node: FabricNode
  storage: NodeStorage
}

const root = mkdtempSync(join(tmpdir(), 'fabric-node-repair-'))
const running = new Set<Server>()
afterAll(async () => {
  for (const server of running) await stopServer(server)
  rmSync(root, { recursive: true, force: true })
})

async function startServer(name: string, bootstrap: string[]): Promise<Server> {
  const dataDirectory = join(root, name)
  const node = await startNode({
    listen: ['/ip4/127.0.0.1/tcp/0'],
    bootstrap,
    dataDirectory,
    clusterKey,
    log: () => {},
  })
  const server = { node, storage: await startNodeStorage(node, { dataDirectory }) }
  running.add(server)
  return server
}

async function stopServer(server: Server): Promise<void> {
  running.delete(server)
  await server.storage.stop().catch(() => {})
  await server.node.stop().catch(() => {})
}

function bytesOf(mebibytes: number, seed: number): Uint8Array {
  return new Uint8Array(mebibytes * chunkBytes).map((_, index) => ((index + seed) * 2654435761) >>> 24)
}

describe('repair in a node storage', () => {
  it(
    'bricks written while only 2 of r = 3 nodes were live reach 3 replicas within seconds of the third coming back, with no repair asked for and nothing to rebalance',
    async () => {
      const a = await startServer('a', [])
      const b = await startServer('b', a.node.addresses())
      let c = await startServer('c', a.node.addresses())
      const liveEverywhere = (count: number) =>
        waitFor(
          () => [...running].every((server) => server.storage.bricks.peers.liveNodes().length === count),
          30_000,
          `${count} storage nodes`,
        )
      await liveEverywhere(3)
      // Most of the data on all three, so that the loads stay within the rebalancing tolerance.
      await a.storage.fileSystem.writeFile('/whole.bin', bytesOf(8, 1))
      await stopServer(c)
      await liveEverywhere(2)
      const short = bytesOf(1, 2)
      await a.storage.fileSystem.writeFile('/short.bin', short)
      const cid = await brickCid(short)
      const liveHolders = async () => (await b.storage.bricks.liveHolders(cid)).length
      expect(await liveHolders()).toBe(2)

      c = await startServer('c', a.node.addresses())
      await liveEverywhere(3)
      const backAtMs = Date.now()
      let holders = 0
      while (Date.now() - backAtMs < toppedUpBoundMs) {
        holders = await liveHolders()
        if (holders >= 3) break
        await new Promise((resolve) => setTimeout(resolve, 250))
      }
      expect(holders).toBe(3)
      process.stderr.write(
        `the short brick at 3 replicas ${Date.now() - backAtMs} ms after the third node was back\n`,
      )
    },
    testTimeoutMs,
  )
})
