/**
 * The host runs in a browser: the same WorkerPool and LocalProcess that run guests in Node run
 * them in headless Chromium, each thread in a module Web Worker, and a thread whose Web Worker is
 * killed mid-run continues from its last context save in a fresh one, its output unchanged.
 */

import { existsSync } from 'node:fs'
import { type Browser, chromium, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildBrowserTest, pagePaths } from './browser/bundle.ts'
import { chromiumArgs, chromiumPath } from './browser/chromium.ts'
import type { BrowserRunOptions, BrowserTestReport } from './browser/page.ts'
import { type StaticServer, serveFiles } from './browser/serve.ts'

/** Building, bundling and starting the browser. */
const setupTimeoutMs = 60_000
/** Both runs of the guest in the page. */
const runTimeoutMs = 40_000
const closeTimeoutMs = 10_000
const rangeCount = 40
const runOptions: BrowserRunOptions = {
  guestUrl: pagePaths.guest,
  workerUrl: pagePaths.worker,
  args: ['primes', String(rangeCount)],
  killAfterLines: 10,
  missingWorkerUrl: '/missing-worker.js',
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took longer than ${timeoutMs} ms`)), timeoutMs)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

describe('host in a browser Web Worker', () => {
  let server: StaticServer | null = null
  let browser: Browser | null = null
  let page: Page | null = null
  const pageProblems: string[] = []
  const timings: Record<string, number> = {}

  beforeAll(async () => {
    if (!existsSync(chromiumPath)) {
      throw new Error(`no Chromium at ${chromiumPath}: install Debian's chromium or set FABRIC_CHROMIUM`)
    }
    let startedAt = performance.now()
    const files = await buildBrowserTest()
    timings.buildMs = performance.now() - startedAt
    server = await serveFiles(files)
    startedAt = performance.now()
    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: chromiumArgs,
      timeout: setupTimeoutMs,
    })
    timings.launchMs = performance.now() - startedAt
    page = await browser.newPage()
    page.on('pageerror', (error) => pageProblems.push(`page error: ${error.message}`))
    page.on('console', (message) => {
      if (message.type() === 'error') pageProblems.push(`console: ${message.text()}`)
    })
    await page.goto(`${server.origin}${pagePaths.html}`)
    await page.waitForFunction(() => 'fabricBrowserTest' in window, null, { timeout: setupTimeoutMs })
  }, setupTimeoutMs)

  afterAll(async () => {
    const closing: Promise<unknown>[] = []
    if (browser !== null) {
      const launched = browser
      closing.push(
        withTimeout(launched.close(), closeTimeoutMs, 'closing Chromium').catch((error: Error) => {
          console.warn(`browser test: ${error.message}`)
        }),
      )
    }
    if (server !== null) closing.push(server.close())
    await Promise.all(closing)
  }, closeTimeoutMs * 2)

  let report: BrowserTestReport

  it('runs a guest to completion, then again through a killed Web Worker', async () => {
    const startedAt = performance.now()
    report = await withTimeout(
      page!.evaluate((options) => window.fabricBrowserTest.run(options), runOptions),
      runTimeoutMs,
      'running the guest in the page',
    ).catch((error: Error) => {
      throw new Error(`${error.message}\n${pageProblems.join('\n')}`)
    })
    timings.runsMs = performance.now() - startedAt
    console.info(
      `browser test: ${report.userAgent}; cores ${report.coreCount}; build ${timings.buildMs!.toFixed(0)} ms, ` +
        `launch ${timings.launchMs!.toFixed(0)} ms, compile ${report.compileMs.toFixed(0)} ms, ` +
        `reference run ${report.reference.elapsedMs.toFixed(0)} ms, ` +
        `interrupted run ${report.interrupted.elapsedMs.toFixed(0)} ms ` +
        `(${report.interrupted.saveCount} saves, killed after ${report.interrupted.linesAtKill} lines, ` +
        `restored from save ${report.interrupted.restoredFrom.join(', ')})`,
    )
    expect(pageProblems).toEqual([])
  })

  it('reference run: the guest prints every range and exits 0', () => {
    const { reference } = report
    expect(reference.error).toBeNull()
    expect(reference.exitCode).toBe(0)
    expect(reference.stderr).toBe('')
    const lines = reference.stdout.trimEnd().split('\n')
    expect(lines).toHaveLength(rangeCount + 1)
    expect(lines[0]).toBe('range 0 [0, 20000): 2262 primes, 2262 so far')
    expect(lines.at(-1)).toMatch(/^done: \d+ primes below 800000$/)
    expect(reference.restoredFrom).toEqual([])
    expect(reference.killed).toBe(false)
  })

  it('interrupted run: the killed worker is replaced, restored from a save, and the output equals the reference', () => {
    const { reference, interrupted } = report
    expect(interrupted.killed).toBe(true)
    expect(interrupted.savesAtKill).toBeGreaterThan(0)
    expect(interrupted.linesAtKill).toBeLessThan(rangeCount)
    expect(interrupted.restoredFrom).toHaveLength(1)
    expect(interrupted.restoredFrom[0]).toBeGreaterThan(0)
    expect(interrupted.workersCreated).toBeGreaterThanOrEqual(reference.workersCreated + 1)
    expect(interrupted.error).toBeNull()
    expect(interrupted.exitCode).toBe(0)
    expect(interrupted.stderr).toBe('')
    expect(interrupted.stdout).toBe(reference.stdout)
  })

  it('browserWorkerFactory reports a worker whose script does not load through onCrash', () => {
    expect(report.loadFailure).toMatch(/^worker failed/)
  })
})
