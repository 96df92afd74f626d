/**
 * Coordination-store benchmark: get, cas and lease acquire+release on 3 and 5 local node processes
 * (`fabric node` on loopback), side by side with a 3-member etcd cluster on loopback doing the
 * same operations through its HTTP/JSON gateway, with the same number of concurrent clients; and
 * the time from SIGKILL to a dead node's lease being claimable through the other nodes.
 * Returns rows for the bench runner; etcd rows are skipped (with a note) when `etcd` is not
 * installed (Debian: `apt-get install etcd-server`).
 */

import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import { mkdirSync, readFileSync } from 'node:fs'
import { connectClient, type FabricClient } from '../../fabric/net/client.ts'
import { generateClusterKey } from '../../fabric/net/cluster-key.ts'
import { killAll, type NodeProcess, startNodeProcess, temporaryDirectory } from '../support/node-processes.ts'
import type { BenchRow } from './host-bench.ts'

export const benchDurationMs = 3000
export const benchWarmupMs = 500
export const benchConcurrentClients = 8
/** Keys the single uncontended client cycles through, one operation at a time. */
export const uncontendedKeyCount = 64
export const benchLeaseTtlMs = 2000
const etcdBasePort = 23790

type Operation = (worker: number) => Promise<unknown>

interface Measurement {
  opsPerSecond: number
  p50Ms: number
  p99Ms: number
}

/** Runs `operation` from `workers` concurrent workers; warm-up first, then measured. */
async function measure(
  setup: (worker: number) => Promise<void>,
  operation: Operation,
  workers = benchConcurrentClients,
  probe?: { start(): void; end(operations: number): void },
): Promise<Measurement> {
  await Promise.all(Array.from({ length: workers }, (_, worker) => setup(worker)))
  const run = async (durationMs: number, latencies: number[] | null) => {
    const end = performance.now() + durationMs
    await Promise.all(
      Array.from({ length: workers }, async (_, worker) => {
        while (performance.now() < end) {
          const start = performance.now()
          await operation(worker)
          latencies?.push(performance.now() - start)
        }
      }),
    )
  }
  await run(benchWarmupMs, null)
  const latencies: number[] = []
  const startedMs = performance.now()
  probe?.start()
  await run(benchDurationMs, latencies)
  probe?.end(latencies.length)
  const elapsedMs = performance.now() - startedMs
  latencies.sort((a, b) => a - b)
  return {
    opsPerSecond: (latencies.length / elapsedMs) * 1000,
    p50Ms: latencies[Math.floor(latencies.length * 0.5)] ?? Number.NaN,
    p99Ms: latencies[Math.floor(latencies.length * 0.99)] ?? Number.NaN,
  }
}

function rowsOf(system: string, name: string, result: Measurement, note: string): BenchRow[] {
  return [
    { name: `${system} ${name}`, value: result.opsPerSecond.toFixed(0), unit: 'ops/s', note },
    { name: `${system} ${name} p50`, value: result.p50Ms.toFixed(2), unit: 'ms', note },
    { name: `${system} ${name} p99`, value: result.p99Ms.toFixed(2), unit: 'ms', note },
  ]
}

// ---- fabric ----------------------------------------------------------------------------------

async function startFabric(count: number, clusterKey: string, directory: string): Promise<NodeProcess[]> {
  const first = await startNodeProcess({ name: 'b0', dataDirectory: `${directory}/b0`, clusterKey })
  const rest = await Promise.all(
    Array.from({ length: count - 1 }, (_, index) =>
      startNodeProcess({
        name: `b${index + 1}`,
        dataDirectory: `${directory}/b${index + 1}`,
        clusterKey,
        bootstrap: [first.address],
      }),
    ),
  )
  return [first, ...rest]
}

type BenchCase = [string, (worker: number) => Promise<void>, Operation]

/**
 * The same cases for one client doing one operation at a time, each on the next of
 * `uncontendedKeyCount` keys that nobody else touches (so every key was written before, by this
 * client: the steady state of a lock or a variable).
 */
function uncontended(cases: BenchCase[]): BenchCase[] {
  return cases.map(([name, setup, operation]) => {
    let next = 0
    return [
      `uncontended ${name}`,
      async () => {
        for (let key = 0; key < uncontendedKeyCount; key++) await setup(key)
      },
      () => operation(next++ % uncontendedKeyCount),
    ]
  })
}

function fabricCases(client: FabricClient, prefix = 'bench'): BenchCase[] {
  const value = new TextEncoder().encode('v')
  const versions = new Map<number, number>()
  return [
    [
      'get',
      (worker) => client.put(`${prefix}/get/${worker}`, value).then(() => {}),
      (worker) => client.get(`${prefix}/get/${worker}`),
    ],
    [
      'cas',
      async (worker) => {
        versions.set(worker, (await client.put(`${prefix}/cas/${worker}`, value)).version)
      },
      async (worker) => {
        const result = await client.cas(`${prefix}/cas/${worker}`, versions.get(worker)!, value)
        if (!result.ok) throw new Error(`uncontended cas failed on ${prefix}/cas/${worker}`)
        versions.set(worker, result.version)
      },
    ],
    [
      'lease acquire+release',
      async () => {},
      async (worker) => {
        const lease = await client.acquire(`${prefix}/lease/${worker}`, {
          holder: `w${worker}`,
          ttlMs: benchLeaseTtlMs,
        })
        if (lease === null) throw new Error(`uncontended lease ${prefix}/lease/${worker} was held`)
        await client.release(lease)
      },
    ],
  ]
}

/** Processes' CPU time (user + system) in ms, from /proc; undefined off Linux. */
function processesCpuMs(children: readonly ChildProcess[]): number | undefined {
  try {
    let totalMs = 0
    for (const child of children) {
      // Fields after the command name: utime and stime are the 12th and 13th, in clock ticks (100 per second).
      const fields = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
      totalMs += (Number(fields[11]) + Number(fields[12])) * 10
    }
    return totalMs
  } catch {
    return undefined
  }
}

function cpuProbe(children: readonly ChildProcess[]) {
  let startMs: number | undefined
  const probe = {
    usPerOperation: undefined as number | undefined,
    start() {
      startMs = processesCpuMs(children)
    },
    end(operations: number) {
      const endMs = processesCpuMs(children)
      if (startMs !== undefined && endMs !== undefined && operations > 0)
        probe.usPerOperation = ((endMs - startMs) / operations) * 1000
    },
  }
  return probe
}

/** SIGKILLs the node that a lease holder talks to and times how long until another client takes the lease. */
async function leaseTakeoverMs(nodes: NodeProcess[], clusterKey: string): Promise<number> {
  const victim = nodes[nodes.length - 1]!
  const holder = await connectClient({ nodes: [victim.address], clusterKey, timeoutMs: 2000 })
  const claimer = await connectClient({
    nodes: nodes.filter((node) => node !== victim).map((node) => node.address),
    clusterKey,
    timeoutMs: 2000,
  })
  try {
    let lease = await holder.acquire('bench/takeover', { holder: 'on-victim', ttlMs: benchLeaseTtlMs })
    if (lease === null) throw new Error('bench/takeover was held')
    // The holder renews as a live node would, a few times a TTL.
    for (let renewal = 0; renewal < 3; renewal++) {
      await new Promise((resolve) => setTimeout(resolve, benchLeaseTtlMs / 4))
      lease = (await holder.renew(lease)) ?? lease
    }
    const killedAtMs = performance.now()
    victim.child.kill('SIGKILL')
    for (;;) {
      const taken = await claimer
        .acquire('bench/takeover', { holder: 'claimer', ttlMs: benchLeaseTtlMs })
        .catch(() => null)
      if (taken !== null) return performance.now() - killedAtMs
      if (performance.now() - killedAtMs > 30_000)
        throw new Error('the lease was not claimable 30 s after SIGKILL')
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  } finally {
    await holder.close().catch(() => {})
    await claimer.close()
  }
}

async function fabricBench(count: number): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const directory = temporaryDirectory()
  const clusterKey = generateClusterKey()
  try {
    const nodes = await startFabric(count, clusterKey, directory.path)
    const client = await connectClient({ nodes: nodes.map((node) => node.address), clusterKey })
    // Shards move from the first node onto their replicas as the others join: wait until they have.
    await new Promise((resolve) => setTimeout(resolve, 3000))
    try {
      for (const [name, setup, operation] of uncontended(fabricCases(client, 'bench/single')))
        rows.push(
          ...rowsOf(
            `fabric ${count} nodes`,
            name,
            await measure(setup, operation, 1),
            `${count} fabric node processes on loopback, 1 client, sequential operations cycling over ${uncontendedKeyCount} keys of its own`,
          ),
        )
      for (const [name, setup, operation] of fabricCases(client)) {
        const cpu = cpuProbe(nodes.map((node) => node.child))
        rows.push(
          ...rowsOf(
            `fabric ${count} nodes`,
            name,
            await measure(setup, operation, benchConcurrentClients, cpu),
            `${count} fabric node processes on loopback, ${benchConcurrentClients} concurrent clients over one connection per node, uncontended keys`,
          ),
        )
        if (cpu.usPerOperation !== undefined)
          rows.push({
            name: `fabric ${count} nodes ${name}: node CPU per operation`,
            value: cpu.usPerOperation.toFixed(0),
            unit: 'us',
            note: `CPU time of the ${count} node processes together (user + system, /proc) during the measured ${benchConcurrentClients}-client run, divided by its operations; includes their idle work (membership, ticks); steadier than ops/s on a loaded machine`,
          })
      }
    } finally {
      await client.close()
    }
    rows.push({
      name: `fabric ${count} nodes: SIGKILL to lease claimable elsewhere`,
      value: (await leaseTakeoverMs(nodes, clusterKey)).toFixed(0),
      unit: 'ms',
      note: `lease TTL ${benchLeaseTtlMs} ms, renewed every TTL/4 through the node that is killed; claimed through the others`,
    })
  } finally {
    killAll()
    directory.remove()
  }
  return rows
}

// ---- etcd ----------------------------------------------------------------------------------------

export function etcdInstalled(): boolean {
  return spawnSync('etcd', ['--version'], { stdio: 'ignore' }).status === 0
}

export async function startEtcd(
  directory: string,
  basePort = etcdBasePort,
): Promise<{ endpoints: string[]; children: ChildProcess[] }> {
  const members = [0, 1, 2].map((index) => ({
    name: `e${index}`,
    client: `http://127.0.0.1:${basePort + index * 2}`,
    peer: `http://127.0.0.1:${basePort + index * 2 + 1}`,
  }))
  const initialCluster = members.map((member) => `${member.name}=${member.peer}`).join(',')
  const children = members.map((member) => {
    mkdirSync(`${directory}/${member.name}`, { recursive: true })
    return spawn(
      'etcd',
      [
        `--name=${member.name}`,
        `--data-dir=${directory}/${member.name}`,
        `--listen-client-urls=${member.client}`,
        `--advertise-client-urls=${member.client}`,
        `--listen-peer-urls=${member.peer}`,
        `--initial-advertise-peer-urls=${member.peer}`,
        `--initial-cluster=${initialCluster}`,
        '--initial-cluster-state=new',
        '--initial-cluster-token=fabric-bench',
        '--log-level=error',
      ],
      { stdio: 'ignore' },
    )
  })
  const endpoints = members.map((member) => member.client)
  for (const endpoint of endpoints) {
    const deadline = performance.now() + 20_000
    for (;;) {
      const healthy = await fetch(`${endpoint}/health`)
        .then(async (response) => (await response.json()).health === 'true')
        .catch(() => false)
      if (healthy) break
      if (performance.now() > deadline) throw new Error(`etcd at ${endpoint} did not become healthy in 20 s`)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  return { endpoints, children }
}

const base64 = (text: string) => Buffer.from(text).toString('base64')

export async function etcdCall(
  endpoint: string,
  path: string,
  body: unknown,
): Promise<Record<string, unknown>> {
  const response = await fetch(`${endpoint}${path}`, { method: 'POST', body: JSON.stringify(body) })
  const result = (await response.json()) as Record<string, unknown>
  if (!response.ok) throw new Error(`etcd ${path}: ${JSON.stringify(result).slice(0, 200)}`)
  return result
}

async function etcdBench(): Promise<BenchRow[]> {
  const directory = temporaryDirectory()
  const { endpoints, children } = await startEtcd(directory.path)
  // Each worker talks to one member, as each fabric worker's requests go to one node at a time.
  const endpointOf = (worker: number) => endpoints[worker % endpoints.length]!
  const value = base64('v')
  const revisions = new Map<number, string>()
  const note = `3-member etcd ${spawnSync('etcd', ['--version']).stdout.toString().split('\n')[0]?.replace('etcd Version: ', '')} on loopback, HTTP/JSON gateway, fetch keep-alive, ${benchConcurrentClients} concurrent clients, uncontended keys`
  const cases: BenchCase[] = [
    [
      'get',
      async (worker) => {
        await etcdCall(endpointOf(worker), '/v3/kv/put', { key: base64(`bench/get/${worker}`), value })
      },
      (worker) => etcdCall(endpointOf(worker), '/v3/kv/range', { key: base64(`bench/get/${worker}`) }),
    ],
    [
      'cas',
      async (worker) => {
        const put = await etcdCall(endpointOf(worker), '/v3/kv/put', {
          key: base64(`bench/cas/${worker}`),
          value,
        })
        revisions.set(worker, (put.header as { revision: string }).revision)
      },
      async (worker) => {
        const key = base64(`bench/cas/${worker}`)
        const result = await etcdCall(endpointOf(worker), '/v3/kv/txn', {
          compare: [{ key, target: 'MOD', result: 'EQUAL', mod_revision: revisions.get(worker) }],
          success: [{ request_put: { key, value } }],
        })
        if (result.succeeded !== true) throw new Error(`uncontended etcd cas failed on bench/cas/${worker}`)
        revisions.set(worker, (result.header as { revision: string }).revision)
      },
    ],
    [
      'lease acquire+release',
      async () => {},
      async (worker) => {
        const endpoint = endpointOf(worker)
        const grant = await etcdCall(endpoint, '/v3/lease/grant', { TTL: benchLeaseTtlMs / 1000 })
        await etcdCall(endpoint, '/v3/kv/put', {
          key: base64(`bench/lease/${worker}`),
          value,
          lease: grant.ID,
        })
        await etcdCall(endpoint, '/v3/lease/revoke', { ID: grant.ID })
      },
    ],
  ]
  const rows: BenchRow[] = []
  try {
    for (const [name, setup, operation] of uncontended(cases))
      rows.push(
        ...rowsOf(
          'etcd 3 members',
          name,
          await measure(setup, operation, 1),
          `3-member etcd on loopback, HTTP/JSON gateway, 1 client, sequential operations cycling over ${uncontendedKeyCount} keys of its own (each key's requests go to one member, the keys spread over the 3)${name.endsWith('lease acquire+release') ? '; grant + put with lease + revoke' : ''}`,
        ),
      )
    for (const [name, setup, operation] of cases) {
      const cpu = cpuProbe(children)
      rows.push(
        ...rowsOf(
          'etcd 3 members',
          name,
          await measure(setup, operation, benchConcurrentClients, cpu),
          name === 'lease acquire+release' ? `${note}; grant + put with lease + revoke` : note,
        ),
      )
      if (cpu.usPerOperation !== undefined)
        rows.push({
          name: `etcd 3 members ${name}: CPU per operation`,
          value: cpu.usPerOperation.toFixed(0),
          unit: 'us',
          note: `CPU time of the 3 etcd processes together (user + system, /proc) during the measured ${benchConcurrentClients}-client run, divided by its operations (the HTTP client's own CPU is not counted, as for fabric)`,
        })
    }
  } finally {
    for (const child of children) child.kill('SIGKILL')
    await new Promise((resolve) => setTimeout(resolve, 200))
    directory.remove()
  }
  return rows
}

export async function coordBench(): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  for (const count of [3, 5]) rows.push(...(await fabricBench(count)))
  if (etcdInstalled()) rows.push(...(await etcdBench()))
  else
    rows.push({
      name: 'etcd 3 members',
      value: '-',
      unit: '',
      note: 'not measured: etcd is not installed (Debian: apt-get install etcd-server)',
    })
  return rows
}
