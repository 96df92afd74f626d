/**
 * Builds everything the browser test serves: the guest fixture (compiled and instrumented in
 * Node, so binaryen never runs in the page), the page script and the Web Worker entry
 * (host/worker/browser-worker.ts), bundled with esbuild as ES modules.
 *
 * Run `node test/browser/serve.ts` to serve the same files for a look in a real browser.
 */

import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build as bundle, type Plugin } from 'esbuild'
import { build as buildGuest } from '../../fabric/cli/build.ts'
import { instrument } from '../../host/instrument.ts'
import { validateModule } from '../../host/program.ts'
import type { GuestDescription } from './page.ts'

const here = dirname(fileURLToPath(import.meta.url))
const repositoryRoot = resolve(here, '../..')

export const guestFixture = join(here, 'fixtures/primes.as.ts')

/** One file the test server hands out, by path. */
export interface ServedFile {
  contentType: string
  body: Uint8Array
}

export const pagePaths = {
  html: '/index.html',
  page: '/page.js',
  worker: '/browser-worker.js',
  guest: '/guest.wasm',
} as const

const pageHtml = `<!doctype html>
<html>
  <head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Fabric browser test</title></head>
  <body>
    <p>Fabric browser test: see <code>window.fabricBrowserTest</code>.</p>
    <script type="module" src="${pagePaths.page}"></script>
  </body>
</html>
`

/**
 * Browser code must not reach binaryen (15 MB, a top-level await, an `import("node:module")`) or a
 * Node built-in: the page gets instrumented modules, and the host's platform specifics live in
 * `*-node.ts` adapters. This turns such an import into a build error that names the importer,
 * where esbuild alone would say only that "node:module" cannot be resolved.
 */
export const browserSafety: Plugin = {
  name: 'fabric-browser-safety',
  setup(build) {
    build.onResolve({ filter: /^(binaryen|node:.*)$/ }, (args) => ({
      errors: [
        {
          text: `${args.importer} imports ${args.path}, which the browser bundle must not contain (page and worker code must stay free of binaryen and Node built-ins)`,
        },
      ],
    }))
  },
}

/** Bundles the page script and the worker entry; returns them by served path. */
export async function bundleScripts(): Promise<Map<string, ServedFile>> {
  const result = await bundle({
    absWorkingDir: repositoryRoot,
    entryPoints: {
      page: join(here, 'page.ts'),
      'browser-worker': join(repositoryRoot, 'host/worker/browser-worker.ts'),
    },
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2023',
    outdir: '/',
    write: false,
    sourcemap: 'inline',
    logLevel: 'silent',
    plugins: [browserSafety],
  })
  const files = new Map<string, ServedFile>()
  for (const output of result.outputFiles) {
    files.set(output.path, { contentType: 'text/javascript; charset=utf-8', body: output.contents })
  }
  for (const path of [pagePaths.page, pagePaths.worker]) {
    if (!files.has(path)) throw new Error(`esbuild did not produce ${path}`)
  }
  return files
}

/** Compiles the AssemblyScript fixture and instruments it, as `fabric run` would before loading. */
export async function prepareGuest(): Promise<{ bytes: Uint8Array; description: GuestDescription }> {
  const directory = await mkdtemp(join(tmpdir(), 'fabric-browser-guest-'))
  try {
    const output = join(directory, 'guest.wasm')
    buildGuest({ source: guestFixture, output })
    const source = new Uint8Array(await readFile(output))
    await validateModule(source)
    const instrumented = await instrument(source)
    return {
      bytes: instrumented.bytes,
      description: {
        globalCount: instrumented.globalCount,
        mainEntry: instrumented.mainEntry,
        moduleDigest: instrumented.moduleDigest,
        sourceBytes: source.length,
        instanceReusable: instrumented.instanceReusable,
      },
    }
  } finally {
    await rm(directory, { recursive: true, force: true })
  }
}

/** Every file the test serves, by path. */
export async function buildBrowserTest(): Promise<Map<string, ServedFile>> {
  const [scripts, guest] = await Promise.all([bundleScripts(), prepareGuest()])
  const files = new Map(scripts)
  files.set(pagePaths.html, {
    contentType: 'text/html; charset=utf-8',
    body: new TextEncoder().encode(pageHtml),
  })
  files.set(pagePaths.guest, { contentType: 'application/wasm', body: guest.bytes })
  files.set(`${pagePaths.guest}.json`, {
    contentType: 'application/json',
    body: new TextEncoder().encode(JSON.stringify(guest.description)),
  })
  return files
}
