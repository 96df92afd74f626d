/**
 * Node adapter: instrumentation in a worker thread, so that Binaryen's seconds of work on a large
 * module never block the node's event loop (heartbeats, leases, other threads' calls). Results are
 * still cached by content hash, in this thread and on disk.
 */

import { Worker } from 'node:worker_threads'
import { deserializeError, type SerializedError } from './errors.ts'
import {
  type InstrumentCache,
  type InstrumentedModule,
  instrumentationVersion,
} from './instrumented-module.ts'

interface Reply {
  id: number
  result?: InstrumentedModule
  error?: SerializedError
}

const workerSource = `
import { parentPort } from 'node:worker_threads'
const { instrument } = await import(${JSON.stringify(new URL('./instrument.ts', import.meta.url).href)})
const { serializeError } = await import(${JSON.stringify(new URL('./errors.ts', import.meta.url).href)})
parentPort.on('message', async ({ id, bytes }) => {
  try {
    parentPort.postMessage({ id, result: await instrument(bytes) })
  } catch (error) {
    parentPort.postMessage({ id, error: serializeError(error) })
  }
})
`

let worker: Worker | null = null
let nextId = 1
const waiting = new Map<
  number,
  { resolve: (result: InstrumentedModule) => void; reject: (error: Error) => void }
>()
const memoryCache = new Map<string, Promise<InstrumentedModule>>()

function instrumentWorker(): Worker {
  if (worker !== null) return worker
  const started = new Worker(workerSource, { eval: true })
  started.unref()
  started.on('message', (reply: Reply) => {
    const entry = waiting.get(reply.id)
    waiting.delete(reply.id)
    if (waiting.size === 0) started.unref()
    if (reply.error !== undefined) entry?.reject(deserializeError(reply.error))
    else entry?.resolve(reply.result!)
  })
  started.on('error', (error) => {
    for (const entry of waiting.values()) entry.reject(error)
    waiting.clear()
    worker = null
  })
  worker = started
  return started
}

async function digestOf(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>)
  return Buffer.from(digest).toString('hex')
}

/** Instruments in a worker thread; same contract as `instrument` in host/instrument.ts. */
export async function instrumentInWorker(
  bytes: Uint8Array,
  options: { cache?: InstrumentCache } = {},
): Promise<InstrumentedModule> {
  const digest = await digestOf(bytes)
  const key = `${digest}-v${instrumentationVersion}`
  let pending = memoryCache.get(key)
  if (pending === undefined) {
    pending = (async () => {
      const cached = await options.cache?.read(digest)
      if (cached !== undefined) return cached
      const target = instrumentWorker()
      target.ref()
      const id = nextId++
      const result = await new Promise<InstrumentedModule>((resolve, reject) => {
        waiting.set(id, { resolve, reject })
        target.postMessage({ id, bytes })
      })
      await options.cache?.write(result)
      return result
    })()
    memoryCache.set(key, pending)
    pending.catch(() => memoryCache.delete(key))
  }
  return pending
}
