/**
 * Random operation sequences against a shadow copy on the local disk: every call is made on the
 * distributed file system (three clients on three in-process storage nodes, r = 3, small chunks)
 * and with node:fs on a temporary directory; results, error codes, listings, types, sizes and
 * contents must be identical at every step.
 *
 * Calls on a file that is open with unsaved writes go to the client that holds it open (the other
 * clients would, by close-to-open consistency, rightly still see the committed version).
 */

import * as nodeFs from 'node:fs'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { FileSystemError } from '../storage/errors.ts'
import type { FileSystem, OpenFlags, Whence } from '../storage/file-system.ts'
import { createFileSystemCluster } from './support/storage-file-systems.ts'
import { seedBanner, seedsToRun, type TestRandom, testRandom } from './support/storage-random.ts'

const testFile = 'test/storage-file-system-shadow.test.ts'
const testName = 'random operations leave identical results, listings, sizes and contents'
const operationsPerSeed = process.env.FABRIC_SOAK === '1' ? 4000 : 1500
/** Full content comparison every this many operations (listings, types and sizes are compared after every one). */
const contentSweepEvery = 10
const root = mkdtempSync(join(tmpdir(), 'fabric-shadow-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

const nodes = ['a', 'b', 'c']
const names = ['a', 'b', 'c', 'd', 'e']
const flagChoices: OpenFlags[] = ['r', 'r+', 'w', 'wx', 'w+', 'a', 'a+', 'ax', 'wx+']

interface OpenPair {
  ours: number
  client: string
  shadow: number
  position: number
  append: boolean
}

type Outcome = { ok: true; value: unknown } | { ok: false; code: string }

async function outcomeOf(run: () => Promise<unknown> | unknown): Promise<Outcome> {
  try {
    return { ok: true, value: await run() }
  } catch (error) {
    const code = (error as { code?: string }).code
    if (code === undefined || (error instanceof FileSystemError && code === 'EIO')) throw error
    return { ok: false, code }
  }
}

function randomPath(random: TestRandom): string {
  const depth = 1 + random.below(3)
  return `/${Array.from({ length: depth }, () => random.pick(names)).join('/')}`
}

/** Mostly a path that exists, or a new name in an existing directory, so that calls more often succeed. */
function likelyPath(random: TestRandom, shadowRoot: string): string {
  if (random.chance(0.25)) return randomPath(random)
  let path = ''
  for (;;) {
    let entries: nodeFs.Dirent[] = []
    try {
      entries = nodeFs.readdirSync(join(shadowRoot, path), { withFileTypes: true })
    } catch {}
    if (entries.length === 0 || random.chance(0.3)) return `${path}/${random.pick(names)}`
    const entry = random.pick(entries)
    path = `${path}/${entry.name}`
    if (!entry.isDirectory() || random.chance(0.4)) return path
  }
}

class ShadowRun {
  readonly log: string[] = []
  readonly open: OpenPair[] = []
  readonly random: TestRandom
  readonly shadowRoot: string
  readonly chunkBytes: number
  private readonly fileSystems: Map<string, FileSystem>
  constructor(random: TestRandom, shadowRoot: string, clients: Map<string, FileSystem>, chunkBytes: number) {
    this.random = random
    this.shadowRoot = shadowRoot
    this.fileSystems = clients
    this.chunkBytes = chunkBytes
  }

  path(): string {
    return likelyPath(this.random, this.shadowRoot)
  }

  /** Every directory of the shadow tree, the root as "". */
  directories(): Array<{ path: string; empty: boolean }> {
    const result: Array<{ path: string; empty: boolean }> = []
    const walk = (path: string) => {
      const entries = nodeFs.readdirSync(join(this.shadowRoot, path), { withFileTypes: true })
      result.push({ path, empty: entries.length === 0 })
      for (const entry of entries) if (entry.isDirectory()) walk(`${path}/${entry.name}`)
    }
    walk('')
    return result
  }

  /** For calls that create: usually a fresh name in an existing directory. */
  pathToCreate(): string {
    if (this.random.chance(0.4)) return this.path()
    return `${this.random.pick(this.directories()).path}/${this.random.pick(names)}`
  }

  /** For rmdir: usually an existing directory, often an empty one. */
  pathToRemove(): string {
    const candidates = this.directories().filter((directory) => directory.path !== '')
    if (candidates.length === 0 || this.random.chance(0.3)) return this.path()
    const empty = candidates.filter((directory) => directory.empty)
    return this.random.pick(empty.length > 0 && this.random.chance(0.6) ? empty : candidates).path
  }

  shadowPath(path: string): string {
    // No trailing slash for the root: Linux treats "dir/" differently from "dir" (O_CREAT on it is EISDIR).
    return path === '/' ? this.shadowRoot : join(this.shadowRoot, path)
  }

  /** The client that must serve calls on this path: the one holding its file open, else a random one. */
  clientFor(path: string): string {
    try {
      const inode = nodeFs.statSync(this.shadowPath(path)).ino
      const holder = this.open.find((pair) => nodeFs.fstatSync(pair.shadow).ino === inode)
      if (holder !== undefined) return holder.client
    } catch {}
    return this.random.pick(nodes)
  }

  fs(client: string): FileSystem {
    return this.fileSystems.get(client)!
  }

  randomData(): Uint8Array {
    const length = this.random.chance(0.1) ? 0 : 1 + this.random.below(this.chunkBytes * 3 + 20)
    return this.random.bytes(length)
  }

  randomOffset(): number {
    return this.random.below(this.chunkBytes * 4 + 40)
  }

  async compare(step: string, ours: () => Promise<unknown>, shadow: () => unknown): Promise<Outcome> {
    const expected = await outcomeOf(shadow)
    const actual = await outcomeOf(ours)
    this.log.push(`${step} -> ${expected.ok ? 'ok' : expected.code}`)
    expect(actual, `${step}\n${this.log.slice(-30).join('\n')}`).toEqual(expected)
    return actual
  }

  async step(): Promise<void> {
    const random = this.random
    // Calls on descriptors need an open one; without, the roll goes to the calls on paths.
    const roll = this.open.length === 0 ? 60 + random.below(40) : random.below(100)
    if (roll < 14) return this.openFile()
    if (roll < 22) return this.closeFile(random.below(this.open.length))
    if (roll < 38) return this.writeFile()
    if (roll < 48) return this.readFile()
    if (roll < 52) return this.seekFile()
    if (roll < 55) return this.ftruncateFile()
    if (roll < 57) return this.fsyncFile()
    if (roll < 60) return this.fstatFile()
    if (roll < 70) return this.openFile()
    if (roll < 73) return this.truncatePath()
    if (roll < 77) return this.statPath()
    if (roll < 81) return this.readdirPath()
    if (roll < 87) return this.mkdirPath()
    if (roll < 90) return this.rmdirPath()
    if (roll < 94) return this.unlinkPath()
    return this.renamePath()
  }

  async openFile(): Promise<void> {
    if (this.open.length >= 8) return this.closeFile(0)
    const path = this.random.chance(0.05) ? '/' : this.pathToCreate()
    const flags = this.random.pick(flagChoices)
    const client = this.clientFor(path)
    let shadowFd = -1
    let oursFd = -1
    const outcome = await this.compare(
      `open ${path} ${flags} @${client}`,
      async () => {
        oursFd = await this.fs(client).open(path, flags)
        return 'fd'
      },
      () => {
        shadowFd = nodeFs.openSync(this.shadowPath(path), flags)
        return 'fd'
      },
    )
    if (outcome.ok)
      this.open.push({ ours: oursFd, client, shadow: shadowFd, position: 0, append: flags.startsWith('a') })
  }

  async closeFile(index: number): Promise<void> {
    const [pair] = this.open.splice(index, 1)
    await this.compare(
      `close ${pair!.ours}@${pair!.client}`,
      () => this.fs(pair!.client).close(pair!.ours),
      () => nodeFs.closeSync(pair!.shadow),
    )
  }

  async writeFile(): Promise<void> {
    const pair = this.random.pick(this.open)
    const data = this.randomData()
    const positioned = this.random.chance(0.4)
    const position = positioned ? this.randomOffset() : null
    const outcome = await this.compare(
      `write ${pair.ours}@${pair.client} ${data.length} bytes at ${position ?? `offset ${pair.position}`}`,
      () => this.fs(pair.client).write(pair.ours, data, position),
      () =>
        nodeFs.writeSync(pair.shadow, data, 0, data.length, pair.append ? null : (position ?? pair.position)),
    )
    if (outcome.ok && position === null)
      pair.position = pair.append ? nodeFs.fstatSync(pair.shadow).size : pair.position + data.length
  }

  async readFile(): Promise<void> {
    const pair = this.random.pick(this.open)
    // At least one byte: node:fs answers a read of 0 bytes without asking the kernel, even on a write-only descriptor.
    const length = 1 + this.random.below(this.chunkBytes * 3 + 20)
    const position = this.random.chance(0.4) ? this.randomOffset() : null
    const outcome = await this.compare(
      `read ${pair.ours}@${pair.client} ${length} bytes at ${position ?? `offset ${pair.position}`}`,
      async () => Buffer.from(await this.fs(pair.client).read(pair.ours, length, position)).toString('hex'),
      () => {
        const buffer = Buffer.alloc(length)
        const count = nodeFs.readSync(pair.shadow, buffer, 0, length, position ?? pair.position)
        return buffer.subarray(0, count).toString('hex')
      },
    )
    if (outcome.ok && position === null) pair.position += (outcome.value as string).length / 2
  }

  async seekFile(): Promise<void> {
    const pair = this.random.pick(this.open)
    const whence = this.random.pick<Whence>(['set', 'current', 'end'])
    const offset = this.random.below(this.chunkBytes * 2 + 10) - (whence === 'set' ? 2 : this.chunkBytes)
    const outcome = await this.compare(
      `seek ${pair.ours}@${pair.client} ${offset} from ${whence}`,
      () => this.fs(pair.client).seek(pair.ours, offset, whence),
      () => {
        const stat = nodeFs.fstatSync(pair.shadow)
        // Directories have size 0 here.
        const end = stat.isDirectory() ? 0 : stat.size
        const base = whence === 'set' ? 0 : whence === 'current' ? pair.position : end
        if (base + offset < 0) throw Object.assign(new Error('EINVAL'), { code: 'EINVAL' })
        return base + offset
      },
    )
    if (outcome.ok) pair.position = outcome.value as number
  }

  async ftruncateFile(): Promise<void> {
    const pair = this.random.pick(this.open)
    const size = this.randomOffset()
    await this.compare(
      `ftruncate ${pair.ours}@${pair.client} ${size}`,
      () => this.fs(pair.client).ftruncate(pair.ours, size),
      () => nodeFs.ftruncateSync(pair.shadow, size),
    )
  }

  async fsyncFile(): Promise<void> {
    const pair = this.random.pick(this.open)
    await this.compare(
      `fsync ${pair.ours}@${pair.client}`,
      () => this.fs(pair.client).fsync(pair.ours),
      () => nodeFs.fsyncSync(pair.shadow),
    )
  }

  async fstatFile(): Promise<void> {
    const pair = this.random.pick(this.open)
    await this.compare(
      `fstat ${pair.ours}@${pair.client}`,
      async () => {
        const stat = await this.fs(pair.client).fstat(pair.ours)
        return { type: stat.type, size: stat.type === 'file' ? stat.size : 0 }
      },
      () => {
        const stat = nodeFs.fstatSync(pair.shadow)
        return { type: stat.isDirectory() ? 'directory' : 'file', size: stat.isDirectory() ? 0 : stat.size }
      },
    )
  }

  async truncatePath(): Promise<void> {
    const path = this.path()
    const size = this.randomOffset()
    const client = this.clientFor(path)
    await this.compare(
      `truncate ${path} ${size} @${client}`,
      () => this.fs(client).truncate(path, size),
      () => nodeFs.truncateSync(this.shadowPath(path), size),
    )
  }

  async statPath(): Promise<void> {
    const path = this.random.chance(0.1) ? '/' : this.path()
    const client = this.clientFor(path)
    await this.compare(
      `stat ${path} @${client}`,
      async () => {
        const stat = await this.fs(client).stat(path)
        return { type: stat.type, size: stat.type === 'file' ? stat.size : 0 }
      },
      () => {
        const stat = nodeFs.statSync(this.shadowPath(path))
        return { type: stat.isDirectory() ? 'directory' : 'file', size: stat.isDirectory() ? 0 : stat.size }
      },
    )
  }

  async readdirPath(): Promise<void> {
    const path = this.random.chance(0.3) ? '/' : this.path()
    const client = this.random.pick(nodes)
    await this.compare(
      `readdir ${path} @${client}`,
      () => this.fs(client).readdir(path),
      () => shadowListing(this.shadowPath(path)),
    )
  }

  async mkdirPath(): Promise<void> {
    const path = this.pathToCreate()
    const client = this.random.pick(nodes)
    await this.compare(
      `mkdir ${path} @${client}`,
      () => this.fs(client).mkdir(path),
      () => nodeFs.mkdirSync(this.shadowPath(path)),
    )
  }

  async rmdirPath(): Promise<void> {
    const path = this.pathToRemove()
    const client = this.random.pick(nodes)
    await this.compare(
      `rmdir ${path} @${client}`,
      () => this.fs(client).rmdir(path),
      () => nodeFs.rmdirSync(this.shadowPath(path)),
    )
  }

  async unlinkPath(): Promise<void> {
    const path = this.path()
    const client = this.random.pick(nodes)
    await this.compare(
      `unlink ${path} @${client}`,
      () => this.fs(client).unlink(path),
      () => nodeFs.unlinkSync(this.shadowPath(path)),
    )
  }

  async renamePath(): Promise<void> {
    const from = this.path()
    const to = this.random.chance(0.2) ? `${from}/${this.random.pick(names)}` : this.path()
    const client = this.random.pick(nodes)
    await this.compare(
      `rename ${from} ${to} @${client}`,
      () => this.fs(client).rename(from, to),
      () => nodeFs.renameSync(this.shadowPath(from), this.shadowPath(to)),
    )
  }

  /** Listings, types and sizes of the whole tree, and (when `contents`) every file's bytes. */
  async compareTree(contents: boolean): Promise<void> {
    const openInodes = new Map<number, string>()
    for (const pair of this.open) openInodes.set(nodeFs.fstatSync(pair.shadow).ino, pair.client)
    const expected: Record<string, string> = {}
    const actual: Record<string, string> = {}
    const files: Array<{ path: string; owner: string }> = []
    const walkShadow = (path: string) => {
      for (const entry of nodeFs.readdirSync(this.shadowPath(path), { withFileTypes: true })) {
        const child = `${path === '/' ? '' : path}/${entry.name}`
        if (entry.isDirectory()) {
          expected[child] = 'directory'
          walkShadow(child)
        } else {
          const stat = nodeFs.statSync(this.shadowPath(child))
          expected[child] = `file of ${stat.size} bytes`
          files.push({ path: child, owner: openInodes.get(stat.ino) ?? this.random.pick(nodes) })
        }
      }
    }
    walkShadow('/')
    const owners = new Map(files.map((file) => [file.path, file.owner]))
    const walkOurs = async (path: string) => {
      for (const entry of await this.fs(this.random.pick(nodes)).readdir(path)) {
        const child = `${path === '/' ? '' : path}/${entry.name}`
        if (entry.type === 'directory') {
          actual[child] = 'directory'
          await walkOurs(child)
        } else {
          const stat = await this.fs(owners.get(child) ?? this.random.pick(nodes)).stat(child)
          actual[child] = `file of ${stat.size} bytes`
        }
      }
    }
    await walkOurs('/')
    expect(actual, `the tree after\n${this.log.slice(-30).join('\n')}`).toEqual(expected)
    if (!contents) return
    for (const file of files) {
      const ours = Buffer.from(await this.fs(file.owner).readFile(file.path))
      if (!ours.equals(nodeFs.readFileSync(this.shadowPath(file.path))))
        expect.fail(`content of ${file.path} differs after\n${this.log.slice(-30).join('\n')}`)
    }
  }
}

function shadowListing(directory: string) {
  return nodeFs
    .readdirSync(directory, { withFileTypes: true })
    .map((entry) => ({ name: entry.name, type: entry.isDirectory() ? 'directory' : 'file' }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
}

describe('file system against a shadow copy on local disk', () => {
  for (const seed of seedsToRun(20, 100)) {
    it(`${testName} (seed ${seed})`, async () => {
      const random = testRandom(seed)
      const chunkBytes = random.pick([5, 16, 64, 1000])
      const { client } = await createFileSystemCluster({ nodeIds: nodes, seed, chunkBytes })
      const clients = new Map(nodes.map((node) => [node, client(node)]))
      const shadowRoot = join(root, `seed-${seed}`)
      nodeFs.mkdirSync(shadowRoot)
      const run = new ShadowRun(random, shadowRoot, clients, chunkBytes)
      try {
        for (let operation = 0; operation < operationsPerSeed; operation++) {
          await run.step()
          await run.compareTree(operation % contentSweepEvery === 0)
        }
        while (run.open.length > 0) await run.closeFile(0)
        await run.compareTree(true)
      } catch (error) {
        console.error(`${seedBanner(seed, testFile, testName)} (chunk ${chunkBytes} bytes)`)
        throw error
      } finally {
        for (const pair of run.open) nodeFs.closeSync(pair.shadow)
      }
    }, 120_000)
  }
})
