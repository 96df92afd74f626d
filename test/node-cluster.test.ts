import { afterAll, describe, expect, it } from 'vitest'
import type { Operation } from '../fabric/coord/register.ts'
import { replicasOfShard, shardCountDefault, shardOfKey } from '../fabric/coord/shards.ts'
import { connectClient, type FabricClient } from '../fabric/net/client.ts'
import { generateClusterKey } from '../fabric/net/cluster-key.ts'
import { checkLinearizable, describeHistory, type HistoryOperation } from '../fabric/sim/linearizability.ts'
import {
  aliveCount,
  killAll,
  type NodeProcess,
  startNodeProcess,
  temporaryDirectory,
  waitFor,
} from './support/node-processes.ts'

const directory = temporaryDirectory()
afterAll(() => {
  killAll()
  directory.remove()
})

const workerCount = 4
const keysInUse = 4

/** Keys whose shards all have every one of `replicas` among their 3 replicas. */
function keysReplicatedOn(replicas: readonly string[], peers: readonly string[], count: number): string[] {
  const keys: string[] = []
  for (let index = 0; keys.length < count; index++) {
    const key = `register/${index}`
    const chosen = replicasOfShard(shardOfKey(key, shardCountDefault), shardCountDefault, peers, 3)
    if (replicas.every((replica) => chosen.includes(replica))) keys.push(key)
  }
  return keys
}

/** Clients running random get, put and cas on `keys` until stopped, recording a history. */
function runWorkload(client: FabricClient, keys: readonly string[]) {
  const history: HistoryOperation[] = []
  const errors = new Map<string, number>()
  const encoder = new TextEncoder()
  let running = true
  let sequence = 0
  const worker = async (name: string) => {
    const versions = new Map<string, number>()
    while (running) {
      const key = keys[Math.floor(Math.random() * keys.length)]!
      const roll = Math.random()
      const value = encoder.encode(`${name}-${sequence++}`)
      const operation: Operation =
        roll < 0.4
          ? { kind: 'get' }
          : roll < 0.7
            ? { kind: 'put', value }
            : { kind: 'cas', expectedVersion: versions.get(key) ?? 0, value }
      const record: HistoryOperation = {
        client: name,
        key,
        operation,
        callMs: performance.now(),
        returnMs: null,
        result: null,
      }
      history.push(record)
      try {
        const result = await client.run(key, operation)
        record.returnMs = performance.now()
        record.result = result
        versions.set(key, result.version)
      } catch (error) {
        // Unknown outcome: the checker lets it take effect at any point after its call, or never.
        const message = (error as Error).message.slice(0, 80)
        errors.set(message, (errors.get(message) ?? 0) + 1)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
  }
  const workers = Array.from({ length: workerCount }, (_, index) => worker(`w${index}`))
  return {
    history,
    errors,
    completed: () => history.filter((record) => record.result !== null).length,
    async stop() {
      running = false
      await Promise.all(workers)
    },
  }
}

function opsPerSecond(history: readonly HistoryOperation[], fromMs: number): string {
  const perSecond = new Map<number, number>()
  for (const record of history)
    if (record.returnMs !== null) {
      const second = Math.floor((record.returnMs - fromMs) / 1000)
      perSecond.set(second, (perSecond.get(second) ?? 0) + 1)
    }
  return [...perSecond]
    .sort(([a], [b]) => a - b)
    .map(([second, count]) => `${second}s:${count}`)
    .join(' ')
}

describe('five node processes on loopback', () => {
  it('keep serving with no acknowledged write lost while one replica of the keys in use is SIGKILLed and another restarted; the killed node is declared dead within 1.5 s', async () => {
    const clusterKey = generateClusterKey()
    const first = await startNodeProcess({ name: 'n0', dataDirectory: `${directory.path}/n0`, clusterKey })
    const nodes: NodeProcess[] = [
      first,
      ...(await Promise.all(
        [1, 2, 3, 4].map((index) =>
          startNodeProcess({
            name: `n${index}`,
            dataDirectory: `${directory.path}/n${index}`,
            clusterKey,
            bootstrap: [first.address],
          }),
        ),
      )),
    ]
    await waitFor(
      () => nodes.every((node) => aliveCount(node) === 5),
      10_000,
      'all 5 nodes to see each other',
    )

    // Neither the victim nor the restarted node is the genesis node (the others' bootstrap peer);
    // both are replicas of every key in use.
    const victim = nodes[1]!
    const restarted = nodes[2]!
    const keys = keysReplicatedOn(
      [victim.peerId, restarted.peerId],
      nodes.map((node) => node.peerId),
      keysInUse,
    )

    const client = await connectClient({
      nodes: nodes.map((node) => node.address),
      clusterKey,
      timeoutMs: 4000,
    })
    // Shards move off the genesis node onto their replicas as the others join; wait until keys answer.
    for (const key of keys) await client.get(key, { timeoutMs: 10_000 })

    const workload = runWorkload(client, keys)
    const startedMs = performance.now()
    try {
      await new Promise((resolve) => setTimeout(resolve, 2000))

      const killedAtMs = Date.now()
      victim.child.kill('SIGKILL')
      const others = nodes.filter((node) => node !== victim)
      const deadLine = (node: NodeProcess) =>
        node.lines.find(
          (line) => line.atMs >= killedAtMs && line.text.includes(`${victim.peerId.slice(-8)} alive -> dead`),
        )
      await waitFor(
        () => others.every((node) => deadLine(node) !== undefined),
        5000,
        'the killed node to be declared dead',
      )
      const detectionMs = Math.max(...others.map((node) => deadLine(node)!.atMs - killedAtMs))

      restarted.child.kill('SIGTERM')
      await new Promise((resolve) => restarted.child.once('exit', resolve))
      const again = await startNodeProcess({
        name: `${restarted.name}-again`,
        dataDirectory: restarted.dataDirectory,
        clusterKey,
        bootstrap: [first.address],
      })
      expect(again.peerId).toBe(restarted.peerId)
      const completedAtRestart = workload.completed()
      await new Promise((resolve) => setTimeout(resolve, 4000))
      await workload.stop()
      const completedAfterRestart = workload.completed() - completedAtRestart

      console.log(
        `SIGKILL to declared dead by every other node: ${detectionMs} ms; ${workload.completed()} operations completed, ` +
          `${workload.history.length - workload.completed()} with unknown outcome; ${completedAfterRestart} in the 4 s after the restart\n` +
          `completed per second: ${opsPerSecond(workload.history, startedMs)}\n` +
          [...workload.errors].map(([message, count]) => `${count} x ${message}`).join('\n'),
      )
      expect(detectionMs).toBeLessThan(1500)
      // Operations continue after both faults.
      expect(completedAfterRestart).toBeGreaterThan(100)
      // No acknowledged write is lost: the whole history, faults included, is linearizable.
      const verdict = checkLinearizable(workload.history)
      if (!verdict.ok) console.error(describeHistory(verdict.operations))
      expect(verdict.ok).toBe(true)
    } catch (error) {
      for (const node of nodes)
        console.error(
          `${node.name} ${node.peerId.slice(-8)}:\n${node.lines.map((line) => line.text).join('\n')}`,
        )
      throw error
    } finally {
      await workload.stop()
      await client.close()
      killAll()
    }
  }, 60_000)
})
