import { describe, expect, test } from 'vitest'
import { LocalProcess } from '../host/local-process.ts'
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
