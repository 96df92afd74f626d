// Issue 4: a main thread that resumes on another node joins children that ended while its first
// incarnation ran: their end notices went to the lost node, so each join must find the child's end
// in its record at once, not after a poll's wait (50 children took 12 s more in the 5-node test).
import { afterEach, describe, expect, test } from 'vitest'
import { joinPollMs } from '../fabric/runtime/node-runtime.ts'
import { guestBytes } from './support/guests.ts'
import { collectOutput, InProcessCluster } from './support/runtime-cluster.ts'

const childCount = 40
const expected = `squares ${Array.from({ length: childCount }, (_, index) => index * index).join(',')}`

describe('joins of a resumed thread', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('a main thread resumed elsewhere joins children that ended before its node died without waiting a poll for each', async () => {
    cluster = new InProcessCluster()
    // The home never runs the main thread (weight ~0), so killing main's node keeps the home.
    await cluster.addNode('node-a', { speedScore: 1e-9 })
    for (const id of ['node-b', 'node-c', 'node-d']) await cluster.addNode(id)
    const process = await cluster
      .runtime('node-a')
      .submit(guestBytes('test/fixtures/as/spawn-then-save.ts'), {
        args: ['spawn-then-save', String(childCount), 'spin', '1500'],
        seed: 1,
        saveIntervalMs: 600_000,
      })
    const printed = collectOutput(process)
    for (let waitedMs = 0; !printed.text.includes('saved') && waitedMs < 30_000; waitedMs += 10)
      await new Promise((resolve) => setTimeout(resolve, 10))
    // The children are tiny: they end while main computes.
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(printed.text).not.toContain('squares')
    const mainNode = cluster.nodeRunning('0')
    expect(mainNode).toBeDefined()
    expect(mainNode).not.toBe('node-a')
    const killedAt = performance.now()
    cluster.kill(mainNode!)
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    const afterKillMs = performance.now() - killedAt
    expect(printed.text).toContain(expected)
    expect(cluster.logs.some((line) => line.includes('resuming thread 0 '))).toBe(true)
    // Detection, the lease, the restore and main's computing again take a few seconds; a poll's
    // wait per join would add 40 of them (10 s).
    console.log(`resumed main: result ${afterKillMs.toFixed(0)} ms after the kill`)
    expect(afterKillMs).toBeLessThan((childCount * joinPollMs) / 2)
  }, 60_000)
})
