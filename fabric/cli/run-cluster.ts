/**
 * `fabric run` on a cluster: the one named by `--join`, or, with none named, an embedded local
 * cluster of node processes on loopback that lives as long as the program.
 */

import { readFile } from 'node:fs/promises'
import { FabricHostError } from '../../host/errors.ts'
import { validateModule } from '../../host/program.ts'
import { loadClusterKey } from '../net/cluster-key.ts'
import { runOnCluster } from '../runtime/submit-client.ts'
import { startLocalCluster } from './local-cluster.ts'

export interface RunClusterOptions {
  program: string
  args: string[]
  env: string[]
  /** Multiaddr of a node of the cluster to run on; none starts an embedded local cluster. */
  join?: string
  clusterKey?: string
  /** Nodes of the embedded cluster. */
  nodeCount?: number
}

export async function runCluster(options: RunClusterOptions): Promise<number> {
  const bytes = new Uint8Array(await readFile(options.program))
  await validateModule(bytes) // refuse a bad module here, with the local error, before any node sees it
  const clusterKey = options.clusterKey === undefined ? undefined : loadClusterKey(options.clusterKey)
  const cluster =
    options.join === undefined ? await startLocalCluster({ nodeCount: options.nodeCount }) : null
  let stopping = false
  const interrupt = () => {
    if (stopping) return
    stopping = true
    void cluster?.stop().finally(() => process.exit(130))
    if (cluster === null) process.exit(130)
  }
  process.once('SIGINT', interrupt)
  try {
    // `--join a,b,c`: the first node becomes the home; should it be lost, the output follows the
    // process through the others (a home replica takes it over).
    const nodes =
      options.join?.split(',').filter((address) => address.length > 0) ??
      cluster!.nodes.map((node) => node.address)
    const result = await runOnCluster({
      node: nodes[0]!,
      otherNodes: nodes.slice(1),
      clusterKey,
      program: bytes,
      args: [options.program, ...options.args],
      env: options.env,
      // On a cluster that outlives this command, say how to reattach: `fabric attach <pid>`.
      onSubmitted: (pid) => {
        if (options.join !== undefined) process.stderr.write(`fabric: process ${pid}\n`)
      },
      onOutput: (chunk) => (chunk.fd === 2 ? process.stderr : process.stdout).write(chunk.bytes),
    })
    if (result.error !== null) throw new FabricHostError(result.error)
    return result.exitCode
  } finally {
    process.removeListener('SIGINT', interrupt)
    await cluster?.stop()
  }
}
