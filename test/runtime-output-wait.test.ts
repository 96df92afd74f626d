// Issue 4: a thread's output waits for its process's home however long the home cannot be reached
// while the process runs (it used to be dropped after 30 s of tries): every line shows, in order,
// once the home answers again.
import { afterEach, describe, expect, test } from 'vitest'
import { outputWaitLogIntervalMs } from '../fabric/runtime/node-runtime.ts'
import { guestBytes } from './support/guests.ts'
import { collectOutput, InProcessCluster } from './support/runtime-cluster.ts'

const threadCount = 3
/** From the first line refused: longer than the log interval, which was also how long output was tried before it was dropped. */
const outageMs = outputWaitLogIntervalMs + 3000

describe('output and an unreachable home', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test(`output that cannot reach the home for ${outageMs / 1000} s arrives whole once it can`, async () => {
    cluster = new InProcessCluster()
    // The home (node-a) runs no thread of its own (weight ~0): every line travels to it.
    await cluster.addNode('node-a', { speedScore: 1e-9 })
    for (const id of ['node-b', 'node-c']) await cluster.addNode(id)
    let outageEndsMs: number | undefined
    let refused = 0
    cluster.intercept = (_from, to, message) => {
      if (to !== 'node-a' || message.type !== 'output') return undefined
      outageEndsMs ??= Date.now() + outageMs
      if (Date.now() < outageEndsMs) {
        refused++
        throw new Error('node-a cannot be reached')
      }
      return undefined
    }
    const process = await cluster.runtime('node-a').submit(guestBytes('test/fixtures/as/print-threads.ts'), {
      args: ['print-threads', String(threadCount)],
      seed: 1,
    })
    const printed = collectOutput(process)
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(refused).toBeGreaterThan(0)
    const lines = Array.from({ length: threadCount }, (_, index) => `thread ${index}\n`).join('')
    expect(printed.text).toBe(`${lines}joined ${threadCount}\n`)
    expect(cluster.logs.some((line) => line.includes('has waited'))).toBe(true)
  }, 90_000)
})
