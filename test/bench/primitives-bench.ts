/**
 * Guest coordination figures: a guest's lock acquire + release and shared-variable add, p50/p99
 * and ops/s, on 3 local node processes (each call is a `fabric.sync` from a WebAssembly thread,
 * exactly-once bookkeeping included), side by side with the same operations on a 3-member etcd on
 * loopback (lock: etcd's lock API under a lease granted once per client, then unlock; add: a
 * read + txn compare-and-swap loop on one key); and queue items per second through one queue with
 * 4 producers and 4 consumers.
 */

import { spawnSync } from 'node:child_process'
import { type LocalCluster, startLocalCluster } from '../../fabric/cli/local-cluster.ts'
import { runOnCluster } from '../../fabric/runtime/submit-client.ts'
import { guestBytes } from '../support/guests.ts'
import { temporaryDirectory } from '../support/node-processes.ts'
import { etcdCall, etcdInstalled, startEtcd } from './coord-bench.ts'
import type { BenchRow } from './host-bench.ts'

/** Guest threads (and etcd clients) working at once. */
export const primitivesBenchThreads = 8
/** How long each guest thread (and etcd client) keeps calling. */
export const primitivesBenchDurationMs = 4000
export const queueBenchItems = 4000
/** Away from the coordination bench's etcd ports, in case both run at once. */
const etcdBasePort = 24790

interface Figures {
  opsPerSecond: number
  p50Ms: number
  p99Ms: number
}

function figures(latenciesMs: number[], operations: number, elapsedMs: number): Figures {
  latenciesMs.sort((a, b) => a - b)
  return {
    opsPerSecond: (operations / elapsedMs) * 1000,
    p50Ms: latenciesMs[Math.floor(latenciesMs.length * 0.5)] ?? Number.NaN,
    p99Ms: latenciesMs[Math.floor(latenciesMs.length * 0.99)] ?? Number.NaN,
  }
}

function rowsOf(name: string, result: Figures, note: string): BenchRow[] {
  return [
    { name, value: result.opsPerSecond.toFixed(0), unit: 'ops/s', note },
    { name: `${name} p50`, value: result.p50Ms.toFixed(2), unit: 'ms', note },
    { name: `${name} p99`, value: result.p99Ms.toFixed(2), unit: 'ms', note },
  ]
}

async function runGuest(cluster: LocalCluster, args: string[]): Promise<string> {
  let output = ''
  const result = await runOnCluster({
    node: cluster.nodes[0]!.address,
    program: guestBytes('test/fixtures/as/sync-bench.ts'),
    args: ['sync-bench', ...args],
    onOutput: (chunk) => {
      if (chunk.fd === 1) output += new TextDecoder().decode(chunk.bytes)
    },
  })
  if (result.exitCode !== 0) throw new Error(`sync-bench ${args.join(' ')} failed: ${result.error}`)
  return output
}

/** Each guest thread's operation count and latencies; ops/s over the threads' common duration. */
async function guestFigures(cluster: LocalCluster, mode: 'add' | 'lock'): Promise<Figures> {
  const output = await runGuest(cluster, [mode, `${primitivesBenchThreads}`, `${primitivesBenchDurationMs}`])
  const latencies: number[] = []
  let operations = 0
  for (const line of output.split('\n')) {
    const match = /^thread (\d+) ([\d,]*)$/.exec(line)
    if (match === null) continue
    operations += Number(match[1])
    for (const micros of match[2]!.split(',')) if (micros !== '') latencies.push(Number(micros) / 1000)
  }
  return figures(latencies, operations, primitivesBenchDurationMs)
}

async function etcdFigures(
  endpoints: string[],
  operation: (endpoint: string, worker: number) => Promise<void>,
  setup: (endpoint: string, worker: number) => Promise<void> = async () => {},
): Promise<Figures> {
  const endpointOf = (worker: number) => endpoints[worker % endpoints.length]!
  const workers = Array.from({ length: primitivesBenchThreads }, (_, worker) => worker)
  await Promise.all(workers.map((worker) => setup(endpointOf(worker), worker)))
  const latencies: number[] = []
  let operations = 0
  const startedMs = performance.now()
  const end = startedMs + primitivesBenchDurationMs
  await Promise.all(
    workers.map(async (worker) => {
      while (performance.now() < end) {
        const before = performance.now()
        await operation(endpointOf(worker), worker)
        latencies.push(performance.now() - before)
        operations++
      }
    }),
  )
  return figures(latencies, operations, performance.now() - startedMs)
}

const base64 = (text: string) => Buffer.from(text).toString('base64')

async function etcdRows(): Promise<BenchRow[]> {
  if (!etcdInstalled()) {
    return [
      {
        name: 'etcd 3 members: lock, add',
        value: '-',
        unit: '',
        note: 'not measured: etcd is not installed',
      },
    ]
  }
  const directory = temporaryDirectory()
  const { endpoints, children } = await startEtcd(directory.path, etcdBasePort)
  const version = spawnSync('etcd', ['--version'])
    .stdout.toString()
    .split('\n')[0]
    ?.replace('etcd Version: ', '')
  const note = `3-member etcd ${version} on loopback, HTTP/JSON gateway, ${primitivesBenchThreads} concurrent clients`
  try {
    const leases = new Map<number, string>()
    const lock = await etcdFigures(
      endpoints,
      async (endpoint, worker) => {
        const locked = await etcdCall(endpoint, '/v3/lock/lock', {
          name: base64(`bench/lock/${worker}`),
          lease: leases.get(worker),
        })
        await etcdCall(endpoint, '/v3/lock/unlock', { key: locked.key })
      },
      async (endpoint, worker) => {
        const grant = await etcdCall(endpoint, '/v3/lease/grant', { TTL: 60 })
        leases.set(worker, grant.ID as string)
      },
    )
    const counterKey = base64('bench/counter')
    const add = await etcdFigures(endpoints, async (endpoint) => {
      for (;;) {
        const read = await etcdCall(endpoint, '/v3/kv/range', { key: counterKey })
        const kv = (read.kvs as Array<{ value: string; mod_revision: string }> | undefined)?.[0]
        const current = kv === undefined ? 0 : Number(Buffer.from(kv.value, 'base64').toString())
        const compare =
          kv === undefined
            ? { key: counterKey, target: 'VERSION', result: 'EQUAL', version: '0' }
            : { key: counterKey, target: 'MOD', result: 'EQUAL', mod_revision: kv.mod_revision }
        const swapped = await etcdCall(endpoint, '/v3/kv/txn', {
          compare: [compare],
          success: [{ request_put: { key: counterKey, value: base64(String(current + 1)) } }],
        })
        if (swapped.succeeded === true) return
      }
    })
    return [
      ...rowsOf(
        'etcd 3 members: lock acquire+release',
        lock,
        `${note}, a lock each; lock API under a lease, then unlock`,
      ),
      ...rowsOf(
        'etcd 3 members: shared counter add',
        add,
        `${note}, one key; range + txn compare-and-swap, again on a lost race`,
      ),
    ]
  } finally {
    for (const child of children) child.kill('SIGKILL')
    await new Promise((resolve) => setTimeout(resolve, 200))
    directory.remove()
  }
}

export async function primitivesBench(): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const cluster = await startLocalCluster({ nodeCount: 3 })
  const note = `3 fabric node processes on loopback, ${primitivesBenchThreads} guest threads (AssemblyScript SDK) for ${primitivesBenchDurationMs} ms, latency seen by the guest`
  try {
    await runGuest(cluster, ['add', '1', '200']) // places and instruments the program everywhere
    rows.push(
      ...rowsOf(
        'guest lock acquire+release, 3 nodes',
        await guestFigures(cluster, 'lock'),
        `${note}, a lock each`,
      ),
    )
    rows.push(
      ...rowsOf(
        'guest shared counter add, 3 nodes',
        await guestFigures(cluster, 'add'),
        `${note}, one shared variable`,
      ),
    )
    const queueOutput = await runGuest(cluster, ['queue', '4', '4', `${queueBenchItems}`])
    const match = /^queue (\d+) items in (\d+) ms$/m.exec(queueOutput)
    if (match === null || Number(match[1]) !== queueBenchItems) throw new Error(`queue bench: ${queueOutput}`)
    rows.push({
      name: 'guest queue, 4 producers and 4 consumers, 3 nodes',
      value: ((queueBenchItems / Number(match[2])) * 1000).toFixed(0),
      unit: 'items/s',
      note: `${queueBenchItems} items of 16 B through one queue of capacity 64, from the first spawn to the last consumer's end`,
    })
  } finally {
    await cluster.stop()
  }
  rows.push(...(await etcdRows()))
  return rows
}
