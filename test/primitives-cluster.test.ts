// Guest coordination on in-process node runtimes (shared in-memory store, direct messages):
// real guests, real workers, nodes killed as by SIGKILL while threads use shared state.
import { spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, test } from 'vitest'
import { decodeThread } from '../fabric/runtime/records.ts'
import { ThreadRecords } from '../fabric/runtime/thread-records.ts'
import { guestBytes, repositoryRoot } from './support/guests.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

const workout = 'test/fixtures/as/sync-workout.ts'

async function run(
  cluster: InProcessCluster,
  args: string[],
  options: { killAtMs?: number[]; onLine?: (line: string) => void } = {},
) {
  const home = cluster.runtime('node-a')
  const process = await home.submit(guestBytes(workout), { args: ['sync-workout', ...args], seed: 7 })
  let output = ''
  process.onOutput((chunk) => {
    const text = new TextDecoder().decode(chunk.bytes)
    if (chunk.fd === 1) output += text
    for (const line of text.split('\n')) if (line !== '') options.onLine?.(line)
  })
  const killed: string[] = []
  const timers = (options.killAtMs ?? []).map((atMs) =>
    setTimeout(() => {
      // Never the submitter's node (the home keeps the output).
      const victim = cluster
        .liveIds()
        .filter((id) => id !== 'node-a')
        .sort(
          (left, right) => cluster.runtime(right).runningCount() - cluster.runtime(left).runningCount(),
        )[0]
      if (victim !== undefined) {
        killed.push(victim)
        cluster.kill(victim)
      }
    }, atMs),
  )
  const result = await process.result
  for (const timer of timers) clearTimeout(timer)
  return { output, result, killed }
}

describe('guest coordination on in-process nodes', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  async function nodes(count: number) {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c', 'node-d', 'node-e'].slice(0, count))
      await cluster.addNode(id)
  }

  test('a counter added to 500 times by 10 threads ends at 500 although a node is killed', async () => {
    await nodes(4)
    const { output, result, killed } = await run(cluster, ['counter', '10', '50'], { killAtMs: [400] })
    expect(result).toEqual({ exitCode: 0, error: null })
    expect(output).toContain('counter 500\n')
    expect(killed).toHaveLength(1)
  }, 60_000)

  test('every queue item is consumed exactly once, a node killed mid-run', async () => {
    await nodes(4)
    const items = 300
    const { output, result } = await run(cluster, ['queue', '2', '3', `${items}`], { killAtMs: [300] })
    expect(result).toEqual({ exitCode: 0, error: null })
    const sum = (items * (items - 1)) / 2
    const squares = ((items - 1) * items * (2 * items - 1)) / 6
    expect(output).toContain(`consumed ${items} sum ${sum} squares ${squares}\n`)
  }, 60_000)

  test('bank transfers under locks keep the total and are each applied once', async () => {
    await nodes(4)
    const { output, result } = await run(cluster, ['bank', '4', '15'], { killAtMs: [500] })
    expect(result).toEqual({ exitCode: 0, error: null })
    expect(output).toContain('total 4000 transfers 60\n')
  }, 60_000)

  test('a barrier of 4 threads over 5 rounds holds every round', async () => {
    await nodes(3)
    const { output, result } = await run(cluster, ['barrier', '4', '5'])
    expect(result).toEqual({ exitCode: 0, error: null })
    expect(output).toContain('barrier bad rounds 0\n')
  }, 60_000)

  test('a dead holder’s lock is free again within TTL + 1 s', async () => {
    const childIndex = (tid: string) => Number(tid.split('.').at(-1))
    await nodes(4)
    const ttlMs = 500
    // Placement is random: run again until the holder lands on a node other than main's and the home's.
    for (let attempt = 0; attempt < 8; attempt++) {
      let killedAt = 0
      let tookAt = 0
      const { result } = await run(cluster, ['deadholder', `${ttlMs}`, '1500'], {
        onLine: (line) => {
          if (line.startsWith('holder ready')) {
            // The holder is main's last child (its spinners come first).
            const children = cluster
              .liveIds()
              .flatMap((id) =>
                cluster
                  .runtime(id)
                  .localThreads()
                  .map((thread) => ({ id, tid: thread.tid })),
              )
              .filter((thread) => thread.tid !== '0')
              .sort((a, b) => childIndex(b.tid) - childIndex(a.tid))
            const holderNode = children[0]?.id
            const mainNode = cluster.liveIds().find((id) =>
              cluster
                .runtime(id)
                .localThreads()
                .some((thread) => thread.tid === '0'),
            )
            if (holderNode !== undefined && holderNode !== mainNode && holderNode !== 'node-a') {
              killedAt = performance.now()
              cluster.kill(holderNode)
            }
          }
          if (line === 'took the lock') tookAt = performance.now()
        },
      })
      expect(result).toEqual({ exitCode: 0, error: null })
      expect(tookAt).toBeGreaterThan(0)
      if (killedAt === 0) continue
      expect(tookAt - killedAt).toBeLessThan(ttlMs + 1000)
      return
    }
    throw new Error('the holder never ran apart from main in 8 runs')
  }, 90_000)

  test('group records the context group in the thread record, and spawned children inherit it', async () => {
    await nodes(3)
    const home = cluster.runtime('node-a')
    const process = await home.submit(guestBytes(workout), { args: ['sync-workout', 'group'], seed: 7 })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    // Children are named by the spawn's call number: look through the first few.
    const groups: Array<string | undefined> = []
    for (const tid of ['0', ...Array.from({ length: 60 }, (_, index) => `0.${index}`)]) {
      const read = await new ThreadRecords(cluster.store).get(process.pid, tid)
      if (read.value !== null) groups.push(decodeThread(read.value).group)
    }
    expect(groups).toEqual(['team', 'team', 'team', 'team'])
  }, 60_000)

  test('bad calls give the guest clear errors and the node goes on serving', async () => {
    await nodes(2)
    const { output, result } = await run(cluster, ['misuse'])
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
  }, 60_000)
})

describe('guest coordination with fabric run --local', () => {
  test('the same programs run in one process over an in-memory store', () => {
    const program = join(mkdtempSync(join(tmpdir(), 'fabric-sync-')), 'workout.wasm')
    writeFileSync(program, guestBytes(workout))
    const cli = join(repositoryRoot, 'fabric/cli/bin.js')
    const run = (args: string[]) =>
      spawnSync(process.execPath, [cli, 'run', '--local', program, '--', ...args], {
        encoding: 'utf8',
        timeout: 60_000,
      })
    const counter = run(['counter', '8', '50'])
    expect([counter.status, counter.stdout]).toEqual([0, 'counter 400\n'])
    const queue = run(['queue', '2', '2', '100'])
    expect([queue.status, queue.stdout]).toEqual([0, 'consumed 100 sum 4950 squares 328350\n'])
  }, 90_000)
})
