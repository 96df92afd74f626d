/**
 * Issue 4: a home's state per thread of a process (where threads run, which ended, the last output
 * call shown per thread) stays within `endedThreadsKeptMax` however many threads the process runs,
 * on the home and on its home replicas, and the output stays whole, in order and shown once.
 */
import { afterEach, describe, expect, test } from 'vitest'
import { InvalidArgumentError } from '../fabric/errors.ts'
import { seededRandom } from '../fabric/platform.ts'
import { HomeCopies } from '../fabric/runtime/home-copies.ts'
import { homeSweepMs, orphanCheckEverySweeps } from '../fabric/runtime/home-duties.ts'
import { type HomeThreadCounts, HomeThreads } from '../fabric/runtime/home-threads.ts'
import type { HomeCopyEntry } from '../fabric/runtime/messages.ts'
import {
  decodeThread,
  encodeRecord,
  type ProcessRecord,
  recordFormatVersion,
} from '../fabric/runtime/records.ts'
import { ThreadRecords } from '../fabric/runtime/thread-records.ts'
import { guestBytes } from './support/guests.ts'
import { collectOutput, InProcessCluster } from './support/runtime-cluster.ts'

const program = guestBytes('test/fixtures/as/print-threads.ts')
const endedThreadsKeptMax = 16
const threadCount = 200

function expectedOutput(count: number): string {
  let output = ''
  for (let index = 0; index < count; index++) output += `thread ${index}\n`
  return `${output}joined ${count}\n`
}

/** The largest of each count seen. */
function largest(seen: HomeThreadCounts | undefined, counts: HomeThreadCounts | undefined) {
  if (counts === undefined) return seen
  if (seen === undefined) return { ...counts }
  return {
    running: Math.max(seen.running, counts.running),
    ended: Math.max(seen.ended, counts.ended),
    shown: Math.max(seen.shown, counts.shown),
  }
}

/** Submits the print-threads program of `threadCount` threads on node-a; `printed.text` is its output so far. */
async function printThreads(cluster: InProcessCluster) {
  const process = await cluster.runtime('node-a').submit(program, {
    args: ['print-threads', String(threadCount)],
    seed: 1,
  })
  return { process, printed: collectOutput(process) }
}

describe('issue 4: a home keeps bounded per-thread state', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test(`a process of ${threadCount} short threads keeps at most endedThreadsKeptMax (${endedThreadsKeptMax}) ended threads and their dedupe on its home and replicas; its output is whole, in order, once`, async () => {
    cluster = new InProcessCluster()
    const ids = ['node-a', 'node-b', 'node-c']
    for (const id of ids) await cluster.addNode(id, { runtime: { endedThreadsKeptMax } })
    const { process, printed } = await printThreads(cluster)
    const seen = new Map<string, HomeThreadCounts | undefined>()
    let endedSeen = 0
    const sample = setInterval(() => {
      const home = cluster.runtime('node-a').homeThreadCounts(process.pid).home
      seen.set('home', largest(seen.get('home'), home))
      endedSeen = Math.max(endedSeen, home?.ended ?? 0)
      for (const id of ['node-b', 'node-c'])
        seen.set(id, largest(seen.get(id), cluster.runtime(id).homeThreadCounts(process.pid).copy))
    }, 5)
    try {
      expect(await process.result).toEqual({ exitCode: 0, error: null })
    } finally {
      clearInterval(sample)
    }
    expect(printed.text).toBe(expectedOutput(threadCount))
    // The home ran past the bound (its ended threads reached it), and no count went beyond it: the
    // running main thread and child and the remembered ended ones, each with its dedupe.
    expect(endedSeen).toBe(endedThreadsKeptMax)
    const bound = { running: 2, ended: endedThreadsKeptMax, shown: endedThreadsKeptMax + 2 }
    expect(seen.get('home')!.running).toBeLessThanOrEqual(bound.running)
    expect(seen.get('home')!.ended).toBeLessThanOrEqual(bound.ended)
    expect(seen.get('home')!.shown).toBeLessThanOrEqual(bound.shown)
    const replicas = ['node-b', 'node-c'].filter((id) => seen.get(id) !== undefined)
    expect(replicas.length).toBeGreaterThan(0)
    for (const id of replicas) {
      expect(seen.get(id)!.ended).toBeLessThanOrEqual(bound.ended)
      expect(seen.get(id)!.shown).toBeLessThanOrEqual(bound.shown)
    }
  }, 60_000)

  test('the home lost midway: the replica that takes the process over keeps the bounded state, and the output stays whole, in order, once', async () => {
    cluster = new InProcessCluster()
    const ids = ['node-a', 'node-b', 'node-c', 'node-d']
    for (const id of ids) await cluster.addNode(id, { runtime: { endedThreadsKeptMax } })
    const { process, printed } = await printThreads(cluster)
    // Past the bound: the replicas hold a forgotten past, not the whole one.
    while (!printed.text.includes(`thread ${endedThreadsKeptMax * 3}\n`))
      await new Promise((resolve) => setTimeout(resolve, 10))
    cluster.kill('node-a')
    const seen = new Map<string, HomeThreadCounts | undefined>()
    const sample = setInterval(() => {
      for (const id of ids.slice(1))
        seen.set(id, largest(seen.get(id), cluster.runtime(id).homeThreadCounts(process.pid).home))
    }, 5)
    let reply: Awaited<ReturnType<typeof attachUntilEnded>>
    try {
      reply = await attachUntilEnded(cluster, 'node-b', 'node-c', process.pid)
    } finally {
      clearInterval(sample)
    }
    expect(reply.result).toEqual({ exitCode: 0, error: null })
    expect(reply.output).toBe(expectedOutput(threadCount))
    const newHome = cluster.logs.find((line) => line.includes(`took over as home of process ${process.pid}`))
    expect(newHome).toBeDefined()
    const counts = seen.get(newHome!.split(':')[0]!)!
    expect(counts.ended).toBe(endedThreadsKeptMax)
    expect(counts.shown).toBeLessThanOrEqual(endedThreadsKeptMax + 2)
  }, 60_000)

  test('a late placed notice of an ended thread the home forgot: the orphan check finds its record ended and ends it at the home again, without running it', async () => {
    cluster = new InProcessCluster()
    const ids = ['node-a', 'node-b']
    for (const id of ids) await cluster.addNode(id, { runtime: { endedThreadsKeptMax } })
    const count = endedThreadsKeptMax * 2
    // Runs long enough after its threads for two orphan checks (`orphanCheckEverySweeps` sweeps each).
    const pauseMs = 4 * orphanCheckEverySweeps * homeSweepMs
    const process = await cluster.runtime('node-a').submit(program, {
      args: ['print-threads', String(count), String(pauseMs)],
      seed: 1,
    })
    let output = ''
    let firstChild: string | undefined
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
      firstChild ??= chunk.tid
    })
    while (!output.includes(`thread ${count - 1}\n`)) await new Promise((resolve) => setTimeout(resolve, 10))
    const counts = () => cluster.runtime('node-a').homeThreadCounts(process.pid).home!
    // Every child's end notice is in: only main runs, the first child is forgotten.
    while (counts().running > 1) await new Promise((resolve) => setTimeout(resolve, 10))
    expect(counts()).toEqual({ running: 1, ended: endedThreadsKeptMax, shown: endedThreadsKeptMax })
    const records = new ThreadRecords(cluster.store)
    const before = await records.get(process.pid, firstChild!)
    expect(decodeThread(before.value!).state).toBe('done')
    expect(
      await cluster.send('node-b', 'node-a', {
        type: 'placed',
        pid: process.pid,
        tid: firstChild!,
        node: 'node-b',
      }),
    ).toEqual({ type: 'ok' })
    expect(counts().running).toBe(2) // main and the forgotten child, taken as running
    const startedMs = Date.now()
    while (counts().running > 1 && Date.now() - startedMs < pauseMs)
      await new Promise((resolve) => setTimeout(resolve, 50))
    expect(counts().running).toBe(1)
    expect(counts().ended).toBe(endedThreadsKeptMax)
    // Never placed again: its record is the one it ended with.
    const after = await records.get(process.pid, firstChild!)
    expect(after.version).toBe(before.version)
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(output).toBe(expectedOutput(count))
  }, 60_000)
})

/** Attaches to `pid` through `to` (asked by `from`) until the process has ended there, for up to 20 s. */
async function attachUntilEnded(cluster: InProcessCluster, from: string, to: string, pid: string) {
  for (const startedMs = Date.now(); ; ) {
    const reply = await cluster.send(from, to, { type: 'attach', pid, from: 0, waitMs: 5000 })
    const ended = reply.type === 'output' && reply.result !== null
    if (ended || Date.now() - startedMs >= 20_000) {
      if (reply.type !== 'output') throw new Error(`attach answered ${JSON.stringify(reply)}`)
      const output = new TextDecoder().decode(Buffer.concat(reply.chunks.map((chunk) => chunk.bytes)))
      return { result: reply.result, output }
    }
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
}

describe('HomeThreads', () => {
  test('an ended thread is remembered, with its output dedupe, until endedThreadsKeptMax threads ended after it', () => {
    const threads = new HomeThreads({ endedThreadsKeptMax: 3 })
    expect(threads.placed('0.1', 'node-b')).toBe(true)
    expect(threads.show('0.1', 1, 4)).toBe(true)
    expect(threads.show('0.1', 1, 4)).toBe(false) // a replay
    expect(threads.end('0.1')).toBe(true)
    expect(threads.end('0.1')).toBe(false) // a notice that came twice
    expect(threads.placed('0.1', 'node-c')).toBe(false) // a late notice
    for (const tid of ['0.2', '0.3']) threads.end(tid)
    expect(threads.show('0.1', 1, 3)).toBe(false) // a stale incarnation's late output
    expect(threads.counts()).toEqual({ running: 0, ended: 3, shown: 1 })
    threads.end('0.4')
    // Forgotten: a late notice makes it running again (its orphan check finds its record ended).
    expect(threads.hasEnded('0.1')).toBe(false)
    expect(threads.counts()).toEqual({ running: 0, ended: 3, shown: 0 })
    expect(threads.placed('0.1', 'node-c')).toBe(true)
  })

  test('output dedupe of threads neither running nor remembered as ended is kept for endedThreadsKeptMax of them', () => {
    const threads = new HomeThreads({ endedThreadsKeptMax: 2 })
    threads.placed('0.1', 'node-b')
    threads.show('0.1', 1, 1)
    for (let index = 2; index < 50; index++) threads.show(`0.${index}`, 1, 1)
    // The running thread keeps its dedupe; of the others the last two that wrote.
    expect(threads.counts()).toEqual({ running: 1, ended: 0, shown: 3 })
    expect(threads.show('0.1', 1, 1)).toBe(false)
    expect(threads.show('0.49', 1, 1)).toBe(false)
  })

  test('bad endedThreadsKeptMax is refused', () => {
    expect(() => new HomeThreads({ endedThreadsKeptMax: 0 })).toThrow(InvalidArgumentError)
    expect(() => new HomeThreads({ endedThreadsKeptMax: 1.5 })).toThrow(
      'Expected endedThreadsKeptMax to be an integer from 1 and up, got 1.5',
    )
  })

  const seeds = Array.from({ length: process.env.FABRIC_SOAK === '1' ? 200 : 20 }, (_, index) => index + 1)
  test.each(seeds)(
    "a replica that takes a whole copy at any point, then the entries after it, ends with the home's thread state (seed %i)",
    (seed) => {
      const random = seededRandom(seed)
      const pick = (count: number) => Math.floor(random.next() * count)
      const options = { endedThreadsKeptMax: 1 + pick(6) }
      const home = new HomeThreads(options)
      const replicas = new HomeCopies(options)
      const record: ProcessRecord = {
        formatVersion: recordFormatVersion,
        pid: 'p1',
        programDigest: '00',
        args: [],
        env: [],
        home: 'node-a',
        seed: 1,
        state: 'running',
        exitCode: null,
        error: null,
        saveIntervalMs: 1000,
        memoryPagesMax: 1,
        cpuBudgetMs: 1000,
      }
      const output: Array<Extract<HomeCopyEntry, { kind: 'output' }>> = []
      let pending: HomeCopyEntry[] = []
      let copied = false
      const wholeAt = pick(40)
      for (let batch = 0; batch < 60; batch++) {
        for (let step = pick(8); step > 0; step--) {
          const tid = `0.${pick(30)}`
          const choice = pick(3)
          const node = `node-${pick(3)}`
          if (choice === 0 && home.placed(tid, node)) pending.push({ kind: 'placed', tid, node })
          if (choice === 1 && home.end(tid)) pending.push({ kind: 'ended', tid })
          if (choice === 2) {
            const fd = 1 + pick(2)
            const callSequence = 1 + pick(10)
            if (home.show(tid, fd, callSequence)) {
              const entry = {
                kind: 'output' as const,
                index: output.length,
                tid,
                fd,
                callSequence,
                bytes: new Uint8Array(1),
              }
              output.push(entry)
              pending.push(entry)
            }
          }
        }
        if (batch === wholeAt) {
          // As a home builds a whole copy: the output so far, then its thread state as it is now.
          const entries: HomeCopyEntry[] = [...output, ...home.copyEntries()]
          expect(
            replicas.keep({
              pid: 'p1',
              record: encodeRecord(record),
              program: new Uint8Array(1),
              replicas: ['node-b'],
              entries,
            }),
          ).toBe(true)
          copied = true
        } else if (copied) expect(replicas.keep({ pid: 'p1', entries: pending })).toBe(true)
        pending = []
      }
      expect(
        replicas.get('p1')!.threads.copyEntries(),
        `SEED=${seed}; rerun: npx vitest run --project unit test/runtime-home-threads.test.ts -t 'seed ${seed}'`,
      ).toEqual(home.copyEntries())
    },
  )
})

describe('issue 4: a home copies where children run and that they ended a few at a time', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('24 children spawned and joined one after the other: each home replica gets far fewer copy messages than placements and ends, and a home-copy carries several', async () => {
    const childCount = 24
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c'])
      await cluster.addNode(id, { runtime: { childrenElsewhere: true } })
    const copies = new Map<string, HomeCopyEntry[][]>()
    cluster.intercept = (from, to, message) => {
      if (from === 'node-a' && message.type === 'home-copy' && message.record === undefined)
        copies.set(to, [...(copies.get(to) ?? []), message.entries])
      return undefined
    }
    const process = await cluster.runtime('node-a').submit(guestBytes('test/fixtures/as/spawn-latency.ts'), {
      args: ['spawn-latency', String(childCount), '1', '0', '0'],
    })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect([...copies.keys()].sort()).toEqual(['node-b', 'node-c'])
    for (const [replica, messages] of copies) {
      const entries = messages.flat().filter((entry) => entry.kind === 'placed' || entry.kind === 'ended')
      // One message per placement and per end would be about 2 x childCount.
      expect(messages.length, `copy messages to ${replica}`).toBeLessThan(childCount / 2)
      expect(entries.length / messages.length, `entries per copy message to ${replica}`).toBeGreaterThan(2)
    }
  }, 60_000)
})
