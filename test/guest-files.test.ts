/**
 * Guests' files on the distributed file system (fabric/runtime/guest-files.ts): unmodified C
 * (fopen, fwrite, fseek, fread, opendir, rename, unlink) gives the same output and leaves the same
 * files as over a plain host directory; storage errors reach the guest as the right WASI errno; a
 * thread resumed from its journal on another node's client continues its files where it was.
 *
 * A failing kill run prints SEED=<n>; rerun that one with
 *   FABRIC_SEED=<n> npx vitest run test/guest-files.test.ts
 */

import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { build } from '../fabric/cli/build.ts'
import { GuestFilesError } from '../fabric/errors.ts'
import {
  GuestFileSession,
  storageGuestFileSystem,
  threadFilesKey,
  wasiErrnoOf,
} from '../fabric/runtime/guest-files.ts'
import { MemoryStore } from '../fabric/runtime/memory-store.ts'
import { importModuleWasi } from '../host/abi.ts'
import { nodeDirectoryFileSystem } from '../host/files-node.ts'
import { loadProgram, type Program } from '../host/program.ts'
import type { HostCallReply } from '../host/thread-runner.ts'
import { wasiErrno, wasiFdFlags, wasiOpenFlags, wasiRights, wasiWhence } from '../host/wasi-files.ts'
import { nodeWorkerFactory } from '../host/worker-node.ts'
import { WorkerPool } from '../host/worker-pool.ts'
import { FileSystemError } from '../storage/errors.ts'
import type { FileSystem } from '../storage/file-system.ts'
import { runProgram, seededRandom } from './support/run.ts'
import { createFileSystemCluster, type FileSystemCluster } from './support/storage-file-systems.ts'

const guestDirectory = '/data'
const preopenFd = 3
const killSeedCount = 4
const readWrite = wasiRights.fdRead | wasiRights.fdWrite
const decoder = new TextDecoder()
const encoder = new TextEncoder()

const fdOf = (reply: HostCallReply) =>
  new DataView(reply.payload!.buffer, reply.payload!.byteOffset).getUint32(0, true)

/** Calls a session as a thread's worker would, numbering the calls. */
function caller(session: GuestFileSession, firstSequence = 1) {
  let sequence = firstSequence - 1
  return {
    get next() {
      return sequence + 1
    },
    call(
      name: string,
      args: readonly number[],
      payload: string | Uint8Array | null = null,
    ): Promise<HostCallReply> {
      sequence++
      return session.handle({
        callSequence: sequence,
        module: importModuleWasi,
        name,
        args: [...args],
        payload: typeof payload === 'string' ? encoder.encode(payload) : payload,
      })
    },
  }
}

describe('guest files on the distributed file system', () => {
  let base: string
  let pool: WorkerPool
  let files: Program
  let journal: Program
  let cluster: FileSystemCluster

  beforeAll(async () => {
    base = mkdtempSync(join(tmpdir(), 'fabric-guest-files-'))
    pool = new WorkerPool({ createWorker: nodeWorkerFactory, runningMax: 2 })
    const filesWasm = build({ source: 'test/fixtures/c/files.c', output: join(base, 'files.wasm') })
    files = await loadProgram(new Uint8Array(readFileSync(filesWasm.output)))
    const journalWasm = build({ source: 'test/fixtures/c/journal.c', output: join(base, 'journal.wasm') })
    journal = await loadProgram(new Uint8Array(readFileSync(journalWasm.output)))
    // Small chunks, so that the guests' files span several bricks on several nodes.
    cluster = await createFileSystemCluster({ nodeIds: ['n1', 'n2', 'n3'], seed: 6, chunkBytes: 16 * 1024 })
  })

  afterAll(async () => {
    pool?.close()
    await cluster?.cluster.close()
    if (base !== undefined) rmSync(base, { recursive: true, force: true })
  })

  it('C with plain libc: same output and files as over a host directory', async () => {
    const hostDirectory = join(base, 'host-files')
    mkdirSync(hostDirectory)
    const onHost = nodeDirectoryFileSystem({ hostDirectory, guestDirectory })
    const hostRun = await runProgram(pool, files, [guestDirectory], {
      seed: 1,
      saveIntervalMs: 10,
      files: onHost,
    })
    await onHost.close()
    expect(hostRun.error).toBeNull()

    const fileSystem = cluster.newClient('n1')
    await fileSystem.mkdir('/c-files')
    const onStorage = storageGuestFileSystem(fileSystem, { mount: guestDirectory, directory: '/c-files' })
    const storageRun = await runProgram(pool, files, [guestDirectory], {
      seed: 1,
      saveIntervalMs: 10,
      files: onStorage,
    })
    await onStorage.close()
    expect(storageRun.error).toBeNull()
    expect(storageRun.stderr).toBe('')
    expect(storageRun.exitCode).toBe(0)
    const stdout = [...storageRun.stdout.values()].join('')
    expect(stdout).toBe([...hostRun.stdout.values()].join(''))
    expect(stdout).toContain('updated: first LINE\nsecond line\n')
    expect(stdout).toContain('parent by ..: refused (ENOTCAPABLE)')
    expect(stdout).toMatch(/done\n$/)

    // Another node's client sees what the guest left, byte for byte as on the host.
    const reader = cluster.newClient('n3')
    const hostSub = join(hostDirectory, 'sub')
    expect((await reader.readdir('/c-files/sub')).map((entry) => entry.name)).toEqual(
      readdirSync(hostSub).sort(),
    )
    for (const name of readdirSync(hostSub)) {
      const stored = await reader.readFile(`/c-files/sub/${name}`)
      expect(Buffer.from(stored).equals(readFileSync(join(hostSub, name))), name).toBe(true)
    }
  })

  it('AssemblyScript fs module: same output and files over the cluster file system as over a host directory', async () => {
    const wasm = build({ source: 'test/fixtures/as/files.ts', output: join(base, 'as-files.wasm') })
    const program = await loadProgram(new Uint8Array(readFileSync(wasm.output)))
    const hostDirectory = join(base, 'host-as')
    mkdirSync(hostDirectory)
    const onHost = nodeDirectoryFileSystem({ hostDirectory, guestDirectory })
    const hostRun = await runProgram(pool, program, [guestDirectory], { seed: 1, files: onHost })
    await onHost.close()
    expect(hostRun.error).toBeNull()
    const hostOutput = [...hostRun.stdout.values()].join('')
    expect(hostOutput).toBe(
      [
        'mkdir: OK',
        'mkdir again: OK',
        'write: OK',
        'append: OK',
        'append: OK',
        'read: first|second|third|',
        'write big: OK',
        'big read back: same, 200000 bytes',
        'stat notes: size 19, directory no',
        'stat as: directory yes',
        'missing: ENOENT',
        'exists missing: no',
        'mkdir sub: OK',
        'write in sub: OK',
        'listed: big.bin,notes.txt,sub',
        'remove non-empty: ENOTEMPTY',
        'rename: OK',
        'listed sub: notes.txt,x.txt',
        'remove file: OK',
        'remove big: OK',
        'listed: sub',
        '',
      ].join('\n'),
    )

    const fileSystem = cluster.newClient('n2')
    await fileSystem.mkdir('/as-files')
    // Mounted at "/" as on a cluster node: the program's paths are /as-files/as/...
    const onStorage = storageGuestFileSystem(fileSystem)
    const storageRun = await runProgram(pool, program, ['/as-files'], { seed: 1, files: onStorage })
    await onStorage.close()
    expect(storageRun.error).toBeNull()
    expect([...storageRun.stdout.values()].join('')).toBe(hostOutput)
    const reader = cluster.newClient('n3')
    expect(decoder.decode(await reader.readFile('/as-files/as/sub/notes.txt'))).toBe(
      readFileSync(join(hostDirectory, 'as/sub/notes.txt'), 'utf8'),
    )
  })

  it(`a worker killed during file I/O leaves the same files and output (${killSeedCount} seeds)`, async () => {
    const runIn = async (name: string, killAtMs?: number) => {
      const fileSystem = cluster.newClient('n2')
      await fileSystem.mkdir(`/${name}`)
      const onStorage = storageGuestFileSystem(fileSystem, { mount: guestDirectory, directory: `/${name}` })
      const kill =
        killAtMs === undefined
          ? undefined
          : { triggers: [{ afterSaves: 0, delayMs: killAtMs, threadId: 0 }], random: () => 0 }
      const result = await runProgram(pool, journal, [guestDirectory], {
        seed: 1,
        saveIntervalMs: 10,
        files: onStorage,
        kill,
      })
      await onStorage.close()
      const reader = cluster.newClient('n1')
      const names = (await reader.readdir(`/${name}`)).map((entry) => entry.name)
      const done = names.includes('journal.done')
        ? decoder.decode(await reader.readFile(`/${name}/journal.done`))
        : ''
      return { result, names, done, stdout: [...result.stdout.values()].join('') }
    }
    await runIn('journal-warm-up')
    const reference = await runIn('journal-reference')
    expect(reference.result.error).toBeNull()
    expect(reference.stdout).toMatch(/^journal: \d+ bytes, checksum \d+\nlisted: journal.done\n$/)
    expect(reference.done.split('\n').length).toBe(40 * 25 + 1)

    const only = process.env.FABRIC_SEED
    const seeds =
      only === undefined ? Array.from({ length: killSeedCount }, (_, index) => index + 1) : [Number(only)]
    let kills = 0
    for (const seed of seeds) {
      // Early enough that the run, faster than the reference at times on a busy machine, is still going.
      const killAtMs = seededRandom(seed)() * 0.6 * reference.result.durationMs
      const run = await runIn(`journal-${seed}`, killAtMs)
      const where = `SEED=${seed} (kill at ${killAtMs.toFixed(0)} ms); rerun: FABRIC_SEED=${seed} npx vitest run test/guest-files.test.ts`
      expect(run.result.error, where).toBeNull()
      expect(run.stdout, where).toBe(reference.stdout)
      expect(run.names, where).toEqual(['journal.done'])
      expect(run.done === reference.done, where).toBe(true)
      if (run.result.kills > 0) kills++
    }
    if (only === undefined) expect(kills).toBeGreaterThanOrEqual(1)
  })

  it('fd_readdir lists a large directory through small buffers, cookie by cookie', async () => {
    const fileSystem = cluster.newClient('n2')
    await fileSystem.mkdir('/many')
    const names = Array.from({ length: 150 }, (_, index) => `entry-${String(index).padStart(3, '0')}.txt`)
    for (const name of names) await fileSystem.close(await fileSystem.open(`/many/${name}`, 'w'))
    const session = new GuestFileSession({ fileSystem, directory: '/many' })
    const { call } = caller(session)
    const opened = await call('path_open', [preopenFd, 0, wasiOpenFlags.directory, wasiRights.fdRead, 0], '.')
    expect(opened.result).toBe(wasiErrno.success)
    const listed: string[] = []
    let cookie = 0
    for (let calls = 0; calls < 1000; calls++) {
      // 100 bytes: about two entries, the last one often cut short, as wasi-libc handles it.
      const reply = await call('fd_readdir', [fdOf(opened), 100, cookie])
      expect(reply.result).toBe(wasiErrno.success)
      const bytes = reply.payload!
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
      let offset = 0
      let progressed = false
      while (offset + 24 <= bytes.length) {
        const nameBytes = view.getUint32(offset + 16, true)
        if (offset + 24 + nameBytes > bytes.length) break
        listed.push(decoder.decode(bytes.subarray(offset + 24, offset + 24 + nameBytes)))
        cookie = Number(view.getBigUint64(offset, true))
        offset += 24 + nameBytes
        progressed = true
      }
      if (bytes.length < 100 || !progressed) break
    }
    expect(listed).toEqual(['.', '..', ...names])
    await session.end()
  })

  it('storage errors reach the guest as the matching WASI errno', async () => {
    const fileSystem = cluster.newClient('n1')
    await fileSystem.mkdir('/errors')
    const session = new GuestFileSession({ fileSystem, directory: '/errors' })
    const { call } = caller(session)
    const open = (path: string, flags: number, rights = readWrite, fdFlags = 0) =>
      call('path_open', [preopenFd, 0, flags, rights, fdFlags], path)

    expect((await open('missing.txt', 0)).result).toBe(wasiErrno.noent)
    const created = await open('a.txt', wasiOpenFlags.create | wasiOpenFlags.exclusive)
    expect(created.result).toBe(wasiErrno.success)
    expect((await open('a.txt', wasiOpenFlags.create | wasiOpenFlags.exclusive)).result).toBe(wasiErrno.exist)
    expect((await open('a.txt/b', wasiOpenFlags.create)).result).toBe(wasiErrno.notdir)
    expect((await call('path_create_directory', [preopenFd], 'd')).result).toBe(wasiErrno.success)
    expect((await call('path_create_directory', [preopenFd], 'd')).result).toBe(wasiErrno.exist)
    expect((await open('d/inner.txt', wasiOpenFlags.create)).result).toBe(wasiErrno.success)
    expect((await call('path_remove_directory', [preopenFd], 'd')).result).toBe(wasiErrno.notempty)
    expect((await call('path_unlink_file', [preopenFd], 'd')).result).toBe(wasiErrno.isdir)
    expect((await call('path_remove_directory', [preopenFd], 'a.txt')).result).toBe(wasiErrno.notdir)
    expect((await open('d', 0, readWrite)).result).toBe(wasiErrno.isdir)
    expect((await open('d', wasiOpenFlags.directory, wasiRights.fdRead)).result).toBe(wasiErrno.success)
    expect((await open('a.txt', wasiOpenFlags.directory, wasiRights.fdRead)).result).toBe(wasiErrno.notdir)
    expect((await open('../outside.txt', wasiOpenFlags.create)).result).toBe(wasiErrno.notcapable)
    expect((await open('/etc/passwd', 0)).result).toBe(wasiErrno.notcapable)
    expect((await call('fd_read', [99, 10])).result).toBe(wasiErrno.badf)
    const readOnly = fdOf(await open('a.txt', 0, wasiRights.fdRead))
    expect((await call('fd_write', [readOnly], 'no')).result).toBe(wasiErrno.badf)
    expect((await call('fd_seek', [readOnly, -1, wasiWhence.set])).result).toBe(wasiErrno.inval)
    expect((await call('fd_close', [preopenFd])).result).toBe(wasiErrno.notsup)
    expect((await call('path_rename', [preopenFd, preopenFd, 7], 'missingb.txt')).result).toBe(
      wasiErrno.noent,
    )
    expect((await call('fd_filestat_set_times', [readOnly, 0, 0, 0])).result).toBe(wasiErrno.notsup)
    expect(wasiErrnoOf(new FileSystemError('EAGAIN', 'open'))).toBe(wasiErrno.again)
    expect(wasiErrnoOf(new Error('brick unavailable'))).toBe(wasiErrno.io)
    await session.end()
  })

  it('a thread resumed on another node continues its files from its journal, effects applied once', async () => {
    await cluster.client('n1').mkdir('/resume')
    const store = new MemoryStore()
    const key = threadFilesKey('p1', '0')
    const newSession = (node: string, journaled = true) =>
      new GuestFileSession({
        fileSystem: cluster.newClient(node),
        directory: '/resume',
        ...(journaled ? { journal: { store, key } } : {}),
      })
    const open = (path: string, flags: number, fdFlags = 0) =>
      ['path_open', [preopenFd, 0, flags, readWrite, fdFlags], path] as const
    // The thread's calls, in order; a save is taken at call `saveAt`, and the node dies after the last.
    const script: Array<readonly [string, readonly number[], string | null]> = [
      open('data.txt', wasiOpenFlags.create | wasiOpenFlags.truncate),
      ['fd_write', [4], 'hello, '],
      open('log.txt', wasiOpenFlags.create, wasiFdFlags.append),
      ['fd_write', [5], 'first\n'],
      // The save: the table as it was when this call began travels in the journal.
      ['fd_write', [4], 'world'],
      ['path_create_directory', [preopenFd], 'made'],
      ['fd_write', [5], 'second\n'],
      ['fd_close', [5], null],
      ['fd_seek', [4, 0, wasiWhence.set], null],
      // Reads the '!' written (and committed) below only in a re-run that ignored the journal.
      ['fd_read', [4, 100], null],
      ['path_rename', [preopenFd, preopenFd, 8], 'data.txtmade/data.txt'],
      ['fd_write', [4], '!'],
      ['fd_close', [4], null],
    ]
    const saveAt = 5
    const undisturbed = async () => {
      const session = newSession('n1', false)
      const { call } = caller(session)
      const replies: HostCallReply[] = []
      for (const [name, args, payload] of script) replies.push(await call(name, args, payload))
      return replies
    }
    const reference = await undisturbed()
    expect(reference.every((reply) => reply.result === wasiErrno.success)).toBe(true)
    expect(decoder.decode(reference[9]!.payload!)).toBe('hello, world')
    const expectedData = 'hello, world!'
    const expectedLog = 'first\nsecond\n'
    expect(decoder.decode(await cluster.client('n3').readFile('/resume/made/data.txt'))).toBe(expectedData)
    expect(decoder.decode(await cluster.client('n3').readFile('/resume/log.txt'))).toBe(expectedLog)

    // Again from scratch, with the journal: the node dies after the last call; the thread resumes
    // on n2 from the save at call `saveAt` and makes those calls again.
    for (const path of ['/resume/made/data.txt', '/resume/log.txt']) await cluster.client('n1').unlink(path)
    await cluster.client('n1').rmdir('/resume/made')
    const first = newSession('n1')
    const firstCaller = caller(first)
    const firstReplies: HostCallReply[] = []
    for (const [index, [name, args, payload]] of script.entries()) {
      firstReplies.push(await firstCaller.call(name, args, payload))
      // The worker takes the save while call `saveAt` is pending; the host checkpoints after it.
      if (index + 1 === saveAt) await first.checkpoint(saveAt)
    }
    expect(firstReplies).toEqual(reference)
    // n1 dies: its session is dropped without closing anything.
    const resumed = newSession('n2')
    await resumed.resume(saveAt)
    const again = caller(resumed, saveAt)
    const replayed: HostCallReply[] = []
    for (const [name, args, payload] of script.slice(saveAt - 1))
      replayed.push(await again.call(name, args, payload))
    expect(replayed).toEqual(reference.slice(saveAt - 1))
    await resumed.checkpoint(script.length + 1)
    await resumed.end()
    const reader = cluster.client('n3')
    expect(decoder.decode(await reader.readFile('/resume/made/data.txt'))).toBe(expectedData)
    expect(decoder.decode(await reader.readFile('/resume/log.txt'))).toBe(expectedLog)
    expect((await reader.readdir('/resume')).map((entry) => entry.name)).toEqual(['log.txt', 'made'])

    // The first incarnation, fenced, cannot write the journal any more.
    await expect(first.checkpoint(99)).rejects.toBeInstanceOf(GuestFilesError)
  })

  it('a resumed thread reopens its files by id: another client renamed one and unlinked another while it was saved, and its reads and writes go on', async () => {
    const writer = cluster.newClient('n1')
    await writer.mkdir('/by-id')
    await writer.writeFile('/by-id/input.txt', encoder.encode('0123456789abcdef'))
    await writer.writeFile('/by-id/scratch.txt', encoder.encode('scratch!'))
    const store = new MemoryStore()
    const key = threadFilesKey('p-by-id', '0')
    const newSession = (node: string) =>
      new GuestFileSession({
        fileSystem: cluster.newClient(node),
        directory: '/by-id',
        journal: { store, key },
      })
    const first = newSession('n1')
    const firstCaller = caller(first)
    const input = fdOf(await firstCaller.call('path_open', [preopenFd, 0, 0, readWrite, 0], 'input.txt'))
    const scratch = fdOf(
      await firstCaller.call('path_open', [preopenFd, 0, 0, wasiRights.fdRead, 0], 'scratch.txt'),
    )
    expect(decoder.decode((await firstCaller.call('fd_read', [input, 4])).payload!)).toBe('0123')
    await first.checkpoint(firstCaller.next)
    // While the thread is saved (its node about to die), another client renames one file and unlinks the other.
    const other = cluster.newClient('n3')
    await other.rename('/by-id/input.txt', '/by-id/renamed.txt')
    await other.unlink('/by-id/scratch.txt')
    // The node dies; the thread resumes on n2 from the save.
    const resumed = newSession('n2')
    await resumed.resume(firstCaller.next)
    const again = caller(resumed, firstCaller.next)
    const read = await again.call('fd_read', [input, 4])
    expect(read.result).toBe(wasiErrno.success)
    expect(decoder.decode(read.payload!)).toBe('4567')
    expect(decoder.decode((await again.call('fd_read', [scratch, 100])).payload!)).toBe('scratch!')
    expect((await again.call('fd_write', [input], '+')).result).toBe(wasiErrno.success)
    await resumed.end()
    expect(decoder.decode(await other.readFile('/by-id/renamed.txt'))).toBe('01234567+9abcdef')
    expect((await other.readdir('/by-id')).map((entry) => entry.name)).toEqual(['renamed.txt'])
  })

  it('an abandoned incarnation discards its descriptors: nothing stays open in the storage client, its writes since the save never land', async () => {
    const fileSystem = cluster.newClient('n1')
    await fileSystem.mkdir('/abandon')
    const held = new Set<number>()
    const counted: FileSystem = {
      ...fileSystem,
      async open(path, flags, options) {
        const fd = await fileSystem.open(path, flags, options)
        held.add(fd)
        return fd
      },
      async close(fd) {
        held.delete(fd)
        await fileSystem.close(fd)
      },
      async discard(fd) {
        held.delete(fd)
        await fileSystem.discard(fd)
      },
    }
    const session = new GuestFileSession({
      fileSystem: counted,
      directory: '/abandon',
      journal: { store: new MemoryStore(), key: threadFilesKey('p-abandon', '0') },
    })
    const { call } = caller(session)
    const opened = await call('path_open', [preopenFd, 0, wasiOpenFlags.create, readWrite, 0], 'out.txt')
    expect(opened.result).toBe(wasiErrno.success)
    expect((await call('fd_write', [fdOf(opened)], 'saved')).result).toBe(wasiErrno.success)
    await session.checkpoint(3)
    expect((await call('fd_write', [fdOf(opened)], ' and lost')).result).toBe(wasiErrno.success)
    expect(held.size).toBe(1)
    const [storageFd] = held
    await session.abandon()
    expect(held.size).toBe(0)
    await expect(fileSystem.fstat(storageFd!)).rejects.toMatchObject({ code: 'EBADF' })
    expect(decoder.decode(await cluster.client('n3').readFile('/abandon/out.txt'))).toBe('saved')
    expect((await call('fd_write', [fdOf(opened)], 'late')).result).toBe(wasiErrno.badf)
  })

  it('a file created again by the re-run is renamed into place and removed as in the first run', async () => {
    await cluster.client('n1').mkdir('/again')
    const store = new MemoryStore()
    const key = threadFilesKey('p3', '0')
    const session = (node: string) =>
      new GuestFileSession({
        fileSystem: cluster.newClient(node),
        directory: '/again',
        journal: { store, key },
      })
    // Write a.tmp, rename it to a.txt; write b.tmp, unlink it; mkdir d, rmdir d.
    const script: Array<readonly [string, readonly number[], string | null]> = [
      ['path_open', [preopenFd, 0, wasiOpenFlags.create | wasiOpenFlags.truncate, readWrite, 0], 'a.tmp'],
      ['fd_write', [4], 'a'],
      ['fd_close', [4], null],
      ['path_rename', [preopenFd, preopenFd, 5], 'a.tmpa.txt'],
      ['path_open', [preopenFd, 0, wasiOpenFlags.create | wasiOpenFlags.truncate, readWrite, 0], 'b.tmp'],
      ['fd_close', [4], null],
      ['path_unlink_file', [preopenFd], 'b.tmp'],
      ['path_create_directory', [preopenFd], 'd'],
      ['path_remove_directory', [preopenFd], 'd'],
    ]
    const first = session('n1')
    const firstCaller = caller(first)
    // The save is taken at the first call, before anything exists.
    const replies: HostCallReply[] = []
    for (const [index, [name, args, payload]] of script.entries()) {
      replies.push(await firstCaller.call(name, args, payload))
      if (index === 0) await first.checkpoint(1)
    }
    expect(replies.every((reply) => reply.result === wasiErrno.success)).toBe(true)
    const resumed = session('n2')
    await resumed.resume(1)
    const again = caller(resumed)
    for (const [index, [name, args, payload]] of script.entries())
      expect(await again.call(name, args, payload), `call ${index + 1}`).toEqual(replies[index])
    await resumed.end()
    const reader = cluster.client('n3')
    expect((await reader.readdir('/again')).map((entry) => entry.name)).toEqual(['a.txt'])
    expect(decoder.decode(await reader.readFile('/again/a.txt'))).toBe('a')
  })

  it('a change applied just before its node died (reply not yet logged) is not applied again', async () => {
    await cluster.client('n1').mkdir('/intent')
    const store = new MemoryStore()
    // After `writesLeft` more writes the store stops answering this node, as when it is SIGKILLed.
    let writesLeft = Number.POSITIVE_INFINITY
    const dyingStore = {
      get: (key: string) => store.get(key),
      cas: (key: string, version: number, value: Uint8Array) =>
        writesLeft-- > 0 ? store.cas(key, version, value) : new Promise<never>(() => {}),
    }
    const key = threadFilesKey('p2', '0')
    const first = new GuestFileSession({
      fileSystem: cluster.newClient('n1'),
      directory: '/intent',
      journal: { store: dyingStore, key },
    })
    const firstCaller = caller(first)
    const created = await firstCaller.call(
      'path_open',
      [preopenFd, 0, wasiOpenFlags.create, readWrite, 0],
      'a.txt',
    )
    expect(created.result).toBe(wasiErrno.success)
    expect((await firstCaller.call('fd_write', [fdOf(created)], 'content')).result).toBe(wasiErrno.success)
    // The save was taken while call 2 (the write) was pending.
    await first.checkpoint(2)
    expect((await firstCaller.call('path_create_directory', [preopenFd], 'd')).result).toBe(wasiErrno.success)
    // The rename's intent is logged and the rename applied, then the node dies.
    writesLeft = 1
    void firstCaller.call('path_rename', [preopenFd, preopenFd, 5], 'a.txtd/b.txt')
    const reader = cluster.client('n3')
    for (let waited = 0; (await reader.readdir('/intent/d')).length === 0; waited++) {
      expect(waited).toBeLessThan(500)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }

    const resumed = new GuestFileSession({
      fileSystem: cluster.newClient('n2'),
      directory: '/intent',
      journal: { store, key },
    })
    await resumed.resume(2)
    const again = caller(resumed, 2)
    expect((await again.call('fd_write', [4], 'content')).result).toBe(wasiErrno.success)
    expect((await again.call('path_create_directory', [preopenFd], 'd')).result).toBe(wasiErrno.success)
    expect((await again.call('path_rename', [preopenFd, preopenFd, 5], 'a.txtd/b.txt')).result).toBe(
      wasiErrno.success,
    )
    // The descriptor followed the file to its new name.
    expect((await again.call('fd_write', [4], '!')).result).toBe(wasiErrno.success)
    expect((await again.call('fd_close', [4])).result).toBe(wasiErrno.success)
    await resumed.end()
    expect((await reader.readdir('/intent')).map((entry) => entry.name)).toEqual(['d'])
    expect(decoder.decode(await reader.readFile('/intent/d/b.txt'))).toBe('content!')
  })
})
