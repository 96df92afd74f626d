/** Node adapter: the entry file of a thread's `worker_threads` worker. */

import { parentPort } from 'node:worker_threads'
import type { ToWorker } from './protocol.ts'
import { serveThread } from './thread-runtime.ts'

const port = parentPort!
serveThread({
  post: (message, transfer) => port.postMessage(message, transfer as never),
  onMessage: (listener) => port.on('message', (message: ToWorker) => listener(message)),
})
