import { afterAll, describe, expect, it } from 'vitest'
import { connectClient } from '../fabric/net/client.ts'
import { generateClusterKey } from '../fabric/net/cluster-key.ts'
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

const nodeCount = 10
/** "At once" for a clean leave: no timeout involved, only the notice's own trip (under load). */
const leaveVisibleMsMax = 1000

async function startCluster(clusterKey: string, prefix: string): Promise<NodeProcess[]> {
  const first = await startNodeProcess({
    name: `${prefix}0`,
    dataDirectory: `${directory.path}/${prefix}0`,
    clusterKey,
  })
  const rest = await Promise.all(
    Array.from({ length: nodeCount - 1 }, (_, index) =>
      startNodeProcess({
        name: `${prefix}${index + 1}`,
        dataDirectory: `${directory.path}/${prefix}${index + 1}`,
        clusterKey,
        bootstrap: [first.address],
      }),
    ),
  )
  return [first, ...rest]
}

/** When `node` first logged a line matching `pattern` at or after `sinceMs` (wall clock). */
function loggedAt(node: NodeProcess, pattern: RegExp, sinceMs: number): number | undefined {
  return node.lines.find((line) => line.atMs >= sinceMs && pattern.test(line.text))?.atMs
}

function dumpLogs(nodes: readonly NodeProcess[]): void {
  for (const node of nodes)
    console.error(`${node.name} ${node.peerId.slice(-8)}:\n${node.lines.map((line) => line.text).join('\n')}`)
}

describe('membership of ten node processes on loopback', () => {
  it('converges within 2 s, declares a SIGKILLed node dead within 1.5 s everywhere, and drops a node that leaves at once', async () => {
    const nodes = await startCluster(generateClusterKey(), 'm')
    try {
      // Every node is ready (has joined) by now; its view must hold all ten within 2 s.
      const lastReadyMs = Date.now()
      await waitFor(
        () => nodes.every((node) => aliveCount(node) === nodeCount),
        10_000,
        'all 10 nodes to see each other',
      )
      const convergedMs = Date.now() - lastReadyMs

      const victim = nodes[3]!
      const killedAtMs = Date.now()
      victim.child.kill('SIGKILL')
      const watchers = nodes.filter((node) => node !== victim)
      const dead = new RegExp(`${victim.peerId.slice(-8)} alive -> dead`)
      await waitFor(
        () => watchers.every((node) => loggedAt(node, dead, killedAtMs) !== undefined),
        5000,
        'the SIGKILLed node to be declared dead by every other node',
      )
      const detectionMs = Math.max(...watchers.map((node) => loggedAt(node, dead, killedAtMs)! - killedAtMs))

      const leaver = nodes[5]!
      const leftAtMs = Date.now()
      leaver.child.kill('SIGTERM')
      const stayers = watchers.filter((node) => node !== leaver)
      const left = new RegExp(`${leaver.peerId.slice(-8)} alive -> left`)
      await waitFor(
        () => stayers.every((node) => loggedAt(node, left, leftAtMs) !== undefined),
        5000,
        'the leaving node to be gone from every view',
      )
      const leaveMs = Math.max(...stayers.map((node) => loggedAt(node, left, leftAtMs)! - leftAtMs))

      console.log(
        `10 nodes: converged ${convergedMs} ms after the last joined; SIGKILL to dead everywhere ${detectionMs} ms; SIGTERM to left everywhere ${leaveMs} ms`,
      )
      expect(convergedMs).toBeLessThan(2000)
      expect(detectionMs).toBeLessThan(1500)
      expect(leaveMs).toBeLessThan(leaveVisibleMsMax)
      // Nobody else taken for dead. Ten processes on this 2-core machine starve one another for
      // hundreds of milliseconds at a time (the nodes log such stalls); a death needs a closed
      // connection, or a silence far longer than these stalls (membership.ts).
      const falseDeaths = nodes.flatMap((node) =>
        nodes
          .filter((other) => other !== victim)
          .filter((other) =>
            node.lines.some(
              (line) =>
                line.text.includes(`${other.peerId.slice(-8)} alive -> dead`) &&
                // Once the leaver has gone, "dead" for it is only a late view of its leaving.
                (other !== leaver || line.atMs < leftAtMs),
            ),
          )
          .map((other) => `${node.name} declared ${other.name} dead`),
      )
      const stalls = nodes.flatMap((node) =>
        node.lines.filter((line) => line.text.includes('event loop stalled')),
      )
      console.log(`${stalls.length} event-loop stalls logged by the nodes during the test`)
      expect(falseDeaths).toEqual([])
    } catch (error) {
      dumpLogs(nodes)
      throw error
    } finally {
      killAll()
    }
  }, 90_000)

  it.skipIf(process.env.FABRIC_SOAK !== '1')(
    'declares no live node dead during 60 s under load',
    async () => {
      const clusterKey = generateClusterKey()
      const nodes = await startCluster(clusterKey, 's')
      try {
        await waitFor(
          () => nodes.every((node) => aliveCount(node) === nodeCount),
          10_000,
          'all 10 nodes to see each other',
        )
        const startedMs = Date.now()
        const client = await connectClient({
          nodes: nodes.map((node) => node.address),
          clusterKey,
          timeoutMs: 4000,
        })
        let running = true
        let completed = 0
        let failed = 0
        const encoder = new TextEncoder()
        const workers = Array.from({ length: 8 }, async (_, worker) => {
          for (let iteration = 0; running; iteration++) {
            try {
              await client.put(`soak/${worker}/${iteration % 50}`, encoder.encode(`${iteration}`))
              completed++
            } catch {
              failed++
            }
          }
        })
        await new Promise((resolve) => setTimeout(resolve, 60_000))
        running = false
        await Promise.all(workers)
        await client.close()
        console.log(`60 s soak: ${completed} puts completed, ${failed} failed`)
        const deaths = nodes.flatMap((node) =>
          node.lines
            .filter((line) => line.atMs >= startedMs && / -> dead/.test(line.text))
            .map((line) => `${node.name}: ${line.text}`),
        )
        expect(deaths).toEqual([])
        expect(completed).toBeGreaterThan(1000)
      } catch (error) {
        dumpLogs(nodes)
        throw error
      } finally {
        killAll()
      }
    },
    120_000,
  )
})
