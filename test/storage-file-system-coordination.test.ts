/**
 * The file system over the real coordination store (CASPaxos, in the deterministic simulator):
 * five nodes, message loss and reordering, a replica crashing and coming back. Bricks travel over
 * the in-process brick network; every metadata operation goes through the store's protocol.
 */

import { describe, expect, it } from 'vitest'
import { type SimFabricNode, simFabricNode } from '../fabric/sim/cluster.ts'
import { createSimulator, type NodeId, type Simulator } from '../fabric/sim/simulator.ts'
import { FileSystemError } from '../storage/errors.ts'
import { createFileSystem, type FileSystem } from '../storage/file-system.ts'
import { coordinationMetadataStore } from '../storage/metadata-store-coordination.ts'
import { createStorageCluster } from './support/storage-cluster.ts'
import { seedBanner, seedsToRun, testRandom } from './support/storage-random.ts'

const testFile = 'test/storage-file-system-coordination.test.ts'
const testName =
  'namespace and file changes stay atomic and durable over CASPaxos with loss and a crashed replica'

/** Runs the simulator while `promise` is pending, letting promise callbacks run between steps. */
async function drive<T>(sim: Simulator, promise: Promise<T>, limitMs = 120_000): Promise<T> {
  let settled = false
  promise.then(
    () => {
      settled = true
    },
    () => {
      settled = true
    },
  )
  const deadline = sim.now() + limitMs
  while (!settled) {
    if (sim.now() > deadline) throw new Error(`operation still pending after ${limitMs} simulated ms`)
    await new Promise((resolve) => setImmediate(resolve))
    if (!settled) sim.runFor(2)
  }
  return promise
}

async function codeOf(sim: Simulator, call: Promise<unknown>): Promise<string> {
  try {
    await drive(sim, call)
    return 'ok'
  } catch (error) {
    if (error instanceof FileSystemError) return error.code
    throw error
  }
}

const text = (value: string) => new TextEncoder().encode(value)
const string = (bytes: Uint8Array) => new TextDecoder().decode(bytes)

describe('file system over the coordination store in the simulator', () => {
  for (const seed of seedsToRun(3, 20)) {
    it(`${testName} (seed ${seed})`, async () => {
      try {
        const sim = createSimulator({ seed, network: { lossRate: 0.02 } })
        const ids: NodeId[] = ['n0', 'n1', 'n2', 'n3', 'n4']
        const live = new Map<NodeId, SimFabricNode>()
        for (const id of ids)
          sim.addNode(
            id,
            simFabricNode({
              seeds: ids,
              genesis: ids,
              store: { shardCount: 4 },
              onStart: (node) => live.set(id, node),
            }),
          )
        sim.runFor(1000)
        const bricks = await createStorageCluster({ nodeIds: ids })
        const random = testRandom(seed)
        const client = (id: NodeId): FileSystem =>
          createFileSystem(
            {
              metadata: coordinationMetadataStore(live.get(id)!.store, { timeoutMs: 1500 }),
              bricks: bricks.node(id),
              clock: live.get(id)!.environment.clock,
              wallClock: { now: () => sim.now() },
              random: testRandom(random.below(2 ** 31)),
              sleep: (delayMs) => new Promise((resolve) => sim.at(delayMs, () => resolve())),
            },
            { chunkBytes: 64 },
          )
        const [first, second, third] = [client('n0'), client('n1'), client('n2')]
        const content = random.bytes(500)

        await drive(sim, first.mkdir('/data'))
        await drive(sim, first.writeFile('/data/a', content))
        expect(Buffer.from(await drive(sim, second.readFile('/data/a'))).equals(content)).toBe(true)
        await drive(sim, second.rename('/data/a', '/data/b'))
        await drive(sim, second.mkdir('/data/sub'))

        // A replica of some shards dies; a majority of each shard is left.
        sim.crash('n3')
        await drive(sim, third.writeFile('/data/sub/c', text('inside')))
        await drive(sim, third.rename('/data/sub', '/moved'))
        expect(await drive(sim, first.readdir('/'))).toEqual([
          { name: 'data', type: 'directory' },
          { name: 'moved', type: 'directory' },
        ])
        expect(await codeOf(sim, first.rmdir('/data'))).toBe('ENOTEMPTY')
        await drive(sim, first.unlink('/data/b'))
        await drive(sim, first.rmdir('/data'))

        // Two writers of one file at once: serialized at close.
        const [fdA, fdB] = [
          await drive(sim, first.open('/moved/c', 'r+')),
          await drive(sim, second.open('/moved/c', 'r+')),
        ]
        await drive(sim, first.write(fdA, text('AA'), 0))
        await drive(sim, second.write(fdB, text('BB'), 4))
        await drive(sim, Promise.all([first.close(fdA), second.close(fdB)]))
        expect(string(await drive(sim, third.readFile('/moved/c')))).toBe('AAsiBB')

        sim.restart('n3')
        sim.runFor(1000)
        const late = client('n3')
        expect(await drive(sim, late.readdir('/'))).toEqual([{ name: 'moved', type: 'directory' }])
        expect(string(await drive(sim, late.readFile('/moved/c')))).toBe('AAsiBB')
      } catch (error) {
        console.error(seedBanner(seed, testFile, testName))
        throw error
      }
    }, 120_000)
  }
})
