/**
 * What the storage layer needs of time and randomness, as injected components. These have the
 * shape of the fabric core's `Clock` and `Random` (`fabric/platform.ts`), so the node passes its
 * `systemClock` and `systemRandom`, and tests pass seeded or simulated ones. Storage code never
 * calls `Date.now`, `Math.random` or `setTimeout` itself.
 */

/** Milliseconds. The file system stamps modification times with it, so give it a wall clock there. */
export interface Clock {
  now(): number
}

/** Uniformly distributed numbers in [0, 1). */
export interface Random {
  next(): number
}

/** Resolves after `delayMs`, or rejects with the signal's reason when it aborts first. */
export type Sleep = (delayMs: number, signal?: AbortSignal) => Promise<void>

export type NodeId = string
