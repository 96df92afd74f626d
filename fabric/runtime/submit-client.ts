/**
 * The submitter's side of `fabric run --join`, `fabric ps` and `fabric kill`: a libp2p client
 * (no listening, no DHT server) that hands a program to a node, which becomes the process's home,
 * then long-polls the home for output. The poll names the next chunk it wants, so a submitter whose
 * connection drops reconnects and gets the rest of the output, none of it twice.
 *
 *   const result = await runOnCluster({ node: '/ip4/127.0.0.1/tcp/4001/p2p/12D3…', program, args,
 *     onOutput: (chunk) => process.stdout.write(chunk.bytes) })
 */

import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { InvalidArgumentError } from '../errors.ts'
import { createNetwork, type Network } from '../net/network.ts'
import type { ProcessSummary, RuntimeMessage, RuntimeReply } from './messages.ts'
import { requestRuntime } from './node-services.ts'

/** How long one output poll waits at the home for something new. */
export const attachWaitMs = 5000
/** How long a submitter keeps trying to reach the home again after losing it. */
export const reconnectWindowMs = 60_000
export const reconnectBackoffMs = 250

export interface ClusterConnection {
  /** Multiaddr of a node, ending in /p2p/<peer id>. */
  node: string
  /**
   * More nodes of the cluster, asked in turn when one does not answer. Should the home be lost,
   * one of its home replicas takes the process over: the submitter follows it there through them.
   */
  otherNodes?: string[]
  clusterKey?: Uint8Array
  log?: (line: string) => void
}

export interface RunOnClusterOptions extends ClusterConnection {
  program: Uint8Array
  args: string[]
  env?: string[]
  onOutput(chunk: { tid: string; fd: number; bytes: Uint8Array }): void
  /** Called once the process exists, with its id (for `fabric kill`). */
  onSubmitted?(pid: string): void
  signal?: AbortSignal
}

interface Session {
  network: Network
  peer: string
  request(message: RuntimeMessage): Promise<RuntimeReply>
  close(): Promise<void>
}

async function connect(connection: ClusterConnection): Promise<Session> {
  const peer = multiaddr(connection.node)
    .getComponents()
    .find((component) => component.name === 'p2p')?.value
  if (peer === undefined)
    throw new InvalidArgumentError(`Expected ${connection.node} to end in /p2p/<peer id>`)
  const network = await createNetwork({
    privateKey: await generateKeyPair('Ed25519'),
    listen: [],
    clusterKey: connection.clusterKey,
    protocols: new Set(),
    log: connection.log ?? (() => {}),
    client: true,
  })
  network.addAddresses(peer, [connection.node])
  return {
    network,
    peer,
    request: (message) => requestRuntime(network.libp2p, peer, message),
    close: () => network.stop(),
  }
}

function refused(reply: RuntimeReply, what: string): never {
  throw new Error(`${what}: ${reply.type === 'refused' ? reply.reason : `unexpected reply ${reply.type}`}`)
}

export async function runOnCluster(
  options: RunOnClusterOptions,
): Promise<{ exitCode: number; error: string | null }> {
  const session = await connect(options)
  try {
    const submitted = await session.request({
      type: 'submit',
      program: options.program,
      args: options.args,
      env: options.env ?? [],
    })
    if (submitted.type !== 'submitted') refused(submitted, 'the node did not take the program')
    options.onSubmitted?.(submitted.pid)
    return await follow(session, submitted.pid, options)
  } finally {
    await session.close()
  }
}

export interface AttachOptions extends ClusterConnection {
  pid: string
  onOutput(chunk: { tid: string; fd: number; bytes: Uint8Array }): void
  signal?: AbortSignal
}

/** Shows a running process's output from its start and follows it to the end (`fabric attach`). */
export async function attachToProcess(
  options: AttachOptions,
): Promise<{ exitCode: number; error: string | null }> {
  const session = await connect(options)
  try {
    return await follow(session, options.pid, options)
  } finally {
    await session.close()
  }
}

/**
 * Long-polls the home for output from chunk 0 on until the process ends. A node that is not the
 * home sends the poll on to the current home (the process record names it), so any node of the
 * cluster serves it. A node that cannot be reached is asked again (the link may come back); with
 * `otherNodes`, the next attempts go to them in turn, which follow the process to the home replica
 * that takes it over should its home be lost.
 */
async function follow(
  first: Session,
  pid: string,
  options: Pick<RunOnClusterOptions, 'onOutput' | 'signal' | 'log' | 'node' | 'otherNodes' | 'clusterKey'>,
): Promise<{ exitCode: number; error: string | null }> {
  const nodes = [options.node, ...(options.otherNodes ?? [])]
  let session = first
  let nodeIndex = 0
  let next = 0
  let unreachableSince: number | null = null
  // The next node in turn (back to the first session at the end of the list).
  const moveOn = async () => {
    nodeIndex = (nodeIndex + 1) % nodes.length
    if (session !== first) await session.close().catch(() => {})
    session = nodeIndex === 0 ? first : await connect({ ...options, node: nodes[nodeIndex]! })
  }
  try {
    for (;;) {
      options.signal?.throwIfAborted()
      let reply: RuntimeReply
      try {
        reply = await session.request({
          type: 'attach',
          pid,
          from: next,
          waitMs: attachWaitMs,
        })
      } catch (error) {
        // The home may come back (or the link may): keep asking for the rest of the output.
        unreachableSince ??= performance.now()
        if (performance.now() - unreachableSince > reconnectWindowMs) throw error
        options.log?.(`lost the home node (${(error as Error).message}); retrying`)
        await new Promise((resolve) => setTimeout(resolve, reconnectBackoffMs))
        if (nodes.length > 1) await moveOn()
        continue
      }
      if (reply.type !== 'output' && nodes.length === 1)
        refused(reply, 'the home node refused to send output')
      if (reply.type !== 'output') {
        // Not the home (yet): another node may be taking the process over.
        unreachableSince ??= performance.now()
        if (performance.now() - unreachableSince > reconnectWindowMs)
          refused(reply, 'no node sends the output of this process')
        await new Promise((resolve) => setTimeout(resolve, reconnectBackoffMs))
        await moveOn()
        continue
      }
      unreachableSince = null
      for (const chunk of reply.chunks) options.onOutput(chunk)
      next = reply.next
      if (reply.result !== null) return reply.result
    }
  } finally {
    if (session !== first) await session.close().catch(() => {})
  }
}

/** Output of a process from chunk `from` on, as a reconnecting submitter asks for it. */
export async function attachOnce(
  connection: ClusterConnection,
  pid: string,
  from: number,
): Promise<Extract<RuntimeReply, { type: 'output' }>> {
  const session = await connect(connection)
  try {
    const reply = await session.request({ type: 'attach', pid, from, waitMs: 0 })
    if (reply.type !== 'output') refused(reply, 'attach')
    return reply
  } finally {
    await session.close()
  }
}

/**
 * Asks the nodes of `connection` in turn until one answers: any node of the cluster serves `ps` and
 * `kill` (a node that is not the process's home sends a `kill` on to it), so a lost node is skipped.
 */
async function requestAnyNode(connection: ClusterConnection, message: RuntimeMessage): Promise<RuntimeReply> {
  const nodes = [connection.node, ...(connection.otherNodes ?? [])]
  let lastError: unknown
  for (const node of nodes) {
    let session: Session | undefined
    try {
      session = await connect({ ...connection, node })
      return await session.request(message)
    } catch (error) {
      if (error instanceof InvalidArgumentError) throw error
      lastError = error
      connection.log?.(`${node} did not answer (${(error as Error).message}); asking the next node`)
    } finally {
      await session?.close().catch(() => {})
    }
  }
  throw lastError
}

/** The processes of the cluster and their threads, as any node of it gathers them. */
export async function listProcesses(connection: ClusterConnection): Promise<ProcessSummary[]> {
  const reply = await requestAnyNode(connection, { type: 'ps' })
  if (reply.type !== 'processes') refused(reply, 'ps')
  return reply.processes
}

/** Ends a process, through any node of the cluster (it finds the process's current home). */
export async function killProcess(connection: ClusterConnection, pid: string): Promise<void> {
  const reply = await requestAnyNode(connection, { type: 'kill', pid })
  if (reply.type !== 'ok') refused(reply, 'kill')
}
