import { afterAll, describe, expect, it } from 'vitest'
import type { Operation } from '../fabric/coord/register.ts'
import { replicasOfShard, shardCountDefault, shardOfKey } from '../fabric/coord/shards.ts'
import { connectClient } from '../fabric/net/client.ts'
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

// Known failing (issue 3, open): after the SIGKILL, operations stall and live nodes flap between
// alive and dead under CPU contention. Run with FABRIC_REAL_PROCESS=1 while fixing it.
describe.skipIf(process.env.FABRIC_REAL_PROCESS !== '1')('five node processes on loopback', () => {
  it('keep serving with no acknowledged write lost while one replica is SIGKILLed and another restarted; the killed node is declared dead within 1.5 s', async () => {
    const clusterKey = generateClusterKey()
    const nodes: NodeProcess[] = []
    const first = await startNodeProcess({ name: 'n0', dataDirectory: `${directory.path}/n0`, clusterKey })
    nodes.push(first)
    nodes.push(
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
    )
    await waitFor(
      () => nodes.every((node) => aliveCount(node) === 5),
      10_000,
      'all 5 nodes to see each other',
    )
    // Let the shard leaders move every shard from the first node onto 3 replicas.
    await new Promise((resolve) => setTimeout(resolve, 2500))

    const client = await connectClient({
      nodes: nodes.map((node) => node.address),
      clusterKey,
      timeoutMs: 4000,
    })
    const keys = ['alpha', 'beta', 'gamma', 'delta']
    const history: HistoryOperation[] = []
    const encoder = new TextEncoder()
    let running = true
    const errors = new Map<string, number>()
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
          errors.set(
            (error as Error).message.slice(0, 90),
            (errors.get((error as Error).message.slice(0, 90)) ?? 0) + 1,
          )
          await new Promise((resolve) => setTimeout(resolve, 20))
        }
      }
    }
    const workers = ['w0', 'w1', 'w2', 'w3'].map(worker)

    await new Promise((resolve) => setTimeout(resolve, 2000))
    // SIGKILL a replica of a key in use, and restart (clean stop, start again) another node.
    const peers = nodes.map((node) => node.peerId)
    const replicas = replicasOfShard(shardOfKey('alpha', shardCountDefault), shardCountDefault, peers, 3)
    const victim =
      nodes.find((node) => node.peerId === replicas[0] && node !== first) ??
      nodes.find((node) => node.peerId === replicas[1])!
    const restarted =
      nodes.find((node) => node !== victim && node !== first && replicas.includes(node.peerId)) ??
      nodes.find((node) => node !== victim && node !== first)!
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
    console.log(`SIGKILL to declared dead by every other node: ${detectionMs} ms`)

    restarted.child.kill('SIGTERM')
    await new Promise((resolve) => restarted.child.once('exit', resolve))
    const again = await startNodeProcess({
      name: `${restarted.name}-again`,
      dataDirectory: restarted.dataDirectory,
      clusterKey,
      bootstrap: [first.address],
    })
    expect(again.peerId).toBe(restarted.peerId)
    const completedBefore = history.filter((record) => record.result !== null).length
    await new Promise((resolve) => setTimeout(resolve, 4000))
    running = false
    await Promise.all(workers)
    const completedAfter = history.filter((record) => record.result !== null).length
    if (process.env.FABRIC_DEBUG) {
      console.log([...errors].map(([message, count]) => `${count} x ${message}`).join('\n'))
      const t0 = history[0]!.callMs
      const perSecond = new Map<number, number>()
      for (const record of history)
        if (record.returnMs !== null)
          perSecond.set(
            Math.floor((record.returnMs - t0) / 1000),
            (perSecond.get(Math.floor((record.returnMs - t0) / 1000)) ?? 0) + 1,
          )
      console.log(
        'per second',
        [...perSecond].join(' '),
        'restart ready at',
        ((performance.now() - t0) / 1000 - 4).toFixed(1),
      )
      for (const node of nodes)
        console.log(node.name, node.peerId.slice(-8), '\n', node.lines.map((line) => line.text).join('\n'))
      console.log(again.lines.map((line) => line.text).join('\n'))
    }
    await client.close()

    // Operations continued after the faults, and the history is linearizable: no acknowledged write is lost.
    expect(completedAfter - completedBefore).toBeGreaterThan(50)
    const verdict = checkLinearizable(history)
    if (!verdict.ok) console.error(describeHistory(verdict.operations))
    expect(verdict.ok).toBe(true)
    console.log(
      `${completedAfter} operations completed, ${history.length - completedAfter} with unknown outcome`,
    )
    expect(detectionMs).toBeLessThan(1500)
  }, 90_000)
})
