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
