/**
 * An embedded local cluster: `fabric node` processes on loopback, started and stopped together.
 * `fabric run` without `--join` runs programs on one; tests and the demo kill its nodes with SIGKILL.
 *
 *   const cluster = await startLocalCluster({ nodeCount: 3 })
 *   ... runOnCluster({ node: cluster.nodes[0].address, ... })
 *   cluster.kill(2)          // SIGKILL
 *   await cluster.stop()
 */

import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'

const cli = join(import.meta.dirname, 'bin.js')
/**
 * Time a node process gets to print its address. About a second on a quiet machine; at a load of
 * 25-40 on 2 cores starting the processes took over 30 s.
 */
export const nodeStartTimeoutMs = 60_000
/** Time given to the nodes to see each other before programs are submitted. */
export const convergenceWaitMs = 1000

export interface LocalNode {
  index: number
  process: ChildProcess
  peerId: string
  /** A loopback multiaddr ending in /p2p/<peer id>. */
  address: string
  alive: boolean
}

export interface LocalCluster {
  nodes: LocalNode[]
  dataDirectory: string
  /** SIGKILL, as a crash would. */
  kill(index: number): void
  /** Starts one more node that joins the cluster. */
  addNode(): Promise<LocalNode>
  /** SIGTERM to every node (they leave cleanly), then removes the data directory. */
  stop(): Promise<void>
}

export interface LocalClusterOptions {
  /** Default: the cores, at least 3. */
  nodeCount?: number
  /** Lines the nodes print on stderr, with the node's index. */
  log?: (index: number, line: string) => void
  /** No child thread runs on its spawner's node (`fabric node --children-elsewhere`; for measurements). */
  childrenElsewhere?: boolean
}

/**
 * V8 flags for the node processes. A young generation of a fixed 16 MiB per semi-space: V8 otherwise
 * shrinks it when it can and gives the pages back, and a node's main thread, which allocates
 * steadily, then faults each page in again (12 faults per tiny thread, 17% of the main threads'
 * samples in the kernel clearing pages, on 3 local nodes running tiny threads). Fixed, in 5 alternate
 * pairs: 6.5% less CPU per tiny thread, 8% more threads per second, the same memory, and sequential
 * remote starts as fast (p99 no worse in 4 more pairs). Other sizes, 6 alternate pairs each against
 * 16 (tiny threads, 250 in flight): 8 MiB no faster (3 of 6 higher, 6% more CPU per thread), 32 MiB
 * slower in all 6 (4,564 against 5,049 threads/s), 64 MiB (on earlier code) no less CPU and slower
 * in 5 of 6.
 */
export const nodeV8Flags: readonly string[] = [
  '--min-semi-space-size=16',
  '--max-semi-space-size=16',
  // The buffers a scavenge finds dead are freed on the main thread rather than by a helper thread.
  // Tried because tcmalloc's central free lists took 4.5% of the main threads' samples (memory freed
  // on one thread refills another's cache through them; that this is the cause is not verified).
  // 8 alternate pairs on 3 local nodes running tiny threads: 4.8% less CPU per thread (0.473
  // against 0.497 ms; V8's helper threads 0.096 against 0.120), the threads per second 5% higher
  // (within the noise); sequential remote starts as fast (one pair).
  '--no-concurrent-array-buffer-sweeping',
  // A scavenge done by the main thread alone. Tried because a scavenge's pause was about twice the
  // work it listed (2.5 ms against 1.1 ms of phases, with --trace-gc-nvp): on cores the node
  // processes keep busy, the main thread may wait for helpers that wait for a core. 8 alternate pairs
  // (with the flag above): 4.3% less CPU per tiny thread (0.463 against 0.484 ms), the threads per
  // second 2.5% higher (within the noise); sequential remote starts as fast (p50 1.14-1.17 against
  // 1.14-1.21 ms, two pairs).
  '--no-parallel-scavenge',
]

/**
 * Where Debian puts tcmalloc (package libtcmalloc-minimal4), per architecture. The node processes
 * run with it when the machine has it: a node allocates and frees many small buffers per message
 * (the muxer's frames, the cipher's output, the codecs'), and glibc's malloc took about 9% of the
 * main threads' samples on 3 local nodes running tiny threads. With tcmalloc, in 4 alternate pairs
 * (3 local nodes, 6 rounds of 1,000 tiny threads, the 2 runs after the first in each): 15% less CPU
 * per tiny thread (0.40 against 0.46 ms), on the main threads and V8's helper threads alike, and
 * about the same memory. jemalloc measured about half that gain, mimalloc none (2 pairs each).
 */
export const tcmallocPaths: readonly string[] = [
  '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4',
  '/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4',
]

/**
 * The node processes' environment: this one's, with tcmalloc preloaded when the machine has it and
 * `FABRIC_NODE_MALLOC` is not `system` (which keeps glibc's malloc, for comparisons).
 */
export function nodeEnvironment(environment: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  if (environment.FABRIC_NODE_MALLOC === 'system') return environment
  const tcmalloc = tcmallocPaths.find((path) => existsSync(path))
  if (tcmalloc === undefined) return environment
  const preloaded = environment.LD_PRELOAD
  if (preloaded?.includes('tcmalloc') === true) return environment
  return { ...environment, LD_PRELOAD: preloaded ? `${tcmalloc}:${preloaded}` : tcmalloc }
}

export function defaultNodeCount(): number {
  return Math.max(3, availableParallelism())
}

/** Replicas per store shard: 5 once the cluster can hold them, so it survives losing two nodes. */
export function replicaCountFor(nodeCount: number): number {
  return nodeCount >= 5 ? 5 : 3
}

function startNodeProcess(
  index: number,
  dataDirectory: string,
  bootstrap: string | undefined,
  replicas: number,
  options: LocalClusterOptions,
): Promise<LocalNode> {
  const args = [
    cli,
    'node',
    '--listen',
    '/ip4/127.0.0.1/tcp/0',
    '--replicas',
    String(replicas),
    '--data-dir',
    join(dataDirectory, `node-${index}`),
  ]
  if (bootstrap !== undefined) args.push('--bootstrap', bootstrap)
  if (options.childrenElsewhere === true) args.push('--children-elsewhere')
  const child = spawn(process.execPath, [...nodeV8Flags, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: nodeEnvironment(),
  })
  return new Promise((resolve, reject) => {
    let peerId = ''
    let address = ''
    let buffered = ''
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`node ${index} did not start within ${nodeStartTimeoutMs} ms`))
    }, nodeStartTimeoutMs)
    child.stdout!.setEncoding('utf8')
    child.stdout!.on('data', (text: string) => {
      buffered += text
      let newline = buffered.indexOf('\n')
      while (newline >= 0) {
        const line = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        if (line.startsWith('peer-id ')) peerId = line.slice('peer-id '.length)
        else if (line.startsWith('listening ') && address === '' && line.includes('/tcp/')) {
          address = line.slice('listening '.length)
        } else if (line === 'ready') {
          clearTimeout(timer)
          if (!address.includes('/p2p/')) address = `${address}/p2p/${peerId}`
          resolve({ index, process: child, peerId, address, alive: true })
        }
        newline = buffered.indexOf('\n')
      }
    })
    child.stderr!.setEncoding('utf8')
    let stderrBuffered = ''
    child.stderr!.on('data', (text: string) => {
      stderrBuffered += text
      let newline = stderrBuffered.indexOf('\n')
      while (newline >= 0) {
        options.log?.(index, stderrBuffered.slice(0, newline))
        stderrBuffered = stderrBuffered.slice(newline + 1)
        newline = stderrBuffered.indexOf('\n')
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`node ${index} exited with code ${code} before it was ready`))
    })
  })
}

export async function startLocalCluster(options: LocalClusterOptions = {}): Promise<LocalCluster> {
  const nodeCount = options.nodeCount ?? defaultNodeCount()
  const dataDirectory = mkdtempSync(join(tmpdir(), 'fabric-cluster-'))
  const nodes: LocalNode[] = []
  const stopAll = () => {
    for (const node of nodes) if (node.alive) node.process.kill('SIGKILL')
  }
  process.once('exit', stopAll)
  try {
    nodes.push(await startNodeProcess(0, dataDirectory, undefined, replicaCountFor(nodeCount), options))
    // Every node that started is kept, so that a node that does not start stops them all (they
    // would outlive the caller otherwise).
    const rest = await Promise.allSettled(
      Array.from({ length: nodeCount - 1 }, (_, offset) =>
        startNodeProcess(offset + 1, dataDirectory, nodes[0]!.address, replicaCountFor(nodeCount), options),
      ),
    )
    for (const started of rest) if (started.status === 'fulfilled') nodes.push(started.value)
    const failed = rest.find((started) => started.status === 'rejected')
    if (failed !== undefined) throw failed.reason
  } catch (error) {
    stopAll()
    process.removeListener('exit', stopAll)
    rmSync(dataDirectory, { recursive: true, force: true })
    throw error
  }
  for (const node of nodes) node.process.once('exit', () => (node.alive = false))
  await new Promise((resolve) => setTimeout(resolve, convergenceWaitMs))
  return {
    nodes,
    dataDirectory,
    kill(index) {
      const node = nodes[index]!
      node.alive = false
      node.process.kill('SIGKILL')
    },
    async addNode() {
      const seed = nodes.find((node) => node.alive)!
      const node = await startNodeProcess(
        nodes.length,
        dataDirectory,
        seed.address,
        replicaCountFor(nodeCount),
        options,
      )
      node.process.once('exit', () => (node.alive = false))
      nodes.push(node)
      return node
    },
    async stop() {
      process.removeListener('exit', stopAll)
      await Promise.all(
        nodes
          .filter((node) => node.alive)
          .map(
            (node) =>
              new Promise<void>((resolve) => {
                const force = setTimeout(() => node.process.kill('SIGKILL'), 5000)
                node.process.once('exit', () => {
                  clearTimeout(force)
                  resolve()
                })
                node.process.kill('SIGTERM')
              }),
          ),
      )
      rmSync(dataDirectory, { recursive: true, force: true })
    },
  }
}
