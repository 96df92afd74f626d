// Issue 4: a home keeps at most outputChunksKeptMax output calls of a process, whatever their size:
// a whole copy to a new home replica carries them all in one message, which may hold at most
// homeCopyEntriesMax entries. Output past the bound is shown live, but not kept for a reconnect.
import { afterEach, describe, expect, test } from 'vitest'
import { outputChunksKeptMaxDefault } from '../fabric/runtime/home-duties.ts'
import { endedThreadsKeptMaxDefault } from '../fabric/runtime/home-threads.ts'
import { homeCopyEntriesMax } from '../fabric/runtime/message-validation.ts'
import { guestBytes } from './support/guests.ts'
import { collectOutput, InProcessCluster } from './support/runtime-cluster.ts'

const threadCount = 40
const outputChunksKeptMax = 15

describe('output kept by a home', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('a whole home copy fits its message: the chunks kept, and the thread state a home remembers, stay within homeCopyEntriesMax', () => {
    // Ended threads, their output dedupe and as many stray dedupe entries (home-threads.ts); the rest
    // of the room is for the running threads' placements and dedupe.
    expect(outputChunksKeptMaxDefault + 3 * endedThreadsKeptMaxDefault).toBeLessThan(homeCopyEntriesMax)
  })

  test(`a process of ${threadCount + 1} output calls with outputChunksKeptMax ${outputChunksKeptMax}: all are shown live, the first ${outputChunksKeptMax} are kept for a reconnect`, async () => {
    cluster = new InProcessCluster()
    for (const id of ['node-a', 'node-b', 'node-c'])
      await cluster.addNode(id, { runtime: { outputChunksKeptMax } })
    const process = await cluster.runtime('node-a').submit(guestBytes('test/fixtures/as/print-threads.ts'), {
      args: ['print-threads', String(threadCount)],
      seed: 1,
    })
    const printed = collectOutput(process)
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    const lines = Array.from({ length: threadCount }, (_, index) => `thread ${index}\n`)
    expect(printed.text).toBe(`${lines.join('')}joined ${threadCount}\n`)
    // A submitter that attaches now gets what the home kept.
    const reply = await cluster.send('node-b', 'node-a', {
      type: 'attach',
      pid: process.pid,
      from: 0,
      waitMs: 0,
    })
    if (reply.type !== 'output') throw new Error(`attach answered ${JSON.stringify(reply)}`)
    expect(reply.chunks).toHaveLength(outputChunksKeptMax)
    const kept = new TextDecoder().decode(Buffer.concat(reply.chunks.map((chunk) => chunk.bytes)))
    expect(kept).toBe(lines.slice(0, outputChunksKeptMax).join(''))
  }, 60_000)
})
