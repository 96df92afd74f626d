/**
 * A token bucket over bytes, so background copying (repair, rebalancing) leaves the disk and the
 * network to running programs.
 *
 *   const limiter = createRateLimiter({ clock, sleep }, { bytesPerSecond: 32 * 1024 * 1024 })
 *   await limiter.take(bytes.length, signal)   // waits until the budget allows it
 */

import { StorageArgumentError } from './errors.ts'
import type { Clock, Sleep } from './platform-types.ts'

export interface RateLimiterOptions {
  bytesPerSecond: number
  /** Bytes that may go at once after a quiet spell; default one second's worth. */
  burstBytes?: number
}

export interface RateLimiter {
  /** Waits until `bytes` fit in the budget, then spends them. A take larger than the burst waits for its whole cost. */
  take(bytes: number, signal?: AbortSignal): Promise<void>
}

export function createRateLimiter(
  components: { clock: Clock; sleep: Sleep },
  options: RateLimiterOptions,
): RateLimiter {
  const { clock, sleep } = components
  const { bytesPerSecond } = options
  if (!(bytesPerSecond > 0))
    throw new StorageArgumentError(`Expected bytesPerSecond to be a number above 0, got ${bytesPerSecond}`)
  if (bytesPerSecond === Number.POSITIVE_INFINITY)
    return { take: async (_bytes, signal) => signal?.throwIfAborted() }
  const burstBytes = options.burstBytes ?? bytesPerSecond
  let tokens = burstBytes
  let lastRefillMs = clock.now()
  return {
    async take(bytes, signal) {
      signal?.throwIfAborted()
      const now = clock.now()
      tokens = Math.min(burstBytes, tokens + ((now - lastRefillMs) * bytesPerSecond) / 1000)
      lastRefillMs = now
      tokens -= bytes
      // In debt: wait until the bucket would be back at zero.
      if (tokens < 0) await sleep((-tokens / bytesPerSecond) * 1000, signal)
    },
  }
}
