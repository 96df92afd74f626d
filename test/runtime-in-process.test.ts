import { afterEach, describe, expect, test } from 'vitest'
import { guestBytes } from './support/guests.ts'
import { seededRandom } from './support/run.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

async function runPi(
  cluster: InProcessCluster,
  args: string[],
  killNodes: Array<{ id: string; atMs: number }> = [],
) {
  const home = cluster.runtime('node-a')
  const process = await home.submit(guestBytes('examples/pi/pi.ts'), {
    args: ['pi', ...args],
    seed: 1,
    saveIntervalMs: 0,
  })
  let output = ''
  process.onOutput((chunk) => {
    if (chunk.fd === 1) output += new TextDecoder().decode(chunk.bytes)
  })
  let threadsOnKilledNodes = 0
  const timers = killNodes.map(({ id, atMs }) =>
    setTimeout(() => {
      threadsOnKilledNodes += cluster.runtime(id).runningCount()
      cluster.kill(id)
    }, atMs),
  )
  const result = await process.result
  for (const timer of timers) clearTimeout(timer)
  return { output, result, threadsOnKilledNodes }
}

describe('process runtime, in process', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('a multi-thread program runs across nodes and gives the output of a local run', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const started = performance.now()
    const { output, result } = await runPi(cluster, ['12', '200000'])
    expect(result).toEqual({ exitCode: 0, error: null })
    expect(output).toContain('thread 11: ')
    expect(output).toMatch(/pi is about 3\.1/)
    console.log(`runtime: 12 threads in ${(performance.now() - started).toFixed(0)} ms`)
  }, 60_000)

  test('killing nodes that run threads leaves the output of an undisturbed run', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c', 'node-d']) await cluster.addNode(id)
    const reference = await runPi(cluster, ['10', '3000000'])
    cluster.close()
    let threadsOnKilledNodes = 0
    for (const seed of [1, 2, 3]) {
      cluster = new InProcessCluster()
      for (const id of ['node-a', 'node-b', 'node-c', 'node-d']) await cluster.addNode(id)
      const random = seededRandom(seed)
      const victims = ['node-b', 'node-c', 'node-d'].sort(() => random() - 0.5).slice(0, 2)
      const kills = victims.map((id) => ({ id, atMs: 100 + random() * 600 }))
      const run = await runPi(cluster, ['10', '3000000'], kills)
      expect(run.result, `SEED=${seed}`).toEqual({ exitCode: 0, error: null })
      expect(run.output, `SEED=${seed}`).toBe(reference.output)
      threadsOnKilledNodes += run.threadsOnKilledNodes
      cluster.close()
    }
    // The kills hit nodes that were running threads, so threads really moved.
    expect(threadsOnKilledNodes).toBeGreaterThan(0)
  }, 120_000)
})

describe('process runtime, nodes coming and going', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  async function runWaves(onStart: (cluster: InProcessCluster) => void) {
    const home = cluster.runtime('node-a')
    const process = await home.submit(guestBytes('test/fixtures/as/waves.ts'), {
      // Threads of 100 blocks (5 times the default): one still runs when the leaver's hand-over comes,
      // on a loaded machine too (with 20, a thread ended first in one run of the whole suite).
      args: ['waves', '6', '4', '100'],
      seed: 1,
      saveIntervalMs: 0,
    })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    onStart(cluster)
    return { output: await process.result.then(() => output), result: await process.result }
  }

  test('a node that joins mid-run receives threads; a node that leaves hands its threads over with no lost work', async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    const reference = await runWaves(() => {})
    expect(reference.result).toEqual({ exitCode: 0, error: null })
    expect(reference.output.split('\n')).toHaveLength(7)
    cluster.close()

    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c']) await cluster.addNode(id)
    let joinerRan = 0
    let leaverHad = 0
    const run = await runWaves((running) => {
      setTimeout(async () => {
        const joiner = await running.addNode('node-d')
        const watch = setInterval(() => {
          joinerRan = Math.max(joinerRan, joiner.runningCount())
        }, 5)
        setTimeout(() => clearInterval(watch), 5000)
      }, 200)
      // node-b leaves at a moment when it runs threads.
      const watchLeaver = setInterval(() => {
        const count = running.runtime('node-b').runningCount()
        if (count === 0) return
        clearInterval(watchLeaver)
        leaverHad = count
        void running.leave('node-b')
      }, 5)
    })
    expect(run.result).toEqual({ exitCode: 0, error: null })
    expect(run.output).toBe(reference.output)
    expect(joinerRan).toBeGreaterThan(0)
    const handed = cluster.logs.filter((line) => line.includes('handed thread')).length
    console.log(
      `runtime: the joiner ran up to ${joinerRan} threads; the leaver had ${leaverHad}, handed ${handed} over`,
    )
    expect(leaverHad).toBeGreaterThan(0)
    expect(handed).toBeGreaterThan(0)
  }, 120_000)
})
