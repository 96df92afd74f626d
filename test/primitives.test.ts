import { describe, expect, test } from 'vitest'
import { systemClock, systemTimers } from '../fabric/platform.ts'
import { MemoryStore } from '../fabric/runtime/memory-store.ts'
import { isRuntimeMessage } from '../fabric/runtime/message-validation.ts'
import { recheckMs, SyncEngine, syncKey } from '../fabric/runtime/primitives/engine.ts'
import { ReplyLog } from '../fabric/runtime/primitives/reply-log.ts'
import { decodeSyncRequest, encodeSyncRequest, lockTtlMsMax } from '../fabric/runtime/primitives/request.ts'
import { decodeState, type SyncReply, waitersMax } from '../fabric/runtime/primitives/state.ts'
import { SaveReplicas } from '../fabric/runtime/save-replicas.ts'
import { SyncError, SyncOp, syncHeaderBytes, syncValueBytesMax } from '../host/abi.ts'

/** Engines of several "nodes" over one store, with wake notices delivered directly. */
function cluster(nodes: string[]) {
  const store = new MemoryStore()
  const engines = new Map<string, SyncEngine>()
  const notices = { sent: 0 }
  for (const self of nodes) {
    engines.set(
      self,
      new SyncEngine({
        store,
        self,
        clock: systemClock,
        timers: systemTimers,
        notify: (node, key) => {
          notices.sent++
          setTimeout(() => engines.get(node)?.wake(key), 1)
        },
      }),
    )
  }
  return { store, engines, notices }
}

interface FakeThread {
  pid: string
  tid: string
  saves: number
  group: string | null
  /** The thread's replay log of replies no register records, as the runtime keeps it. */
  replies: ReplyLog
  requestSave(): void
  setGroup(group: string): Promise<void>
  stopped(): boolean
  replayed(callSequence: number): SyncReply | undefined
  logReply(callSequence: number, reply: SyncReply): void
}

function thread(tid: string, pid = 'p1'): FakeThread {
  const fake: FakeThread = {
    pid,
    tid,
    saves: 0,
    group: null,
    requestSave: () => {
      fake.saves++
    },
    setGroup: async (group) => {
      fake.group = group
    },
    stopped: () => false,
    replies: new ReplyLog(),
    replayed: (callSequence) => fake.replies.find(callSequence),
    logReply: (callSequence, reply) => {
      if (fake.replies.add(callSequence, reply)) fake.requestSave()
    },
  }
  return fake
}

/** A guest's calls: each gets the next call sequence number unless one is given (a replay). */
function guest(engine: SyncEngine, who: FakeThread) {
  let sequence = 0
  const call = async (
    request: Parameters<typeof encodeSyncRequest>[0],
    options: { sequence?: number; outCapacity?: number } = {},
  ) => {
    const callSequence = options.sequence ?? ++sequence
    return engine.call(who, {
      callSequence,
      payload: encodeSyncRequest(request),
      outCapacity: options.outCapacity ?? 1024,
    })
  }
  return {
    call,
    at: () => sequence,
    setSequence: (value: number) => {
      sequence = value
    },
  }
}

const readI64 = (bytes: Uint8Array | null | undefined) =>
  new DataView(bytes!.buffer, bytes!.byteOffset, 8).getBigInt64(0, true)
const text = (value: string) => new TextEncoder().encode(value)
const untext = (bytes: Uint8Array | null | undefined) => new TextDecoder().decode(bytes!)

describe('sync request decoding', () => {
  test('decodeSyncRequest refuses malformed requests with Invalid, oversized values with TooLarge', () => {
    expect(decodeSyncRequest(null)).toEqual({ ok: false, error: SyncError.invalid })
    expect(decodeSyncRequest(new Uint8Array(syncHeaderBytes - 1))).toEqual({
      ok: false,
      error: SyncError.invalid,
    })
    const good = encodeSyncRequest({ op: SyncOp.varSet, name: 'x', value: text('v') })
    expect(decodeSyncRequest(good).ok).toBe(true)
    const wrongVersion = good.slice()
    wrongVersion[0] = 2
    expect(decodeSyncRequest(wrongVersion)).toEqual({ ok: false, error: SyncError.invalid })
    const reserved = good.slice()
    reserved[6] = 1
    expect(decodeSyncRequest(reserved)).toEqual({ ok: false, error: SyncError.invalid })
    expect(decodeSyncRequest(good.slice(0, good.length - 1))).toEqual({ ok: false, error: SyncError.invalid })
    const lying = good.slice()
    new DataView(lying.buffer).setUint32(24, 0xffffffff, true)
    expect(decodeSyncRequest(lying)).toEqual({ ok: false, error: SyncError.tooLarge })
    const badUtf8 = encodeSyncRequest({ op: SyncOp.varGet, name: 'x' })
    badUtf8[syncHeaderBytes] = 0xff
    expect(decodeSyncRequest(badUtf8)).toEqual({ ok: false, error: SyncError.invalid })
    expect(decodeSyncRequest(encodeSyncRequest({ op: 99, name: 'x' }))).toEqual({
      ok: false,
      error: SyncError.invalid,
    })
    expect(decodeSyncRequest(encodeSyncRequest({ op: SyncOp.varGet }))).toEqual({
      ok: false,
      error: SyncError.invalid,
    })
    const longName = new Uint8Array(syncHeaderBytes + 256)
    longName.set(encodeSyncRequest({ op: SyncOp.varGet, name: 'x' }).subarray(0, syncHeaderBytes))
    new DataView(longName.buffer).setUint16(4, 256, true)
    expect(decodeSyncRequest(longName)).toEqual({ ok: false, error: SyncError.invalid })
  })

  test('lock TTLs of zero, negative or above lockTtlMsMax are Invalid', () => {
    for (const ttl of [0n, -5n, BigInt(lockTtlMsMax) + 1n, 2n ** 62n]) {
      expect(
        decodeSyncRequest(encodeSyncRequest({ op: SyncOp.lockAcquire, name: 'l', a: ttl, b: 0n })),
      ).toEqual({
        ok: false,
        error: SyncError.invalid,
      })
    }
    expect(
      decodeSyncRequest(encodeSyncRequest({ op: SyncOp.lockAcquire, name: 'l', a: 1000n, b: -2n })).ok,
    ).toBe(false)
  })

  test('syncKey keeps names of different kinds and contexts apart, and long names fit the store', async () => {
    const keys = new Set([
      await syncKey('p', '', 'var', 'a'),
      await syncKey('p', 'g', 'var', 'a'),
      await syncKey('p', '', 'queue', 'a'),
      await syncKey('p', 'x/var/y', 'var', 'z'),
      await syncKey('p', 'x', 'var', 'y/var/z'),
      await syncKey('q', '', 'var', 'a'),
    ])
    expect(keys.size).toBe(6)
    const long = await syncKey('p', '/'.repeat(255), 'var', '/'.repeat(255))
    expect(new TextEncoder().encode(long).length).toBeLessThanOrEqual(512)
  })
})

describe('shared variables', () => {
  test('get, set, compare-and-swap and add', async () => {
    const { engines } = cluster(['a'])
    const g = guest(engines.get('a')!, thread('0'))
    expect((await g.call({ op: SyncOp.varGet, name: 'v' })).result).toBe(SyncError.unset)
    expect((await g.call({ op: SyncOp.varSet, name: 'v', value: text('hello') })).result).toBe(0)
    const got = await g.call({ op: SyncOp.varGet, name: 'v' })
    expect([got.result, untext(got.payload)]).toEqual([5, 'hello'])
    expect((await g.call({ op: SyncOp.varGet, name: 'v' }, { outCapacity: 2 })).result).toBe(
      SyncError.tooLarge,
    )
    expect(
      (await g.call({ op: SyncOp.varCas, name: 'v', value: text('nope'), value2: text('x') })).result,
    ).toBe(0)
    expect(
      (await g.call({ op: SyncOp.varCas, name: 'v', value: text('hello'), value2: text('bye') })).result,
    ).toBe(1)
    expect((await g.call({ op: SyncOp.varCas, name: 'w', a: 1n, value2: text('first') })).result).toBe(1)
    expect((await g.call({ op: SyncOp.varCas, name: 'w', a: 1n, value2: text('second') })).result).toBe(0)
    expect((await g.call({ op: SyncOp.varAdd, name: 'v', a: 1n })).result).toBe(SyncError.wrongType)
    const added = await g.call({ op: SyncOp.varAdd, name: 'n', a: 5n })
    expect([added.result, readI64(added.payload)]).toEqual([8, 5n])
    expect(readI64((await g.call({ op: SyncOp.varAdd, name: 'n', a: -7n })).payload)).toBe(-2n)
    // The same name in a group is another variable.
    expect((await g.call({ op: SyncOp.varGet, group: 'g', name: 'n' })).result).toBe(SyncError.unset)
  })

  test('a value that does not fit the store with its bookkeeping is TooLarge, and nothing changes', async () => {
    const { engines } = cluster(['a'])
    const g = guest(engines.get('a')!, thread('0'))
    const big = new Uint8Array(syncValueBytesMax)
    expect((await g.call({ op: SyncOp.varSet, name: 'v', value: big })).result).toBe(SyncError.tooLarge)
    expect((await g.call({ op: SyncOp.varGet, name: 'v' })).result).toBe(SyncError.unset)
    expect((await g.call({ op: SyncOp.varSet, name: 'v', value: new Uint8Array(32_000) })).result).toBe(0)
  })

  test('50 threads on 3 nodes add 20 times each: the counter ends at exactly 1000', async () => {
    const { engines, store } = cluster(['a', 'b', 'c'])
    const nodes = [...engines.values()]
    await Promise.all(
      Array.from({ length: 50 }, async (_, index) => {
        const g = guest(nodes[index % 3]!, thread(`0.${index}`))
        for (let round = 0; round < 20; round++) await g.call({ op: SyncOp.varAdd, name: 'counter', a: 1n })
      }),
    )
    const read = await store.get(await syncKey('p1', '', 'var', 'counter'))
    expect(readI64(decodeState(read.value, 'var').value)).toBe(1000n)
    // 1000 adds went in fewer writes: concurrent calls on one node share a compare-and-swap.
    expect(read.version).toBeLessThan(1000)
  })

  test('120 threads whose saves lag add 48 times each: the results they leave in the register make them wait for saves, not fail TooLarge', async () => {
    const { engines, store } = cluster(['a', 'b', 'c'])
    const nodes = [...engines.values()]
    const threadCount = 120
    const addsPerThread = 48
    /** How long a save takes to reach its replicas here: long enough for results to pile up. */
    const saveLagMs = 200
    const errors: number[] = []
    await Promise.all(
      Array.from({ length: threadCount }, async (_, index) => {
        const engine = nodes[index % 3]!
        const who = thread(`0.${index}`)
        const g = guest(engine, who)
        let saving = false
        // As the runtime does: the save is taken at the call the thread is suspended in, and
        // confirmed once its replicas have it.
        who.requestSave = () => {
          if (saving) return
          saving = true
          const takenAt = g.at()
          setTimeout(() => {
            engine.saveCommitted('p1', who.tid, takenAt)
            saving = false
          }, saveLagMs)
        }
        for (let round = 0; round < addsPerThread; round++) {
          const reply = await g.call({ op: SyncOp.varAdd, name: 'counter', a: 1n })
          if (reply.result < 0) errors.push(reply.result)
        }
      }),
    )
    expect(errors).toEqual([])
    const read = await store.get(await syncKey('p1', '', 'var', 'counter'))
    expect(readI64(decodeState(read.value, 'var').value)).toBe(BigInt(threadCount * addsPerThread))
  }, 60_000)
})

describe('exactly once across replays', () => {
  test('a replayed add returns its recorded result and adds nothing', async () => {
    const { engines, store } = cluster(['a'])
    const g = guest(engines.get('a')!, thread('0'))
    await g.call({ op: SyncOp.varAdd, name: 'n', a: 10n }, { sequence: 3 })
    const first = await g.call({ op: SyncOp.varAdd, name: 'n', a: 1n }, { sequence: 4 })
    await g.call({ op: SyncOp.varAdd, name: 'n', a: 100n }, { sequence: 5 })
    // Restored from a save taken at call 4: calls 4 and 5 come again.
    const replayed = await g.call({ op: SyncOp.varAdd, name: 'n', a: 1n }, { sequence: 4 })
    expect(readI64(replayed.payload)).toBe(readI64(first.payload))
    await g.call({ op: SyncOp.varAdd, name: 'n', a: 100n }, { sequence: 5 })
    const read = await store.get(await syncKey('p1', '', 'var', 'n'))
    expect(readI64(decodeState(read.value, 'var').value)).toBe(111n)
  })

  test('a replayed read returns what the first read saw, also after others wrote', async () => {
    const { engines } = cluster(['a', 'b'])
    const reader = guest(engines.get('a')!, thread('0.1'))
    const writer = guest(engines.get('b')!, thread('0.2'))
    await writer.call({ op: SyncOp.varSet, name: 'v', value: text('one') })
    expect(untext((await reader.call({ op: SyncOp.varGet, name: 'v' }, { sequence: 7 })).payload)).toBe('one')
    await writer.call({ op: SyncOp.varSet, name: 'v', value: text('two') })
    expect(untext((await reader.call({ op: SyncOp.varGet, name: 'v' }, { sequence: 7 })).payload)).toBe('one')
    expect(untext((await reader.call({ op: SyncOp.varGet, name: 'v' }, { sequence: 8 })).payload)).toBe('two')
  })

  test('200 threads each read a 32 KiB value between their saves: no TooLarge, and the register does not grow with readers', async () => {
    const { engines, store } = cluster(['a', 'b', 'c'])
    const nodes = [...engines.values()]
    const value = new Uint8Array(32 * 1024).map((_, index) => index % 251)
    const writer = guest(nodes[0]!, thread('0'))
    expect((await writer.call({ op: SyncOp.varSet, name: 'big', value })).result).toBe(0)
    const key = await syncKey('p1', '', 'var', 'big')
    const sizeBefore = (await store.get(key)).value!.length
    const readers = Array.from({ length: 200 }, (_, index) => thread(`0.${index + 1}`))
    const replies = await Promise.all(
      readers.map((who, index) =>
        guest(nodes[index % 3]!, who).call({ op: SyncOp.varGet, name: 'big' }, { outCapacity: 65536 }),
      ),
    )
    for (const reply of replies) {
      expect(reply.result).toBe(value.length)
      // Compared as buffers: a deep equality of 200 x 32 KiB elements takes seconds.
      expect(Buffer.from(reply.payload!).equals(value)).toBe(true)
    }
    expect((await store.get(key)).value!.length).toBe(sizeBefore)
    // Each reader logged what it read, and a replay gets it from there even after the value changed.
    expect((await writer.call({ op: SyncOp.varSet, name: 'big', value: text('changed') })).result).toBe(0)
    const replayed = await guest(nodes[1]!, readers[7]!).call(
      { op: SyncOp.varGet, name: 'big' },
      { sequence: 1, outCapacity: 65536 },
    )
    expect(Buffer.from(replayed.payload!).equals(value)).toBe(true)
    expect(readers.every((who) => who.replies.size === 1)).toBe(true)
  })

  test('a thread’s reply log asks for a save once it holds loggedReplyBytesSaveAfter bytes, and a save empties it', async () => {
    const { engines } = cluster(['a'])
    const who = thread('0.1')
    const g = guest(engines.get('a')!, who)
    await g.call({ op: SyncOp.varSet, name: 'big', value: new Uint8Array(60_000) })
    for (let index = 0; index < 5; index++)
      await g.call({ op: SyncOp.varGet, name: 'big' }, { outCapacity: 65536 })
    expect(who.saves).toBeGreaterThan(0)
    who.replies.saved(g.at())
    expect(who.replies.size).toBe(1)
  })

  test(`a store that answers some calls on the key slowly is retried past unavailableAfterMs; one that answers none gives Unavailable`, async () => {
    // The clock jumps 20 s at every failed write, as on a machine too busy to answer in time.
    let offsetMs = 0
    const clock = { now: () => performance.now() + offsetMs }
    const store = new MemoryStore()
    let writesToFail = 3
    let readsFail = false
    const realCas = store.cas.bind(store)
    const realGet = store.get.bind(store)
    store.cas = async (key, expectedVersion, value) => {
      if (writesToFail > 0) {
        writesToFail--
        offsetMs += 20_000
        throw new Error('store timeout')
      }
      return realCas(key, expectedVersion, value)
    }
    store.get = async (key) => {
      if (readsFail) {
        offsetMs += 20_000
        throw new Error('store timeout')
      }
      return realGet(key)
    }
    const engine = new SyncEngine({ store, self: 'a', clock, timers: systemTimers, notify: () => {} })
    const g = guest(engine, thread('0'))
    // 60 s of failed writes, but the reads before each write were answered: the add goes through.
    expect(readI64((await g.call({ op: SyncOp.varAdd, name: 'n', a: 1n })).payload)).toBe(1n)
    expect(offsetMs).toBeGreaterThanOrEqual(60_000)
    // Nothing answered on the key for over unavailableAfterMs: Unavailable.
    writesToFail = 1_000
    readsFail = true
    expect((await g.call({ op: SyncOp.varAdd, name: 'n', a: 1n })).result).toBe(SyncError.unavailable)
  })

  test('a replay from before the committed save (its saves lost) is refused as Unavailable, not applied twice', async () => {
    const { engines, store } = cluster(['a'])
    const engine = engines.get('a')!
    const g = guest(engine, thread('0'))
    for (let index = 0; index < 5; index++) await g.call({ op: SyncOp.varAdd, name: 'n', a: 1n })
    engine.saveCommitted('p1', '0', 4)
    await g.call({ op: SyncOp.varAdd, name: 'n', a: 1n }, { sequence: 6 })
    expect((await g.call({ op: SyncOp.varAdd, name: 'n', a: 1n }, { sequence: 2 })).result).toBe(
      SyncError.unavailable,
    )
    expect(readI64((await g.call({ op: SyncOp.varAdd, name: 'n', a: 1n }, { sequence: 4 })).payload)).toBe(4n)
    const read = await store.get(await syncKey('p1', '', 'var', 'n'))
    expect(readI64(decodeState(read.value, 'var').value)).toBe(6n)
  })

  test('a committed save prunes the results before it; too many unsaved results ask for a save', async () => {
    const { engines, store } = cluster(['a'])
    const engine = engines.get('a')!
    const who = thread('0')
    const g = guest(engine, who)
    for (let index = 0; index < 20; index++) await g.call({ op: SyncOp.varAdd, name: 'n', a: 1n })
    expect(who.saves).toBe(1)
    const key = await syncKey('p1', '', 'var', 'n')
    expect(decodeState((await store.get(key)).value, 'var').results['0']).toHaveLength(20)
    engine.saveCommitted('p1', '0', g.at() + 1)
    await g.call({ op: SyncOp.varAdd, name: 'n', a: 1n })
    expect(decodeState((await store.get(key)).value, 'var').results['0']).toHaveLength(1)
    engine.threadEnded('p1', '0')
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(decodeState((await store.get(key)).value, 'var').results['0']).toBeUndefined()
  })
})

describe('queues', () => {
  test(`the waiter list keeps the last ${waitersMax} nodes; a node dropped from it still gets its item by its re-check`, async () => {
    const nodeCount = waitersMax + 6
    const names = Array.from({ length: nodeCount + 1 }, (_, index) => `n${index}`)
    const { engines, store } = cluster(names)
    const key = await syncKey('p1', '', 'queue', 'q')
    // One consumer per node, each waiting on the empty queue (no timeout), registered one by one.
    const popped: Array<Promise<string>> = []
    for (let index = 1; index <= nodeCount; index++) {
      const consumer = guest(engines.get(`n${index}`)!, thread(`0.${index}`))
      popped.push(
        consumer.call({ op: SyncOp.queuePop, name: 'q', a: -1n }).then((reply) => untext(reply.payload)),
      )
      const registered = async () => decodeState((await store.get(key)).value, 'queue').waiters
      while (!(await registered()).includes(`n${index}`))
        await new Promise((resolve) => setTimeout(resolve, 2))
    }
    const waiters = decodeState((await store.get(key)).value, 'queue').waiters
    expect(waiters).toHaveLength(waitersMax)
    // Some waiting nodes are not on it (which ones changes as they re-check): only a re-check can
    // tell them of an item.
    expect(names.filter((name) => name !== 'n0' && !waiters.includes(name)).length).toBe(
      nodeCount - waitersMax,
    )
    // Producers of 32 items each: a thread may leave at most 64 results unsaved in one register.
    const producers = Array.from({ length: Math.ceil(nodeCount / 32) }, (_, index) =>
      guest(engines.get('n0')!, thread(`0.0.${index}`)),
    )
    const startedAt = performance.now()
    for (let index = 0; index < nodeCount; index++) {
      const producer = producers[Math.floor(index / 32)]!
      const pushed = await producer.call({
        op: SyncOp.queuePush,
        name: 'q',
        a: 1024n,
        value: text(`item ${index}`),
      })
      expect(pushed.result).toBe(0)
    }
    const items = await Promise.all(popped)
    expect(new Set(items).size).toBe(nodeCount)
    // Within a few re-check periods (generous for a loaded machine), not a timeout.
    expect(performance.now() - startedAt).toBeLessThan(recheckMs * 20)
  }, 30_000)

  test('FIFO, length, Full when full, Closed after close once empty', async () => {
    const { engines } = cluster(['a'])
    const g = guest(engines.get('a')!, thread('0'))
    for (const item of ['a', 'b']) {
      expect((await g.call({ op: SyncOp.queuePush, name: 'q', a: 2n, value: text(item) })).result).toBe(0)
    }
    expect((await g.call({ op: SyncOp.queuePush, name: 'q', value: text('c') })).result).toBe(SyncError.full)
    expect((await g.call({ op: SyncOp.queueLength, name: 'q' })).result).toBe(2)
    expect(untext((await g.call({ op: SyncOp.queuePop, name: 'q' })).payload)).toBe('a')
    expect((await g.call({ op: SyncOp.queueClose, name: 'q' })).result).toBe(0)
    expect((await g.call({ op: SyncOp.queuePush, name: 'q', value: text('d') })).result).toBe(
      SyncError.closed,
    )
    expect(untext((await g.call({ op: SyncOp.queuePop, name: 'q' })).payload)).toBe('b')
    expect((await g.call({ op: SyncOp.queuePop, name: 'q', a: -1n })).result).toBe(SyncError.closed)
    expect((await g.call({ op: SyncOp.queuePop, name: 'empty' })).result).toBe(SyncError.timeout)
  })

  test('a push that does not fit the register with the queued items is Full, and fits once one is popped', async () => {
    const { engines } = cluster(['a'])
    const g = guest(engines.get('a')!, thread('0'))
    const item = new Uint8Array(20_000)
    for (let index = 0; index < 3; index++)
      expect((await g.call({ op: SyncOp.queuePush, name: 'q', value: item })).result).toBe(0)
    expect((await g.call({ op: SyncOp.queuePush, name: 'q', value: item })).result).toBe(SyncError.full)
    const waiting = g.call({ op: SyncOp.queuePush, name: 'q', value: item, b: 5000n })
    const other = guest(engines.get('a')!, thread('0.1'))
    expect((await other.call({ op: SyncOp.queuePop, name: 'q' }, { outCapacity: 65536 })).result).toBe(20_000)
    // The popped item is kept for the consumer's replays until its next save is on its replicas.
    expect((await g.call({ op: SyncOp.queuePush, name: 'q', value: item }, { sequence: 100 })).result).toBe(
      SyncError.full,
    )
    engines.get('a')!.saveCommitted('p1', '0.1', 2)
    expect((await waiting).result).toBe(0)
  })

  test('an item too large for the buffer stays in the queue', async () => {
    const { engines } = cluster(['a'])
    const g = guest(engines.get('a')!, thread('0'))
    await g.call({ op: SyncOp.queuePush, name: 'q', value: text('abcdef') })
    expect((await g.call({ op: SyncOp.queuePop, name: 'q' }, { outCapacity: 3 })).result).toBe(
      SyncError.tooLarge,
    )
    expect(untext((await g.call({ op: SyncOp.queuePop, name: 'q' })).payload)).toBe('abcdef')
  })

  test('a blocked pop on one node is woken by a push on another by notice, not by polling', async () => {
    const { engines, notices } = cluster(['a', 'b'])
    const consumer = guest(engines.get('a')!, thread('0.1'))
    const producer = guest(engines.get('b')!, thread('0.2'))
    const started = performance.now()
    const popped = consumer.call({ op: SyncOp.queuePop, name: 'q', a: -1n })
    await new Promise((resolve) => setTimeout(resolve, 50))
    await producer.call({ op: SyncOp.queuePush, name: 'q', value: text('x') })
    expect(untext((await popped).payload)).toBe('x')
    expect(performance.now() - started).toBeLessThan(50 + recheckMs)
    expect(notices.sent).toBeGreaterThan(0)
  })

  test('a pop with a timeout answers Timeout after about that long', async () => {
    const { engines } = cluster(['a'])
    const g = guest(engines.get('a')!, thread('0'))
    const started = performance.now()
    expect((await g.call({ op: SyncOp.queuePop, name: 'q', a: 120n })).result).toBe(SyncError.timeout)
    expect(performance.now() - started).toBeGreaterThanOrEqual(110)
  })

  test('a consumer that crashes after its pop and replays it gets the same item; no item is lost or doubled', async () => {
    const { engines } = cluster(['a', 'b'])
    const producer = guest(engines.get('a')!, thread('0.1'))
    for (let item = 0; item < 30; item++)
      await producer.call({ op: SyncOp.queuePush, name: 'q', value: text(`${item}`) })
    await producer.call({ op: SyncOp.queueClose, name: 'q' })
    const consumed: string[] = []
    await Promise.all(
      ['0.2', '0.3', '0.4'].map(async (tid, index) => {
        const g = guest(engines.get(index % 2 === 0 ? 'a' : 'b')!, thread(tid))
        const seen = new Map<number, string>()
        let savedAt = 1
        for (;;) {
          const reply = await g.call({ op: SyncOp.queuePop, name: 'q', a: -1n })
          if (reply.result === SyncError.closed) return
          seen.set(g.at(), untext(reply.payload))
          // Every third pop the consumer "crashes" and replays its pops since its last save.
          if (g.at() % 3 === 0) {
            const replayTo = g.at()
            g.setSequence(savedAt - 1)
            while (g.at() < replayTo) {
              const again = await g.call({ op: SyncOp.queuePop, name: 'q', a: -1n })
              expect(untext(again.payload)).toBe(seen.get(g.at()))
            }
            savedAt = g.at() + 1
          }
          consumed.push(untext(reply.payload))
        }
      }),
    )
    expect(consumed.map(Number).sort((x, y) => x - y)).toEqual(
      Array.from({ length: 30 }, (_, index) => index),
    )
  })
})

describe('locks and fenced variables', () => {
  test('acquire gives a token; a second holder times out; release by a non-holder is NotHolder', async () => {
    const { engines } = cluster(['a', 'b'])
    const first = guest(engines.get('a')!, thread('0.1'))
    const second = guest(engines.get('b')!, thread('0.2'))
    const taken = await first.call({ op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: -1n })
    const token = readI64(taken.payload)
    expect(taken.result).toBe(8)
    expect((await second.call({ op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: 0n })).result).toBe(
      SyncError.timeout,
    )
    expect((await second.call({ op: SyncOp.lockRelease, name: 'l', a: token })).result).toBe(
      SyncError.notHolder,
    )
    expect((await first.call({ op: SyncOp.lockRenew, name: 'l', a: token, b: 5000n })).result).toBe(0)
    const waiting = second.call({ op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: -1n })
    await new Promise((resolve) => setTimeout(resolve, 30))
    const started = performance.now()
    expect((await first.call({ op: SyncOp.lockRelease, name: 'l', a: token })).result).toBe(0)
    const next = await waiting
    expect(readI64(next.payload)).toBeGreaterThan(token)
    expect(performance.now() - started).toBeLessThan(recheckMs)
    expect((await first.call({ op: SyncOp.lockRenew, name: 'l', a: token, b: 5000n })).result).toBe(
      SyncError.notHolder,
    )
  })

  test('acquire + release of a free lock takes 3 store operations once the node knows the key (acquire, record, release)', async () => {
    const { engines, store } = cluster(['a'])
    const calls: string[] = []
    for (const method of ['get', 'put', 'cas', 'acquire', 'renew', 'release'] as const) {
      const original = store[method].bind(store) as (...args: unknown[]) => unknown
      ;(store as unknown as Record<string, unknown>)[method] = (...args: unknown[]) => {
        calls.push(method)
        return original(...args)
      }
    }
    const g = guest(engines.get('a')!, thread('0'))
    for (let round = 0; round < 5; round++) {
      calls.length = 0
      const token = readI64((await g.call({ op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: -1n })).payload)
      expect((await g.call({ op: SyncOp.lockRelease, name: 'l', a: token })).result).toBe(0)
      // The first round reads the key once before its record.
      if (round > 0) expect(calls).toEqual(['acquire', 'cas', 'release'])
    }
  })

  test('a dead holder’s lock is free after its TTL', async () => {
    const { engines } = cluster(['a', 'b'])
    const dead = guest(engines.get('a')!, thread('0.1'))
    const next = guest(engines.get('b')!, thread('0.2'))
    await dead.call({ op: SyncOp.lockAcquire, name: 'l', a: 300n, b: -1n })
    const started = performance.now()
    const reply = await next.call({ op: SyncOp.lockAcquire, name: 'l', a: 300n, b: 5000n })
    expect(reply.result).toBe(8)
    expect(performance.now() - started).toBeGreaterThanOrEqual(250)
    expect(performance.now() - started).toBeLessThan(300 + recheckMs + 200)
  })

  test('a replayed acquire returns its token while the lease holds; a replayed release does not release twice', async () => {
    const { engines } = cluster(['a'])
    const g = guest(engines.get('a')!, thread('0'))
    const other = guest(engines.get('a')!, thread('0.9'))
    const first = await g.call({ op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: -1n }, { sequence: 1 })
    const again = await g.call({ op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: -1n }, { sequence: 1 })
    expect(readI64(again.payload)).toBe(readI64(first.payload))
    const token = readI64(first.payload)
    expect((await g.call({ op: SyncOp.lockRelease, name: 'l', a: token }, { sequence: 2 })).result).toBe(0)
    const otherToken = readI64(
      (await other.call({ op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: 0n })).payload,
    )
    expect((await g.call({ op: SyncOp.lockRelease, name: 'l', a: token }, { sequence: 2 })).result).toBe(0)
    // The replayed release left the other holder's lease alone.
    expect((await other.call({ op: SyncOp.lockRenew, name: 'l', a: otherToken, b: 5000n })).result).toBe(0)
  })

  test('a holder restarted from a save keeps the lock only if its lease still holds: a replayed acquire whose lease expired acquires afresh', async () => {
    const { engines } = cluster(['a', 'b'])
    const other = guest(engines.get('b')!, thread('0.9'))
    for (const blocking of [false, true]) {
      const name = blocking ? 'blocking' : 'try'
      const restarted = guest(engines.get('a')!, thread(blocking ? '0.1' : '0.2'))
      const first = readI64(
        (await restarted.call({ op: SyncOp.lockAcquire, name, a: 200n, b: -1n }, { sequence: 1 })).payload,
      )
      // The lease runs out while the holder is down; another thread takes the lock.
      await new Promise((resolve) => setTimeout(resolve, 300))
      const taken = await other.call({ op: SyncOp.lockAcquire, name, a: 5000n, b: 0n })
      const otherToken = readI64(taken.payload)
      expect(otherToken).toBeGreaterThan(first)
      if (!blocking) {
        // A replayed try-acquire tries again: the lock is taken, so it times out.
        expect(
          (await restarted.call({ op: SyncOp.lockAcquire, name, a: 5000n, b: 0n }, { sequence: 1 })).result,
        ).toBe(SyncError.timeout)
        continue
      }
      // A blocking replay waits for the lock and gets a new token, newer than the other holder's.
      const waiting = restarted.call({ op: SyncOp.lockAcquire, name, a: 5000n, b: -1n }, { sequence: 1 })
      await new Promise((resolve) => setTimeout(resolve, 30))
      expect((await other.call({ op: SyncOp.lockRelease, name, a: otherToken })).result).toBe(0)
      const again = await waiting
      expect(again.result).toBe(8)
      const fresh = readI64(again.payload)
      expect(fresh).toBeGreaterThan(otherToken)
      // The new token is the holder's: renew and release work with it, not with the old one.
      expect((await restarted.call({ op: SyncOp.lockRenew, name, a: first, b: 5000n })).result).toBe(
        SyncError.notHolder,
      )
      expect((await restarted.call({ op: SyncOp.lockRenew, name, a: fresh, b: 5000n })).result).toBe(0)
      expect((await restarted.call({ op: SyncOp.lockRelease, name, a: fresh })).result).toBe(0)
    }
  })

  test('a replayed acquire holds the lock again when no one took it since; a replayed timeout times out again', async () => {
    const { engines } = cluster(['a', 'b'])
    const holder = guest(engines.get('a')!, thread('0.1'))
    const waiter = guest(engines.get('b')!, thread('0.2'))
    await holder.call({ op: SyncOp.lockAcquire, name: 'l', a: 150n, b: -1n }, { sequence: 1 })
    expect(
      (await waiter.call({ op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: 0n }, { sequence: 1 })).result,
    ).toBe(SyncError.timeout)
    await new Promise((resolve) => setTimeout(resolve, 250))
    const replayed = await holder.call(
      { op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: 0n },
      { sequence: 1 },
    )
    expect(replayed.result).toBe(8)
    const token = readI64(replayed.payload)
    expect((await waiter.call({ op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: 0n })).result).toBe(
      SyncError.timeout,
    )
    expect((await holder.call({ op: SyncOp.lockRelease, name: 'l', a: token }, { sequence: 2 })).result).toBe(
      0,
    )
    // The waiter's try that timed out before times out again when replayed, though the lock is free now.
    expect(
      (await waiter.call({ op: SyncOp.lockAcquire, name: 'l', a: 5000n, b: 0n }, { sequence: 1 })).result,
    ).toBe(SyncError.timeout)
  })

  test('a fenced variable refuses a write with a token older than the newest it saw', async () => {
    const { engines } = cluster(['a'])
    const g = guest(engines.get('a')!, thread('0'))
    expect((await g.call({ op: SyncOp.fencedGet, name: 'f' })).result).toBe(SyncError.unset)
    expect((await g.call({ op: SyncOp.fencedSet, name: 'f', a: 2n, value: text('new') })).result).toBe(0)
    expect((await g.call({ op: SyncOp.fencedSet, name: 'f', a: 1n, value: text('old') })).result).toBe(
      SyncError.staleToken,
    )
    expect((await g.call({ op: SyncOp.fencedSet, name: 'f', a: 2n, value: text('same') })).result).toBe(0)
    expect(untext((await g.call({ op: SyncOp.fencedGet, name: 'f' })).payload)).toBe('same')
    expect((await g.call({ op: SyncOp.fencedSet, name: 'f', a: 0n, value: text('x') })).result).toBe(
      SyncError.invalid,
    )
  })

  test('a holder whose lease ran out while it held on cannot write over a newer holder that read: no lost increment', async () => {
    const { engines, store } = cluster(['a', 'b'])
    const old = guest(engines.get('a')!, thread('0.1'))
    const newer = guest(engines.get('b')!, thread('0.2'))
    const i64 = (value: bigint) => {
      const bytes = new Uint8Array(8)
      new DataView(bytes.buffer).setBigInt64(0, value, true)
      return bytes
    }
    // The old holder (token 1) reads 5 with its token, then stalls past its TTL; the newer holder
    // (token 2) reads with its token: from then on the old holder's read and write are refused.
    await old.call({ op: SyncOp.fencedSet, name: 'n', a: 1n, value: i64(5n) })
    expect(readI64((await old.call({ op: SyncOp.fencedGet, name: 'n', a: 1n })).payload)).toBe(5n)
    expect(readI64((await newer.call({ op: SyncOp.fencedGet, name: 'n', a: 2n })).payload)).toBe(5n)
    expect((await old.call({ op: SyncOp.fencedSet, name: 'n', a: 1n, value: i64(6n) })).result).toBe(
      SyncError.staleToken,
    )
    expect((await old.call({ op: SyncOp.fencedGet, name: 'n', a: 1n })).result).toBe(SyncError.staleToken)
    expect((await newer.call({ op: SyncOp.fencedSet, name: 'n', a: 2n, value: i64(6n) })).result).toBe(0)
    // A plain read (no token) is not refused, and raises nothing.
    expect(readI64((await old.call({ op: SyncOp.fencedGet, name: 'n' })).payload)).toBe(6n)
    expect(decodeState((await store.get(await syncKey('p1', '', 'fenced', 'n'))).value, 'fenced').fence).toBe(
      2,
    )
  })

  test('a holder read replayed with the token it had gets what it read; with a newer token (its lock lost and taken again) it reads afresh', async () => {
    const { engines } = cluster(['a', 'b'])
    const holder = guest(engines.get('a')!, thread('0.1'))
    const other = guest(engines.get('b')!, thread('0.2'))
    await holder.call({ op: SyncOp.fencedSet, name: 'n', a: 1n, value: text('one') }, { sequence: 1 })
    expect(
      untext((await holder.call({ op: SyncOp.fencedGet, name: 'n', a: 1n }, { sequence: 2 })).payload),
    ).toBe('one')
    await other.call({ op: SyncOp.fencedSet, name: 'n', a: 2n, value: text('two') })
    // Restored from a save before call 2: the same token replays what it read.
    expect(
      untext((await holder.call({ op: SyncOp.fencedGet, name: 'n', a: 1n }, { sequence: 2 })).payload),
    ).toBe('one')
    // Its replayed acquire got token 3 (the lease had lapsed and another took it): a fresh read.
    expect(
      untext((await holder.call({ op: SyncOp.fencedGet, name: 'n', a: 3n }, { sequence: 2 })).payload),
    ).toBe('two')
  })
})

describe('a thread’s reply log on its save replicas', () => {
  test('logged replies travel in the log message, are kept next to the save they follow, and a save supersedes them', () => {
    const replicas = new SaveReplicas()
    const log = new ReplyLog()
    log.add(7, { result: 3, payload: text('abc') })
    log.add(9, { result: SyncError.timeout, payload: null })
    const message = {
      type: 'log' as const,
      pid: 'p1',
      tid: '0.1',
      epoch: 1,
      afterSequence: 0,
      entries: [] as Array<[number, string]>,
      replies: log.list(),
    }
    expect(isRuntimeMessage(message)).toBe(true)
    expect(isRuntimeMessage({ ...message, replies: [[7, 'x', null]] })).toBe(false)
    expect(isRuntimeMessage({ ...message, replies: [[7, 3]] })).toBe(false)
    const { type: _type, ...held } = message
    expect(replicas.keepLog(held)).toBe('kept')
    // A shorter log for the same save that arrives late does not replace it.
    expect(replicas.keepLog({ ...held, replies: held.replies.slice(0, 1) })).toBe('kept')
    const restored = new ReplyLog(replicas.log('p1', '0.1')?.replies ?? [])
    expect(untext(restored.find(7)?.payload)).toBe('abc')
    expect(restored.find(9)?.result).toBe(SyncError.timeout)
    replicas.keep({
      pid: 'p1',
      tid: '0.1',
      epoch: 1,
      sequence: 1,
      baseSequence: null,
      bytes: new Uint8Array(4),
    })
    expect(replicas.log('p1', '0.1')).toBeUndefined()
  })
})

describe('the end of a process', () => {
  test('a process that ends has its sync keys deleted (no value, no lease, one operation each); another process’s stay', async () => {
    const { engines, store } = cluster(['a', 'b'])
    const written = new Set<string>()
    const calls: string[] = []
    for (const method of ['put', 'cas', 'acquire', 'get', 'release', 'delete'] as const) {
      const original = store[method].bind(store) as (key: string, ...rest: unknown[]) => unknown
      ;(store as unknown as Record<string, unknown>)[method] = (key: string, ...rest: unknown[]) => {
        if (method === 'put' || method === 'cas' || method === 'acquire') written.add(key)
        calls.push(`${method} ${key}`)
        return original(key, ...rest)
      }
    }
    for (const pid of ['p1', 'p2']) {
      const a = guest(engines.get('a')!, thread('0.1', pid))
      const b = guest(engines.get('b')!, thread('0.2', pid))
      await a.call({ op: SyncOp.varSet, name: 'v', value: text('value') })
      await b.call({ op: SyncOp.varAdd, group: 'g', name: 'n', a: 3n })
      await a.call({ op: SyncOp.queuePush, name: 'q', value: text('item') })
      await b.call({ op: SyncOp.fencedSet, name: 'f', a: 1n, value: text('fenced') })
      await a.call({ op: SyncOp.lockAcquire, name: 'l', a: 60_000n, b: -1n })
      void b.call({ op: SyncOp.barrierWait, name: 'b', a: 2n })
    }
    await new Promise((resolve) => setTimeout(resolve, 20))
    // Every node that ran the process's threads hears of its end (the runtime's `stop`).
    calls.length = 0
    await Promise.all([engines.get('a')!.processEnded('p1'), engines.get('b')!.processEnded('p1')])
    const keys = [...written]
    const ended = keys.filter((key) => key.startsWith('sync/p1/'))
    expect(ended).toHaveLength(6)
    // Only deletes, each key by the nodes that knew it (a node that did not use a key leaves it).
    expect(calls.filter((call) => !call.startsWith('delete sync/p1/'))).toEqual([])
    expect(new Set(calls).size).toBe(6)
    for (const key of keys) {
      const read = await store.get(key)
      if (key.startsWith('sync/p1/')) {
        // Read as a key never written: no value (null, not empty bytes), no holder.
        expect(read.value, key).toBeNull()
        expect(read.holder, key).toBeNull()
      } else if (!key.includes('/lock/')) {
        expect(read.value?.length ?? 0, key).toBeGreaterThan(0)
      }
    }
    expect((await store.get(await syncKey('p2', '', 'lock', 'l'))).holder).toBe('p2/0.1')
  })
  test('a write that loses a race after its process ended here is not tried again: the deleted key stays deleted', async () => {
    const { engines, store } = cluster(['a'])
    const engine = engines.get('a')!
    const a = guest(engine, thread('0.1'))
    await a.call({ op: SyncOp.queuePush, name: 'q', value: text('one') })
    const key = await syncKey('p1', '', 'queue', 'q')
    // The next write on the key meets the process's end: its delete lands first, so the write's
    // compare-and-swap fails (as a write in flight when a `stop` comes does).
    const cas = store.cas.bind(store)
    let ended = false
    store.cas = (casKey, expectedVersion, value) => {
      if (casKey === key && !ended) {
        ended = true
        void engine.processEnded('p1')
      }
      return cas(casKey, expectedVersion, value)
    }
    let settled = false
    void a.call({ op: SyncOp.queuePush, name: 'q', value: text('two') }).then(() => {
      settled = true
    })
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(ended).toBe(true)
    expect((await store.get(key)).value).toBeNull()
    // Its thread's process ended: the call has no effect and never returns.
    expect(settled).toBe(false)
  })
})

describe('barriers and groups', () => {
  test('a barrier of 3 on 3 nodes releases each round together, 4 rounds', async () => {
    const { engines } = cluster(['a', 'b', 'c'])
    const nodes = [...engines.values()]
    const rounds = await Promise.all(
      [0, 1, 2].map(async (index) => {
        const g = guest(nodes[index]!, thread(`0.${index}`))
        const seen: number[] = []
        for (let round = 0; round < 4; round++) {
          await new Promise((resolve) => setTimeout(resolve, index * 10))
          seen.push((await g.call({ op: SyncOp.barrierWait, name: 'b', a: 3n })).result)
        }
        return seen
      }),
    )
    expect(rounds).toEqual([
      [0, 1, 2, 3],
      [0, 1, 2, 3],
      [0, 1, 2, 3],
    ])
  })

  test('a barrier waited for with another party count is Invalid; group records the thread’s group', async () => {
    const { engines } = cluster(['a'])
    const who = thread('0')
    const g = guest(engines.get('a')!, who)
    void g.call({ op: SyncOp.barrierWait, name: 'b', a: 2n })
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect((await g.call({ op: SyncOp.barrierWait, name: 'b', a: 3n })).result).toBe(SyncError.invalid)
    expect((await g.call({ op: SyncOp.group, group: 'workers' })).result).toBe(0)
    expect(who.group).toBe('workers')
  })
})
