import { defineConfig } from 'vitest/config'

/**
 * Tests that start many node processes run one file at a time, after the rest: on a 2-core machine
 * they would otherwise starve each other's heartbeats and see failures that are only the load. New
 * files of that kind end in `-processes.test.ts`.
 */
const processTests = [
  'test/**/*-processes.test.ts',
  'test/node-cluster.test.ts',
  'test/node-membership.test.ts',
  'test/node-hostile-input.test.ts',
  'test/runtime-cluster.test.ts',
  'test/cli.test.ts',
]

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/**/*.test.ts'], exclude: processTests } },
      { extends: true, test: { name: 'processes', include: processTests, fileParallelism: false } },
    ],
  },
})
