// Guest coordination on 5 real node processes: the examples run while random nodes (never the
// submitter's) are SIGKILLed, and their results must be exact; a dead holder's lock comes free;
// bad calls get clear errors while the nodes go on serving.
//
// Seeds: FABRIC_PRIMITIVES_SEEDS=n (default 2; 20 under FABRIC_SOAK=1, as issue 5 asks).
import { afterEach, describe, expect, test } from 'vitest'
import { type LocalCluster, startLocalCluster } from '../fabric/cli/local-cluster.ts'
import { listProcesses, runOnCluster } from '../fabric/runtime/submit-client.ts'
import { guestBytes } from './support/guests.ts'
import { seededRandom } from './support/run.ts'

const seedCount = Number(process.env.FABRIC_PRIMITIVES_SEEDS ?? (process.env.FABRIC_SOAK ? 20 : 2))
const soak = process.env.FABRIC_SOAK !== undefined

interface Example {
  name: string
  source: string
  args: string[]
  /** Lines the output must contain, whatever was killed. */
  expected: string[]
}

const examples: Example[] = [
  {
    name: 'producer-consumer',
    source: 'examples/producer-consumer/producer-consumer.ts',
    args: ['producer-consumer', '4', '4', soak ? '200' : '60', '16'],
    expected: ['missing: 0, consumed more than once: 0, not produced: 0', 'every item consumed exactly once'],
  },
  {
    name: 'bank',
    source: 'examples/bank/bank.ts',
    args: ['bank', '8', '8', soak ? '40' : '12'],
    expected: ['the books balance'],
  },
  {
    name: 'matmul-barrier',
    source: 'examples/matmul-barrier/matmul-barrier.ts',
    args: ['matmul-barrier', '32', soak ? '20' : '8', '4'],
    expected: ['the product is exact'],
  },
  {
    name: 'counter',
    source: 'examples/counter/counter.c',
    // The figure (10,000 increments by 50 threads) under FABRIC_SOAK; fewer by default.
    args: ['counter', '50', soak ? '10000' : '1000', 'add'],
    expected: [soak ? 'counter: 10000 (expected 10000)' : 'counter: 1000 (expected 1000)'],
  },
]

async function run(cluster: LocalCluster, source: string, args: string[], onLine?: (line: string) => void) {
  let output = ''
  let errors = ''
  const result = await runOnCluster({
    node: cluster.nodes[0]!.address,
    program: guestBytes(source),
    args,
    onOutput: (chunk) => {
      const text = new TextDecoder().decode(chunk.bytes)
      if (chunk.fd === 1) output += text
      else errors += text
      for (const line of text.split('\n')) if (line !== '') onLine?.(line)
    },
  })
  return { output, errors, result }
}

describe('guest coordination on real node processes', () => {
  let cluster: LocalCluster | undefined
  afterEach(async () => {
    await cluster?.stop()
    cluster = undefined
  })

  for (const example of examples) {
    test(`${example.name}: exact with random nodes SIGKILLed mid-run (${seedCount} seeds)`, async () => {
      cluster = await startLocalCluster({ nodeCount: 5 })
      const started = performance.now()
      const reference = await run(cluster, example.source, example.args)
      const referenceMs = performance.now() - started
      expect(reference.result, `undisturbed run:\n${reference.output}${reference.errors}`).toEqual({
        exitCode: 0,
        error: null,
      })
      for (const line of example.expected) expect(reference.output).toContain(line)
      await cluster.stop()
      for (let seed = 1; seed <= seedCount; seed++) {
        const random = seededRandom(seed * 7 + example.name.length)
        const seedStarted = performance.now()
        cluster = await startLocalCluster({ nodeCount: 5 })
        // One or two nodes other than the submitter's (node 0), each at a random moment of the run.
        const victims = [1, 2, 3, 4].sort(() => random() - 0.5).slice(0, 1 + Math.floor(random() * 2))
        const timers = victims.map((index) =>
          setTimeout(() => cluster!.kill(index), (0.1 + random() * 0.6) * referenceMs),
        )
        const disturbed = await run(cluster, example.source, example.args)
        for (const timer of timers) clearTimeout(timer)
        const where = `SEED=${seed} (killed nodes ${victims.join(', ')}); output:\n${disturbed.output}${disturbed.errors}\nrerun: FABRIC_PRIMITIVES_SEEDS=${seed} npx vitest run --project processes test/primitives-processes.test.ts -t ${example.name}`
        expect(disturbed.result, where).toEqual({ exitCode: 0, error: null })
        for (const line of example.expected) expect(disturbed.output, where).toContain(line)
        // The output depends only on the arguments.
        expect(disturbed.output, where).toBe(reference.output)
        await cluster.stop()
        cluster = undefined
        // Under the soak, each seed's time is worth seeing (issue 5 asks for 20 seeds of each).
        if (soak)
          console.log(
            `${example.name} SEED=${seed}: passed in ${((performance.now() - seedStarted) / 1000).toFixed(1)} s`,
          )
      }
    }, 1_800_000)
  }

  test('a SIGKILLed holder’s lock is free again within TTL + 1 s', async () => {
    cluster = await startLocalCluster({ nodeCount: 5 })
    const ttlMs = 500
    // Placement is random: run again until the holder runs apart from main and the home.
    let measured = false
    for (let attempt = 0; attempt < 6 && !measured; attempt++) {
      let killedAt = 0
      let tookAt = 0
      const { result } = await run(
        cluster,
        'test/fixtures/as/sync-workout.ts',
        ['w', 'deadholder', `${ttlMs}`, '15000'],
        (line) => {
          if (line.startsWith('holder ready')) {
            void findHolder().then((index) => {
              if (index === null) return
              killedAt = performance.now()
              cluster!.kill(index)
            })
          }
          if (line === 'took the lock') tookAt = performance.now()
        },
      )
      expect(result).toEqual({ exitCode: 0, error: null })
      expect(tookAt).toBeGreaterThan(0)
      if (killedAt === 0) continue
      expect(tookAt - killedAt).toBeLessThan(ttlMs + 1000)
      measured = true
    }
    expect(measured, 'the holder never ran apart from main and the home in 6 runs').toBe(true)

    /** The node that runs the holder thread, if it is neither the home (node 0) nor main's. */
    async function findHolder(): Promise<number | null> {
      const processes = await listProcesses({ node: cluster!.nodes[0]!.address })
      for (const entry of processes) {
        if (entry.home === '') continue
        // The holder is main's last child (its spinners come first).
        const children = entry.threads.filter((thread) => thread.tid !== '0')
        const holder = children.sort((a, b) => childIndex(b.tid) - childIndex(a.tid))[0]
        const main = entry.threads.find((thread) => thread.tid === '0')
        if (holder === undefined || holder.node === main?.node) continue
        const index = cluster!.nodes.findIndex((node) => node.peerId === holder.node)
        if (index > 0) return index
      }
      return null
    }

    function childIndex(tid: string): number {
      return Number(tid.split('.').at(-1))
    }
  }, 120_000)

  test('bad calls give the guest clear errors and every node goes on serving', async () => {
    cluster = await startLocalCluster({ nodeCount: 5 })
    const { output, result } = await run(cluster, 'test/fixtures/as/sync-workout.ts', ['w', 'misuse'])
    expect(result).toEqual({ exitCode: 0, error: null })
    expect(output).toBe(
      [
        'release by non-holder: -4',
        'ttl 0: -1',
        'ttl absurd: -1',
        'value over the limit: -2',
        'close: 0',
        'pop on a closed queue: -7',
        'garbage: -1',
        'add after misuse: 1',
        '',
      ].join('\n'),
    )
    expect(cluster.nodes.every((node) => node.alive && node.process.exitCode === null)).toBe(true)
    const again = await run(cluster, 'test/fixtures/as/sync-workout.ts', ['w', 'counter', '4', '10'])
    expect(again.output).toContain('counter 40\n')
  }, 120_000)
})
