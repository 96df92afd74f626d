// Issue 4: spawns return at once and their children are made durable in batches, before the
// spawner's next save travels. A crash of the spawner's node while its children's records are
// being written must neither lose a child nor start one twice; nor may a save taken after spawns
// that a stopped incarnation dropped reach the replicas (a restore from it joined missing children).
import { afterEach, describe, expect, test } from 'vitest'
import type { RuntimeReply } from '../fabric/runtime/messages.ts'
import type { Register } from '../fabric/runtime/services.ts'
import { guestBytes } from './support/guests.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

const childCount = 8
const expected = `squares ${Array.from({ length: childCount }, (_, index) => index * index).join(',')}`

describe('deferred spawns', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  for (const fate of ['lost', 'applied'] as const) {
    test(`the spawner's node dies while its children's records are written (the writes ${fate === 'lost' ? 'are lost' : 'apply after the crash'}): each child runs once, the output is whole`, async () => {
      cluster = new InProcessCluster()
      // The home never runs the main thread (weight ~0), so killing main's node keeps the home.
      await cluster.addNode('node-a', { speedScore: 1e-9 })
      for (const id of ['node-b', 'node-c', 'node-d']) await cluster.addNode(id)
      const home = cluster.runtime('node-a')
      let pid = ''
      // The first writes of the children's records wait here until main's node has been killed.
      const held: Array<() => void> = []
      let holding = true
      const created = new Map<string, number>()
      const entryCas = cluster.store.entryCas.bind(cluster.store)
      cluster.store.entryCas = (key, entry, expectedVersion, value) => {
        // Main's children are entries of the registers of its spawns (thread-records.ts).
        const child = pid !== '' && key.startsWith(`threads/${pid}/0/`) && expectedVersion === 0
        const write = async (): Promise<Register> => {
          const result = await entryCas(key, entry, expectedVersion, value)
          if (child && result.ok) created.set(entry, (created.get(entry) ?? 0) + 1)
          return result
        }
        if (!child || !holding) return write()
        return new Promise<Register>((resolve, reject) => {
          held.push(() => {
            if (fate === 'lost') reject(new Error('store did not answer'))
            else void write().then(resolve, reject)
          })
        })
      }
      const process = await home.submit(guestBytes('test/fixtures/as/spawn-then-save.ts'), {
        args: ['spawn-then-save', String(childCount)],
        seed: 1,
        saveIntervalMs: 600_000,
      })
      pid = process.pid
      let output = ''
      process.onOutput((chunk) => {
        output += new TextDecoder().decode(chunk.bytes)
      })
      // The first child's write is held; the other spawns queue behind it, then main saves.
      for (let waitedMs = 0; held.length === 0 && waitedMs < 30_000; waitedMs += 10)
        await new Promise((resolve) => setTimeout(resolve, 10))
      expect(held.length).toBeGreaterThan(0)
      await new Promise((resolve) => setTimeout(resolve, 500))
      // The save taken after the spawns has not travelled: the children are not durable yet.
      expect(output).not.toContain('saved')
      const mainNode = cluster.nodeRunning('0')
      expect(mainNode).toBeDefined()
      expect(mainNode).not.toBe('node-a')
      cluster.kill(mainNode!)
      holding = false
      for (const release of held.splice(0)) release()

      const result = await process.result
      expect(result).toEqual({ exitCode: 0, error: null })
      expect(output).toContain(expected)
      // The restarted main spawned the same children (ids from its call numbers): each record was
      // created once, and no other child appeared.
      expect([...created.keys()].sort()).toHaveLength(childCount)
      for (const [key, count] of created) expect(count, key).toBe(1)
      expect(cluster.logs.some((line) => line.includes('resuming thread 0 '))).toBe(true)
    }, 60_000)
  }

  test('a save taken after spawns that a stopped incarnation dropped never reaches the replicas: the next incarnation spawns the children again', async () => {
    cluster = new InProcessCluster()
    await cluster.addNode('node-a', { speedScore: 1e-9 })
    for (const id of ['node-b', 'node-c', 'node-d']) await cluster.addNode(id)
    type NodeInternals = {
      local: Map<string, { spawnsPending: number }>
      stopThread(thread: unknown): void
      reclaim(thread: unknown): Promise<void>
    }
    // Main's first save is held on its way to a replica, so the spawns after it and the second
    // save wait behind it on main's replication queue.
    const held: Array<() => void> = []
    cluster.intercept = (from, to, message) => {
      if (message.type !== 'save' || message.tid !== '0' || message.sequence !== 1 || held.length > 0)
        return undefined
      return new Promise((resolve) =>
        held.push(() => resolve(cluster.send(from, to, message))),
      ) as unknown as RuntimeReply
    }
    const process = await cluster
      .runtime('node-a')
      .submit(guestBytes('test/fixtures/as/spawn-then-save.ts'), {
        args: ['spawn-then-save', String(childCount), 'save-first'],
        seed: 1,
        saveIntervalMs: 600_000,
      })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    for (let waitedMs = 0; held.length === 0 && waitedMs < 30_000; waitedMs += 10)
      await new Promise((resolve) => setTimeout(resolve, 10))
    expect(held.length).toBe(1)
    await new Promise((resolve) => setTimeout(resolve, 500))
    const mainNode = cluster.nodeRunning('0')!
    const node = cluster.runtime(mainNode) as unknown as NodeInternals
    const main = node.local.get(`${process.pid}/0`)!
    // The children are spawned and not durable yet (queued behind the held save).
    expect(main.spawnsPending).toBe(childCount)
    // Main's incarnation stops (as when its node cannot renew its lease), then the held save goes
    // on, and the node claims main again, which resumes from the saves its replicas hold.
    node.stopThread(main)
    cluster.intercept = null
    for (const release of held.splice(0)) release()
    await new Promise((resolve) => setTimeout(resolve, 200))
    await node.reclaim(main)
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(output).toContain(expected)
  }, 60_000)
})
