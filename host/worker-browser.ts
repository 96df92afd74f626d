/**
 * Browser adapter: guest threads in module Web Workers.
 *
 *   const pool = new WorkerPool({
 *     createWorker: browserWorkerFactory({ url: '/browser-worker.js' }),
 *     runningMax: browserCoreCount(),
 *   })
 *
 * `url` is the entry `host/worker/browser-worker.ts` as the page's bundler emits it (an ES module).
 * A browser gives a worker no exit event: a crash is an uncaught error inside the worker, a script
 * that fails to load, or a message that cannot be deserialized. Each stops the worker and is
 * reported once through `onCrash`; the thread then restarts from its last context save.
 */

/// <reference lib="dom" />

import type { FromWorker } from './worker/protocol.ts'
import type { HostWorker, WorkerFactory } from './worker-pool.ts'

export interface BrowserWorkerOptions {
  /** Address of the bundled worker entry (host/worker/browser-worker.ts), loaded as a module. */
  url: string | URL
  /** Name shown for the workers in the browser's developer tools; default "fabric-thread". */
  name?: string
}

export function browserWorkerFactory(options: BrowserWorkerOptions): WorkerFactory {
  if (typeof options?.url !== 'string' && !(options?.url instanceof URL)) {
    throw new TypeError(`Expected url to be the address of the worker entry, got ${String(options?.url)}`)
  }
  const name = options.name ?? 'fabric-thread'
  return () => {
    const worker = new Worker(options.url, { type: 'module', name })
    let stopped = false
    let crashListener: ((reason: string) => void) | null = null
    const crash = (reason: string) => {
      if (stopped) return
      stopped = true
      // The worker may still be alive after an uncaught error; its thread's state is unknown.
      worker.terminate()
      crashListener?.(reason)
    }
    worker.addEventListener('error', (event: Event) => {
      // Handled here: keep the page's console free of a second report of the same error.
      event.preventDefault()
      const message = event instanceof ErrorEvent ? event.message : ''
      crash(message === '' ? 'worker failed (its script did not load?)' : `worker failed: ${message}`)
    })
    worker.addEventListener('messageerror', () => crash('worker sent a message that could not be read'))
    const host: HostWorker = {
      post: (message, transfer) => worker.postMessage(message, transfer ?? []),
      onMessage: (listener) => {
        worker.onmessage = (event: MessageEvent<FromWorker>) => listener(event.data)
      },
      onCrash: (listener) => {
        crashListener = listener
      },
      terminate: () => {
        stopped = true
        worker.terminate()
      },
    }
    return host
  }
}

/** Threads to compute at once in this browser: its logical cores, at least 1. */
export function browserCoreCount(): number {
  return Math.max(1, globalThis.navigator?.hardwareConcurrency ?? 1)
}
