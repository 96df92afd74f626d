/**
 * What a home keeps of the processes that ended on it: the latest ones (their output for `attach`,
 * their state for `ps`), within `keptEndedProcessesMax` processes and `keptEndedOutputBytesMax`
 * bytes of output; older ones are dropped, so a long-lived home does not grow with every process.
 * Nor does the store: the records of an ended process's threads are forgotten after a while.
 */
import { afterEach, describe, expect, test } from 'vitest'
import type { RuntimeReply } from '../fabric/runtime/messages.ts'
import type { NodeRuntimeOptions } from '../fabric/runtime/node-runtime.ts'
import { childThreadId, decodeProcess, decodeThread, keys } from '../fabric/runtime/records.ts'
import { ThreadRecords } from '../fabric/runtime/thread-records.ts'
import { guestBytes } from './support/guests.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

const program = guestBytes('test/fixtures/as/tiny-threads.ts')

describe('ended processes a home keeps', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  async function runProcesses(runtime: NodeRuntimeOptions, count: number): Promise<string[]> {
    cluster = new InProcessCluster()
    const home = await cluster.addNode('node-a', { runtime })
    const pids: string[] = []
    for (let index = 0; index < count; index++) {
      const process = await home.submit(program, { args: ['tiny-threads', '0'], seed: 1 })
      expect(await process.result).toEqual({ exitCode: 0, error: null })
      pids.push(process.pid)
    }
    return pids
  }

  function attach(pid: string): Promise<RuntimeReply> {
    return cluster.send('node-a', 'node-a', { type: 'attach', pid, from: 0, waitMs: 0 })
  }

  function outputOf(reply: RuntimeReply): string {
    if (reply.type !== 'output') throw new Error(`expected output, got ${JSON.stringify(reply)}`)
    return reply.chunks.map((chunk) => new TextDecoder().decode(chunk.bytes)).join('')
  }

  test('past keptEndedProcessesMax the oldest ended process is dropped: its attach is refused as ended, the kept ones give their output and result', async () => {
    const pids = await runProcesses({ keptEndedProcessesMax: 2 }, 3)
    const [oldest, ...kept] = pids as [string, string, string]
    const refused = await attach(oldest)
    expect(refused.type).toBe('refused')
    expect(refused.type === 'refused' && refused.reason).toContain(
      `process ${oldest} has ended (done, exit code 0)`,
    )
    expect(refused.type === 'refused' && refused.reason).toContain('no longer keeps its output')
    for (const pid of kept) {
      const reply = await attach(pid)
      expect(outputOf(reply)).toBe('joined 0\n')
      expect(reply.type === 'output' && reply.result).toEqual({ exitCode: 0, error: null })
    }
    const listed = (await cluster.runtime('node-a').listProcesses()).map((summary) => summary.pid)
    expect(listed.sort()).toEqual([...kept].sort())
  }, 60_000)

  test('past keptEndedOutputBytesMax the oldest ended processes are dropped, never the latest', async () => {
    const pids = await runProcesses({ keptEndedOutputBytesMax: 1 }, 3)
    for (const pid of pids.slice(0, -1)) expect((await attach(pid)).type).toBe('refused')
    expect(outputOf(await attach(pids.at(-1)!))).toBe('joined 0\n')
  }, 60_000)

  test("processKeysForgetDelayMs after a process ends, the store forgets its threads' records; its process record stays", async () => {
    cluster = new InProcessCluster()
    const home = await cluster.addNode('node-a', { runtime: { processKeysForgetDelayMs: 1000 } })
    const process = await home.submit(program, { args: ['tiny-threads', '3'], seed: 1 })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    const records = new ThreadRecords(cluster.store)
    // At its end the records are there: its main thread's and its 3 children's, done.
    const tids = ['0', ...Array.from({ length: 40 }, (_, callSequence) => childThreadId('0', callSequence))]
    const kept = async () => {
      const found: string[] = []
      for (const tid of tids) {
        const read = await records.get(process.pid, tid)
        if (read.value !== null && decodeThread(read.value).state === 'done') found.push(tid)
      }
      return found
    }
    expect((await kept()).length).toBe(4)
    const deadline = Date.now() + 5000
    while ((await kept()).length > 0 && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 50))
    expect(await kept()).toEqual([])
    const processRecord = await cluster.store.get(keys.process(process.pid))
    expect(processRecord.value === null ? null : decodeProcess(processRecord.value).state).toBe('done')
  }, 60_000)

  test('within both limits every ended process is kept', async () => {
    const pids = await runProcesses({}, 3)
    for (const pid of pids) expect(outputOf(await attach(pid))).toBe('joined 0\n')
    expect((await cluster.runtime('node-a').listProcesses()).length).toBe(3)
  }, 60_000)
})
