// Issue 4 (remote thread start): a start to one of the spawner's save replicas carries the spawner's
// replay log, which that node keeps before its claim creates the child's record; the spawner does
// not wait for its separate `log` round trip first. The rule stays: a child's record never exists
// before what its spawner saw is on one of the spawner's save replicas.
import { afterEach, describe, expect, test } from 'vitest'
import { isRuntimeMessage } from '../fabric/runtime/message-validation.ts'
import type { RuntimeMessage, RuntimeReply, StartLog, StartRequest } from '../fabric/runtime/messages.ts'
import { startLogRefusedReason } from '../fabric/runtime/node-runtime.ts'
import { decodeThread, parentThreadId } from '../fabric/runtime/records.ts'
import type { HeldLog, SaveReplicas } from '../fabric/runtime/save-replicas.ts'
import { StartBatcher, startLogBytesMax, startsLogBytesMax } from '../fabric/runtime/start-batches.ts'
import { guestBytes } from './support/guests.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

const childCount = 12
const nodeIds = ['node-a', 'node-b', 'node-c']

/** The replay log `node` holds for thread `tid` of `pid` (its save replicas, read directly). */
function heldLog(cluster: InProcessCluster, node: string, pid: string, tid: string): HeldLog | undefined {
  return (cluster.runtime(node) as unknown as { replicas: SaveReplicas }).replicas.log(pid, tid)
}

/** The starts a message carries, each with the log it carries (if any). */
function startsOf(message: RuntimeMessage): Array<{ start: StartRequest; log: StartLog | undefined }> {
  if (message.type === 'start') return [{ start: message, log: message.log }]
  if (message.type === 'starts')
    return message.starts.map((start) => ({
      start,
      log: start.logIndex === undefined ? undefined : message.logs?.[start.logIndex],
    }))
  return []
}

/** The reply of a node that keeps none of the logs the starts of `message` carry. */
function refuseCarriedLogs(message: RuntimeMessage): RuntimeReply {
  const reply: RuntimeReply = { type: 'refused', reason: `${startLogRefusedReason}: test` }
  return message.type === 'starts' ? { type: 'started', replies: message.starts.map(() => reply) } : reply
}

/**
 * For `windowMs` from the first message that would make a thread's log durable (a `log` message,
 * or a start that carries a log), every node refuses each such message; `refused` counts the `log`
 * messages refused.
 */
function logRefuser(windowMs: number) {
  let refusingUntilMs = 0
  const refuser = {
    refused: 0,
    intercept(message: RuntimeMessage): RuntimeReply | undefined {
      const carries = startsOf(message).some(({ log }) => log !== undefined)
      if (message.type !== 'log' && !carries) return undefined
      if (refusingUntilMs === 0) refusingUntilMs = performance.now() + windowMs
      if (performance.now() >= refusingUntilMs) return undefined
      if (message.type !== 'log') return refuseCarriedLogs(message)
      refuser.refused++
      return { type: 'refused', reason: 'test: no log is kept yet' }
    },
  }
  return refuser
}

interface ChildCreated {
  tid: string
  node: string
  /** The spawn's call sequence: the clock reading just before it has the one before. */
  spawnSequence: number
  /** Whether the child's node held the spawner's log with that reading when the record was created. */
  onChildNode: boolean
  /** Whether any node other than the spawner's held it then. */
  onSomeReplica: boolean
}

/**
 * Runs spawn-latency (each spawn right after a clock reading) on 3 in-process nodes with every child
 * on another node, and notes, at each creation of a child's record, where the spawner's log was.
 */
async function run(
  cluster: InProcessCluster,
  intercept: (
    from: string,
    to: string,
    message: RuntimeMessage,
  ) => ReturnType<NonNullable<InProcessCluster['intercept']>>,
): Promise<ChildCreated[]> {
  for (const id of nodeIds) await cluster.addNode(id, { runtime: { childrenElsewhere: true } })
  cluster.intercept = intercept
  const created: ChildCreated[] = []
  const entryCas = cluster.store.entryCas.bind(cluster.store)
  cluster.store.entryCas = async (key, entry, expectedVersion, value) => {
    const record = value === null ? null : decodeThread(value)
    if (expectedVersion === 0 && record !== null && parentThreadId(record.tid) === '0') {
      const spawnSequence = Number(record.tid.slice(2))
      const holds = (node: string) =>
        heldLog(cluster, node, record.pid, '0')?.entries.some(
          ([sequence]) => sequence === spawnSequence - 1,
        ) === true
      created.push({
        tid: record.tid,
        node: record.node,
        spawnSequence,
        onChildNode: holds(record.node),
        onSomeReplica: nodeIds.filter((id) => id !== record.spawnerNode).some(holds),
      })
    }
    return entryCas(key, entry, expectedVersion, value)
  }
  const process = await cluster.runtime('node-a').submit(guestBytes('test/fixtures/as/spawn-latency.ts'), {
    args: ['spawn-latency', String(childCount), '1', '0', '0'],
    // No save: the spawner's clock readings live in its replay log alone.
    saveIntervalMs: 600_000,
  })
  expect(await process.result).toEqual({ exitCode: 0, error: null })
  return created
}

describe('a remote start carries its spawner log', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('the child node holds the spawner log (the clock reading before the spawn) when the child record is created, though every log message is lost while the children start', async () => {
    cluster = new InProcessCluster()
    let startsWithLog = 0
    const carriedFrom = new Map<string, number[]>()
    const created = await run(cluster, (_from, to, message) => {
      for (const { log } of startsOf(message)) {
        if (log === undefined) continue
        startsWithLog++
        carriedFrom.set(to, [...(carriedFrom.get(to) ?? []), log.from ?? 0])
      }
      // Only the starts can make the log durable while the children start (after them, the readings
      // the spawner's later output shows need a log message kept: output waits for that).
      if (message.type === 'log' && startsWithLog < childCount)
        return { type: 'refused', reason: 'test: log messages are lost' }
      return undefined
    })
    expect(created).toHaveLength(childCount)
    for (const child of created) {
      expect(child.node).not.toBe('node-a')
      expect(child.onChildNode, `child ${child.tid} on ${child.node}`).toBe(true)
    }
    expect(startsWithLog).toBe(childCount)
    // A log kept with a start counts as that node's acknowledgement (no log message is): a next
    // start there carries only what follows it. (A refused log message to the node takes the
    // acknowledgement back, so only starts right after one to the same node are continuations.)
    for (const froms of carriedFrom.values()) expect(froms[0]).toBe(0)
    expect([...carriedFrom.values()].flat().some((from) => from > 0)).toBe(true)
  }, 60_000)

  test('a start that carries the spawner log to the child node is all that carries it: no log message goes while the children start', async () => {
    cluster = new InProcessCluster()
    let starts = 0
    let logMessages = 0
    const created = await run(cluster, (_from, _to, message) => {
      starts += startsOf(message).length
      if (message.type === 'log' && starts < childCount) logMessages++
      return undefined
    })
    expect(created).toHaveLength(childCount)
    for (const child of created) expect(child.onChildNode, `child ${child.tid} on ${child.node}`).toBe(true)
    expect(logMessages).toBe(0)
  }, 60_000)

  test('a child node that refuses the carried log gets the start without it once a save replica kept the log message', async () => {
    cluster = new InProcessCluster()
    let refused = 0
    let startsWithoutLog = 0
    const created = await run(cluster, (_from, _to, message) => {
      const starts = startsOf(message)
      if (starts.length === 0) return undefined
      if (starts.some(({ log }) => log !== undefined)) {
        refused++
        return refuseCarriedLogs(message)
      }
      startsWithoutLog += starts.filter(({ start }) => start.tid !== '0').length
      return undefined
    })
    expect(created).toHaveLength(childCount)
    expect(refused).toBeGreaterThanOrEqual(childCount)
    expect(startsWithoutLog).toBe(childCount)
    for (const child of created) expect(child.onSomeReplica, `child ${child.tid}`).toBe(true)
  }, 60_000)

  test('while no save replica keeps the spawner log, no child record is created; once one does, every child runs', async () => {
    cluster = new InProcessCluster()
    // The first ~1.5 s, every node refuses the spawner's log: its `log` messages and the log a
    // start carries. The children must wait (and then all run), not be created without it.
    const refuser = logRefuser(1500)
    const created = await run(cluster, (_from, _to, message) => refuser.intercept(message))
    expect(refuser.refused).toBeGreaterThan(1)
    expect(created).toHaveLength(childCount)
    for (const child of created) expect(child.onSomeReplica, `child ${child.tid}`).toBe(true)
  }, 60_000)
})

describe('effects wait for the log', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('output that shows a clock reading leaves only once a save replica keeps the reading, though the replicas refuse it for 1.5 s', async () => {
    cluster = new InProcessCluster()
    for (const id of nodeIds) await cluster.addNode(id)
    const refuser = logRefuser(1500)
    const shown: Array<{ tid: string; logHeld: boolean }> = []
    cluster.intercept = (_from, _to, message) => {
      if (message.type === 'output' && message.tid !== '0') {
        const line = new TextDecoder().decode(message.bytes)
        if (line.includes(' saw '))
          shown.push({
            tid: message.tid,
            logHeld: nodeIds.some(
              (node) => (heldLog(cluster, node, message.pid, message.tid)?.entries.length ?? 0) > 0,
            ),
          })
      }
      return refuser.intercept(message)
    }
    const process = await cluster.runtime('node-a').submit(guestBytes('test/fixtures/as/clock-replay.ts'), {
      args: ['clock-replay', '2', '1000'],
    })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(refuser.refused).toBeGreaterThan(1)
    // Each reader shows its reading twice ("saw", "still saw").
    expect(shown.length).toBe(4)
    for (const line of shown) expect(line.logHeld, `thread ${line.tid}`).toBe(true)
  }, 60_000)
})

const log = (pid: string, values: number): StartLog => ({
  pid,
  tid: '0',
  epoch: 1,
  afterSequence: 0,
  entries: Array.from({ length: values }, (_, index): [number, string] => [index + 1, '1234567890123456789']),
})
const start = (tid: string, carried?: StartLog): StartRequest => ({
  type: 'start',
  pid: 'p',
  tid,
  version: 0,
  record: new Uint8Array(1),
  ...(carried === undefined ? {} : { log: carried }),
})

describe('starts that carry logs on the wire', () => {
  test('a log several starts of one batch carry travels once; logs past startsLogBytesMax go in another message', async () => {
    const sent: RuntimeMessage[] = []
    const batcher = new StartBatcher('self', async (_to, message) => {
      sent.push(message)
      return message.type === 'starts'
        ? { type: 'started', replies: message.starts.map(() => ({ type: 'ok' as const })) }
        : { type: 'ok' }
    })
    const shared = log('p', 3)
    await Promise.all([
      batcher.request('b', start('0.1', shared)),
      batcher.request('b', start('0.2', shared)),
      batcher.request('b', start('0.3')),
    ])
    expect(sent).toEqual([
      {
        type: 'starts',
        starts: [{ ...start('0.1'), logIndex: 0 }, { ...start('0.2'), logIndex: 0 }, start('0.3')],
        logs: [shared],
      },
    ])
    for (const message of sent) expect(isRuntimeMessage(message)).toBe(true)
    // Large logs of several spawners: each message stays within the bound.
    sent.length = 0
    const large = () => log('p', Math.floor(startLogBytesMax / 40))
    const count = Math.ceil((2 * startsLogBytesMax) / startLogBytesMax) + 1
    await Promise.all(
      Array.from({ length: count }, (_, index) => batcher.request('b', start(`0.${index}`, large()))),
    )
    expect(sent.length).toBeGreaterThan(1)
    expect(sent.flatMap(startsOf)).toHaveLength(count)
    for (const message of sent) expect(isRuntimeMessage(message)).toBe(true)
  })

  test('a malformed carried log, one of another process, or a log index out of range is refused', () => {
    expect(isRuntimeMessage(start('0.1', log('p', 2)))).toBe(true)
    expect(isRuntimeMessage(start('0.1', log('q', 2)))).toBe(false)
    expect(isRuntimeMessage(start('0.1', { ...log('p', 2), entries: [[1, 'x']] }))).toBe(false)
    expect(isRuntimeMessage(start('0.1', { ...log('p', 2), epoch: -1 }))).toBe(false)
    expect(isRuntimeMessage({ ...start('0.1'), log: null })).toBe(false)
    expect(isRuntimeMessage({ ...start('0.1'), logIndex: 0 })).toBe(false)
    const starts = (each: object[], logs?: unknown) => ({ type: 'starts', starts: each, logs })
    expect(isRuntimeMessage(starts([{ ...start('0.1'), logIndex: 0 }], [log('p', 1)]))).toBe(true)
    expect(isRuntimeMessage(starts([{ ...start('0.1'), logIndex: 1 }], [log('p', 1)]))).toBe(false)
    expect(isRuntimeMessage(starts([{ ...start('0.1'), logIndex: 0 }]))).toBe(false)
    expect(isRuntimeMessage(starts([{ ...start('0.1'), logIndex: 0 }], [log('q', 1)]))).toBe(false)
    expect(isRuntimeMessage(starts([start('0.1', log('p', 1))], [log('p', 1)]))).toBe(false)
    expect(isRuntimeMessage(starts([start('0.1')], 'x'))).toBe(false)
    expect(isRuntimeMessage(starts([start('0.1')], [{ nonsense: true }]))).toBe(false)
  })
})
