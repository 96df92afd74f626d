import { describe, expect, test } from 'vitest'
import { ownBytes } from '../host/thread-runner.ts'
import type { StartMessage } from '../host/worker/protocol.ts'
import { nodeWorkerFactory } from '../host/worker-node.ts'
import { WorkerPool } from '../host/worker-pool.ts'
import { guestBytes } from './support/guests.ts'
import { load, runProgram } from './support/run.ts'

describe('bytes sent to a worker', () => {
  test('a small view into a large buffer goes as a copy of its own bytes, a whole buffer as it is', () => {
    // A structured clone copies a view's whole buffer: a 3-byte arg from a 64 KiB frame cost 64 KiB.
    const frame = new Uint8Array(64 * 1024).map((_, index) => index % 256)
    const arg = frame.subarray(1000, 1003)
    const sent = ownBytes(arg)
    expect(sent.buffer.byteLength).toBe(3)
    expect([...sent]).toEqual([...arg])
    // Node's Buffer.slice is a view: the copy must not be one.
    const buffered = Buffer.from(frame.buffer, 2000, 10)
    expect(ownBytes(buffered).buffer.byteLength).toBe(10)
    expect([...ownBytes(buffered)]).toEqual([...buffered])
    // Most of a buffer, or all of it, is not copied again.
    const whole = new Uint8Array(100)
    expect(ownBytes(whole)).toBe(whole)
    const most = frame.subarray(0, 40 * 1024)
    expect(ownBytes(most)).toBe(most)
  })
})

describe('starts sent to a worker', () => {
  test('a worker gets a process context once, and each process runs with its own', async () => {
    const starts: Array<{ worker: number; message: StartMessage }> = []
    let workers = 0
    const pool = new WorkerPool({
      runningMax: 1,
      createWorker: () => {
        const worker = nodeWorkerFactory()
        const index = workers++
        return {
          ...worker,
          post: (message, transfer) => {
            if (message.type === 'start') starts.push({ worker: index, message })
            worker.post(message, transfer)
          },
        }
      },
    })
    try {
      const program = await load(guestBytes('test/fixtures/as/print-threads.ts'))
      const three = await runProgram(pool, program, ['3'])
      const two = await runProgram(pool, program, ['2'])
      // Had a start used the first process's context (its args), the second would join 3 threads.
      expect([three.exitCode, three.stdout.get(0)]).toEqual([0, 'joined 3\n'])
      expect([two.exitCode, two.stdout.get(0)]).toEqual([0, 'joined 2\n'])
      // Each worker got each process's context with its first start of that process only (the
      // first process's 4 threads ran before the second's 3).
      expect(starts).toHaveLength(7)
      const held = new Set<string>()
      starts.forEach(({ worker, message }, index) => {
        const first = !held.has(`${worker} ${message.contextId}`)
        held.add(`${worker} ${message.contextId}`)
        expect(message.context?.args ?? null).toEqual(first ? ['prog', index < 4 ? '3' : '2'] : null)
      })
      expect(new Set(starts.map((start) => start.message.contextId)).size).toBe(2)
      expect(held.size).toBeLessThan(starts.length)
    } finally {
      pool.close()
    }
  }, 60_000)
})
