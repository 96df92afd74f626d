import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { createMemoryBlockStore } from '../storage/block-store.ts'
import { brickCid, type CID } from '../storage/brick.ts'
import { createBrickNode } from '../storage/brick-node.ts'
import { createInProcessBrickNetwork } from '../storage/brick-peers.ts'
import { BrickUnavailableError, StorageArgumentError } from '../storage/errors.ts'
import { readOrder, replicaCandidates } from '../storage/placement.ts'
import type { Sleep } from '../storage/platform-types.ts'
import { createRateLimiter } from '../storage/rate-limiter.ts'
import { openDiskReplicaCounts } from '../storage/replica-counts-disk.ts'
import { createStorageCluster, type StorageCluster } from './support/storage-cluster.ts'
import { testRandom } from './support/storage-random.ts'

const root = mkdtempSync(join(tmpdir(), 'fabric-bricks-'))
let clusterCounter = 0
afterAll(() => rmSync(root, { recursive: true, force: true }))

const fiveNodes = ['a', 'b', 'c', 'd', 'e']

async function putBricks(cluster: StorageCluster, writer: string, count: number, seed: number) {
  const random = testRandom(seed)
  const bricks: Array<{ cid: CID; bytes: Uint8Array }> = []
  for (let i = 0; i < count; i++) {
    const bytes = random.bytes(1 + random.below(20_000))
    bricks.push({ cid: await cluster.node(writer).put(bytes, { stripe: i }), bytes })
  }
  return bricks
}

function pairs<T>(items: readonly T[]): Array<[T, T]> {
  const result: Array<[T, T]> = []
  for (let i = 0; i < items.length; i++)
    for (let j = i + 1; j < items.length; j++) result.push([items[i]!, items[j]!])
  return result
}

describe('placement', () => {
  it('replicaCandidates: the writing node first, then distinct other nodes', () => {
    const candidates = replicaCandidates({ self: 'c', live: fiveNodes, count: 3, stripe: 0 })
    expect(candidates[0]).toBe('c')
    expect(new Set(candidates).size).toBe(candidates.length)
    expect(candidates.slice(1).sort()).toEqual(['a', 'b', 'd', 'e'])
  })

  it('replicaCandidates: successive stripes put their remote replicas on different nodes', () => {
    const remote = (stripe: number) =>
      replicaCandidates({ self: 'a', live: fiveNodes, count: 3, stripe }).slice(1, 3)
    expect(new Set([...remote(0), ...remote(1)]).size).toBe(4)
    expect(new Set([...remote(1), ...remote(2)]).size).toBe(4)
  })

  it('replicaCandidates: holders and dead nodes are never chosen', () => {
    const candidates = replicaCandidates({
      self: 'a',
      live: ['a', 'b', 'c'],
      holders: ['a', 'b'],
      count: 1,
      stripe: 5,
    })
    expect(candidates).toEqual(['c'])
  })

  it('readOrder: the local copy first, then the holders rotated by stripe', () => {
    expect(readOrder('a', ['a', 'b', 'c'], 1)).toEqual(['a', 'c', 'b'])
    expect(readOrder('z', ['a', 'b', 'c'], 0)[0]).toBe('a')
    expect(readOrder('z', ['a', 'b', 'c'], 1)[0]).toBe('b')
  })
})

describe('replicated bricks over in-process nodes (r = 3)', () => {
  it('put stores r copies on distinct live nodes, one of them the writing node', async () => {
    const cluster = await createStorageCluster({ nodeIds: fiveNodes })
    for (const { cid } of await putBricks(cluster, 'c', 20, 1)) {
      const holders = cluster.holders(cid)
      expect(holders).toHaveLength(3)
      expect(holders).toContain('c')
    }
  })

  it('successive bricks of a file are striped: every node holds some, and no two successive ones share their remote replicas', async () => {
    const cluster = await createStorageCluster({ nodeIds: fiveNodes })
    const bricks = await putBricks(cluster, 'a', 12, 2)
    const remote = bricks.map(({ cid }) => cluster.holders(cid).filter((node) => node !== 'a'))
    for (let i = 1; i < remote.length; i++) expect(new Set([...remote[i - 1]!, ...remote[i]!]).size).toBe(4)
    for (const node of fiveNodes) expect(cluster.node(node).store.stats().bricks).toBeGreaterThan(0)
  })

  it('losing any two nodes leaves every brick readable, and repair brings each back to 3 live replicas', async () => {
    for (const [first, second] of pairs(fiveNodes)) {
      const cluster = await createStorageCluster({ nodeIds: fiveNodes })
      const bricks = await putBricks(cluster, 'a', 15, 3)
      await cluster.kill(first)
      await cluster.kill(second)
      const reader = fiveNodes.find((node) => node !== first && node !== second)!
      for (const { cid, bytes } of bricks)
        expect(Buffer.from(await cluster.node(reader).get(cid)).equals(bytes)).toBe(true)
      await cluster.repairAll()
      for (const { cid } of bricks)
        expect(cluster.holders(cid), `after losing ${first} and ${second}`).toHaveLength(3)
      // The copies are real: a third loss still leaves every brick readable.
      const third = fiveNodes.find((node) => node !== first && node !== second && node !== reader)!
      await cluster.kill(third)
      for (const { cid, bytes } of bricks)
        expect(Buffer.from(await cluster.node(reader).get(cid)).equals(bytes)).toBe(true)
    }
  })

  it('with fewer live nodes than r, put places one copy per live node and repair tops up when nodes return', async () => {
    const cluster = await createStorageCluster({ nodeIds: ['a', 'b'] })
    const [{ cid }] = await putBricks(cluster, 'a', 1, 4)
    expect(cluster.holders(cid!)).toEqual(['a', 'b'])
    await cluster.add('c')
    await cluster.repairAll()
    expect(cluster.holders(cid!)).toEqual(['a', 'b', 'c'])
  })

  it('repair race (issue 6): a holder behind the smallest one takes over when the smallest never repaired (it restarted and missed the loss)', async () => {
    const cluster = await createStorageCluster({ nodeIds: ['a', 'b', 'c', 'd'] })
    const [{ cid }] = await putBricks(cluster, 'a', 1, 9)
    const [smallest, second, third] = cluster.holders(cid!)
    expect(smallest).toBe('a')
    await cluster.kill(third!)
    // The smallest holder restarts: it comes back with its bricks but never saw the loss, so it does not repair.
    await cluster.kill(smallest!)
    await cluster.restart(smallest!)
    const first = await cluster.node(second!).repair({ bytesPerSecond: Number.POSITIVE_INFINITY })
    expect(first).toMatchObject({ underReplicated: 1, replicasAdded: 0 })
    expect(first.deferred).toEqual([{ cid, rank: 1 }])
    expect(cluster.holders(cid!)).toHaveLength(2)
    const takeOver = await cluster.node(second!).repair({
      bricks: first.deferred.map((each) => each.cid),
      takeOver: true,
      bytesPerSecond: Number.POSITIVE_INFINITY,
    })
    expect(takeOver).toMatchObject({ scanned: 1, replicasAdded: 1, stillUnderReplicated: 0 })
    expect(cluster.holders(cid!)).toHaveLength(3)
    // Checked again once it is whole, it has nothing to do.
    const again = await cluster.node(second!).repair({ bricks: [cid!], takeOver: true })
    expect(again).toMatchObject({ scanned: 1, underReplicated: 0, replicasAdded: 0, deferred: [] })
  })

  it('a brick that no live node holds fails with BrickUnavailableError naming the nodes tried', async () => {
    const cluster = await createStorageCluster({ nodeIds: ['a', 'b', 'c', 'd'] })
    const [{ cid }] = await putBricks(cluster, 'a', 1, 5)
    for (const node of cluster.holders(cid!)) await cluster.kill(node)
    const reader = ['a', 'b', 'c', 'd'].find((node) => cluster.network.isLive(node))!
    const error = await cluster
      .node(reader)
      .get(cid!)
      .catch((caught: unknown) => caught)
    expect(error).toBeInstanceOf(BrickUnavailableError)
  })
})

describe('corrupt copies on disk', () => {
  it('a corrupt local copy is detected on read: the bytes come from another replica and the local copy is restored', async () => {
    const cluster = await createStorageCluster({
      nodeIds: ['a', 'b', 'c'],
      root: join(root, `c${clusterCounter++}`),
    })
    const [{ cid, bytes }] = await putBricks(cluster, 'a', 1, 6)
    const damaged = bytes!.slice()
    damaged[damaged.length >> 1]! ^= 0x40
    cluster.damage('a', cid!, damaged)
    expect(Buffer.from(await cluster.node('a').get(cid!)).equals(bytes!)).toBe(true)
    expect(cluster.node('a').counters()).toMatchObject({ corruptCopiesDetected: 1, localCopiesRestored: 1 })
    expect(Buffer.from((await cluster.node('a').store.get(cid!))!).equals(bytes!)).toBe(true)
    expect(cluster.holders(cid!)).toEqual(['a', 'b', 'c'])
    await cluster.close()
  })

  it('a corrupt copy met while serving another node is dropped, the reader gets good bytes, and repair fetches it back', async () => {
    const cluster = await createStorageCluster({
      nodeIds: ['a', 'b', 'c', 'd'],
      root: join(root, `c${clusterCounter++}`),
    })
    const [{ cid, bytes }] = await putBricks(cluster, 'a', 1, 7)
    const [holder] = cluster.holders(cid!).filter((node) => node !== 'a')
    const reader = ['b', 'c', 'd'].find((node) => !cluster.holders(cid!).includes(node))!
    cluster.damage(holder!, cid!, new Uint8Array(bytes!.length))
    // Every non-local read tries the damaged holder at some stripe; read at all of them.
    for (let stripe = 0; stripe < 3; stripe++)
      expect(Buffer.from(await cluster.node(reader).get(cid!, { stripe })).equals(bytes!)).toBe(true)
    expect(cluster.holders(cid!)).not.toContain(holder)
    await cluster.repairAll()
    expect(cluster.holders(cid!)).toHaveLength(3)
    await cluster.close()
  })

  it('a restarted node keeps its bricks on disk and announces them again', async () => {
    const cluster = await createStorageCluster({
      nodeIds: ['a', 'b', 'c'],
      root: join(root, `c${clusterCounter++}`),
    })
    const bricks = await putBricks(cluster, 'b', 5, 8)
    await cluster.kill('b')
    for (const { cid } of bricks) expect(cluster.holders(cid)).toEqual(['a', 'c'])
    await cluster.restart('b')
    for (const { cid, bytes } of bricks) {
      expect(cluster.holders(cid)).toEqual(['a', 'b', 'c'])
      expect(Buffer.from((await cluster.node('b').store.get(cid))!).equals(bytes)).toBe(true)
    }
    await cluster.close()
  })
})

describe('replica counts of their own', () => {
  it('are kept on disk across a restart, and the larger of two counts for one brick wins', async () => {
    const directory = join(root, `counts-${clusterCounter++}`)
    const cid = await brickCid(new TextEncoder().encode('shared content'))
    const counts = await openDiskReplicaCounts({ directory })
    await counts.raise(cid, 5)
    await counts.raise(cid, 4)
    expect(counts.get(cid)).toBe(5)
    const reopened = await openDiskReplicaCounts({ directory })
    expect(reopened.get(cid)).toBe(5)
    await reopened.forget(cid)
    expect((await openDiskReplicaCounts({ directory })).get(cid)).toBeUndefined()
    await expect(counts.raise(cid, 0)).rejects.toBeInstanceOf(StorageArgumentError)
  })
})

describe('rebalancing', () => {
  function spread(cluster: StorageCluster) {
    const bytes = cluster.network.liveNodes().map((id) => cluster.node(id).store.stats().bytes)
    const mean = bytes.reduce((sum, value) => sum + value, 0) / bytes.length
    return { bytes, mean, worst: Math.max(...bytes.map((value) => Math.abs(value - mean) / mean)) }
  }

  async function filledCluster(seed: number) {
    const cluster = await createStorageCluster({ nodeIds: ['a', 'b', 'c'] })
    const random = testRandom(seed)
    const bricks: Array<{ cid: CID; bytes: Uint8Array }> = []
    for (let i = 0; i < 120; i++) {
      const writer = random.pick(['a', 'b', 'c'])
      const bytes = random.bytes(4096 + random.below(8192))
      bricks.push({ cid: await cluster.node(writer).put(bytes, { stripe: i }), bytes })
    }
    return { cluster, bricks }
  }

  it('a node added to a 3-node cluster receives bricks until every node holds within 20% of the mean, with no brick below r', async () => {
    const { cluster, bricks } = await filledCluster(9)
    await cluster.add('d')
    expect(cluster.node('d').store.stats().bricks).toBe(0)
    const moved = await cluster.rebalanceAll()
    expect(moved).toBeGreaterThan(0)
    const { worst, bytes } = spread(cluster)
    expect(worst, `bytes per node ${bytes.join(', ')}`).toBeLessThanOrEqual(0.2)
    for (const { cid, bytes: content } of bricks) {
      expect(cluster.holders(cid).length).toBeGreaterThanOrEqual(3)
      expect(Buffer.from(await cluster.node('d').get(cid)).equals(content)).toBe(true)
    }
  })

  it('rebalancing after a loss copies, not moves, a brick short of replicas: no brick ends with fewer live copies', async () => {
    const { cluster, bricks } = await filledCluster(12)
    await cluster.kill('c')
    await cluster.add('d')
    // Rebalancing before any repair: a, b and the empty d are live, every brick has 2 live copies.
    for (const id of ['a', 'b', 'd']) await cluster.node(id).rebalance()
    const liveCopies = bricks.map(({ cid }) => cluster.holders(cid).length)
    expect(Math.min(...liveCopies)).toBeGreaterThanOrEqual(2)
    // What rebalancing sent to d was a copy: those bricks are back at 3 before any repair ran.
    expect(liveCopies.filter((count) => count >= 3).length).toBeGreaterThan(0)
    await cluster.repairAll()
    for (const { cid } of bricks) expect(cluster.holders(cid).length).toBeGreaterThanOrEqual(3)
  })

  it('rebalancing in bounded passes resumes from its cursor and reaches the same evenness', async () => {
    const { cluster } = await filledCluster(10)
    await cluster.add('d')
    await cluster.add('e')
    await cluster.rebalanceAll({ bytesMax: 20_000 })
    expect(spread(cluster).worst).toBeLessThanOrEqual(0.2)
  })

  it('rebalancing keeps to its byte rate: moving N bytes at R bytes/s takes about N/R seconds', async () => {
    let fakeNowMs = 0
    const sleeps: number[] = []
    const sleep: Sleep = async (delayMs) => {
      sleeps.push(delayMs)
      fakeNowMs += delayMs
    }
    const clock = { now: () => fakeNowMs }
    const network = createInProcessBrickNetwork()
    const nodes = ['a', 'b', 'c', 'd'].map((id) =>
      createBrickNode({
        store: createMemoryBlockStore(),
        connect: (handler) => network.join(id, handler),
        clock,
        sleep,
      }),
    )
    network.kill('d')
    const random = testRandom(11)
    for (let i = 0; i < 60; i++) await nodes[0]!.put(random.bytes(10_000), { stripe: i })
    network.join('d', nodes[3]!.handler)
    const bytesPerSecond = 100_000
    const report = await nodes[0]!.rebalance({ bytesPerSecond })
    expect(report.bytesMoved).toBeGreaterThan(100_000)
    // The first second's worth may go at once (burst); the rest waits.
    const expectedMs = ((report.bytesMoved - bytesPerSecond) / bytesPerSecond) * 1000
    expect(fakeNowMs).toBeGreaterThanOrEqual(expectedMs - 1)
    expect(fakeNowMs).toBeLessThanOrEqual(expectedMs + 200)
  })

  it('a rate limiter lets a burst pass, then spaces takes at the rate', async () => {
    let fakeNowMs = 0
    const limiter = createRateLimiter(
      {
        clock: { now: () => fakeNowMs },
        sleep: async (delayMs) => {
          fakeNowMs += delayMs
        },
      },
      { bytesPerSecond: 1000, burstBytes: 500 },
    )
    await limiter.take(500)
    expect(fakeNowMs).toBe(0)
    await limiter.take(1000)
    expect(fakeNowMs).toBe(1000)
    await limiter.take(250)
    expect(fakeNowMs).toBe(1250)
  })

  it('brickCid is stable: the same bytes always get the same name', async () => {
    const bytes = new TextEncoder().encode('fabric')
    expect((await brickCid(bytes)).toString()).toBe((await brickCid(bytes.slice())).toString())
  })
})
