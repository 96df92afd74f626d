/**
 * `npm start`: builds the examples, runs Monte Carlo pi on a local worker pool, kills the workers of
 * two of its threads mid-run, and shows that the result equals an undisturbed run's.
 */

import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { LocalProcess } from '../../host/local-process.ts'
import { loadProgram } from '../../host/program.ts'
import { coreCount, nodeWorkerFactory } from '../../host/worker-node.ts'
import { WorkerPool } from '../../host/worker-pool.ts'
import { build, defaultOutput } from './build.ts'

const root = join(import.meta.dirname, '../..')
const source = join(root, 'examples/pi/pi.ts')
const args = ['pi', '8', '4000000']

async function runPi(
  pool: WorkerPool,
  killAtMs: number[],
): Promise<{ output: string; ms: number; kills: number }> {
  const program = await loadProgram(new Uint8Array(readFileSync(defaultOutput(source))))
  let output = ''
  const started = performance.now()
  const process_ = new LocalProcess({
    pool,
    program,
    args,
    saveIntervalMs: 0,
    onOutput: (_threadId, _fd, bytes) => {
      output += new TextDecoder().decode(bytes)
    },
  })
  let kills = 0
  for (const atMs of killAtMs) {
    setTimeout(() => {
      const victim = process_
        .threadIds()
        .find((id) => id > 0 && process_.isRunning(id) && process_.saveCount(id) > 0)
      if (victim !== undefined && process_.killWorker(victim)) {
        kills++
        console.log(
          `  ... killed the worker of thread ${victim} at ${Math.round(atMs)} ms; it restarts from its last save`,
        )
      }
    }, atMs)
  }
  const result = await process_.result
  if (result.error !== null) throw result.error
  return { output, ms: performance.now() - started, kills }
}

console.log(`Building ${source} ...`)
build({ source })
const pool = new WorkerPool({ createWorker: nodeWorkerFactory, runningMax: coreCount() })
console.log(`\nUndisturbed run of pi with ${args[1]} threads x ${args[2]} samples, on ${coreCount()} cores:`)
const reference = await runPi(pool, [])
process.stdout.write(reference.output)
console.log(`(${reference.ms.toFixed(0)} ms)`)
console.log('\nSame program; two workers are killed mid-run:')
const disturbed = await runPi(pool, [reference.ms * 0.3, reference.ms * 0.5])
process.stdout.write(disturbed.output)
console.log(`(${disturbed.ms.toFixed(0)} ms, ${disturbed.kills} workers killed)`)
console.log(
  disturbed.output === reference.output
    ? '\nSame output: no work was lost beyond the last saves.'
    : '\nOUTPUT DIFFERS',
)
pool.close()
process.exitCode = disturbed.output === reference.output ? 0 : 1
