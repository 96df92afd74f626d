/**
 * WASI file calls over a mapped host directory (host/wasi-files.ts, host/files-node.ts): unmodified
 * C (fopen, fread, fwrite, fseek, opendir, rename...) reads and writes the directory, cannot leave
 * it, and a thread restored after its worker was killed leaves the same files behind.
 *
 * A failing kill run prints SEED=<n>; rerun that one with
 *   FABRIC_SEED=<n> npx vitest run test/wasi-files.test.ts
 */

import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { build } from '../fabric/cli/build.ts'
import { importModuleWasi } from '../host/abi.ts'
import { type NodeDirectoryFileSystem, nodeDirectoryFileSystem } from '../host/files-node.ts'
import { loadProgram, type Program } from '../host/program.ts'
import type { HostCallReply } from '../host/thread-runner.ts'
import { wasiErrno, wasiLookupSymlinkFollow, wasiOpenFlags, wasiRights } from '../host/wasi-files.ts'
import { nodeWorkerFactory } from '../host/worker-node.ts'
import { WorkerPool } from '../host/worker-pool.ts'
import { runProgram, seededRandom } from './support/run.ts'

const guestDirectory = '/data'
const preopenFd = 3
const killSeedCount = 6

/** A temp directory with `mapped/` (what guests see) next to `outside/` and links that point out. */
function createSandbox(): { base: string; mapped: string; outside: string } {
  const base = mkdtempSync(join(tmpdir(), 'fabric-wasi-files-'))
  const mapped = join(base, 'mapped')
  const outside = join(base, 'outside')
  mkdirSync(mapped)
  mkdirSync(outside)
  writeFileSync(join(outside, 'secret.txt'), 'secret')
  symlinkSync(outside, join(mapped, 'link-out'))
  symlinkSync(join(outside, 'secret.txt'), join(mapped, 'secret-link'))
  return { base, mapped, outside }
}

async function run(pool: WorkerPool, program: Program, files: NodeDirectoryFileSystem, killAtMs?: number) {
  const kill =
    killAtMs === undefined
      ? undefined
      : { triggers: [{ afterSaves: 0, delayMs: killAtMs, threadId: 0 }], random: () => 0 }
  const result = await runProgram(pool, program, [guestDirectory], {
    seed: 1,
    saveIntervalMs: 10,
    files,
    kill,
  })
  await files.close()
  return { ...result, stdout: [...result.stdout.values()].join(''), killed: result.kills > 0 }
}

/** Calls a file system directly, as a thread's worker would. */
function caller(files: NodeDirectoryFileSystem) {
  const sequences = new Map<number, number>()
  const encoder = new TextEncoder()
  return (
    threadId: number,
    name: string,
    args: number[],
    payload: string | Uint8Array | null = null,
    callSequence?: number,
  ): Promise<HostCallReply> => {
    const sequence = callSequence ?? (sequences.get(threadId) ?? 0) + 1
    sequences.set(threadId, Math.max(sequence, sequences.get(threadId) ?? 0))
    return files.handle(threadId, {
      callSequence: sequence,
      module: importModuleWasi,
      name,
      args,
      payload: typeof payload === 'string' ? encoder.encode(payload) : payload,
    })
  }
}

const fdOf = (reply: HostCallReply) =>
  new DataView(reply.payload!.buffer, reply.payload!.byteOffset).getUint32(0, true)
const readWrite = wasiRights.fdRead | wasiRights.fdWrite

describe('WASI files over a mapped directory', () => {
  let sandbox: { base: string; mapped: string; outside: string }
  let pool: WorkerPool

  beforeAll(() => {
    sandbox = createSandbox()
    pool = new WorkerPool({ createWorker: nodeWorkerFactory, runningMax: 2 })
  })

  afterAll(() => {
    pool?.close()
    if (sandbox !== undefined) rmSync(sandbox.base, { recursive: true, force: true })
  })

  it('C with plain libc writes, reads, seeks, lists and renames; escapes are refused', async () => {
    const wasm = build({ source: 'test/fixtures/c/files.c', output: join(sandbox.base, 'files.wasm') })
    const program = await loadProgram(new Uint8Array(readFileSync(wasm.output)))
    const files = nodeDirectoryFileSystem({ hostDirectory: sandbox.mapped, guestDirectory })
    const result = await run(pool, program, files)
    expect(result.error).toBeNull()
    expect(result.stderr).toBe('')
    expect(result.stdout).toBe(
      [
        'read: first line',
        'read: second line',
        'size after update: 23',
        'updated: first LINE',
        'second line',
        'a.txt exists after rename: no',
        'large.bin at 50000 matches: yes',
        'large.bin size: 100000 regular: yes',
        'second exclusive create: EEXIST',
        'thread wrote 42 bytes',
        'listed: exclusive.txt',
        'listed: large.bin',
        'listed: renamed.txt',
        'listed: thread.txt',
        'parent by ..: refused (ENOTCAPABLE)',
        'parent by sub/../..: refused (ENOTCAPABLE)',
        'link to outside directory: refused (ENOTCAPABLE)',
        'link to outside file: refused (ENOTCAPABLE)',
        'done',
        '',
      ].join('\n'),
    )
    expect(result.exitCode).toBe(0)

    const sub = join(sandbox.mapped, 'sub')
    expect(readdirSync(sub).sort()).toEqual(['exclusive.txt', 'large.bin', 'renamed.txt', 'thread.txt'])
    expect(readFileSync(join(sub, 'renamed.txt'), 'utf8')).toBe('first LINE\nsecond line\nappended\n')
    expect(readFileSync(join(sub, 'thread.txt'), 'utf8')).toBe(
      'thread line 0\nthread line 1\nthread line 2\n',
    )
    const large = readFileSync(join(sub, 'large.bin'))
    expect(large.length).toBe(100_000)
    expect(large.every((byte, index) => byte === ((index * 7 + Math.floor(index / 251)) & 0xff))).toBe(true)
    expect(readFileSync(join(sub, 'exclusive.txt')).length).toBe(0)
    // Nothing was written outside the mapped directory.
    expect(readdirSync(sandbox.base).sort()).toEqual(['files.wasm', 'mapped', 'outside'])
    expect(readdirSync(sandbox.outside)).toEqual(['secret.txt'])
    expect(readFileSync(join(sandbox.outside, 'secret.txt'), 'utf8')).toBe('secret')
  })

  it('nodeDirectoryFileSystem refuses paths that leave the directory with ENOTCAPABLE', async () => {
    const files = nodeDirectoryFileSystem({ hostDirectory: sandbox.mapped, guestDirectory })
    const call = caller(files)
    const create = wasiOpenFlags.create
    const escapes = [
      '../outside/secret.txt',
      '../mapped/../outside/new.txt',
      'a/../../outside/new.txt',
      '/etc/passwd',
      'link-out/secret.txt',
      'link-out/new.txt',
      'secret-link',
    ]
    for (const path of escapes) {
      const reply = await call(
        0,
        'path_open',
        [preopenFd, wasiLookupSymlinkFollow, create, readWrite, 0],
        path,
      )
      expect(reply.result, path).toBe(wasiErrno.notcapable)
    }
    expect((await call(0, 'path_create_directory', [preopenFd], '../made')).result).toBe(wasiErrno.notcapable)
    expect((await call(0, 'path_unlink_file', [preopenFd], 'link-out/secret.txt')).result).toBe(
      wasiErrno.notcapable,
    )
    const renameOut = new TextEncoder().encode('secret-link../stolen')
    expect((await call(0, 'path_rename', [preopenFd, preopenFd, 11], renameOut)).result).toBe(
      wasiErrno.notcapable,
    )
    // A link that stays inside is followed.
    writeFileSync(join(sandbox.mapped, 'inside.txt'), 'inside')
    symlinkSync('inside.txt', join(sandbox.mapped, 'inside-link'))
    const opened = await call(
      0,
      'path_open',
      [preopenFd, wasiLookupSymlinkFollow, 0, wasiRights.fdRead, 0],
      'inside-link',
    )
    expect(opened.result).toBe(wasiErrno.success)
    const read = await call(0, 'fd_read', [fdOf(opened), 100])
    expect(new TextDecoder().decode(read.payload!)).toBe('inside')
    // Without symlink_follow (O_NOFOLLOW), opening a link fails instead.
    expect((await call(0, 'path_open', [preopenFd, 0, 0, wasiRights.fdRead, 0], 'inside-link')).result).toBe(
      wasiErrno.loop,
    )
    await files.close()
    expect(readdirSync(sandbox.outside)).toEqual(['secret.txt'])
    expect(existsSync(join(sandbox.base, 'made'))).toBe(false)
  })

  it('nodeDirectoryFileSystem keeps descriptors per thread and answers a repeated call from its record', async () => {
    const files = nodeDirectoryFileSystem({ hostDirectory: sandbox.mapped, guestDirectory })
    const call = caller(files)
    const opened = await call(
      1,
      'path_open',
      [preopenFd, wasiLookupSymlinkFollow, wasiOpenFlags.create | wasiOpenFlags.truncate, readWrite, 0],
      'replayed.txt',
    )
    expect(opened.result).toBe(wasiErrno.success)
    const fd = fdOf(opened)
    expect((await call(2, 'fd_write', [fd], 'other thread')).result).toBe(wasiErrno.badf)
    const first = await call(1, 'fd_write', [fd], 'once\n', 10)
    expect(first.result).toBe(wasiErrno.success)
    // A thread restored from a save before call 10 makes it again: it must not write twice.
    const again = await call(1, 'fd_write', [fd], 'once\n', 10)
    expect(again).toEqual(first)
    expect(readFileSync(join(sandbox.mapped, 'replayed.txt'), 'utf8')).toBe('once\n')
    files.threadEnded(1)
    expect((await call(1, 'fd_write', [fd], 'after end\n', 11)).result).toBe(wasiErrno.badf)
    await files.close()
  })

  it('nodeDirectoryFileSystem refuses a host directory that does not exist', () => {
    expect(() =>
      nodeDirectoryFileSystem({ hostDirectory: join(sandbox.base, 'missing'), guestDirectory }),
    ).toThrow(/existing directory/)
  })

  it(`a worker killed during file I/O leaves the same files and output (${killSeedCount} seeds)`, async () => {
    const wasm = build({ source: 'test/fixtures/c/journal.c', output: join(sandbox.base, 'journal.wasm') })
    const program = await loadProgram(new Uint8Array(readFileSync(wasm.output)))
    const runIn = async (name: string, killAtMs?: number) => {
      const directory = join(sandbox.base, name)
      mkdirSync(directory)
      const result = await run(
        pool,
        program,
        nodeDirectoryFileSystem({ hostDirectory: directory, guestDirectory }),
        killAtMs,
      )
      return { result, directory }
    }
    // The first run also starts workers; the second shows how long the program itself runs.
    await runIn('journal-warm-up')
    const reference = await runIn('journal-reference')
    expect(reference.result.error).toBeNull()
    expect(reference.result.exitCode).toBe(0)
    expect(reference.result.stdout).toMatch(/^journal: \d+ bytes, checksum \d+\nlisted: journal.done\n$/)
    const journal = readFileSync(join(reference.directory, 'journal.done'), 'utf8')
    expect(journal.split('\n').length).toBe(40 * 25 + 1)

    const only = process.env.FABRIC_SEED
    const seeds =
      only === undefined ? Array.from({ length: killSeedCount }, (_, index) => index + 1) : [Number(only)]
    let kills = 0
    for (const seed of seeds) {
      const killAtMs = seededRandom(seed)() * reference.result.durationMs
      const { result, directory } = await runIn(`journal-${seed}`, killAtMs)
      const where = `SEED=${seed} (kill at ${killAtMs.toFixed(0)} ms, killed: ${result.killed}); rerun: FABRIC_SEED=${seed} npx vitest run test/wasi-files.test.ts`
      expect(result.error, where).toBeNull()
      expect(result.stdout, where).toBe(reference.result.stdout)
      expect(readdirSync(directory), where).toEqual(['journal.done'])
      expect(readFileSync(join(directory, 'journal.done'), 'utf8') === journal, where).toBe(true)
      if (result.killed) kills++
    }
    if (only === undefined) expect(kills).toBeGreaterThanOrEqual(killSeedCount / 2)
    console.log(
      `wasi-files: ${kills} of ${seeds.length} journal runs killed the worker; undisturbed run ${reference.result.durationMs.toFixed(0)} ms`,
    )
  })
})
