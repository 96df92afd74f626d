import { describe } from 'vitest'
import { storeSimulationSeeds } from './support/store-simulation.ts'

describe('coordination store in the simulator: 5 nodes, 3 replicas, crashes, restarts, lost disks, partitions, loss, drift', () => {
  storeSimulationSeeds({
    file: 'test/coord-simulation-three-replicas.test.ts',
    first: 1,
    last: 400,
    soakLast: 5000,
  })
})
