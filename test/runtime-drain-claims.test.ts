// Issue 4: a node that leaves cleanly hands all its threads over, also one whose claim was under
// way when it was told to leave (its record written a moment later). Such a thread used to start
// on the leaving node after the drain had taken its list, and go down with it (the home then
// restarted it from its start: lost work).
import { afterEach, describe, expect, test } from 'vitest'
import { decodeThread } from '../fabric/runtime/records.ts'
import type { Register } from '../fabric/runtime/services.ts'
import { ThreadRecords } from '../fabric/runtime/thread-records.ts'
import { guestBytes } from './support/guests.ts'
import { collectOutput, InProcessCluster } from './support/runtime-cluster.ts'

/** One wave of two threads that compute long enough (blocks, a checkpoint after each) to be running when the drain asks for their saves. */
const wavesArgs = ['waves', '1', '2', '200']

describe('a clean leave while claims are under way', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('a thread whose claim completes during the drain is handed over, not left to start on the leaving node', async () => {
    cluster = new InProcessCluster()
    // The home (node-a) runs no thread of its own (weight ~0).
    await cluster.addNode('node-a', { speedScore: 1e-9 })
    for (const id of ['node-b', 'node-c']) await cluster.addNode(id)
    let pid = ''
    // The first child's claim (the write that creates its record) is held until the drain began.
    let held: { node: string; tid: string; release: () => void } | undefined
    const entryCas = cluster.store.entryCas.bind(cluster.store)
    cluster.store.entryCas = (key, entry, expectedVersion, value) => {
      const record = value === null ? null : decodeThread(value)
      const childClaim =
        pid !== '' && key.startsWith(`threads/${pid}/0/`) && expectedVersion === 0 && record !== null
      if (!childClaim || held !== undefined) return entryCas(key, entry, expectedVersion, value)
      return new Promise<Register>((resolve, reject) => {
        held = {
          node: record.node,
          tid: record.tid,
          release: () => void entryCas(key, entry, expectedVersion, value).then(resolve, reject),
        }
      })
    }
    const program = guestBytes('test/fixtures/as/waves.ts')
    const process = await cluster.runtime('node-a').submit(program, { args: wavesArgs, seed: 1 })
    pid = process.pid
    const printed = collectOutput(process)
    for (let waitedMs = 0; held === undefined && waitedMs < 30_000; waitedMs += 10)
      await new Promise((resolve) => setTimeout(resolve, 10))
    expect(held).toBeDefined()
    const { node: leaver, tid } = held!
    // The leave begins (new claims are refused from here), then the claim under way completes.
    const left = cluster.leave(leaver)
    await new Promise((resolve) => setTimeout(resolve, 50))
    held!.release()
    await left

    expect(await process.result).toEqual({ exitCode: 0, error: null })
    // The same output as a run nobody disturbed.
    const undisturbed = await cluster.runtime('node-a').submit(program, { args: wavesArgs, seed: 1 })
    const reference = collectOutput(undisturbed)
    expect(await undisturbed.result).toEqual({ exitCode: 0, error: null })
    expect(printed.text).toBe(reference.text)
    expect(cluster.logs.some((line) => line.startsWith(`${leaver}: runtime: handed thread ${tid} `))).toBe(
      true,
    )
    // It ran to its end on another node, in the incarnation the hand-over started.
    const read = await new ThreadRecords(cluster.store).get(pid, tid)
    const record = decodeThread(read.value!)
    expect(record.node).not.toBe(leaver)
    expect(record.state).toBe('done')
  }, 60_000)
})
