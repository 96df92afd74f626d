/**
 * Spawns and joins a thread's worker answers itself (host/worker/thread-runtime.ts): a spawn goes to
 * the embedding one way and returns its handle at once, a join of a child whose outcome the
 * embedding pushed returns without a host call. Here a real worker runs the guest and a small
 * embedding plays the host, so the test sees which calls reach it: the answers must be the ones the
 * host gives, the worker must stop answering spawns itself past its limit, and a thread restored
 * from a save must name the same children and join them right.
 */

import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { decodeSpawnPayload, JoinError, SpawnError } from '../host/abi.ts'
import { GuestCallError } from '../host/errors.ts'
import { loadProgram, type Program } from '../host/program.ts'
import type { EncodedSave } from '../host/snapshot.ts'
import { type ChildOutcome, type HostCall, type HostCallReply, ThreadRunner } from '../host/thread-runner.ts'
import { nodeWorkerFactory } from '../host/worker-node.ts'
import { WorkerPool } from '../host/worker-pool.ts'
import { guestBytes } from './support/guests.ts'
import { mainThreadStart } from './support/run.ts'

/** The outcome of the child spawned with `arg` (its index): some fail, one is empty, some exceed 256 bytes. */
function outcomeFor(arg: string): ChildOutcome {
  const index = Number(arg)
  if (index % 4 === 3) return { failed: true, result: null }
  if (index === 1) return { failed: false, result: new Uint8Array(0) }
  return { failed: false, result: new TextEncoder().encode(`${index}:${'x'.repeat(index * 90)}`) }
}

/** What the guest prints for its joins, from the outcomes above. */
function expectedJoins(count: number): string {
  let text = ''
  for (let index = 0; index < count; index++) {
    const outcome = outcomeFor(String(index))
    if (outcome.failed) text += `join ${index} ${JoinError.threadFailed} \n`
    else text += `join ${index} ${outcome.result!.length} ${new TextDecoder().decode(outcome.result!)}\n`
  }
  return text
}

interface RunOptions {
  args: string[]
  /** Push every child's outcome to the worker when the first join reaches the host. */
  push: boolean
  spawnsAheadMax: number
  /** Hold the acknowledgements of one-way spawns until a spawn comes as a host call. */
  holdAcknowledgements?: boolean
  restore?: EncodedSave[]
  /** Children an earlier incarnation spawned, by handle: their arguments. */
  children?: Map<number, string>
}

interface Run {
  stdout: string
  error: Error | null
  /** Each spawn in order: answered by the worker ('way') or a host call ('call'), with its handle. */
  spawns: Array<{ kind: 'way' | 'call'; callSequence: number; entry: string; unacknowledged: number }>
  /** The children spawned, by handle: their arguments. */
  children: Map<number, string>
  hostJoins: number
  saves: EncodedSave[]
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

function runGuest(pool: WorkerPool, program: Program, options: RunOptions): Promise<Run> {
  const children = new Map(options.children)
  const run: Run = { stdout: '', error: null, spawns: [], children, hostJoins: 0, saves: [] }
  const decoder = new TextDecoder()
  const held: Array<() => void> = []
  let pushed = false
  const last = options.restore?.at(-1)?.summary
  const runner: ThreadRunner = new ThreadRunner(
    pool,
    {
      ...mainThreadStart(program, 'worker-joins', options.args),
      restore: options.restore?.map((save) => save.bytes) ?? null,
      nextSaveSequence: (last?.sequence ?? 0) + 1,
      spawnsAheadMax: options.spawnsAheadMax,
    },
    {
      output: (fd, bytes) => {
        if (fd === 1) run.stdout += decoder.decode(bytes)
      },
      spawn: (callSequence, payload) => {
        const spawn = decodeSpawnPayload(payload)!
        run.spawns.push({ kind: 'way', callSequence, entry: spawn.entry, unacknowledged: held.length })
        children.set(callSequence, decoder.decode(spawn.arg))
        if (!options.holdAcknowledgements) return Promise.resolve()
        return new Promise<void>((resolve) => held.push(resolve))
      },
      call: async (call: HostCall): Promise<HostCallReply> => {
        if (call.name === 'spawn') {
          const spawn = decodeSpawnPayload(call.payload)!
          run.spawns.push({
            kind: 'call',
            callSequence: call.callSequence,
            entry: spawn.entry,
            unacknowledged: held.length,
          })
          if (spawn.entry !== 'echo') return { result: SpawnError.noSuchEntry }
          children.set(call.callSequence, decoder.decode(spawn.arg))
          // The acknowledgements reach the worker before this reply (one port, in order).
          for (const acknowledge of held.splice(0)) acknowledge()
          await sleep(5)
          return { result: call.callSequence }
        }
        if (call.name === 'join') {
          run.hostJoins++
          if (options.push && !pushed) {
            pushed = true
            for (const [handle, arg] of children) runner.childEnded(handle, outcomeFor(arg))
            // The outcomes travel before this reply.
            await sleep(5)
          }
          const arg = children.get(call.args[0]!)
          if (arg === undefined) return { result: JoinError.noSuchThread }
          const outcome = outcomeFor(arg)
          if (outcome.failed) return { result: JoinError.threadFailed }
          return { result: outcome.result!.length, payload: outcome.result }
        }
        throw new Error(`unexpected host call ${call.module}.${call.name}`)
      },
      save: (save) => run.saves.push(save),
      log: () => {},
    },
  )
  return runner.done.then((outcome) => {
    run.error = outcome.kind === 'error' ? outcome.error : null
    return run
  })
}

const count = 10
let pool: WorkerPool
let program: Program

beforeAll(async () => {
  pool = new WorkerPool({ createWorker: nodeWorkerFactory, runningMax: 2 })
  program = await loadProgram(guestBytes('test/fixtures/as/worker-joins.ts'))
})

afterAll(() => pool?.close())

describe('spawns and joins answered in the worker', () => {
  it('a join of an ended child answered in the worker gives the same codes and bytes as one the host answers', async () => {
    const inWorker = await runGuest(pool, program, { args: [String(count)], push: true, spawnsAheadMax: 64 })
    const byHost = await runGuest(pool, program, { args: [String(count)], push: false, spawnsAheadMax: 64 })
    expect(inWorker.error).toBeNull()
    expect(byHost.error).toBeNull()
    const expected = `nope ${SpawnError.noSuchEntry}\n${expectedJoins(count)}`
    expect(byHost.stdout).toBe(expected)
    expect(inWorker.stdout).toBe(expected)
    // Only the first join (which made the host push the outcomes) reached the host; without the
    // outcomes, every join and every second join of a long result did.
    expect(inWorker.hostJoins).toBe(1)
    expect(byHost.hostJoins).toBeGreaterThan(count)
  })

  it('spawns return their handles without a host call; a spawn of an entry that is not exported gives -2', async () => {
    const run = await runGuest(pool, program, { args: [String(count)], push: false, spawnsAheadMax: 64 })
    expect(run.error).toBeNull()
    expect(run.stdout.split('\n')[0]).toBe(`nope ${SpawnError.noSuchEntry}`)
    // The first blocking call of a thread takes its first save, so its first spawn waits for the host.
    expect(run.spawns.map((spawn) => spawn.kind)).toEqual(['call', ...Array(count - 1).fill('way')])
    expect(run.spawns.every((spawn) => spawn.entry === 'echo')).toBe(true)
    // Handles are call sequence numbers, one per call, in order.
    const handles = run.spawns.map((spawn) => spawn.callSequence)
    expect(handles).toEqual([...handles].sort((a, b) => a - b))
    expect(new Set(handles).size).toBe(count)
  })

  it('a spawn with a negative length (an i32 the guest passed) fails the thread with a named error', async () => {
    const run = await runGuest(pool, program, { args: ['bad'], push: false, spawnsAheadMax: 64 })
    expect(run.error).toBeInstanceOf(GuestCallError)
    expect(run.error?.message).toMatch(/outside guest memory/)
    expect(run.spawns).toEqual([])
  })

  it('past spawnsAheadMax unacknowledged spawns, the next spawn waits for the host', async () => {
    const run = await runGuest(pool, program, {
      args: ['12'],
      push: false,
      spawnsAheadMax: 4,
      holdAcknowledgements: true,
    })
    expect(run.error).toBeNull()
    expect(run.spawns.map((spawn) => spawn.kind)).toEqual([
      'call',
      'way',
      'way',
      'way',
      'way',
      'call',
      'way',
      'way',
      'way',
      'way',
      'call',
      'way',
    ])
    // A spawn went to the host only with the limit reached (or at the first save).
    expect(run.spawns.filter((spawn) => spawn.kind === 'call').map((spawn) => spawn.unacknowledged)).toEqual([
      0, 4, 4,
    ])
    expect(run.stdout).toBe(`nope ${SpawnError.noSuchEntry}\n${expectedJoins(12)}`)
  })

  it('a thread restored from a save taken mid-way names the same children and joins them right', async () => {
    const first = await runGuest(pool, program, {
      args: [String(count), 'save'],
      push: true,
      spawnsAheadMax: 64,
    })
    expect(first.error).toBeNull()
    const expected = `nope ${SpawnError.noSuchEntry}\nsaved\n${expectedJoins(count)}`
    expect(first.stdout).toBe(expected)
    // Saves: at the first spawn (suspended in it), then the checkpoint after all spawns.
    expect(first.saves.length).toBe(2)
    const handles = first.spawns.map((spawn) => spawn.callSequence)

    // From the save in the first spawn: the spawn is made again under the same handle (the
    // embedding finds the same child), the rest one way under the same handles, all joined right.
    const fromSpawn = await runGuest(pool, program, {
      args: [String(count), 'save'],
      push: true,
      spawnsAheadMax: 64,
      restore: first.saves.slice(0, 1),
    })
    expect(fromSpawn.error).toBeNull()
    expect(fromSpawn.spawns.map((spawn) => spawn.callSequence)).toEqual(handles)
    expect(fromSpawn.stdout).toBe(expected)

    // From the checkpoint: no spawn again; the worker has no outcomes at first, so the first join
    // asks the host (which pushes them), the rest are answered in the worker.
    const fromCheckpoint = await runGuest(pool, program, {
      args: [String(count), 'save'],
      push: true,
      spawnsAheadMax: 64,
      restore: first.saves,
      children: first.children,
    })
    expect(fromCheckpoint.error).toBeNull()
    expect(fromCheckpoint.spawns).toEqual([])
    expect(fromCheckpoint.stdout).toBe(`saved\n${expectedJoins(count)}`)
    expect(fromCheckpoint.hostJoins).toBe(1)
  })
})
