/**
 * Builds what the browser-storage test serves: a page whose script (`storage-page.ts`) holds a
 * browser node with the cluster file system, bundled with esbuild as an ES module, under the same
 * rule as the host's browser test (no Node built-ins in the bundle).
 */

import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build as bundle } from 'esbuild'
import { browserSafety, type ServedFile } from './bundle.ts'

const here = dirname(fileURLToPath(import.meta.url))
const repositoryRoot = resolve(here, '../..')

export const storagePagePaths = { html: '/storage.html', script: '/storage-page.js' } as const

const pageHtml = `<!doctype html>
<html>
  <head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Fabric browser node</title></head>
  <body>
    <p>Fabric browser node: see <code>window.fabricBrowserStorage</code>.</p>
    <script type="module" src="${storagePagePaths.script}"></script>
  </body>
</html>
`

export async function buildBrowserStorageTest(): Promise<Map<string, ServedFile>> {
  const result = await bundle({
    absWorkingDir: repositoryRoot,
    entryPoints: { 'storage-page': join(here, 'storage-page.ts') },
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2023',
    outdir: '/',
    write: false,
    logLevel: 'silent',
    plugins: [browserSafety],
  })
  const script = result.outputFiles.find((output) => output.path === storagePagePaths.script)
  if (script === undefined) throw new Error(`esbuild did not produce ${storagePagePaths.script}`)
  return new Map<string, ServedFile>([
    [storagePagePaths.script, { contentType: 'text/javascript; charset=utf-8', body: script.contents }],
    [
      storagePagePaths.html,
      { contentType: 'text/html; charset=utf-8', body: new TextEncoder().encode(pageHtml) },
    ],
  ])
}
