/**
 * What the storage layer needs of time and randomness, as injected components: the fabric core's
 * `Clock` and `Random` (`fabric/platform.ts`), and a sleep. The node passes `systemClock`,
 * `systemRandom` and `sleep` from there; tests pass seeded or simulated ones. Storage code never
 * calls `Date.now`, `Math.random` or `setTimeout` itself.
 */

import type { Clock, Random } from '../fabric/platform.ts'

export type { Clock, Random }

/** Resolves after `delayMs`, or rejects with the signal's reason when it aborts first. */
export type Sleep = (delayMs: number, signal?: AbortSignal) => Promise<void>

export type NodeId = string
