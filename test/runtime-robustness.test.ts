/**
 * Regression tests of the process runtime's known defects, in one process: a thread start that
 * arrives after its process ended, a spawn whose child no node takes for a while, a thread whose
 * node cannot fetch the program from a busy home (each made its joiner fail), a thread record write
 * the store does not confirm in time (it lost the thread's context group, or stopped the thread as
 * taken over by itself), and thread records left `running` after their process ended.
 */

import { afterEach, describe, expect, test } from 'vitest'
import { StoreTimeoutError } from '../fabric/errors.ts'
import type { MemoryStore } from '../fabric/runtime/memory-store.ts'
import type { RuntimeReply } from '../fabric/runtime/messages.ts'
import type { NodeRuntime } from '../fabric/runtime/node-runtime.ts'
import {
  decodeThread,
  encodeRecord,
  recordFormatVersion,
  type ThreadRecord,
} from '../fabric/runtime/records.ts'
import { ThreadRecords } from '../fabric/runtime/thread-records.ts'
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
    const referenceOutput = await undisturbedOutput(home, waves, ['waves', '1', '2'])

    // Every node refuses the children's starts for a while, as nodes whose store does not answer
    // during a membership change do: more refusals than one placement round tries nodes.
    let refusals = 0
    cluster.intercept = (_from, _to, message) => {
      // Starts to one node in one turn travel as one `starts` message: refused together.
      const starts = message.type === 'start' ? [message] : message.type === 'starts' ? message.starts : []
      if (starts.length === 0 || starts.some((start) => start.tid === '0') || refusals >= 30) return undefined
      refusals += starts.length
      const refused = { type: 'refused' as const, reason: 'node is not serving' }
      return message.type === 'start' ? refused : { type: 'started', replies: starts.map(() => refused) }
    }
    const process = await home.submit(waves, { args: ['waves', '1', '2'], seed: 1 })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(output).toBe(referenceOutput)
    expect(refusals).toBeGreaterThanOrEqual(30)
  }, 60_000)

  test('a spawn whose child no node takes for longer than the main thread may wait is placed while its process runs, and the join gets its result', async () => {
    cluster = new InProcessCluster()
    // A main thread is waited for 3 s here (30 s by default), so the test need not take 30 s.
    const placementWaitMs = 3000
    for (const id of ['node-a', 'node-b', 'node-c'])
      await cluster.addNode(id, { runtime: { placementWaitMs } })
    const home = cluster.runtime('node-a')
    const waves = guestBytes('test/fixtures/as/waves.ts')
    const referenceOutput = await undisturbedOutput(home, waves, ['waves', '1', '2'])
    // Every node refuses the children's starts for longer than a main thread is waited for.
    const refuseUntilMs = Date.now() + placementWaitMs * 2
    cluster.intercept = (_from, _to, message) => {
      const refused = { type: 'refused' as const, reason: 'node is not serving' }
      if (Date.now() >= refuseUntilMs) return undefined
      if (message.type === 'start' && message.tid !== '0') return refused
      if (message.type === 'starts') return { type: 'started', replies: message.starts.map(() => refused) }
      return undefined
    }
    const process = await home.submit(waves, { args: ['waves', '1', '2'], seed: 1 })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(output).toBe(referenceOutput)
    expect(cluster.logs.some((line) => line.includes('placing it again while the process runs'))).toBe(true)
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
      const entryCas = store.entryCas.bind(store)
      // The first write of each leader's record that sets its group is answered with a timeout,
      // after the store applied it (or before it did), as a store in a membership change answers.
      const timedOut = new Set<string>()
      store.entryCas = async (key, entry, expectedVersion, value) => {
        if (value !== null && !timedOut.has(entry) && decodeThread(value).group !== undefined) {
          const before = await store.entryGet(key, entry)
          if (before.value !== null && decodeThread(before.value).group === undefined) {
            timedOut.add(entry)
            if (applied) await entryCas(key, entry, expectedVersion, value)
            throw new StoreTimeoutError(key, 2000)
          }
        }
        return entryCas(key, entry, expectedVersion, value)
      }
      const workers = 4
      const process = await cluster.runtime('node-a').submit(guestBytes('test/fixtures/as/groups.ts'), {
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
          const read = await new ThreadRecords(store).get(process.pid, `0.${leader}.${handle}`)
          expect(decodeThread(read.value!).group, `worker ${handle} of leader ${name}`).toBe(name)
        }
      }
      expect(cluster.logs.filter((line) => line.includes('taken over'))).toEqual([])
    }, 60_000)

  test('a thread joined from its early end notice, whose end record is written after its process ended, is not left running', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const home = cluster.runtime('node-a')
    // The first write of each child's end does not answer in time (a busy store): its parent has
    // joined it from the early notice, main ends and the process's `stop` comes before the retry.
    const records = watchThreadRecords(cluster.store)
    records.failFirstEndWrite = true
    const process = await home.submit(guestBytes('test/fixtures/as/waves.ts'), {
      args: ['waves', '1', '3'],
      seed: 1,
    })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(records.endWritesFailed).toBeGreaterThan(0)
    const states = await settledStates(cluster.store, process.pid, records.tids(process.pid))
    expect(states.size).toBe(4)
    expect([...states.values()].every((state) => state === 'done')).toBe(true)
    const listed = (await home.listProcesses()).find((entry) => entry.pid === process.pid)
    expect(listed?.state).toBe('ended')
    expect(listed?.threads.filter((thread) => thread.state !== 'done' && thread.state !== 'failed')).toEqual(
      [],
    )
  }, 60_000)

  test('a thread claimed while its process is killed never runs, and its record does not stay running', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const home = cluster.runtime('node-a')
    const program = guestBytes('test/fixtures/as/waves.ts')
    let pid = ''
    let claimed = ''
    let claimLanded: Promise<unknown> = new Promise(() => {})
    // The first claim of a child (its record created, running, epoch 1) lands only after the process
    // was killed and its stop reached every node.
    const entryCas = cluster.store.entryCas.bind(cluster.store)
    cluster.store.entryCas = (key, entry, expectedVersion, value) => {
      if (claimed === '' && pid !== '' && value !== null) {
        const record = decodeThread(value)
        if (record.pid === pid && record.tid !== '0' && record.state === 'running' && record.epoch === 1) {
          claimed = record.tid
          const landed = (async () => {
            await cluster.send('node-b', 'node-a', { type: 'kill', pid })
            await new Promise((resolve) => setTimeout(resolve, 100))
            return entryCas(key, entry, expectedVersion, value)
          })()
          claimLanded = landed
          return landed
        }
      }
      return entryCas(key, entry, expectedVersion, value)
    }
    const process = await home.submit(program, { args: ['waves', '6', '2'], seed: 1 })
    pid = process.pid
    expect(await process.result).toEqual({ exitCode: 137, error: 'killed' })
    expect(await claimLanded).toMatchObject({ ok: true })
    const states = await settledStates(cluster.store, pid, [claimed])
    expect(states.get(claimed)).toBe('failed')
    expect(
      cluster.logs.some((line) =>
        line.includes(`refused thread ${claimed} of ${pid}: the process has ended`),
      ),
    ).toBe(true)
  }, 60_000)

  test('the threads of a killed process are recorded as stopped, not running', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const home = cluster.runtime('node-a')
    const records = watchThreadRecords(cluster.store)
    const process = await home.submit(guestBytes('test/fixtures/as/waves.ts'), {
      args: ['waves', '50', '2'],
      seed: 1,
    })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    while (!output.includes('wave 1:')) await new Promise((resolve) => setTimeout(resolve, 20))
    expect(await cluster.send('node-b', 'node-a', { type: 'kill', pid: process.pid })).toEqual({ type: 'ok' })
    expect(await process.result).toEqual({ exitCode: 137, error: 'killed' })
    const states = await settledStates(cluster.store, process.pid, records.tids(process.pid))
    expect(states.size).toBeGreaterThan(2)
    for (const [key, state] of states) expect(state, key).not.toBe('running')
  }, 60_000)
})

describe('orphan checks', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test("a thread its node reclaimed between the home's record read and its question to the node is not placed again elsewhere", async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const home = cluster.runtime('node-a')
    const primes = guestBytes('examples/primes/primes.ts')
    const args = ['primes', '1500000', '50000']
    const referenceOutput = await undisturbedOutput(home, primes, args)

    const process = await home.submit(primes, { args, seed: 1 })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    while (!output.includes('below 100000:')) await new Promise((resolve) => setTimeout(resolve, 10))
    const runner = cluster.ids().find((id) =>
      cluster
        .runtime(id)
        .localThreads()
        .some((thread) => thread.pid === process.pid),
    )!
    // What a node that could not renew its lease does: it stops its threads, then claims them
    // again (epoch + 1) as nobody took them. Here it happens just before the home's second orphan
    // check asks it; both checks find the thread missing there.
    type NodeInternals = {
      local: Map<string, unknown>
      stopThread(thread: unknown): void
      reclaim(thread: unknown): Promise<void>
    }
    type HomeInternals = { homeDuties: { findOrphans(live: ReadonlySet<string>): Promise<void> } }
    const node = cluster.runtime(runner) as unknown as NodeInternals
    let asked = 0
    cluster.intercept = (_from, to, message) => {
      if (to !== runner || message.type !== 'ps' || message.local !== true || asked >= 2) return undefined
      const missing: RuntimeReply = { type: 'processes', processes: [] }
      if (++asked === 1) return missing
      const thread = node.local.get(`${process.pid}/0`)
      node.stopThread(thread)
      return node.reclaim(thread).then(() => missing) as unknown as RuntimeReply
    }
    const homeDuties = (home as unknown as HomeInternals).homeDuties
    while (asked < 2) await homeDuties.findOrphans(new Set(cluster.liveIds()))
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(output).toBe(referenceOutput)
    expect(cluster.logs.filter((line) => line.includes('taken over'))).toEqual([])
    const record = decodeThread((await new ThreadRecords(cluster.store).get(process.pid, '0')).value!)
    expect({ node: record.node, epoch: record.epoch }).toEqual({ node: runner, epoch: 2 })
  }, 60_000)
})

describe('ps, kill and attach through any node', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('after the home was lost, any node lists the process at its new home, follows its output and kills it', async () => {
    cluster = new InProcessCluster()
    const ids = ['node-a', 'node-b', 'node-c', 'node-d']
    for (const id of ids) await cluster.addNode(id)
    const process = await cluster
      .runtime('node-a')
      .submit(guestBytes('test/fixtures/as/waves.ts'), { args: ['waves', '200', '2'], seed: 1 })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    while (!output.includes('wave 1:')) await new Promise((resolve) => setTimeout(resolve, 20))
    cluster.kill('node-a')
    let newHome: string | undefined
    for (let waitedMs = 0; newHome === undefined && waitedMs < 10_000; waitedMs += 50) {
      await new Promise((resolve) => setTimeout(resolve, 50))
      newHome = ids.find((id) => cluster.logs.some((line) => line.startsWith(`${id}: runtime: took over`)))
    }
    expect(newHome).toBeDefined()
    const other = ids.find((id) => id !== 'node-a' && id !== newHome)!
    // `ps` through a node that is not the home: the process at its new home, running.
    const listed = await cluster.send(newHome!, other, { type: 'ps' })
    const entry =
      listed.type === 'processes' ? listed.processes.find((p) => p.pid === process.pid) : undefined
    expect(entry?.home).toBe(newHome)
    expect(entry?.state).toBe('running')
    // `attach` through it: the output so far, from the new home.
    const attached = await cluster.send(newHome!, other, {
      type: 'attach',
      pid: process.pid,
      from: 0,
      waitMs: 0,
    })
    const shown = attached.type === 'output' ? attached.chunks.map((chunk) => chunk.bytes) : []
    expect(new TextDecoder().decode(Buffer.concat(shown)).startsWith(output.split('\n')[0]!)).toBe(true)
    // `kill` through it.
    expect(await cluster.send(newHome!, other, { type: 'kill', pid: process.pid })).toEqual({ type: 'ok' })
    const ended = await cluster.send(other, newHome!, {
      type: 'attach',
      pid: process.pid,
      from: 0,
      waitMs: 5000,
    })
    expect(ended.type === 'output' ? ended.result : null).toEqual({ exitCode: 137, error: 'killed' })
    // An unknown process is named as such.
    expect(await cluster.send(newHome!, other, { type: 'kill', pid: 'no-such-pid' })).toEqual({
      type: 'refused',
      reason: 'no process no-such-pid',
    })
  }, 60_000)
})

describe('home replicas', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('output is shown once a home replica holds it: replicas that refuse copies are replaced, so losing the home loses no output', async () => {
    cluster = new InProcessCluster()
    const ids = ['node-a', 'node-b', 'node-c', 'node-d']
    for (const id of ids) await cluster.addNode(id)
    const waves = guestBytes('test/fixtures/as/waves.ts')
    const args = ['waves', '6', '2']
    const referenceOutput = await undisturbedOutput(cluster.runtime('node-a'), waves, args)
    // node-a's first choices of home replicas (node-b, node-c) refuse every copy.
    cluster.intercept = (from, to, message) =>
      message.type === 'home-copy' && from === 'node-a' && to !== 'node-d'
        ? { type: 'refused', reason: 'copy does not follow what is held' }
        : undefined
    const process = await cluster.runtime('node-a').submit(waves, { args, seed: 1 })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    while (!output.includes('wave 1:')) await new Promise((resolve) => setTimeout(resolve, 20))
    cluster.kill('node-a')
    // Whoever is home now has the whole output, and the process ends as an undisturbed run.
    const reply = await attachUntilEnded(cluster, 'node-b', 'node-c', process.pid)
    expect(reply.result).toEqual({ exitCode: 0, error: null })
    expect(reply.output).toBe(referenceOutput)
    expect(cluster.logs.some((line) => line.startsWith('node-d: runtime: took over as home'))).toBe(true)
  }, 60_000)

  test('output sent to a node that is not the home of its process is refused, not taken and dropped; a thread whose output is refused sends it again', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const waves = guestBytes('test/fixtures/as/waves.ts')
    const args = ['waves', '3', '2']
    const referenceOutput = await undisturbedOutput(cluster.runtime('node-a'), waves, args)
    // The home (node-a) refuses the first output messages, as a node that is not home yet would.
    let refused = 0
    cluster.intercept = (_from, to, message) => {
      if (message.type !== 'output' || to !== 'node-a' || refused >= 3) return undefined
      refused++
      return { type: 'refused', reason: 'node-a is not the home of this process yet' }
    }
    const process = await cluster.runtime('node-a').submit(waves, { args, seed: 1 })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(refused).toBe(3)
    expect(output).toBe(referenceOutput)
    const reply = await cluster.send('node-a', 'node-b', {
      type: 'output',
      pid: process.pid,
      tid: '0',
      fd: 1,
      callSequence: 1_000_000,
      bytes: new TextEncoder().encode('not for node-b\n'),
    })
    expect(reply).toEqual({ type: 'refused', reason: `node-b is not the home of process ${process.pid}` })
  }, 60_000)

  test('a replica that missed output the other replica got fetches it before taking the process over', async () => {
    cluster = new InProcessCluster()
    const ids = ['node-a', 'node-b', 'node-c', 'node-d']
    for (const id of ids) await cluster.addNode(id)
    const waves = guestBytes('test/fixtures/as/waves.ts')
    const args = ['waves', '6', '2']
    const referenceOutput = await undisturbedOutput(cluster.runtime('node-a'), waves, args)
    // node-b (node-a's first home replica, and the first to hear that node-a departed) keeps its
    // first copy of the process and refuses the rest; node-c gets every copy.
    let copiesToB = 0
    let delayedFetch = false
    cluster.intercept = (from, to, message) => {
      if (message.type === 'home-copy' && from === 'node-a' && to === 'node-b' && copiesToB++ > 0)
        return { type: 'refused', reason: 'copy does not follow what is held' }
      // node-c, which holds the whole output, is slow to take the process over: node-b does.
      if (message.type === 'fetch-home-copy' && from === 'node-c' && !delayedFetch) {
        delayedFetch = true
        const delayed = new Promise((resolve) => setTimeout(resolve, 3000)).then(() =>
          cluster.send(from, to, message),
        )
        return delayed as unknown as RuntimeReply
      }
      return undefined
    }
    const process = await cluster.runtime('node-a').submit(waves, { args, seed: 1 })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    while (!output.includes('wave 2:')) await new Promise((resolve) => setTimeout(resolve, 20))
    cluster.kill('node-a')
    const reply = await attachUntilEnded(cluster, 'node-c', 'node-d', process.pid)
    const newHome = cluster.logs.find((line) => line.includes(`took over as home of process ${process.pid}`))
    console.log(`runtime: ${newHome}; ${cluster.logs.filter((line) => line.includes('fetched')).join('; ')}`)
    expect(newHome?.startsWith('node-b:')).toBe(true)
    expect(reply.result).toEqual({ exitCode: 0, error: null })
    expect(reply.output).toBe(referenceOutput)
  }, 60_000)
})

describe('a home taken over', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('learns where each thread runs from the nodes that run them, though the placement of one never reached its replicas', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c', 'node-d']) await cluster.addNode(id)
    // The holder (a thread nobody joins) runs on a node other than main's; its placement is never
    // copied to node-a's home replicas, as if node-a died while that copy was on its way.
    const holder = '0.4'
    cluster.intercept = (from, _to, message) => {
      if (message.type === 'home-copy' && from === 'node-a')
        message.entries = message.entries.filter((entry) => entry.kind !== 'placed' || entry.tid !== holder)
      return undefined
    }
    const workout = guestBytes('test/fixtures/as/sync-workout.ts')
    const process = await cluster
      .runtime('node-a')
      .submit(workout, { args: ['w', 'deadholder', '4000', '6000'] })
    const runsHolder = () =>
      cluster.ids().find((id) =>
        cluster
          .runtime(id)
          .localThreads()
          .some((thread) => thread.pid === process.pid && thread.tid === holder),
      )
    await waitFor(() => runsHolder() !== undefined, 20_000)
    const node = runsHolder()
    expect(node).toBeDefined()
    expect(node).not.toBe('node-a')
    cluster.kill('node-a')
    const tookOver = () =>
      cluster.logs.find((line) => line.includes(`took over as home of process ${process.pid}`))
    await waitFor(() => tookOver() !== undefined, 20_000)
    const home = tookOver()!.split(':')[0]!
    // `ps` at the new home lists the holder on its node (the home restarts it there should that node die).
    const listed = async () =>
      (await cluster.runtime(home).listProcesses())
        .find((summary) => summary.pid === process.pid)
        ?.threads.find((thread) => thread.tid === holder)
    await waitFor(async () => (await listed()) !== undefined, 2000)
    expect((await listed())?.node).toBe(node)
  }, 60_000)
})

describe('a stop that never arrives', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test("a node that ran a process's threads and missed its stop finds the process ended: it drops its program, saves and sync keys", async () => {
    cluster = new InProcessCluster()
    const ids = ['node-a', 'node-b', 'node-c']
    for (const id of ids) await cluster.addNode(id)
    // The home's stops reach only itself.
    cluster.intercept = (_from, to, message) =>
      message.type === 'stop' && to !== 'node-a' ? { type: 'ok' } : undefined
    const workout = guestBytes('test/fixtures/as/sync-workout.ts')
    const process = await cluster
      .runtime('node-a')
      .submit(workout, { args: ['w', 'bank', '3', '4'], seed: 1 })
    const ranHere = new Set<string>()
    const watch = setInterval(() => {
      for (const id of ids)
        if (
          cluster
            .runtime(id)
            .localThreads()
            .some((thread) => thread.pid === process.pid)
        )
          ranHere.add(id)
    }, 5)
    expect((await process.result).exitCode).toBe(0)
    clearInterval(watch)
    const others = [...ranHere].filter((id) => id !== 'node-a')
    expect(others.length).toBeGreaterThan(0)
    const released = () =>
      others.every((id) => cluster.runtime(id).programsHeld().inUse === 0) &&
      cluster.store.writtenKeys(`sync/${process.pid}/`).length === 0
    await waitFor(released, 15_000)
    expect(others.map((id) => [id, cluster.runtime(id).programsHeld().inUse])).toEqual(
      others.map((id) => [id, 0]),
    )
    expect(cluster.store.writtenKeys(`sync/${process.pid}/`)).toEqual([])
    expect(cluster.logs.some((line) => line.includes(`process ${process.pid} ended without a stop`))).toBe(
      true,
    )
  }, 60_000)
})

/** Waits until `check` holds, for `timeoutMs` at most (the test's expectations then say what is wrong). */
async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs
  while (!(await check()) && performance.now() < deadline)
    await new Promise((resolve) => setTimeout(resolve, 20))
}

/** Records the threads whose records were written through `store`; can make the first end write of each child fail. */
function watchThreadRecords(store: MemoryStore) {
  const written = new Set<string>()
  const failed = new Set<string>()
  const entryCas = store.entryCas.bind(store)
  const watch = {
    failFirstEndWrite: false,
    endWritesFailed: 0,
    /** The threads of `pid` whose records were written. */
    tids: (pid: string) =>
      [...written].filter((key) => key.startsWith(`${pid}/`)).map((key) => key.slice(pid.length + 1)),
  }
  store.entryCas = async (key, entry, expectedVersion, value) => {
    if (key.startsWith('threads/') && value !== null) {
      const { pid, tid, state } = decodeThread(value)
      written.add(`${pid}/${tid}`)
      const isChild = tid !== '0'
      if (watch.failFirstEndWrite && isChild && !failed.has(`${pid}/${tid}`) && state === 'done') {
        failed.add(`${pid}/${tid}`)
        watch.endWritesFailed++
        await new Promise((resolve) => setTimeout(resolve, 300))
        throw new Error('store operation timed out')
      }
    }
    return entryCas(key, entry, expectedVersion, value)
  }
  return watch
}

/** Each thread's state once none is `running` or `placed`, or as it is after 15 s. */
async function settledStates(store: MemoryStore, pid: string, tids: string[]): Promise<Map<string, string>> {
  const records = new ThreadRecords(store)
  const states = new Map<string, string>()
  // End records land a moment after the process's result; on a loaded 2-core machine (the unit
  // project runs files in parallel) 5 s was once too short.
  for (let waitedMs = 0; waitedMs < 15_000; waitedMs += 50) {
    for (const tid of tids) {
      const read = await records.get(pid, tid)
      if (read.value !== null) states.set(tid, decodeThread(read.value).state)
    }
    if ([...states.values()].every((state) => state === 'done' || state === 'failed')) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return states
}

/** The output of a run of `program` on `runtime` that nothing disturbs; fails unless it exits 0. */
async function undisturbedOutput(runtime: NodeRuntime, program: Uint8Array, args: string[]): Promise<string> {
  const reference = await runtime.submit(program, { args, seed: 1 })
  let output = ''
  reference.onOutput((chunk) => {
    output += new TextDecoder().decode(chunk.bytes)
  })
  expect(await reference.result).toEqual({ exitCode: 0, error: null })
  return output
}

/** Attaches to `pid` through `to` (asked by `from`) until the process has ended there, for up to 20 s. */
async function attachUntilEnded(cluster: InProcessCluster, from: string, to: string, pid: string) {
  for (const startedMs = Date.now(); ; ) {
    const reply = await cluster.send(from, to, { type: 'attach', pid, from: 0, waitMs: 5000 })
    const ended = reply.type === 'output' && reply.result !== null
    if (ended || Date.now() - startedMs >= 20_000) {
      expect(reply.type).toBe('output')
      if (reply.type !== 'output') throw new Error(`attach answered ${reply.type}`)
      const output = new TextDecoder().decode(Buffer.concat(reply.chunks.map((chunk) => chunk.bytes)))
      return { result: reply.result, output }
    }
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
}
