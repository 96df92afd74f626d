// Issue 4 in process: what one thread start costs in the store, clock readings replayed on another
// node after a crash, and what `fabric ps` shows.
import { afterEach, describe, expect, test } from 'vitest'
import { guestBytes } from './support/guests.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

// Issue 4: clock readings travel with the saves, so a thread restored on another node replays them.
describe('replay log across nodes', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test("a thread restored on another node reads the clock values it read before its node died; ps shows each thread's node, epoch and last save", async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c', 'node-d']) await cluster.addNode(id)
    const home = cluster.runtime('node-a')
    const process = await home.submit(guestBytes('test/fixtures/as/clock-replay.ts'), {
      args: ['clock-replay', '6', '150000000'],
      seed: 1,
      // Saves only at checkpoint(): the readings after it live in the replay log alone.
      saveIntervalMs: 600_000,
    })
    let output = ''
    let killed = ''
    let movedThreads = 0
    let listed: Awaited<ReturnType<typeof home.listProcesses>> = []
    let listing = false
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
      if (listing || (output.match(/ saw /g) ?? []).length < 6) return
      // Every reader has saved once, read the clock and shown it: list them as `fabric ps` does,
      // then kill a node (not the home) that runs some.
      listing = true
      void home.listProcesses().then((processes) => {
        listed = processes
        const victim = ['node-b', 'node-c', 'node-d'].find((id) => cluster.runtime(id).runningCount() > 0)
        if (victim === undefined) return
        killed = victim
        movedThreads = cluster.runtime(victim).runningCount()
        cluster.kill(victim)
      })
    })
    const result = await process.result
    expect(result).toEqual({ exitCode: 0, error: null })
    // `fabric ps` as the home answered it when every reader had saved once and read the clock.
    const readers =
      listed.find((entry) => entry.pid === process.pid)?.threads.filter((t) => t.tid !== '0') ?? []
    expect(readers.length).toBeGreaterThan(0)
    for (const thread of readers) {
      expect(cluster.ids()).toContain(thread.node)
      expect(thread.state).toBe('running')
      expect(thread.epoch).toBe(1)
      expect(thread.lastSave?.sequence).toBeGreaterThanOrEqual(1)
      expect(thread.lastSave?.bytes).toBeGreaterThan(0)
      expect(thread.lastSave?.ageMs).toBeGreaterThanOrEqual(0)
    }
    expect(killed).not.toBe('')
    expect(movedThreads).toBeGreaterThan(0)
    expect(cluster.logs.some((line) => line.includes('resuming thread'))).toBe(true)
    for (let index = 0; index < 6; index++) {
      const first = output.match(new RegExp(`r${index} saw (\\S+)`))?.[1]
      const again = output.match(new RegExp(`r${index} still saw (\\S+)`))?.[1]
      expect(first, `thread r${index}`).toBeDefined()
      expect(again, `thread r${index} after ${killed} was killed`).toBe(first)
    }
  }, 120_000)
})

// Issue 4: a thread start costs one store write (its record, created with the claim of the node
// that runs it) and its end one more.
describe('thread start', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('each tiny thread costs two compare-and-swaps of its record: created with its claim, then ended', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const casByThread = new Map<string, number>()
    const entryCas = cluster.store.entryCas.bind(cluster.store)
    cluster.store.entryCas = (key, entry, expectedVersion, value) => {
      casByThread.set(`${key} ${entry}`, (casByThread.get(`${key} ${entry}`) ?? 0) + 1)
      return entryCas(key, entry, expectedVersion, value)
    }
    const process = await cluster.runtime('node-a').submit(guestBytes('test/fixtures/as/spawn-latency.ts'), {
      args: ['spawn-latency', '12', '6'],
      seed: 1,
    })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(output).toContain('batch-ms ')
    // The children's records are entries of the registers of main's spawns (thread-records.ts).
    const children = [...casByThread].filter(([name]) => name.startsWith(`threads/${process.pid}/0/`))
    expect(children).toHaveLength(24)
    for (const [name, count] of children) expect(count, name).toBe(2)
  }, 120_000)

  test('the home has every other node load a new program at submit, so no first start there waits for it', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const fetchedBy = new Set<string>()
    cluster.intercept = (from, _to, message) => {
      if (message.type === 'fetch-program') fetchedBy.add(from)
      return undefined
    }
    // A main thread that spawns nothing: at most one other node runs a thread, yet both load it.
    const process = await cluster
      .runtime('node-a')
      .submit(guestBytes('test/fixtures/as/spawn-then-save.ts'), {
        args: ['spawn-then-save', '0'],
        seed: 1,
      })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    for (let waitedMs = 0; fetchedBy.size < 2 && waitedMs < 5000; waitedMs += 10)
      await new Promise((resolve) => setTimeout(resolve, 10))
    expect([...fetchedBy].sort()).toEqual(['node-b', 'node-c'])
  }, 60_000)
})
