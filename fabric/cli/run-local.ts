/** `fabric run` on this machine: a worker pool sized to the cores, output streamed live. */

import { readFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { diskInstrumentCache } from '../../host/instrument-cache-node.ts'
import { instrumentInWorker } from '../../host/instrument-node.ts'
import { LocalProcess } from '../../host/local-process.ts'
import { loadProgram } from '../../host/program.ts'
import { coreCount, nodeWorkerFactory } from '../../host/worker-node.ts'
import { WorkerPool } from '../../host/worker-pool.ts'
import { localSyncOptions } from '../runtime/primitives/local.ts'

export interface RunLocalOptions {
  program: string
  args: string[]
  workers?: number
  memoryMaxMiB?: number
  cpuBudgetMs?: number
  saveIntervalMs?: number
  mapDirectory?: string
  /** `NAME=VALUE` pairs the guest sees as its environment. */
  env?: string[]
}

export function instrumentCacheDirectory(): string {
  return process.env.FABRIC_CACHE_DIR ?? join(homedir(), '.cache', 'fabric', 'instrumented')
}

export async function runLocal(options: RunLocalOptions): Promise<number> {
  const bytes = new Uint8Array(await readFile(options.program))
  const program = await loadProgram(bytes, {
    cache: diskInstrumentCache(instrumentCacheDirectory()),
    instrument: instrumentInWorker,
  })
  const pool = new WorkerPool({ createWorker: nodeWorkerFactory, runningMax: options.workers ?? coreCount() })
  const files = options.mapDirectory === undefined ? undefined : await mapDirectory(options.mapDirectory)
  const process_ = new LocalProcess({
    pool,
    program,
    args: [options.program, ...options.args],
    env: options.env ?? [],
    memoryPagesMax: options.memoryMaxMiB === undefined ? undefined : Math.floor(options.memoryMaxMiB * 16),
    cpuBudgetMs: options.cpuBudgetMs,
    saveIntervalMs: options.saveIntervalMs,
    files,
    // Shared variables, locks, queues and barriers over a store in this process.
    ...localSyncOptions('local'),
    onOutput: (_threadId, fd, data) => (fd === 2 ? process.stderr : process.stdout).write(data),
  })
  const result = await process_.result
  pool.close()
  if (result.error !== null) throw result.error
  return result.exitCode
}

async function mapDirectory(spec: string) {
  const { nodeDirectoryFileSystem } = await import('../../host/files-node.ts')
  const separator = spec.lastIndexOf(':')
  const hostDirectory = separator > 0 ? spec.slice(0, separator) : spec
  const guestDirectory = separator > 0 ? spec.slice(separator + 1) : '/'
  return nodeDirectoryFileSystem({ hostDirectory, guestDirectory })
}
