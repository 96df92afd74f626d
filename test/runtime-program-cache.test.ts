/**
 * ProgramCache (issue 4: nodes free compiled programs they no longer need): a program a process
 * that has not ended uses is never dropped; of the idle ones the latest `idleMax` used are kept,
 * the oldest use dropped first; a use again revives an idle program. Then on a cluster: nodes that
 * ran many programs one after another hold no more than that once the processes ended.
 */
import { createHash } from 'node:crypto'
import { afterEach, describe, expect, test, vi } from 'vitest'
import type { RuntimeReply } from '../fabric/runtime/messages.ts'
import { ProgramCache } from '../fabric/runtime/program-cache.ts'
import { guestBytes } from './support/guests.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

function bytesOf(digest: string): Uint8Array {
  return new TextEncoder().encode(digest)
}

/** A cache holding programs `digests`, each compiled (a string stands for the compiled program). */
function holding(idleMax: number, digests: string[]): ProgramCache<string> {
  const cache = new ProgramCache<string>(idleMax)
  for (const digest of digests) {
    cache.setProgram(digest, Promise.resolve(`compiled ${digest}`))
    cache.setBytes(digest, bytesOf(digest))
  }
  return cache
}

describe('ProgramCache', () => {
  test('a program a process uses is never dropped, however many programs go idle after it', async () => {
    const cache = new ProgramCache<string>(2)
    cache.use('p1', 'used')
    cache.setProgram('used', Promise.resolve('compiled used'))
    cache.setBytes('used', bytesOf('used'))
    for (let index = 0; index < 10; index++) {
      cache.use(`other-${index}`, `idle-${index}`)
      cache.setProgram(`idle-${index}`, Promise.resolve(`compiled idle-${index}`))
      cache.release(`other-${index}`)
    }
    expect(await cache.program('used')).toBe('compiled used')
    expect(cache.bytes('used')).toEqual(bytesOf('used'))
    expect(cache.counts()).toEqual({ inUse: 1, idle: 2 })
  })

  test('past idleMax idle programs the oldest use is dropped first', () => {
    const cache = holding(2, ['a', 'b', 'c', 'd'])
    expect(cache.counts()).toEqual({ inUse: 0, idle: 2 })
    expect(cache.program('a')).toBeUndefined()
    expect(cache.program('b')).toBeUndefined()
    expect(cache.bytes('a')).toBeUndefined()
    expect(cache.program('c')).toBeDefined()
    expect(cache.program('d')).toBeDefined()
  })

  test('a use (a fetch of its bytes, a preload) makes an idle program the latest: the other one goes', () => {
    const cache = holding(2, ['a', 'b'])
    expect(cache.bytes('a')).toBeDefined()
    cache.setProgram('c', Promise.resolve('compiled c'))
    expect(cache.program('b')).toBeUndefined()
    expect(cache.program('a')).toBeDefined()
    expect(cache.program('c')).toBeDefined()
  })

  test('a program becomes idle when the last process that uses it ends, as the latest idle one', () => {
    const cache = holding(1, ['old'])
    cache.use('p1', 'shared')
    cache.use('p2', 'shared')
    cache.setProgram('shared', Promise.resolve('compiled shared'))
    cache.release('p1')
    expect(cache.counts()).toEqual({ inUse: 1, idle: 1 })
    cache.release('p2')
    expect(cache.counts()).toEqual({ inUse: 0, idle: 1 })
    expect(cache.program('shared')).toBeDefined()
    expect(cache.program('old')).toBeUndefined()
  })

  test('an idle program used again by a process is not dropped while that process runs', () => {
    const cache = holding(1, ['a'])
    cache.use('p1', 'a')
    for (const digest of ['b', 'c', 'd']) cache.setProgram(digest, Promise.resolve(digest))
    expect(cache.program('a')).toBeDefined()
    expect(cache.counts()).toEqual({ inUse: 1, idle: 1 })
    cache.release('p1')
    expect(cache.program('a')).toBeDefined()
    expect(cache.program('d')).toBeUndefined()
  })

  test('a release of a process that uses nothing, or twice, changes nothing', () => {
    const cache = holding(2, ['a'])
    cache.use('p1', 'a')
    cache.release('p1')
    cache.release('p1')
    cache.release('never-seen')
    expect(cache.counts()).toEqual({ inUse: 0, idle: 1 })
  })

  test('a process known before its program is held keeps an entry; it goes once the process ends', () => {
    const cache = new ProgramCache<string>(2)
    cache.use('p1', 'not-fetched-yet')
    expect(cache.counts()).toEqual({ inUse: 1, idle: 0 })
    cache.release('p1')
    expect(cache.counts()).toEqual({ inUse: 0, idle: 0 })
  })

  test('a failed compile is forgotten (the next request compiles again); a later compile is not', () => {
    const cache = new ProgramCache<string>(2)
    const failed = Promise.reject(new Error('invalid'))
    failed.catch(() => {})
    cache.setProgram('a', failed)
    cache.forgetProgram('a', failed)
    expect(cache.program('a')).toBeUndefined()
    expect(cache.counts()).toEqual({ inUse: 0, idle: 0 })
    const later = Promise.resolve('compiled a')
    cache.setProgram('a', later)
    cache.forgetProgram('a', failed)
    expect(cache.program('a')).toBe(later)
  })

  test('bytes fetched for a program dropped meanwhile are not kept again', () => {
    const cache = holding(1, ['a'])
    cache.setProgram('b', Promise.resolve('compiled b'))
    cache.setBytes('a', bytesOf('a'))
    expect(cache.bytes('a')).toBeUndefined()
    expect(cache.counts()).toEqual({ inUse: 0, idle: 1 })
  })

  test('idleMax must be an integer from 0 and up', () => {
    expect(() => new ProgramCache(-1)).toThrow(/idleProgramsMax.*got -1/)
    expect(() => new ProgramCache(1.5)).toThrow(/idleProgramsMax/)
    const none = holding(0, ['a'])
    expect(none.counts()).toEqual({ inUse: 0, idle: 0 })
  })
})

/** `program` with a custom section appended: the same guest, as a distinct program (another digest). */
function variant(program: Uint8Array, index: number): Uint8Array {
  const name = new TextEncoder().encode('fabric.test-variant')
  // Payloads of different lengths: each variant has its own size as well as its own digest.
  const payload = new Uint8Array(index + 1).fill(index)
  const body = [name.length, ...name, ...payload]
  if (body.length >= 128) throw new Error('variant index too large for a one-byte section size')
  return new Uint8Array([...program, 0, body.length, ...body])
}

describe('programs a node holds on a cluster (issue 4)', () => {
  let cluster: InProcessCluster
  afterEach(() => cluster?.close())

  test('after more distinct programs than idleProgramsMax ran and ended, each node holds at most idleProgramsMax, none in use; the first runs again', async () => {
    const idleProgramsMax = 2
    const programCount = idleProgramsMax + 3
    cluster = new InProcessCluster()
    const ids = ['node-a', 'node-b', 'node-c']
    for (const id of ids) await cluster.addNode(id, { runtime: { idleProgramsMax } })
    const home = cluster.runtime('node-a')
    const tiny = guestBytes('test/fixtures/as/tiny-threads.ts')
    const programs = Array.from({ length: programCount }, (_, index) => variant(tiny, index))
    const run = async (program: Uint8Array) => {
      const process = await home.submit(program, { args: ['tiny-threads', '3'], seed: 1 })
      let output = ''
      process.onOutput((chunk) => {
        output += new TextDecoder().decode(chunk.bytes)
      })
      expect(await process.result).toEqual({ exitCode: 0, error: null })
      expect(output).toBe('joined 3\n')
    }
    for (const program of programs) await run(program)
    // The other nodes learn of each end by the home's `stop`, which may still be on its way.
    await vi.waitFor(
      () => {
        for (const id of ids)
          expect(cluster.runtime(id).programsHeld(), id).toEqual({
            inUse: 0,
            idle: expect.toSatisfy((idle: number) => idle <= idleProgramsMax),
          })
      },
      { timeout: 10_000, interval: 50 },
    )
    // Every node ran or preloaded them all: each keeps exactly the latest idleProgramsMax.
    for (const id of ids) expect(cluster.runtime(id).programsHeld().idle).toBe(idleProgramsMax)
    // The first program was dropped everywhere: it is fetched and compiled again.
    await run(programs[0]!)
  }, 60_000)

  test('a running process keeps its program where it is known while other programs come and go: at its home, which serves it to a node that dropped it, and on a node that runs its threads, which fetches it once', async () => {
    const idleProgramsMax = 2
    cluster = new InProcessCluster()
    const ids = ['node-a', 'node-b', 'node-c']
    for (const id of ids) await cluster.addNode(id, { runtime: { idleProgramsMax } })
    const home = cluster.runtime('node-a')
    const tiny = guestBytes('test/fixtures/as/tiny-threads.ts')
    const held = variant(tiny, 0)
    const digest = createHash('sha256').update(held).digest('hex')
    // The held process's children (it runs them one after another) start only on `runner`, and
    // only while `childStartsAllowed` lasts; the others are placed again while the process runs
    // (its main thread waits to join them), so the process runs while other programs come and go.
    let runner: string | null = null
    let childStartsAllowed = 0
    const fetchesByRunner: string[] = []
    cluster.intercept = (from, to, message) => {
      if (message.type === 'fetch-program' && from === runner && message.digest === digest)
        fetchesByRunner.push(to)
      const starts = message.type === 'start' ? [message] : message.type === 'starts' ? message.starts : []
      const children = starts.filter((start) => start.tid !== '0').length
      if (children === 0) return undefined
      if (to === runner && childStartsAllowed >= children) {
        childStartsAllowed -= children
        return undefined
      }
      const refused = { type: 'refused' as const, reason: 'node is not serving' }
      if (message.type === 'start') return refused
      // A main thread's start in the same message is delivered as it would have been.
      const replies = starts.map((start) => (start.tid === '0' ? cluster.send(from, to, start) : refused))
      return Promise.all(replies).then((each) => ({
        type: 'started',
        replies: each,
      })) as unknown as RuntimeReply
    }
    const others = Array.from({ length: 2 * (idleProgramsMax + 1) }, (_, index) => variant(tiny, index + 1))
    const runOthers = async (programs: Uint8Array[]) => {
      for (const program of programs) {
        const other = await home.submit(program, { args: ['tiny-threads', '0'], seed: 1 })
        expect(await other.result).toEqual({ exitCode: 0, error: null })
      }
    }
    const process = await home.submit(held, { args: ['tiny-threads', '3'], seed: 1 })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    await runOthers(others.slice(0, idleProgramsMax + 1))
    // The home holds the program of its running process however many went idle since.
    expect(home.programsHeld().inUse).toBe(1)
    // A node the held process's main thread does not run on learned nothing of it: its preload went
    // idle and was dropped, as the latest idle programs there are the others'.
    await vi.waitFor(
      () => {
        runner =
          ['node-b', 'node-c'].find((id) => {
            const { inUse, idle } = cluster.runtime(id).programsHeld()
            return inUse === 0 && idle === idleProgramsMax
          }) ?? null
        expect(runner).not.toBeNull()
      },
      { timeout: 10_000, interval: 50 },
    )
    // One child runs there: the node fetches the program again, from the home.
    childStartsAllowed = 1
    await vi.waitFor(() => expect(childStartsAllowed).toBe(0), { timeout: 10_000, interval: 20 })
    await vi.waitFor(() => expect(fetchesByRunner).toEqual(['node-a']), { timeout: 10_000, interval: 20 })
    // More programs come and go; the node that ran a thread of the held process keeps its program.
    await runOthers(others.slice(idleProgramsMax + 1))
    expect(cluster.runtime(runner!).programsHeld().inUse).toBe(1)
    childStartsAllowed = Number.POSITIVE_INFINITY
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(output).toBe('joined 3\n')
    expect(fetchesByRunner).toEqual(['node-a'])
  }, 60_000)
})
