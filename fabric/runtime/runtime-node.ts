/**
 * A fabric node that runs programs: the core node (libp2p, membership, coordination store) plus the
 * process runtime on a worker pool sized to the cores.
 *
 *   const node = await startRuntimeNode({ listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [] })
 *   const process = await node.runtime.submit(programBytes, { args: ['prog'] })
 */

import { homedir } from 'node:os'
import { join } from 'node:path'
import { diskInstrumentCache } from '../../host/instrument-cache-node.ts'
import { instrumentInWorker } from '../../host/instrument-node.ts'
import { loadProgram } from '../../host/program.ts'
import { coreCount, nodeWorkerFactory } from '../../host/worker-node.ts'
import { WorkerPool } from '../../host/worker-pool.ts'
import { type NodeStorage, type NodeStorageOptions, startNodeStorage } from '../../storage/node-storage.ts'
import { type FabricNode, type NodeOptions, startNode } from '../net/node.ts'
import { systemRandom, systemTimers } from '../platform.ts'
import { createGuestFilesService } from './guest-files.ts'
import { NodeRuntime } from './node-runtime.ts'
import { clusterView, libp2pMessenger, storeClient } from './node-services.ts'

export interface RuntimeNodeOptions extends NodeOptions {
  /** Threads computing at once; default: the cores. */
  workers?: number
  /** Starts a storage node too (bricks under `<dataDirectory>/bricks`); no storage when absent. */
  storage?: NodeStorageOptions
  /** No child thread runs on its spawner's node (NodeRuntimeOptions.childrenElsewhere; for measurements). */
  childrenElsewhere?: boolean
}

export interface RuntimeNode {
  node: FabricNode
  runtime: NodeRuntime
  /** The node's storage, when started: `storage.fileSystem` is the cluster file system as this node sees it. */
  storage: NodeStorage | undefined
  stop(): Promise<void>
}

export async function startRuntimeNode(options: RuntimeNodeOptions): Promise<RuntimeNode> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`))
  const node = await startNode({ ...options, log })
  const storage =
    options.storage === undefined
      ? undefined
      : await startNodeStorage(node, { dataDirectory: options.dataDirectory, log, ...options.storage })
  const runningMax = options.workers ?? coreCount()
  // Workers started with the node: the first threads placed here do not wait for one to boot.
  const pool = new WorkerPool({ createWorker: nodeWorkerFactory, runningMax, warmCount: runningMax })
  // One cache per machine: nodes on one host share instrumented modules (keyed by content hash).
  const cache = diskInstrumentCache(
    process.env.FABRIC_CACHE_DIR ?? join(homedir(), '.cache', 'fabric', 'instrumented'),
  )
  const store = storeClient(node)
  const runtime = new NodeRuntime(
    {
      cluster: clusterView(node),
      store,
      messenger: libp2pMessenger(node, log),
      pool,
      loadProgram: (bytes) => loadProgram(bytes, { cache, instrument: instrumentInWorker }),
      random: systemRandom,
      timers: systemTimers,
      // Guests' WASI file calls reach the cluster file system (preopened at "/").
      files:
        storage === undefined
          ? undefined
          : createGuestFilesService({ fileSystem: storage.fileSystem, store, log }),
      log,
    },
    { childrenElsewhere: options.childrenElsewhere },
  )
  await runtime.start()
  return {
    node,
    runtime,
    storage,
    async stop() {
      // A clean leave: threads move to other nodes from fresh saves before this node goes.
      await runtime.drain().catch(() => {})
      runtime.stop()
      pool.close()
      await storage?.stop()
      await node.stop()
    },
  }
}
