/**
 * The platform: the only place where protocol code reaches real time, randomness and timers.
 *
 * Protocol state machines (`coord/`, `membership/`) never call `Date.now`, `performance.now`,
 * `Math.random` or `setTimeout`; they receive a {@link Clock} and a {@link Random}. The real node
 * passes {@link systemClock} and {@link systemRandom}; the simulator passes its own.
 *
 *   const clock = systemClock
 *   const start = clock.now() // monotonic milliseconds, only differences are meaningful
 */

/** A monotonic clock in milliseconds. Only differences between two readings mean anything. */
export interface Clock {
  now(): number
}

/** A source of uniformly distributed numbers in [0, 1). */
export interface Random {
  next(): number
}

export interface TimerHandle {
  cancel(): void
}

export interface Timers {
  /** Calls `callback` every `intervalMs` until cancelled. */
  every(intervalMs: number, callback: () => void): TimerHandle
  after(delayMs: number, callback: () => void): TimerHandle
}

export const systemClock: Clock = { now: () => performance.now() }

export const systemRandom: Random = { next: () => Math.random() }

export const systemTimers: Timers = {
  every(intervalMs, callback) {
    const handle = setInterval(callback, intervalMs)
    handle.unref?.()
    return { cancel: () => clearInterval(handle) }
  },
  after(delayMs, callback) {
    const handle = setTimeout(callback, delayMs)
    return { cancel: () => clearTimeout(handle) }
  },
}

/** Wall-clock milliseconds since the epoch, for log lines and file names only, never for protocol timing. */
export function wallClockMs(): number {
  return Date.now()
}

/** Promise that resolves after `delayMs`, or rejects when `signal` aborts. */
export function sleep(delayMs: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const handle = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, delayMs)
    const onAbort = () => {
      clearTimeout(handle)
      reject(signal?.reason)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/** A seeded pseudo-random source (xorshift128+ folded to 53 bits), used by the simulator and tests. */
export function seededRandom(seed: number): Random {
  const s0 = BigInt.asUintN(64, BigInt(seed) * 0x9e3779b97f4a7c15n + 1n)
  let s1 = BigInt.asUintN(64, (s0 ^ 0xbf58476d1ce4e5b9n) * 0x94d049bb133111ebn)
  if (s0 === 0n && s1 === 0n) s1 = 1n
  // A 32-bit state machine is enough and an order of magnitude faster than BigInt per draw.
  let a = Number(s0 & 0xffffffffn) | 0
  let b = Number(s0 >> 32n) | 0
  let c = Number(s1 & 0xffffffffn) | 0
  let d = Number(s1 >> 32n) | 0 || 1
  return {
    next() {
      // xoshiro128**
      const result = Math.imul(rotl(Math.imul(b, 5), 7), 9)
      const t = b << 9
      c ^= a
      d ^= b
      b ^= c
      a ^= d
      c ^= t
      d = rotl(d, 11)
      return (result >>> 0) / 4294967296
    },
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k))
}
