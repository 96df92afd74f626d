/**
 * The browser test page: runs an instrumented guest with the same host code that runs in Node
 * (`WorkerPool`, `LocalProcess`), its threads in Web Workers. `window.fabricBrowserTest.run()` runs
 * the guest once undisturbed (the reference), then again, killing the main thread's Web Worker
 * after `killAfterLines` lines of output; the thread restarts from its last context save in a fresh
 * worker. Both reports go back to the test through `page.evaluate`.
 */

/// <reference lib="dom" />

import { LocalProcess } from '../../host/local-process.ts'
import type { Program } from '../../host/program.ts'
import { browserCoreCount, browserWorkerFactory } from '../../host/worker-browser.ts'
import { type WorkerFactory, WorkerPool } from '../../host/worker-pool.ts'

/** What the test serves next to the page: the instrumented module's description. */
export interface GuestDescription {
  globalCount: number
  mainEntry: string
  moduleDigest: string
  sourceBytes: number
  instanceReusable: boolean
}

export interface BrowserRunOptions {
  /** Address of the instrumented module; its description is at the same address + `.json`. */
  guestUrl: string
  workerUrl: string
  args: string[]
  /** Kill the main thread's worker once this many lines were printed (and a save exists). */
  killAfterLines: number
  /** An address with no worker script behind it: loading it must be reported as a crash. */
  missingWorkerUrl: string
}

export interface RunReport {
  stdout: string
  stderr: string
  exitCode: number
  error: string | null
  elapsedMs: number
  /** Context saves taken during the run. */
  saveCount: number
  /** Web Workers created during the run. */
  workersCreated: number
  /** Sequence numbers of the saves that threads were restored from, in order. */
  restoredFrom: number[]
  /** Whether the main thread's worker was killed, and when. */
  killed: boolean
  linesAtKill: number | null
  savesAtKill: number | null
}

export interface BrowserTestReport {
  userAgent: string
  coreCount: number
  compileMs: number
  reference: RunReport
  interrupted: RunReport
  /** What `onCrash` said for a worker whose script does not load (null: nothing within 10 s). */
  loadFailure: string | null
}

async function loadGuest(guestUrl: string): Promise<Program> {
  const [bytesResponse, descriptionResponse] = await Promise.all([fetch(guestUrl), fetch(`${guestUrl}.json`)])
  if (!bytesResponse.ok || !descriptionResponse.ok)
    throw new Error(`could not fetch the guest at ${guestUrl}`)
  const description = (await descriptionResponse.json()) as GuestDescription
  // The module was instrumented in Node; the page only compiles it (binaryen stays out of the page).
  const module = await WebAssembly.compile(await bytesResponse.arrayBuffer())
  return { module, ...description }
}

async function runOnce(
  program: Program,
  options: BrowserRunOptions,
  interrupt: { killAfterLines: number } | null,
): Promise<RunReport> {
  const startedAt = performance.now()
  const inner = browserWorkerFactory({ url: options.workerUrl })
  const report: RunReport = {
    stdout: '',
    stderr: '',
    exitCode: -1,
    error: null,
    elapsedMs: 0,
    saveCount: 0,
    workersCreated: 0,
    restoredFrom: [],
    killed: false,
    linesAtKill: null,
    savesAtKill: null,
  }
  // Wraps the factory to count workers and to see which starts restore from a save.
  const counting: WorkerFactory = () => {
    const worker = inner()
    report.workersCreated++
    return {
      ...worker,
      post: (message, transfer) => {
        if (message.type === 'start' && message.restore !== null) {
          report.restoredFrom.push(message.nextSaveSequence - 1)
        }
        worker.post(message, transfer)
      },
    }
  }
  const pool = new WorkerPool({ createWorker: counting, runningMax: browserCoreCount() })
  const decoders = [new TextDecoder(), new TextDecoder()]
  let lines = 0
  const guest: LocalProcess = new LocalProcess({
    pool,
    program,
    args: options.args,
    onSave: () => {
      report.saveCount++
    },
    onOutput: (_threadId, fd, bytes) => {
      const text = decoders[fd === 2 ? 1 : 0]!.decode(bytes, { stream: true })
      if (fd === 2) {
        report.stderr += text
        return
      }
      report.stdout += text
      lines += text.split('\n').length - 1
      if (interrupt !== null && !report.killed && lines >= interrupt.killAfterLines && report.saveCount > 0) {
        report.killed = true
        report.linesAtKill = lines
        report.savesAtKill = report.saveCount
        // Outside the message handler, like a crash that comes from elsewhere.
        setTimeout(() => {
          if (!guest.killWorker(0)) report.killed = false
        }, 0)
      }
    },
  })
  try {
    const result = await guest.result
    report.exitCode = result.exitCode
    report.error = result.error === null ? null : `${result.error.name}: ${result.error.message}`
  } finally {
    pool.close()
  }
  report.stdout += decoders[0]!.decode()
  report.stderr += decoders[1]!.decode()
  report.elapsedMs = performance.now() - startedAt
  return report
}

/** A worker whose script is missing must end up in `onCrash`, or its thread would hang. */
function loadFailure(url: string): Promise<string | null> {
  const worker = browserWorkerFactory({ url })()
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      worker.terminate()
      resolve(null)
    }, 10_000)
    worker.onCrash((reason) => {
      clearTimeout(timer)
      resolve(reason)
    })
  })
}

async function run(options: BrowserRunOptions): Promise<BrowserTestReport> {
  const compileStartedAt = performance.now()
  const program = await loadGuest(options.guestUrl)
  const compileMs = performance.now() - compileStartedAt
  const reference = await runOnce(program, options, null)
  const interrupted = await runOnce(program, options, { killAfterLines: options.killAfterLines })
  return {
    loadFailure: await loadFailure(options.missingWorkerUrl),
    userAgent: navigator.userAgent,
    coreCount: browserCoreCount(),
    compileMs,
    reference,
    interrupted,
  }
}

declare global {
  interface Window {
    fabricBrowserTest: { run(options: BrowserRunOptions): Promise<BrowserTestReport> }
  }
}

window.fabricBrowserTest = { run }
