import { describe, expect, test } from 'vitest'
import {
  SaveIntervalLearner,
  saveIntervalMsMax,
  saveIntervalMsMin,
  youngDalyIntervalMs,
} from '../host/save-interval.ts'

describe('save interval (Young/Daly)', () => {
  test('is sqrt(2 * save cost * MTBF), within bounds', () => {
    expect(youngDalyIntervalMs(2, 3_600_000)).toBeCloseTo(Math.sqrt(2 * 2 * 3_600_000), 6)
    expect(youngDalyIntervalMs(0.001, 1000)).toBe(saveIntervalMsMin)
    expect(youngDalyIntervalMs(10_000, 3_600_000_000)).toBe(saveIntervalMsMax)
  })

  test('a thread whose saves cost more saves less often; small changes do not churn the interval', () => {
    const learner = new SaveIntervalLearner(3_600_000, 1000)
    const cheap = learner.observe(0.5)
    expect(cheap).toBeCloseTo(youngDalyIntervalMs(0.5, 3_600_000), 6)
    expect(learner.observe(0.52)).toBeNull()
    let interval = learner.currentMs
    for (let save = 0; save < 30; save++) interval = learner.observe(200) ?? interval
    expect(interval).toBeGreaterThan(cheap! * 10)
  })
})
