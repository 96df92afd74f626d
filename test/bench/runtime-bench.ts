/**
 * Process-runtime figures for `npm run bench`, on embedded local clusters of node processes:
 * remote thread start latency and throughput, recovery time after a SIGKILL, and save replication
 * throughput next to a raw libp2p stream on the same machine.
 */

import type { Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { startLocalCluster } from '../../fabric/cli/local-cluster.ts'
import { connectClient } from '../../fabric/net/client.ts'
import { startNode } from '../../fabric/net/node.ts'
import { requestRuntime } from '../../fabric/runtime/node-services.ts'
import { listProcesses, runOnCluster } from '../../fabric/runtime/submit-client.ts'
import { guestBytes } from '../support/guests.ts'
import type { BenchRow } from './host-bench.ts'

function percentile(values: number[], share: number): number {
  const sorted = [...values].sort((left, right) => left - right)
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * share))]!
}

async function threadStarts(rows: BenchRow[]): Promise<void> {
  const cluster = await startLocalCluster({ nodeCount: 3 })
  try {
    const count = 300
    const batch = 100
    let output = ''
    const result = await runOnCluster({
      node: cluster.nodes[0]!.address,
      program: guestBytes('test/fixtures/as/spawn-latency.ts'),
      args: ['spawn-latency', String(count), String(batch)],
      onOutput: (chunk) => {
        output += new TextDecoder().decode(chunk.bytes)
      },
    })
    if (result.error !== null) throw new Error(result.error)
    const series = (name: string) =>
      output
        .match(new RegExp(`${name} (.*)`))![1]!
        .split(',')
        .map((value) => Number(value) / 1000)
        .slice(20) // the first starts load the program on each node
    const latencies = series('latencies-us')
    const spawnReturns = series('spawn-returns-us')
    const batchMs = Number(output.match(/batch-ms (.*)/)![1])
    // The stages a start cannot avoid, measured on the same cluster from outside: one store cas
    // (the child's record, written with its claim; the end is one more, off the joiner's path).
    const casMs = await storeCasLatencies(cluster.nodes[0]!.address, 200)
    rows.push({
      name: 'Remote thread start (spawn + join of a tiny thread), 3 local nodes',
      value: `${percentile(latencies, 0.5).toFixed(2)} / ${percentile(latencies, 0.99).toFixed(2)}`,
      unit: 'ms p50 / p99',
      note: `${latencies.length} sequential starts (goal p50 <= 2 ms; Ray ~1 ms per synchronous task, Dask 0.2-1 ms); spawn returns in ${percentile(spawnReturns, 0.5).toFixed(2)} ms p50, the rest is the child's claim (one cas; a store cas alone: ${percentile(casMs, 0.5).toFixed(2)} ms p50 from a client), its run and the end notice`,
    })
    rows.push({
      name: 'Tiny threads per second, 3 local nodes',
      value: ((count / batchMs) * 1000).toFixed(0),
      unit: 'threads/s',
      note: `${count} threads, ${batch} in flight at a time (goal >= 5,000; Ray ~7,700 async tasks/s)`,
    })
  } finally {
    await cluster.stop()
  }
}

/** `count` sequential compare-and-swaps on one key through `node`, in ms each. */
async function storeCasLatencies(node: string, count: number): Promise<number[]> {
  const client = await connectClient({ nodes: [node] })
  try {
    const value = new Uint8Array(64)
    let { version } = await client.put('bench/start-stage', value)
    const latencies: number[] = []
    for (let index = 0; index < count; index++) {
      const started = performance.now()
      const result = await client.cas('bench/start-stage', version, value)
      latencies.push(performance.now() - started)
      version = result.version
    }
    return latencies.slice(20)
  } finally {
    await client.close()
  }
}

async function recovery(rows: BenchRow[]): Promise<void> {
  let killedAt = 0
  const samples: number[] = []
  const detections: number[] = []
  for (let round = 0; round < 5; round++) {
    let resumedAt: number | null = null
    let detectedAt: number | null = null
    const cluster = await startLocalCluster({
      nodeCount: 3,
      log: (index, line) => {
        if (resumedAt === null && line.includes('runtime: resuming thread'))
          resumedAt = Date.parse(line.slice(0, 24))
        // The home (node 0) declares the killed node dead: failure detection ends, recovery begins.
        if (index === 0 && detectedAt === null && killedAt > 0 && / -> dead/.test(line))
          detectedAt = Date.parse(line.slice(0, 24))
      },
    })
    try {
      let firstLine = false
      const run = runOnCluster({
        node: cluster.nodes[0]!.address,
        program: guestBytes('examples/primes/primes.ts'),
        args: ['primes', '30000000', '200000'],
        onOutput: () => {
          if (firstLine) return
          firstLine = true
          // The main thread runs on one of the other nodes, or on node 0: kill the one that runs it.
          setTimeout(async () => {
            for (const node of cluster.nodes.slice(1)) {
              const processes = await listProcesses({ node: node.address }).catch(() => [])
              if (
                processes.some((process) => process.threads.some((thread) => thread.state === 'running here'))
              ) {
                killedAt = Date.now()
                cluster.kill(node.index)
                return
              }
            }
          }, 200)
        },
      })
      const result = await run
      if (result.error !== null) throw new Error(result.error)
      if (killedAt > 0 && resumedAt !== null) {
        samples.push(resumedAt - killedAt)
        if (detectedAt !== null) detections.push(detectedAt - killedAt)
      }
      killedAt = 0
    } finally {
      await cluster.stop()
    }
  }
  rows.push({
    name: 'Recovery: SIGKILL of a node to its thread running again elsewhere',
    value: samples.length === 0 ? 'n/a' : percentile(samples, 0.5).toFixed(0),
    unit: 'ms p50',
    note: `${samples.length} kills (goal p50 <= 1,500 ms; Ray's default failure detection ~20 s); failure detection (SIGKILL to the home declaring the node dead) ${detections.length === 0 ? 'n/a' : `${percentile(detections, 0.5).toFixed(0)} ms p50`}, then fencing (the node's lease must expire), one cas to claim the thread on another node`,
  })
}

/** A save of `bytes` through the runtime protocol vs the same bytes over a raw libp2p stream. */
async function replicationThroughput(rows: BenchRow[]): Promise<void> {
  const sender = await startNode({ listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], log: () => {} })
  const receiver = await startNode({ listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], log: () => {} })
  try {
    const { libp2pMessenger } = await import('../../fabric/runtime/node-services.ts')
    const { SaveReplicas } = await import('../../fabric/runtime/save-replicas.ts')
    const replicas = new SaveReplicas()
    libp2pMessenger(receiver, () => {}).serve(async (_from, message) => {
      if (message.type === 'save') replicas.keep(message)
      return { type: 'ok' }
    })
    // The raw baseline: the receiver counts bytes and answers one byte when all have arrived.
    await receiver.network.libp2p.handle('/fabric/bench-raw/1', async (stream: Stream) => {
      let received = 0
      stream.addEventListener('message', (event) => {
        received += event.data.byteLength
        if (received >= totalBytes) stream.send(Uint8Array.of(1))
      })
    })
    await sender.network.dial(receiver.addresses())
    const totalBytes = 64 * 1024 * 1024
    const payload = new Uint8Array(totalBytes).fill(7)
    const rawTimes: number[] = []
    const saveTimes: number[] = []
    for (let round = 0; round < 3; round++) {
      let started = performance.now()
      const stream = await sender.network.libp2p.dialProtocol(
        peerIdFromString(receiver.peerId),
        '/fabric/bench-raw/1',
      )
      const acknowledged = new Promise((resolve) =>
        stream.addEventListener('message', resolve, { once: true }),
      )
      for (let offset = 0; offset < totalBytes; offset += 1 << 20) {
        if (!stream.send(payload.subarray(offset, offset + (1 << 20)))) await stream.onDrain()
      }
      await acknowledged
      rawTimes.push(performance.now() - started)
      stream.abort(new Error('done'))
      started = performance.now()
      await requestRuntime(sender.network.libp2p, receiver.peerId, {
        type: 'save',
        pid: 'bench',
        tid: '0',
        epoch: 1,
        sequence: round + 1,
        baseSequence: null,
        bytes: payload,
      })
      saveTimes.push(performance.now() - started)
    }
    const raw = totalBytes / 2 ** 20 / (percentile(rawTimes, 0.5) / 1000)
    const save = totalBytes / 2 ** 20 / (percentile(saveTimes, 0.5) / 1000)
    rows.push({
      name: 'Save replication throughput / raw libp2p stream',
      value: (save / raw).toFixed(2),
      unit: 'ratio',
      note: `64 MiB save: ${save.toFixed(0)} MiB/s; raw stream ${raw.toFixed(0)} MiB/s (one TCP + noise + yamux link on loopback)`,
    })
  } finally {
    await sender.stop()
    await receiver.stop()
  }
}

export async function runtimeBench(): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  await threadStarts(rows)
  await recovery(rows)
  await replicationThroughput(rows)
  return rows
}
