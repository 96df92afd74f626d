/**
 * Coordination-store benchmark: get, cas and lease acquire+release on 3 and 5 local nodes (in this
 * process, over real libp2p on loopback), with the same number of concurrent clients for each.
 * Returns rows for the bench runner. etcd comparison: not yet (see issue 3).
 */

import { connectClient, type FabricClient } from '../../fabric/net/client.ts'
import { generateClusterKey, loadClusterKey } from '../../fabric/net/cluster-key.ts'
import { type FabricNode, startNode } from '../../fabric/net/node.ts'

export interface BenchRow {
  name: string
  value: number
  unit: string
  note: string
}

export const benchDurationMs = 3000
export const benchConcurrentClients = 8

async function startCluster(count: number, clusterKey: string): Promise<FabricNode[]> {
  const log = () => {}
  const first = await startNode({
    listen: ['/ip4/127.0.0.1/tcp/0'],
    bootstrap: [],
    clusterKey: loadClusterKey(clusterKey),
    log,
  })
  const rest = await Promise.all(
    Array.from({ length: count - 1 }, () =>
      startNode({
        listen: ['/ip4/127.0.0.1/tcp/0'],
        bootstrap: [first.addresses()[0]!],
        clusterKey: loadClusterKey(clusterKey),
        log,
      }),
    ),
  )
  const nodes = [first, ...rest]
  for (
    let waited = 0;
    waited < 10_000 && nodes.some((node) => node.membership.alive().length < count);
    waited += 50
  )
    await new Promise((resolve) => setTimeout(resolve, 50))
  // Let the shards move onto their replicas.
  await new Promise((resolve) => setTimeout(resolve, 2500))
  return nodes
}

async function measure(
  client: FabricClient,
  operation: (worker: number, iteration: number) => Promise<unknown>,
): Promise<{ opsPerSecond: number; p50Ms: number; p99Ms: number }> {
  const latencies: number[] = []
  const end = performance.now() + benchDurationMs
  void client
  await Promise.all(
    Array.from({ length: benchConcurrentClients }, async (_, worker) => {
      let iteration = 0
      while (performance.now() < end) {
        const start = performance.now()
        await operation(worker, iteration++)
        latencies.push(performance.now() - start)
      }
    }),
  )
  latencies.sort((a, b) => a - b)
  return {
    opsPerSecond: (latencies.length / benchDurationMs) * 1000,
    p50Ms: latencies[Math.floor(latencies.length * 0.5)] ?? Number.NaN,
    p99Ms: latencies[Math.floor(latencies.length * 0.99)] ?? Number.NaN,
  }
}

export async function coordBench(): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  for (const count of [3, 5]) {
    const clusterKey = generateClusterKey()
    const nodes = await startCluster(count, clusterKey)
    const client = await connectClient({ nodes: nodes.map((node) => node.addresses()[0]!), clusterKey })
    try {
      const value = new TextEncoder().encode('v')
      for (let key = 0; key < benchConcurrentClients; key++) await client.put(`bench/${key}`, value)
      const cases: [string, (worker: number, iteration: number) => Promise<unknown>][] = [
        ['get', (worker) => client.get(`bench/${worker}`)],
        [
          'cas',
          async (worker) => {
            const current = await client.get(`bench/cas/${worker}`)
            return client.cas(`bench/cas/${worker}`, current.version, value)
          },
        ],
        [
          'lease acquire+release',
          async (worker) => {
            const lease = await client.acquire(`bench/lease/${worker}`, { holder: `w${worker}`, ttlMs: 1000 })
            if (lease !== null) await client.release(lease)
          },
        ],
      ]
      for (const [name, operation] of cases) {
        const result = await measure(client, operation)
        const note = `${count} local nodes, ${benchConcurrentClients} concurrent clients, uncontended keys${name === 'cas' ? ' (get + cas per op)' : ''}`
        rows.push({
          name: `fabric ${name} ${count} nodes`,
          value: Math.round(result.opsPerSecond),
          unit: 'ops/s',
          note,
        })
        rows.push({
          name: `fabric ${name} ${count} nodes p50`,
          value: Number(result.p50Ms.toFixed(3)),
          unit: 'ms',
          note,
        })
        rows.push({
          name: `fabric ${name} ${count} nodes p99`,
          value: Number(result.p99Ms.toFixed(3)),
          unit: 'ms',
          note,
        })
      }
    } finally {
      await client.close()
      await Promise.all(nodes.map((node) => node.stop()))
    }
  }
  rows.push({
    name: 'etcd comparison',
    value: Number.NaN,
    unit: '',
    note: 'not measured yet: the 3-member etcd cluster bench is still open in issue 3',
  })
  return rows
}
