/** Browser adapter: the entry of a thread's Web Worker (bundled with esbuild for the page). */

import type { ToWorker } from './protocol.ts'
import { serveThread } from './thread-runtime.ts'

const scope = globalThis as unknown as DedicatedWorkerGlobalScope
serveThread({
  post: (message, transfer) => scope.postMessage(message, transfer ?? []),
  onMessage: (listener) =>
    scope.addEventListener('message', (event: MessageEvent<ToWorker>) => listener(event.data)),
})
