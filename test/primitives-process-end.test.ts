/**
 * A process's coordination keys (`sync/<pid>/...`) are deleted when it ends and when it is killed
 * (`fabric kill`): no value and no lease stays in the store (issue 5). In one process: node
 * runtimes over the shared in-memory store, real guests and workers.
 */

import { afterEach, describe, expect, test } from 'vitest'
import { guestBytes } from './support/guests.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

/** How long the nodes' background deletes may take after the process's end. */
const deleteWaitMs = 10_000

async function eventually(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs
  while (!check()) {
    if (performance.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return true
}

describe('the keys of an ended process', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('are deleted when the process ends, and when it is killed holding a lock that another thread waits for', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const home = cluster.runtime('node-a')
    const workout = guestBytes('test/fixtures/as/sync-workout.ts')

    // Ends by itself: locks, shared variables, on three nodes.
    const ended = await home.submit(workout, { args: ['w', 'bank', '3', '4'], seed: 1 })
    expect((await ended.result).exitCode).toBe(0)
    expect(
      await eventually(() => cluster.store.writtenKeys(`sync/${ended.pid}/`).length === 0, deleteWaitMs),
    ).toBe(true)

    // Killed while a thread holds a lock (and renews it) and main waits for it.
    const killed = await home.submit(workout, { args: ['w', 'deadholder', '60000', '60000'], seed: 1 })
    const held = () => cluster.store.writtenKeys(`sync/${killed.pid}/`).some((key) => key.includes('/lock/'))
    expect(await eventually(held, 30_000)).toBe(true)
    const before = cluster.store.writtenKeys(`sync/${killed.pid}/`)
    expect(before.length).toBeGreaterThanOrEqual(2)
    expect(await cluster.send('node-b', 'node-a', { type: 'kill', pid: killed.pid })).toEqual({ type: 'ok' })
    expect(await killed.result).toEqual({ exitCode: 137, error: 'killed' })
    const gone = await eventually(
      () => cluster.store.writtenKeys(`sync/${killed.pid}/`).length === 0,
      deleteWaitMs,
    )
    expect(gone, `left: ${cluster.store.writtenKeys(`sync/${killed.pid}/`).join(', ')}`).toBe(true)
    // Each key reads as never written.
    for (const key of before)
      expect(await cluster.store.get(key)).toMatchObject({ value: null, holder: null })
  }, 120_000)
})
