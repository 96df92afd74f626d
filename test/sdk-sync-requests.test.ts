/**
 * The guest SDKs' coordination calls (guest-sdk/assemblyscript/lib/fabric.ts and
 * guest-sdk/c/fabric.h) produce `fabric.sync` requests that follow the layout in host/abi.ts and
 * read the replies as the ABI says; the two SDKs send the same requests for the same calls. On
 * misuse the AssemblyScript SDK aborts with a message naming the call and the object, and the C
 * header returns the error (fabric_strerror names it). A fake serves `sync` with single-thread
 * semantics; the guests run on a real worker through host/thread-runner.ts.
 */

import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { build } from '../fabric/cli/build.ts'
import { importModuleFabric, SyncError, SyncOp, syncHeaderBytes, syncRequestVersion } from '../host/abi.ts'
import { loadProgram, type Program } from '../host/program.ts'
import { type HostCall, type HostCallReply, ThreadRunner } from '../host/thread-runner.ts'
import { nodeWorkerFactory } from '../host/worker-node.ts'
import { WorkerPool } from '../host/worker-pool.ts'
import { guestBytes } from './support/guests.ts'
import { mainThreadStart } from './support/run.ts'

interface DecodedRequest {
  op: string
  group: string
  name: string
  a: bigint
  b: bigint
  /** Values as text, or as `i64:<n>` when they are 8 bytes that do not read as text. */
  value: string | null
  value2: string | null
  outCapacity: number
}

const opNames = new Map<number, string>(Object.entries(SyncOp).map(([name, number]) => [number, name]))

function decodeValue(bytes: Uint8Array): string {
  const text = new TextDecoder().decode(bytes)
  if (bytes.length === 8 && !/^[\x20-\x7e]*$/.test(text)) {
    return `i64:${new DataView(bytes.buffer, bytes.byteOffset, 8).getBigInt64(0, true)}`
  }
  return text
}

/** Decodes a request by the layout in host/abi.ts; throws on anything that does not follow it. */
function decodeRequest(payload: Uint8Array, outCapacity: number): DecodedRequest {
  expect(payload.length).toBeGreaterThanOrEqual(syncHeaderBytes)
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength)
  expect(view.getUint8(0)).toBe(syncRequestVersion)
  const op = opNames.get(view.getUint8(1))
  expect(op).toBeDefined()
  const groupLength = view.getUint16(2, true)
  const nameLength = view.getUint16(4, true)
  expect(view.getUint16(6, true)).toBe(0)
  const valueLength = view.getUint32(24, true)
  const value2Length = view.getUint32(28, true)
  expect(payload.length).toBe(syncHeaderBytes + groupLength + nameLength + valueLength + value2Length)
  let offset = syncHeaderBytes
  const take = (length: number) => {
    const bytes = payload.subarray(offset, offset + length)
    offset += length
    return bytes
  }
  const text = new TextDecoder()
  const group = text.decode(take(groupLength))
  const name = text.decode(take(nameLength))
  const value = take(valueLength)
  const value2 = take(value2Length)
  return {
    op: op!,
    group,
    name,
    a: view.getBigInt64(8, true),
    b: view.getBigInt64(16, true),
    value: valueLength === 0 ? null : decodeValue(value),
    value2: value2Length === 0 ? null : decodeValue(value2),
    outCapacity,
  }
}

function i64Bytes(value: bigint): Uint8Array {
  const bytes = new Uint8Array(8)
  new DataView(bytes.buffer).setBigInt64(0, value, true)
  return bytes
}

function equalBytes(left: Uint8Array, right: Uint8Array): boolean {
  return left.length === right.length && left.every((byte, index) => byte === right[index])
}

/** One thread's view of the primitives: enough semantics to answer every op the fixture makes. */
class FakeSync {
  readonly requests: DecodedRequest[] = []
  private readonly values = new Map<string, Uint8Array>()
  private readonly fenced = new Map<string, { value: Uint8Array; token: bigint }>()
  private readonly locks = new Map<string, bigint>()
  private nextToken = 1n
  private readonly queues = new Map<string, { items: Uint8Array[]; closed: boolean }>()
  /** The fake's barrier answers this round, so the test sees the round pass through as the result. */
  readonly barrierRound = 2

  serve(payload: Uint8Array, outCapacity: number): HostCallReply {
    const request = decodeRequest(payload, outCapacity)
    this.requests.push(request)
    // A store that cannot be reached, for the name "down".
    if (request.name === 'down') return { result: SyncError.unavailable }
    const key = `${request.group}/${request.name}`
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength)
    const valueStart = syncHeaderBytes + view.getUint16(2, true) + view.getUint16(4, true)
    const value = payload.slice(valueStart, valueStart + view.getUint32(24, true))
    const value2 = payload.slice(valueStart + value.length)
    const bytes = (reply: Uint8Array): HostCallReply =>
      reply.length > outCapacity ? { result: SyncError.tooLarge } : { result: reply.length, payload: reply }
    switch (request.op) {
      case 'group':
        return { result: 0 }
      case 'varGet': {
        const current = this.values.get(key)
        return current === undefined ? { result: SyncError.unset } : bytes(current)
      }
      case 'varSet':
        this.values.set(key, value)
        return { result: 0 }
      case 'varCas': {
        const current = this.values.get(key)
        const matches =
          request.a === 1n ? current === undefined : current !== undefined && equalBytes(current, value)
        if (matches) this.values.set(key, value2)
        return { result: matches ? 1 : 0 }
      }
      case 'varAdd': {
        const current = this.values.get(key)
        if (current !== undefined && current.length !== 8) return { result: SyncError.wrongType }
        const before = current === undefined ? 0n : new DataView(current.buffer).getBigInt64(0, true)
        const after = i64Bytes(before + request.a)
        this.values.set(key, after)
        return bytes(after)
      }
      case 'lockAcquire': {
        if (request.a <= 0n) return { result: SyncError.invalid }
        if (this.locks.has(key)) return { result: SyncError.timeout }
        const token = this.nextToken++
        this.locks.set(key, token)
        return bytes(i64Bytes(token))
      }
      case 'lockRenew':
        return { result: this.locks.get(key) === request.a ? 0 : SyncError.notHolder }
      case 'lockRelease':
        if (this.locks.get(key) !== request.a) return { result: SyncError.notHolder }
        this.locks.delete(key)
        return { result: 0 }
      case 'fencedGet': {
        const current = this.fenced.get(key)
        if (current !== undefined && request.a > 0n && request.a < current.token)
          return { result: SyncError.staleToken }
        return current === undefined ? { result: SyncError.unset } : bytes(current.value)
      }
      case 'fencedSet': {
        const current = this.fenced.get(key)
        if (current !== undefined && request.a < current.token) return { result: SyncError.staleToken }
        this.fenced.set(key, { value, token: request.a })
        return { result: 0 }
      }
      case 'queuePush': {
        const queue = this.queue(key)
        if (queue.closed) return { result: SyncError.closed }
        if (queue.items.length >= Number(request.a)) return { result: SyncError.full }
        queue.items.push(value)
        return { result: 0 }
      }
      case 'queuePop': {
        const queue = this.queue(key)
        const item = queue.items.shift()
        if (item !== undefined) return bytes(item)
        return { result: queue.closed ? SyncError.closed : SyncError.timeout }
      }
      case 'queueClose':
        this.queue(key).closed = true
        return { result: 0 }
      case 'queueLength':
        return { result: this.queue(key).items.length }
      case 'barrierWait':
        return { result: this.barrierRound }
      default:
        return { result: SyncError.invalid }
    }
  }

  private queue(key: string) {
    let queue = this.queues.get(key)
    if (queue === undefined) {
      queue = { items: [], closed: false }
      this.queues.set(key, queue)
    }
    return queue
  }
}

interface ThreadRun {
  stdout: string
  error: Error | null
}

/** Runs the program's main thread alone; `sync` goes to `fake`, other fabric calls fail the test. */
function runMain(pool: WorkerPool, program: Program, args: string[], fake: FakeSync): Promise<ThreadRun> {
  let stdout = ''
  const decoder = new TextDecoder()
  const runner = new ThreadRunner(pool, mainThreadStart(program, 'sync-requests', args), {
    output: (fd, bytes) => {
      if (fd === 1) stdout += decoder.decode(bytes)
    },
    call: async (call: HostCall) => {
      if (call.module !== importModuleFabric || call.name !== 'sync' || call.payload === null) {
        throw new Error(`unexpected host call ${call.module}.${call.name}`)
      }
      return fake.serve(call.payload, call.args[0]!)
    },
    save: () => {},
    log: () => {},
  })
  return runner.done.then((outcome) => ({
    stdout,
    error: outcome.kind === 'error' ? outcome.error : null,
  }))
}

const valueCapacity = 65536
const wordCapacity = 8

function request(
  op: keyof typeof SyncOp,
  name: string,
  fields: Partial<Omit<DecodedRequest, 'op' | 'name'>> = {},
): DecodedRequest {
  return { op, group: '', name, a: 0n, b: 0n, value: null, value2: null, outCapacity: 0, ...fields }
}

let pool: WorkerPool
let directory: string
const programs = new Map<string, Program>()

beforeAll(async () => {
  pool = new WorkerPool({ createWorker: nodeWorkerFactory, runningMax: 2 })
  directory = mkdtempSync(join(tmpdir(), 'fabric-sdk-sync-'))
  programs.set('AssemblyScript', await loadProgram(guestBytes('test/fixtures/as/sync-requests.ts')))
  const c = build({
    source: 'test/fixtures/c/sync-requests.c',
    output: join(directory, 'sync-requests.wasm'),
  })
  programs.set('C', await loadProgram(new Uint8Array(readFileSync(c.output))))
})

afterAll(() => {
  pool?.close()
  if (directory !== undefined) rmSync(directory, { recursive: true, force: true })
})

describe.each(['AssemblyScript', 'C'])('%s SDK: fabric.sync requests', (language) => {
  it('every call sends the layout of host/abi.ts and reads its reply', async () => {
    const fake = new FakeSync()
    const run = await runMain(pool, programs.get(language)!, [], fake)
    expect(run.error).toBeNull()
    expect(run.stdout.split('\n')).toEqual([
      'get: unset',
      'getI64: 42',
      'add: 37',
      'cas: false',
      'casI64: false',
      'acquire: 1',
      'renew: true',
      'fenced set: true',
      'fenced stale: false',
      'fenced get: mine',
      'fenced get as holder: mine',
      'release: true',
      'tryAcquire: true',
      'acquireWithin: false',
      'push: true',
      'pushWithin: true',
      'length: 1',
      'pop: true job 1',
      'popWithin: true',
      'tryPop: true',
      `barrier: ${fake.barrierRound}`,
      '',
    ])
    const team = { group: 'team' }
    expect(fake.requests).toEqual([
      request('varGet', 'counter', { outCapacity: valueCapacity }),
      request('varSet', 'counter', { value: 'i64:42' }),
      request('varGet', 'counter', { outCapacity: valueCapacity }),
      request('varAdd', 'counter', { a: -5n, outCapacity: wordCapacity }),
      // Expected "unset": a = 1, no expected bytes.
      request('varCas', 'counter', { a: 1n, value2: 'fresh' }),
      request('varCas', 'counter', { value: 'i64:7', value2: 'i64:8' }),
      request('group', '', team),
      request('lockAcquire', 'table', { ...team, a: 5000n, b: -1n, outCapacity: wordCapacity }),
      request('lockRenew', 'table', { ...team, a: 1n, b: 7000n }),
      request('fencedSet', 'table', { ...team, a: 1n, value: 'mine' }),
      request('fencedSet', 'table', { ...team, a: 0n, value: 'i64:3' }),
      request('fencedGet', 'table', { ...team, outCapacity: valueCapacity }),
      request('fencedGet', 'table', { ...team, a: 1n, outCapacity: valueCapacity }),
      request('lockRelease', 'table', { ...team, a: 1n }),
      request('lockAcquire', 'table', { ...team, a: 100n, b: 0n, outCapacity: wordCapacity }),
      request('lockAcquire', 'table', { ...team, a: 100n, b: 250n, outCapacity: wordCapacity }),
      request('queuePush', 'jobs', { a: 1n, b: -1n, value: 'job 1' }),
      request('queuePush', 'jobs', { a: 1n, b: 30n, value: 'job 2' }),
      request('queueLength', 'jobs'),
      request('queuePop', 'jobs', { a: -1n, outCapacity: valueCapacity }),
      request('queuePop', 'jobs', { a: 40n, outCapacity: valueCapacity }),
      request('queueClose', 'jobs'),
      request('queuePop', 'jobs', { a: 0n, outCapacity: valueCapacity }),
      request('barrierWait', 'round', { a: 3n }),
    ])
  })
})

describe('misuse', () => {
  it.each([
    ['release', /Lock "table"\.release: this thread does not hold the lock/],
    ['ttl', /Lock "table"\.acquire: a TTL of 0 ms; it must be positive/],
    ['large', /SharedVar "big"\.set: the value is 65537 bytes; at most 65536 are allowed/],
    ['name', /SharedVar "n+": the name is 256 bytes of UTF-8; at most 255 are allowed/],
    ['add', /SharedVar "text"\.add\(1\): the variable holds a value that is not an 8-byte i64/],
    ['parties', /Barrier "round": 0 parties; a barrier needs at least 1/],
    [
      'unavailable',
      /SharedVar "down"\.add\(1\): the coordination store could not be reached in time \(the runtime retried\); the call may or may not have taken effect/,
    ],
  ])(
    'AssemblyScript: "%s" aborts the thread with a message naming the call and the object',
    async (what, message) => {
      const fake = new FakeSync()
      // The add case needs a variable that holds text.
      fake.serve(
        new Uint8Array([
          ...new Uint8Array([1, SyncOp.varSet, 0, 0, 4, 0, 0, 0]),
          ...new Uint8Array(16),
          ...new Uint8Array([5, 0, 0, 0, 0, 0, 0, 0]),
          ...new TextEncoder().encode('text'),
          ...new TextEncoder().encode('hello'),
        ]),
        0,
      )
      const run = await runMain(pool, programs.get('AssemblyScript')!, ['misuse', what], fake)
      expect(run.stdout).toBe('')
      expect(run.error?.name).toBe('GuestTrapError')
      expect(run.error?.message).toMatch(message)
      // Sent once: a second add under a new op id could apply twice.
      if (what === 'unavailable')
        expect(fake.requests.filter((request) => request.name === 'down')).toHaveLength(1)
    },
  )

  it('C: each call returns its error and fabric_strerror names it', async () => {
    const run = await runMain(pool, programs.get('C')!, ['misuse'], new FakeSync())
    expect(run.error).toBeNull()
    const invalid = `invalid request (a name of 1 to 255 bytes, a TTL or queue capacity out of the runtime's bounds, a token below 1, no parties)`
    expect(run.stdout.split('\n')).toEqual([
      `release by a non-holder: ${SyncError.notHolder} this thread does not hold the lock (not acquired, released, or its lease ran out)`,
      `TTL 0: ${SyncError.invalid} ${invalid}`,
      `value too large: ${SyncError.tooLarge} value over the size limit of 65536 bytes`,
      `name too long: ${SyncError.invalid} ${invalid}`,
      `empty name: ${SyncError.invalid} ${invalid}`,
      `no parties: ${SyncError.invalid} ${invalid}`,
      `add on text: ${SyncError.wrongType} the variable does not hold an 8-byte number`,
      '',
    ])
  })
})
