/** Runs guest programs on a local worker pool and collects their output per thread. */

import { LocalProcess, type ProcessOptions } from '../../host/local-process.ts'
import { loadProgram, type Program } from '../../host/program.ts'
import type { ThreadStart } from '../../host/thread-runner.ts'
import { nodeWorkerFactory } from '../../host/worker-node.ts'
import { WorkerPool } from '../../host/worker-pool.ts'

export interface RunOutput {
  exitCode: number
  error: string | null
  /** Class name of the error that ended the process. */
  errorName: string | null
  /** stdout of each thread, by thread id. */
  stdout: Map<number, string>
  stderr: string
  /** Workers killed and threads restarted during the run. */
  kills: number
  /** Kills that hit a thread that had a save to restore from. */
  killsWithSave: number
  /** Context saves taken during the run, all threads together. */
  saves: number
  durationMs: number
}

export function createPool(runningMax = 2): WorkerPool {
  return new WorkerPool({ createWorker: nodeWorkerFactory, runningMax })
}

/** The start of `program`'s main thread alone on a worker (tests that drive a ThreadRunner), with `args` after its name. */
export function mainThreadStart(program: Program, name: string, args: string[]): ThreadStart {
  return {
    module: program.module,
    globalCount: program.globalCount,
    moduleDigest: program.moduleDigest,
    entry: program.mainEntry,
    arg: new Uint8Array(0),
    threadId: 0,
    seed: 1,
    args: [name, ...args],
    env: [],
    limits: { memoryPagesMax: 1024, cpuBudgetMs: 30_000 },
    saveIntervalMs: 60_000,
    incrementalSaves: true,
    files: false,
    preopens: [],
    restore: null,
    replayLog: [],
    nextSaveSequence: 1,
  }
}

export async function load(bytes: Uint8Array): Promise<Program> {
  return loadProgram(bytes)
}

/** A small seeded generator (mulberry32) for choosing kill moments. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let value = state
    value = Math.imul(value ^ (value >>> 15), value | 1)
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61)
    return ((value ^ (value >>> 14)) >>> 0) / 4294967296
  }
}

export interface KillPlan {
  /**
   * Each trigger kills the worker of a random live thread `delayMs` after the process has taken
   * `afterSaves` context saves in all: a moment tied to the program's progress, not to the load
   * of the machine, and anywhere within the computation that follows that save.
   */
  triggers: Array<{ afterSaves: number; delayMs: number; threadId?: number }>
  random: () => number
}

export async function runProgram(
  pool: WorkerPool,
  program: Program,
  args: string[],
  options: Partial<ProcessOptions> & { kill?: KillPlan } = {},
): Promise<RunOutput> {
  const stdout = new Map<number, string>()
  let stderr = ''
  const decoder = new TextDecoder()
  const started = performance.now()
  let kills = 0
  let killsWithSave = 0
  const timers: Array<ReturnType<typeof setTimeout>> = []
  const killThread = (threadId?: number) => {
    const live = process.threadIds().filter((id) => process.isRunning(id))
    if (live.length === 0) return
    const victim = threadId ?? live[Math.floor(options.kill!.random() * live.length)]!
    const hadSave = process.saveCount(victim) > 0
    if (process.killWorker(victim)) {
      kills++
      if (hadSave) killsWithSave++
    }
  }
  const fire = (trigger: KillPlan['triggers'][number]) => {
    timers.push(setTimeout(() => killThread(trigger.threadId), trigger.delayMs))
  }
  let savesTaken = 0
  const pending = [...(options.kill?.triggers ?? [])].sort(
    (left, right) => left.afterSaves - right.afterSaves,
  )
  const onSave = options.onSave
  options = {
    ...options,
    onSave: (threadId, save, costMs) => {
      onSave?.(threadId, save, costMs)
      savesTaken++
      while (pending.length > 0 && pending[0]!.afterSaves <= savesTaken) {
        fire(pending.shift()!)
      }
    },
  }
  const process = new LocalProcess({
    pool,
    program,
    args: ['prog', ...args],
    seed: 7,
    saveIntervalMs: 0,
    ...options,
    onOutput: (threadId, fd, bytes) => {
      const text = decoder.decode(bytes)
      if (fd === 1) stdout.set(threadId, (stdout.get(threadId) ?? '') + text)
      else stderr += text
    },
  })
  while (pending.length > 0 && pending[0]!.afterSaves <= 0) {
    fire(pending.shift()!)
  }
  const result = await process.result
  for (const timer of timers) clearTimeout(timer)
  return {
    exitCode: result.exitCode,
    error: result.error?.message ?? null,
    errorName: result.error?.name ?? null,
    stdout,
    stderr,
    kills,
    killsWithSave,
    saves: savesTaken,
    durationMs: performance.now() - started,
  }
}
