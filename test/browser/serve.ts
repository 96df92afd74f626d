/**
 * A tiny static server for the browser test on 127.0.0.1 (a random port unless given).
 * Run directly (`node test/browser/serve.ts [port]`) it builds the test files and serves them for a
 * look in a real browser.
 */

import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { buildBrowserTest, pagePaths, type ServedFile } from './bundle.ts'

export interface StaticServer {
  /** `http://127.0.0.1:<port>` */
  origin: string
  close(): Promise<void>
}

export async function serveFiles(files: Map<string, ServedFile>, port = 0): Promise<StaticServer> {
  const server: Server = createServer((request, response) => {
    const path = new URL(request.url ?? '/', 'http://127.0.0.1').pathname
    const file = files.get(path === '/' ? pagePaths.html : path)
    if (request.method !== 'GET' || file === undefined) {
      response.writeHead(request.method === 'GET' ? 404 : 405, { 'content-type': 'text/plain' })
      response.end(`not found: ${path}\n`)
      return
    }
    response.writeHead(200, {
      'content-type': file.contentType,
      'content-length': file.body.length,
      'cache-control': 'no-store',
    })
    response.end(file.body)
  })
  await new Promise<void>((resolveListen, rejectListen) => {
    server.once('error', rejectListen)
    server.listen(port, '127.0.0.1', () => resolveListen())
  })
  const { port: bound } = server.address() as AddressInfo
  return {
    origin: `http://127.0.0.1:${bound}`,
    close: () =>
      new Promise((resolveClose) => {
        server.closeAllConnections()
        server.close(() => resolveClose())
      }),
  }
}

if (import.meta.main) {
  const port = Number(process.argv[2] ?? 8080)
  const server = await serveFiles(await buildBrowserTest(), port)
  process.stdout.write(
    `serving ${server.origin}/ ; in the console: await fabricBrowserTest.run({ guestUrl: '${pagePaths.guest}', workerUrl: '${pagePaths.worker}', args: ['primes', '40'], killAfterLines: 10, missingWorkerUrl: '/missing-worker.js' })\n`,
  )
}
