/**
 * Regression tests of the process runtime's known defects, in one process: a thread start that
 * arrives after its process ended, a spawn whose child no node takes for a while, and a thread
 * whose node cannot fetch the program from a busy home (each made its joiner fail), and a thread
 * record write the store does not confirm in time (it lost the thread's context group, or stopped
 * the thread as taken over by itself).
 */

import { afterEach, describe, expect, test } from 'vitest'
import { StoreTimeoutError } from '../fabric/errors.ts'
import {
  decodeThread,
  encodeRecord,
  keys,
  recordFormatVersion,
  type ThreadRecord,
} from '../fabric/runtime/records.ts'
import { guestBytes } from './support/guests.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

function newThreadRecord(pid: string, tid: string): ThreadRecord {
  return {
    formatVersion: recordFormatVersion,
    pid,
    tid,
    entry: 'work',
    arg: new TextEncoder().encode('7'),
    state: 'placed',
    node: '',
    epoch: 0,
    saveReplicas: [],
    result: null,
    exitCode: null,
    error: null,
    spawnerNode: 'node-a',
  }
}

describe('process runtime defects', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('a thread start that arrives after its process ended (or was killed) is refused and does not run', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const home = cluster.runtime('node-a')
    const waves = guestBytes('test/fixtures/as/waves.ts')
    const ended = await home.submit(waves, { args: ['waves', '1', '2'], seed: 1 })
    expect(await ended.result).toEqual({ exitCode: 0, error: null })
    const killed = await home.submit(waves, { args: ['waves', '50', '2'], seed: 1 })
    expect(await cluster.send('node-b', 'node-a', { type: 'kill', pid: killed.pid })).toEqual({ type: 'ok' })
    expect(await killed.result).toEqual({ exitCode: 137, error: 'killed' })
    // A node that joins afterwards never got the processes' `stop`: the process record tells it.
    await cluster.addNode('node-d')
    for (const { pid } of [ended, killed]) {
      for (const node of ['node-b', 'node-c', 'node-d']) {
        const tid = `0.late-${node}`
        const reply = await cluster.send('node-a', node, {
          type: 'start',
          pid,
          tid,
          version: 0,
          record: encodeRecord(newThreadRecord(pid, tid)),
        })
        expect(reply, `${node}, process ${pid}`).toEqual({
          type: 'refused',
          reason: `process ${pid} has ended`,
        })
        expect(
          cluster
            .runtime(node)
            .localThreads()
            .filter((thread) => thread.pid === pid),
        ).toEqual([])
      }
    }
  }, 60_000)

  test('a spawn whose child every node refuses for a while still starts it, and the join gets its result', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const home = cluster.runtime('node-a')
    const waves = guestBytes('test/fixtures/as/waves.ts')
    const reference = await home.submit(waves, { args: ['waves', '1', '2'], seed: 1 })
    let referenceOutput = ''
    reference.onOutput((chunk) => {
      referenceOutput += new TextDecoder().decode(chunk.bytes)
    })
    expect(await reference.result).toEqual({ exitCode: 0, error: null })

    // Every node refuses the children's starts for a while, as nodes whose store does not answer
    // during a membership change do: more refusals than one placement round tries nodes.
    let refusals = 0
    cluster.intercept = (_from, _to, message) => {
      if (message.type !== 'start' || message.tid === '0' || refusals >= 30) return undefined
      refusals++
      return { type: 'refused', reason: 'node is not serving' }
    }
    const process = await home.submit(waves, { args: ['waves', '1', '2'], seed: 1 })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(output).toBe(referenceOutput)
    expect(refusals).toBe(30)
  }, 60_000)

  test('a thread whose node cannot fetch the program for a while (a busy home) still runs, and its joiner gets its result', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const home = cluster.runtime('node-a')
    const waves = guestBytes('test/fixtures/as/waves.ts')
    // The first fetches of the program from the home fail, as requests to a busy home time out.
    let failedFetches = 0
    cluster.intercept = (_from, _to, message) => {
      if (message.type !== 'fetch-program' || failedFetches >= 3) return undefined
      failedFetches++
      return { type: 'refused', reason: 'no runtime reply within 30000 ms' }
    }
    const process = await home.submit(waves, { args: ['waves', '2', '4'], seed: 1 })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(failedFetches).toBe(3)
    expect(cluster.logs.some((line) => line.includes('could not start running'))).toBe(true)
  }, 60_000)

  for (const applied of [true, false])
    test(`a thread record write that times out (${applied ? 'applied' : 'not applied'}) neither loses the thread's context group nor stops the thread as taken over`, async () => {
      cluster = new InProcessCluster()
      for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
      const store = cluster.store
      const cas = store.cas.bind(store)
      // The first write of each leader's record that sets its group is answered with a timeout,
      // after the store applied it (or before it did), as a store in a membership change answers.
      const timedOut = new Set<string>()
      store.cas = async (key, expectedVersion, value) => {
        if (key.startsWith('thread/') && !timedOut.has(key) && decodeThread(value).group !== undefined) {
          const before = await store.get(key)
          if (before.value !== null && decodeThread(before.value).group === undefined) {
            timedOut.add(key)
            if (applied) await cas(key, expectedVersion, value)
            throw new StoreTimeoutError(key, 2000)
          }
        }
        return cas(key, expectedVersion, value)
      }
      const workers = 4
      const process = await cluster
        .runtime('node-a')
        .submit(guestBytes('test/fixtures/as/groups.ts'), {
          args: ['groups', String(workers), 'a,b'],
          seed: 1,
        })
      let output = ''
      process.onOutput((chunk) => {
        output += new TextDecoder().decode(chunk.bytes)
      })
      expect(await process.result).toEqual({ exitCode: 0, error: null })
      expect(timedOut.size).toBe(2)
      const leaders = [...output.matchAll(/leader (\S+) (\d+) workers (\S+)/g)]
      expect(leaders).toHaveLength(2)
      for (const [, name, leader, handles] of leaders) {
        for (const handle of handles!.split(',')) {
          const read = await store.get(keys.thread(process.pid, `0.${leader}.${handle}`))
          expect(decodeThread(read.value!).group, `worker ${handle} of leader ${name}`).toBe(name)
        }
      }
      expect(cluster.logs.filter((line) => line.includes('taken over'))).toEqual([])
    }, 60_000)
})
