import { describe } from 'vitest'
import { storeSimulationSeeds } from './support/store-simulation.ts'

describe('coordination store in the simulator: 7 nodes, 5 replicas (configurable replica count)', () => {
  storeSimulationSeeds({
    file: 'test/coord-simulation-five-replicas.test.ts',
    first: 10_001,
    last: 10_200,
    soakLast: 12_000,
    nodeCount: 7,
    replicaCount: 5,
  })
})
