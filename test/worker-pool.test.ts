import { describe, expect, test } from 'vitest'
import { LocalProcess } from '../host/local-process.ts'
import { type HostWorker, WorkerPool } from '../host/worker-pool.ts'
import { guestBytes } from './support/guests.ts'
import { createPool, load, runProgram } from './support/run.ts'

describe('worker pool', () => {
  test('a thread that never blocks starves neither the other threads nor the host', async () => {
    const pool = createPool(1)
    try {
      const spinning = await load(guestBytes('test/fixtures/as/misbehave.ts'))
      const spinner = new LocalProcess({
        pool,
        program: spinning,
        args: ['misbehave', 'loop'],
        cpuBudgetMs: 60_000,
      })
      await new Promise((resolve) => setTimeout(resolve, 200))

      // The host's event loop stays responsive while the guest spins on the only core slot.
      const lags: number[] = []
      for (let round = 0; round < 10; round++) {
        const started = performance.now()
        await new Promise((resolve) => setTimeout(resolve, 10))
        lags.push(performance.now() - started - 10)
      }
      expect(Math.max(...lags)).toBeLessThan(100)

      // Another program still runs to its end, though all `runningMax` slots are taken.
      const primes = await load(guestBytes('examples/primes/primes.ts'))
      const other = await runProgram(pool, primes, ['100000', '50000'])
      expect(other.exitCode).toBe(0)
      expect(other.stdout.get(0)).toContain('total: 9592 primes below 100000')
      expect(other.durationMs).toBeLessThan(5_000)

      spinner.kill()
      expect((await spinner.result).exitCode).toBe(137)
    } finally {
      pool.close()
    }
  }, 30_000)

  test('a long queue of short threads reuses the workers it has: a slow queue is not starvation', async () => {
    let created = 0
    const pool = new WorkerPool({
      createWorker: (): HostWorker => {
        created++
        return { post: () => {}, onMessage: () => {}, onCrash: () => {}, terminate: () => {} }
      },
      runningMax: 1,
      starvationMs: 200,
      warmCount: 1,
    })
    try {
      expect(created).toBe(1)
      // 40 threads of 10 ms each: the last waits ~400 ms, but no thread computes 200 ms on end.
      const computeMs = 10
      const threads = Array.from({ length: 40 }, () =>
        pool.acquire().then(async (lease) => {
          await new Promise((resolve) => setTimeout(resolve, computeMs))
          lease.release(true)
        }),
      )
      await Promise.all(threads)
      expect(created).toBe(1)

      // A thread that computes on without a break does starve the queue: one more worker starts.
      const hog = await pool.acquire()
      const waiting = pool.acquire()
      const started = performance.now()
      const lease = await waiting
      expect(performance.now() - started).toBeGreaterThanOrEqual(150)
      expect(created).toBe(2)
      lease.release(true)
      hog.release(true)
    } finally {
      pool.close()
    }
  })
})

describe('worker pool starvation guard', () => {
  test('a burst of threads that wait too long starts at most starvedMax workers beyond runningMax, and the rest start as threads end', async () => {
    let created = 0
    const fakeWorker = (): HostWorker => {
      created++
      return { post: () => {}, onMessage: () => {}, onCrash: () => {}, terminate: () => {} }
    }
    const pool = new WorkerPool({ createWorker: fakeWorker, runningMax: 2, starvationMs: 10, starvedMax: 3 })
    try {
      const holders = await Promise.all([pool.acquire(), pool.acquire()])
      let granted = 0
      const burst = Array.from({ length: 40 }, () =>
        pool.acquire().then((lease) => {
          granted++
          return lease
        }),
      )
      await new Promise((resolve) => setTimeout(resolve, 200))
      expect(granted).toBe(3)
      expect(created).toBe(5)
      expect(pool.runningCount).toBe(5)
      // A thread that ends lets the next one in, on its worker.
      holders[0]!.release(true)
      await new Promise((resolve) => setTimeout(resolve, 50))
      expect(granted).toBe(4)
      expect(created).toBe(5)
      holders[1]!.release(true)
      for (const lease of await Promise.all(burst.slice(0, 4))) lease.release(true)
      await new Promise((resolve) => setTimeout(resolve, 200))
      expect(granted).toBeGreaterThanOrEqual(9)
      expect(pool.runningCount).toBeLessThanOrEqual(5)
    } finally {
      pool.close()
    }
  })
})
