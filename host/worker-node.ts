/** Node adapter: guest threads in `worker_threads` workers. */

import { availableParallelism } from 'node:os'
import { Worker } from 'node:worker_threads'
import type { FromWorker } from './worker/protocol.ts'
import type { HostWorker, WorkerFactory } from './worker-pool.ts'

const workerEntry = new URL('./worker/node-worker.ts', import.meta.url)
/** Stack for guest recursion inside a worker (V8's default is about 1 MiB). */
const workerStackMb = 8

export const nodeWorkerFactory: WorkerFactory = () => {
  const worker = new Worker(workerEntry, { resourceLimits: { stackSizeMb: workerStackMb } })
  let terminated = false
  const crashListeners: Array<(reason: string) => void> = []
  let crashed = false
  const crash = (reason: string) => {
    if (terminated || crashed) return
    crashed = true
    for (const listener of crashListeners) listener(reason)
  }
  worker.on('error', (error) => crash(`worker failed: ${error.message}`))
  worker.on('exit', (code) => crash(`worker exited with code ${code}`))
  const host: HostWorker = {
    post: (message, transfer) => worker.postMessage(message, transfer as never),
    onMessage: (listener) => {
      worker.removeAllListeners('message')
      worker.on('message', (message: FromWorker) => listener(message))
    },
    onCrash: (listener) => {
      crashListeners.length = 0
      crashListeners.push(listener)
    },
    terminate: () => {
      terminated = true
      void worker.terminate()
    },
  }
  return host
}

export function coreCount(): number {
  return availableParallelism()
}
