/**
 * How often to save a thread's context: Young/Daly's optimum, sqrt(2 * C * MTBF), where C is the
 * cost of one save and MTBF the mean time between failures that would lose the thread's work.
 * Saving more often wastes time on saves; less often loses more work per failure.
 */

export const saveIntervalMsMin = 100
export const saveIntervalMsMax = 5 * 60 * 1000
/** Assumed mean time between failures until the embedding knows better: one hour. */
export const failureIntervalMsDefault = 60 * 60 * 1000
/** Weight of the newest save in the running average of save cost. */
export const saveCostSmoothing = 0.2

export function youngDalyIntervalMs(saveCostMs: number, failureIntervalMs: number): number {
  const optimum = Math.sqrt(2 * Math.max(saveCostMs, 0.01) * failureIntervalMs)
  return Math.min(saveIntervalMsMax, Math.max(saveIntervalMsMin, optimum))
}

/** Learns the save cost of one thread and says when its interval should change. */
export class SaveIntervalLearner {
  private averageCostMs: number | null = null
  private intervalMs: number
  private readonly failureIntervalMs: number

  constructor(failureIntervalMs = failureIntervalMsDefault, initialIntervalMs = 1000) {
    this.failureIntervalMs = failureIntervalMs
    this.intervalMs = initialIntervalMs
  }

  get currentMs(): number {
    return this.intervalMs
  }

  /** Records a save's cost; returns the new interval when it moved by more than a fifth. */
  observe(costMs: number): number | null {
    this.averageCostMs =
      this.averageCostMs === null
        ? costMs
        : this.averageCostMs + saveCostSmoothing * (costMs - this.averageCostMs)
    const next = youngDalyIntervalMs(this.averageCostMs, this.failureIntervalMs)
    if (Math.abs(next - this.intervalMs) <= this.intervalMs / 5) return null
    this.intervalMs = next
    return next
  }
}
