/**
 * A pool of workers for guest threads. At most `runningMax` threads compute at once (default: the
 * cores); a thread suspended in a blocking call does not count. A thread that computes for a long
 * time without blocking cannot starve the rest: once the oldest waiting thread has waited
 * `starvationMs`, it starts anyway on another worker and the OS shares the cores, up to
 * `starvedMax` threads beyond `runningMax` (a burst of starving threads must not start a worker
 * each: each costs memory and start time, and they share the same cores), and up to
 * `workerCountMax` workers in all. A thread counts as starved only while some thread has computed
 * that long without a break, and such starts come one per `starvationMs`: a queue of short threads
 * that is merely slow (a busy machine, workers still booting) is not starvation. Idle workers are
 * kept for reuse, and `warmCount` of them are started ahead of the first thread.
 */

import type { FromWorker, ToWorker } from './worker/protocol.ts'

/** A worker as the host sees it, whatever the platform. */
export interface HostWorker {
  post(message: ToWorker, transfer?: Transferable[]): void
  onMessage(listener: (message: FromWorker) => void): void
  /** Called once when the worker stops for any reason other than `terminate()`. */
  onCrash(listener: (reason: string) => void): void
  terminate(): void
}

export type WorkerFactory = () => HostWorker

export interface WorkerPoolOptions {
  createWorker: WorkerFactory
  /** Threads computing at once; default 2. */
  runningMax?: number
  /** Workers alive at once, busy or idle; default 256. */
  workerCountMax?: number
  /** How long a ready thread may wait for a core before it starts anyway; default 50 ms. */
  starvationMs?: number
  /** Idle workers kept for reuse; default 4 x `runningMax`. */
  idleMax?: number
  /** Threads computing beyond `runningMax` because they waited too long; default 2 x `runningMax`. */
  starvedMax?: number
  /** Workers started at once, before any thread asks (a worker takes tens of ms to start); default 0. */
  warmCount?: number
}

export interface Lease {
  worker: HostWorker
  /** The thread stopped computing (suspended); lets another start. */
  suspend(): void
  /** The thread computes again. */
  resume(): void
  /** The thread ended; `reusable` says whether the worker can run another. */
  release(reusable: boolean): void
}

interface Waiter {
  since: number
  grant: (lease: Lease) => void
}

/** Default of `starvedMax`, per thread slot of `runningMax`. */
export const starvedPerRunningMaxDefault = 2

export class WorkerPool {
  private readonly options: Required<WorkerPoolOptions>
  private readonly idle: HostWorker[] = []
  private readonly waiters: Waiter[] = []
  private running = 0
  private alive = 0
  private starvationTimer: ReturnType<typeof setTimeout> | null = null
  private closed = false
  /** When a thread last started because the others starved it. */
  private starvedStartAt = Number.NEGATIVE_INFINITY
  /** Since when each computing thread has computed without a break. */
  private readonly computingSince = new Set<{ since: number }>()

  constructor(options: WorkerPoolOptions) {
    const runningMax = options.runningMax ?? 2
    if (!Number.isInteger(runningMax) || runningMax < 1) {
      throw new RangeError(`Expected runningMax to be a whole number from 1 up, got ${runningMax}`)
    }
    this.options = {
      createWorker: options.createWorker,
      runningMax,
      workerCountMax: options.workerCountMax ?? 256,
      starvationMs: options.starvationMs ?? 50,
      idleMax: options.idleMax ?? runningMax * 4,
      starvedMax: options.starvedMax ?? runningMax * starvedPerRunningMaxDefault,
      warmCount: options.warmCount ?? 0,
    }
    const warm = Math.min(this.options.warmCount, this.options.idleMax, this.options.workerCountMax)
    for (let index = 0; index < warm; index++) {
      this.idle.push(this.options.createWorker())
      this.alive++
    }
  }

  get runningCount(): number {
    return this.running
  }

  /** Threads that could start computing now without waiting: free cores less queued threads. */
  get idleSlots(): number {
    return Math.max(0, this.options.runningMax - this.running - this.waiters.length)
  }

  /** Resolves with a worker once the thread may compute. */
  acquire(): Promise<Lease> {
    if (this.closed) return Promise.reject(new Error('worker pool is closed'))
    return new Promise((grant) => {
      this.waiters.push({ since: Date.now(), grant })
      this.admit()
    })
  }

  close(): void {
    this.closed = true
    for (const worker of this.idle.splice(0)) worker.terminate()
    if (this.starvationTimer !== null) clearTimeout(this.starvationTimer)
  }

  private admit(): void {
    while (this.waiters.length > 0 && this.alive - this.idle.length < this.options.workerCountMax) {
      const oldest = this.waiters[0]!
      const starving = Date.now() - this.waitingSince(oldest) >= this.options.starvationMs
      if (this.running >= this.options.runningMax) {
        if (!starving || this.overcommitted()) break
        this.starvedStartAt = Date.now()
      }
      this.waiters.shift()
      oldest.grant(this.lease())
    }
    this.scheduleStarvationCheck()
  }

  private scheduleStarvationCheck(): void {
    // Past the bound, the next admission comes from a thread that suspends or ends.
    if (this.starvationTimer !== null || this.waiters.length === 0 || this.overcommitted()) return
    const wait = Math.max(0, this.waitingSince(this.waiters[0]!) + this.options.starvationMs - Date.now())
    this.starvationTimer = setTimeout(() => {
      this.starvationTimer = null
      this.admit()
    }, wait)
  }

  /** As many threads compute as the starvation guard may start. */
  private overcommitted(): boolean {
    return this.running >= this.options.runningMax + this.options.starvedMax
  }

  /** From when `waiter` counts as starved: it waits, and a thread computes on without a break. */
  private waitingSince(waiter: Waiter): number {
    let hogSince = Number.POSITIVE_INFINITY
    for (const computing of this.computingSince) hogSince = Math.min(hogSince, computing.since)
    return Math.max(waiter.since, hogSince, this.starvedStartAt)
  }

  private lease(): Lease {
    let worker = this.idle.pop()
    if (worker === undefined) {
      worker = this.options.createWorker()
      this.alive++
    }
    this.running++
    let computing = true
    let released = false
    const computingSince = { since: Date.now() }
    this.computingSince.add(computingSince)
    const leased = worker
    return {
      worker: leased,
      suspend: () => {
        if (!computing || released) return
        computing = false
        this.running--
        this.computingSince.delete(computingSince)
        this.admit()
      },
      resume: () => {
        if (computing || released) return
        computing = true
        this.running++
        computingSince.since = Date.now()
        this.computingSince.add(computingSince)
      },
      release: (reusable) => {
        if (released) return
        released = true
        if (computing) this.running--
        this.computingSince.delete(computingSince)
        if (reusable && !this.closed && this.idle.length < this.options.idleMax) this.idle.push(leased)
        else {
          leased.terminate()
          this.alive--
        }
        this.admit()
      },
    }
  }
}
