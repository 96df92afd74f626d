import { expect, it } from 'vitest'
import { seedBanner } from '../../fabric/sim/simulator.ts'
import { runStoreScenario } from '../../fabric/sim/workload.ts'

/**
 * Runs the randomized store scenario for each seed in [first, last]; with SEED=n in the
 * environment, runs only that seed. A failure prints the seed and the command that reruns it.
 */
export function storeSimulationSeeds(options: {
  file: string
  first: number
  last: number
  soakLast: number
  nodeCount?: number
  replicaCount?: number
}): void {
  const name = `every history is linearizable, fencing tokens only grow, one lease holder at a time (${options.replicaCount ?? 3} replicas)`
  it(name, () => {
    const only = process.env.SEED === undefined ? undefined : Number(process.env.SEED)
    const last = process.env.FABRIC_SOAK === '1' ? options.soakLast : options.last
    let operations = 0
    let seeds = 0
    for (let seed = options.first; seed <= last; seed++) {
      if (only !== undefined && seed !== only) continue
      const report = runStoreScenario({
        seed,
        nodeCount: options.nodeCount,
        replicaCount: options.replicaCount,
      })
      seeds++
      operations += report.completed
      if (report.violations.length > 0) {
        const banner = seedBanner(seed, options.file, name)
        console.error(
          `${banner}\nfaults:\n${report.faults.join('\n')}\n${report.violations.slice(0, 5).join('\n')}`,
        )
        expect.fail(`${banner}\n${report.violations[0]!.slice(0, 2000)}`)
      }
    }
    // Most operations must complete, or the test proves little.
    if (only === undefined) expect(operations).toBeGreaterThan(seeds * 300)
  }, 600_000)
}
