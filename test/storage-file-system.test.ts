import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { parseBrickCid } from '../storage/brick.ts'
import { encodeCbor } from '../storage/cbor.ts'
import { FileSystemError, StorageFormatError } from '../storage/errors.ts'
import { createFileSystem, type FileSystem } from '../storage/file-system.ts'
import { decodeManifest, encodeManifest } from '../storage/manifest.ts'
import {
  createMemoryMetadataStore,
  type MetadataStore,
  metadataValueBytesMax,
} from '../storage/metadata-store.ts'
import { decodeFileHead } from '../storage/records.ts'
import { realClock, realSleep, realWallClock } from './support/storage-cluster.ts'
import { createFileSystemCluster } from './support/storage-file-systems.ts'
import { seedBanner, testRandom } from './support/storage-random.ts'

const testFile = 'test/storage-file-system.test.ts'
const root = mkdtempSync(join(tmpdir(), 'fabric-fs-'))
let directoryCounter = 0
afterAll(() => rmSync(root, { recursive: true, force: true }))

const text = (value: string) => new TextEncoder().encode(value)
const string = (bytes: Uint8Array) => new TextDecoder().decode(bytes)

async function codeOf(call: Promise<unknown>): Promise<string> {
  try {
    await call
    return 'ok'
  } catch (error) {
    if (!(error instanceof FileSystemError)) throw error
    return error.code
  }
}

describe('file system calls and their POSIX errors', () => {
  it('each call fails with the POSIX code a local file system gives', async () => {
    const { client } = await createFileSystemCluster({ nodeIds: ['a', 'b', 'c'], seed: 1 })
    const fs = client('a')
    await fs.mkdir('/dir')
    await fs.writeFile('/dir/file', text('content'))
    await fs.mkdir('/dir/sub')
    await fs.writeFile('/dir/sub/inner', text('x'))
    const cases: Array<[string, () => Promise<unknown>, string]> = [
      ['open of a missing file', () => fs.open('/missing'), 'ENOENT'],
      ['open through a file', () => fs.open('/dir/file/x', 'w'), 'ENOTDIR'],
      ['exclusive create of an existing file', () => fs.open('/dir/file', 'wx'), 'EEXIST'],
      ['open of a directory for writing', () => fs.open('/dir', 'r+'), 'EISDIR'],
      ['mkdir of an existing name', () => fs.mkdir('/dir/file'), 'EEXIST'],
      ['mkdir in a missing directory', () => fs.mkdir('/nowhere/new'), 'ENOENT'],
      ['rmdir of a non-empty directory', () => fs.rmdir('/dir'), 'ENOTEMPTY'],
      ['rmdir of a file', () => fs.rmdir('/dir/file'), 'ENOTDIR'],
      ['rmdir of the root', () => fs.rmdir('/'), 'EBUSY'],
      ['unlink of a directory', () => fs.unlink('/dir/sub'), 'EISDIR'],
      ['unlink of a missing file', () => fs.unlink('/dir/none'), 'ENOENT'],
      ['readdir of a file', () => fs.readdir('/dir/file'), 'ENOTDIR'],
      ['rename of a directory into itself', () => fs.rename('/dir', '/dir/sub/dir'), 'EINVAL'],
      ['rename of a directory over a file', () => fs.rename('/dir/sub', '/dir/file'), 'ENOTDIR'],
      ['rename of a file over a directory', () => fs.rename('/dir/file', '/dir/sub'), 'EISDIR'],
      [
        'rename over a non-empty directory',
        () => fs.mkdir('/e').then(() => fs.rename('/e', '/dir/sub')),
        'ENOTEMPTY',
      ],
      ['truncate of a directory', () => fs.truncate('/dir', 0), 'EISDIR'],
      ['truncate to a negative size', () => fs.truncate('/dir/file', -1), 'EINVAL'],
      ['a name longer than 255 bytes', () => fs.mkdir(`/${'n'.repeat(256)}`), 'ENAMETOOLONG'],
      ['a closed descriptor', () => fs.read(99, 1), 'EBADF'],
    ]
    for (const [what, call, code] of cases) expect(await codeOf(call()), what).toBe(code)
  })

  it('descriptors: read-only refuses writes (EBADF), write-only refuses reads (EBADF), seek before 0 is EINVAL', async () => {
    const { client } = await createFileSystemCluster({ nodeIds: ['a'], seed: 2 })
    const fs = client('a')
    await fs.writeFile('/f', text('abc'))
    const readOnly = await fs.open('/f', 'r')
    expect(await codeOf(fs.write(readOnly, text('x')))).toBe('EBADF')
    expect(await codeOf(fs.ftruncate(readOnly, 0))).toBe('EINVAL')
    expect(await codeOf(fs.seek(readOnly, -1, 'set'))).toBe('EINVAL')
    expect(await fs.seek(readOnly, -1, 'end')).toBe(2)
    expect(string(await fs.read(readOnly, 10))).toBe('c')
    await fs.close(readOnly)
    expect(await codeOf(fs.close(readOnly))).toBe('EBADF')
    const writeOnly = await fs.open('/f', 'a')
    expect(await codeOf(fs.read(writeOnly, 1))).toBe('EBADF')
    await fs.write(writeOnly, text('d'), 0)
    await fs.close(writeOnly)
    expect(string(await fs.readFile('/f'))).toBe('abcd')
  })

  it('writing past the end leaves a hole of zeros; truncating and growing again does not bring old bytes back', async () => {
    const { client } = await createFileSystemCluster({ nodeIds: ['a', 'b', 'c'], seed: 3, chunkBytes: 4 })
    const fs = client('a')
    const fd = await fs.open('/sparse', 'w+')
    await fs.write(fd, text('abcdefghij'))
    await fs.ftruncate(fd, 6)
    await fs.ftruncate(fd, 12)
    await fs.write(fd, text('Z'), 20)
    await fs.close(fd)
    const expected = new Uint8Array(21)
    expected.set(text('abcdef'))
    expected[20] = 'Z'.charCodeAt(0)
    expect(await client('b').readFile('/sparse')).toEqual(expected)
    expect((await client('c').stat('/sparse')).size).toBe(21)
  })

  it('an unlinked file stays readable and writable through a descriptor opened before', async () => {
    const { client } = await createFileSystemCluster({ nodeIds: ['a'], seed: 4 })
    const fs = client('a')
    await fs.writeFile('/doomed', text('still here'))
    const fd = await fs.open('/doomed', 'r+')
    await fs.unlink('/doomed')
    expect(await codeOf(fs.stat('/doomed'))).toBe('ENOENT')
    expect(string(await fs.read(fd, 100))).toBe('still here')
    await fs.write(fd, text('!'))
    expect((await fs.fstat(fd)).size).toBe(11)
    await fs.close(fd)
    expect(await fs.readdir('/')).toEqual([])
  })
})

describe('consistency between clients', () => {
  it('close-to-open: writes become visible to other clients when the writer closes, to opens after that', async () => {
    const { client } = await createFileSystemCluster({ nodeIds: ['a', 'b'], seed: 5 })
    const writer = client('a')
    const reader = client('b')
    const fd = await writer.open('/shared', 'w')
    await writer.write(fd, text('first'))
    expect((await reader.stat('/shared')).size).toBe(0)
    const early = await reader.open('/shared', 'r')
    await writer.close(fd)
    // The reader opened before the close: it keeps the version it opened.
    expect(string(await reader.read(early, 100))).toBe('')
    await reader.close(early)
    expect(string(await reader.readFile('/shared'))).toBe('first')
    // fsync publishes as close does.
    const again = await writer.open('/shared', 'r+')
    await writer.write(again, text('FIRST'))
    await writer.fsync(again)
    expect(string(await reader.readFile('/shared'))).toBe('FIRST')
    await writer.close(again)
  })

  it('openById reaches a file by its id after another client renamed or unlinked it; it neither creates nor truncates', async () => {
    const { client } = await createFileSystemCluster({ nodeIds: ['a', 'b', 'c'], seed: 22 })
    const fs = client('a')
    await fs.writeFile('/first', text('first'))
    await fs.writeFile('/second', text('second'))
    const firstId = (await fs.stat('/first')).id
    const secondId = (await fs.stat('/second')).id
    await client('b').rename('/first', '/moved')
    await client('b').unlink('/second')
    const moved = await fs.openById(firstId, 'r+')
    expect(string(await fs.read(moved, 100, 0))).toBe('first')
    await fs.write(moved, text('F'), 0)
    await fs.close(moved)
    expect(string(await client('c').readFile('/moved'))).toBe('First')
    const unlinked = await fs.openById(secondId)
    expect(string(await fs.read(unlinked, 100, 0))).toBe('second')
    expect((await fs.fstat(unlinked)).id).toBe(secondId)
    await fs.close(unlinked)
    expect(await codeOf(fs.openById(firstId, 'w'))).toBe('EINVAL')
    expect(await codeOf(fs.openById(firstId, 'a'))).toBe('EINVAL')
    expect(await codeOf(fs.openById('../etc'))).toBe('EINVAL')
    expect(await codeOf(fs.openById('root'))).toBe('EINVAL')
  })

  it('discard releases a descriptor without committing: its uncommitted changes are dropped, the commits before stay', async () => {
    const { client } = await createFileSystemCluster({ nodeIds: ['a', 'b', 'c'], seed: 21, chunkBytes: 4096 })
    const owner = client('a')
    await owner.writeFile('/f', text('committed'))
    const fd = await owner.open('/f', 'r+')
    await owner.write(fd, text('COMMITTED'), 0)
    await owner.fsync(fd)
    // Several chunks, some written out to bricks in the background already: none of it lands.
    await owner.write(fd, new Uint8Array(40_000).fill(7), 9)
    await owner.discard(fd)
    expect(await codeOf(owner.fstat(fd))).toBe('EBADF')
    expect(string(await owner.readFile('/f'))).toBe('COMMITTED')
    expect(string(await client('b').readFile('/f'))).toBe('COMMITTED')
    // While another descriptor of the file stays open in the client, the shared changes stay: its close commits them.
    const kept = await owner.open('/f', 'r')
    const other = await owner.open('/f', 'r+')
    await owner.write(other, text('!'), 9)
    await owner.discard(other)
    await owner.close(kept)
    expect(string(await client('b').readFile('/f'))).toBe('COMMITTED!')
    expect(await codeOf(owner.discard(other))).toBe('EBADF')
  })

  it('two writers of one file are serialized at close: the result is one writer’s changes applied after the other’s', async () => {
    for (let seed = 1; seed <= 12; seed++) {
      const random = testRandom(seed)
      const chunkBytes = random.pick([3, 8, 64])
      const { client } = await createFileSystemCluster({ nodeIds: ['a', 'b', 'c'], seed, chunkBytes })
      const initial = random.bytes(random.below(40))
      await client('a').writeFile('/file', initial)
      type Change = { kind: 'write'; offset: number; bytes: Uint8Array } | { kind: 'truncate'; size: number }
      const plans: Change[][] = ['a', 'b', 'c'].map(() =>
        Array.from({ length: 1 + random.below(4) }, (): Change => {
          if (random.chance(0.25)) return { kind: 'truncate', size: random.below(50) }
          return { kind: 'write', offset: random.below(50), bytes: random.bytes(1 + random.below(20)) }
        }),
      )
      const closeOrder: number[] = []
      await Promise.all(
        ['a', 'b', 'c'].map(async (node, writer) => {
          const fs = client(node)
          const fd = await fs.open('/file', 'r+')
          for (const change of plans[writer]!) {
            if (change.kind === 'write') await fs.write(fd, change.bytes, change.offset)
            else await fs.ftruncate(fd, change.size)
          }
          await fs.close(fd)
          closeOrder.push(writer)
        }),
      )
      let expected = Buffer.from(initial)
      for (const writer of closeOrder)
        for (const change of plans[writer]!) {
          if (change.kind === 'truncate') {
            const resized = Buffer.alloc(change.size)
            expected.copy(resized, 0, 0, Math.min(change.size, expected.length))
            expected = resized
          } else {
            const end = change.offset + change.bytes.length
            if (end > expected.length) {
              const grown = Buffer.alloc(end)
              expected.copy(grown)
              expected = grown
            }
            expected.set(change.bytes, change.offset)
          }
        }
      const actual = Buffer.from(await client('b').readFile('/file'))
      expect(actual.equals(expected), seedBanner(seed, testFile, 'two writers')).toBe(true)
    }
  })

  it('concurrent exclusive creates of one name: exactly one succeeds, the others get EEXIST', async () => {
    const { client } = await createFileSystemCluster({ nodeIds: ['a', 'b', 'c'], seed: 6 })
    const codes = await Promise.all(
      ['a', 'b', 'c', 'a', 'b', 'c'].map((node, index) =>
        codeOf(
          client(node)
            .open('/only-one', 'wx')
            .then(async (fd) => {
              await client(node).write(fd, text(`writer ${index}`))
              await client(node).close(fd)
            }),
        ),
      ),
    )
    expect(codes.filter((code) => code === 'ok')).toHaveLength(1)
    expect(codes.filter((code) => code === 'EEXIST')).toHaveLength(5)
    expect(await client('a').readdir('/')).toEqual([{ name: 'only-one', type: 'file' }])
  })

  it('concurrent renames of one file to different directories: one wins, the file exists exactly once', async () => {
    const { client } = await createFileSystemCluster({ nodeIds: ['a', 'b', 'c'], seed: 7 })
    for (const directory of ['/x', '/y', '/z']) await client('a').mkdir(directory)
    await client('a').writeFile('/x/moving', text('payload'))
    const codes = await Promise.all([
      codeOf(client('a').rename('/x/moving', '/y/moved')),
      codeOf(client('b').rename('/x/moving', '/z/moved')),
      codeOf(client('c').rename('/x/moving', '/x/renamed')),
    ])
    expect(codes.filter((code) => code === 'ok')).toHaveLength(1)
    expect(codes.filter((code) => code === 'ENOENT')).toHaveLength(2)
    const everywhere = [
      ...(await client('a').readdir('/x')),
      ...(await client('a').readdir('/y')),
      ...(await client('a').readdir('/z')),
    ]
    expect(everywhere).toHaveLength(1)
  })

  it('concurrent moves of two directories into each other cannot make a cycle', async () => {
    for (let round = 0; round < 10; round++) {
      const { client } = await createFileSystemCluster({ nodeIds: ['a', 'b'], seed: 100 + round })
      await client('a').mkdir('/p')
      await client('a').mkdir('/q')
      const codes = await Promise.all([
        codeOf(client('a').rename('/p', '/q/p')),
        codeOf(client('b').rename('/q', '/p/q')),
      ])
      expect(codes.filter((code) => code === 'ok')).toHaveLength(1)
      // Both directories are still reachable from the root.
      const top = await client('a').readdir('/')
      expect(top).toHaveLength(1)
      const inner = await client('a').readdir(`/${top[0]!.name}`)
      expect(inner).toHaveLength(1)
    }
  })

  it('rmdir racing a create inside the directory: never a file in a removed directory', async () => {
    for (let round = 0; round < 20; round++) {
      const { client } = await createFileSystemCluster({ nodeIds: ['a', 'b'], seed: 200 + round })
      await client('a').mkdir('/d')
      const [removed, created] = await Promise.all([
        codeOf(client('a').rmdir('/d')),
        codeOf(client('b').writeFile('/d/f', text('x'))),
      ])
      if (removed === 'ok') {
        expect(created).toBe('ENOENT')
        expect(await client('b').readdir('/')).toEqual([])
      } else {
        expect(removed).toBe('ENOTEMPTY')
        expect(created).toBe('ok')
        expect(await client('b').readdir('/d')).toEqual([{ name: 'f', type: 'file' }])
      }
    }
  })

  it('a client that dies at any step of a rename between directories leaves the file in exactly one of them', async () => {
    const probe = createMemoryMetadataStore()
    const counting = (metadata: MetadataStore, limit: number) => {
      let operations = 0
      const step = <T>(run: () => Promise<T>) =>
        ++operations > limit ? Promise.reject(new Error('client died')) : run()
      const store: MetadataStore = {
        get: (key) => step(() => metadata.get(key)),
        put: (key, value) => step(() => metadata.put(key, value)),
        cas: (key, version, value) => step(() => metadata.cas(key, version, value)),
      }
      return { store, operations: () => operations }
    }
    const { cluster } = await createFileSystemCluster({ nodeIds: ['a', 'b', 'c'], seed: 8 })
    const over = (metadata: MetadataStore, seed: number) =>
      createFileSystem(
        {
          metadata,
          bricks: cluster.node('a'),
          clock: realClock,
          wallClock: realWallClock,
          random: testRandom(seed),
          sleep: realSleep,
        },
        { transactionTimeoutMs: 5 },
      )
    async function prepare(metadata: MetadataStore) {
      const fs = over(metadata, 1)
      await fs.mkdir('/from')
      await fs.mkdir('/to')
      await fs.writeFile('/from/file', text('moving'))
    }
    await prepare(probe)
    const before = probe.operationCount()
    await over(probe, 2).rename('/from/file', '/to/file')
    const steps = probe.operationCount() - before
    expect(steps).toBeGreaterThan(6)
    for (let dieAfter = 0; dieAfter < steps; dieAfter++) {
      const metadata = createMemoryMetadataStore()
      await prepare(metadata)
      const dying = counting(metadata, dieAfter)
      expect(await codeOf(over(dying.store, 3).rename('/from/file', '/to/file'))).toBe('EIO')
      const survivor = over(metadata, 4)
      const from = await survivor.readdir('/from')
      const to = await survivor.readdir('/to')
      expect(from.length + to.length, `died after ${dieAfter} of ${steps} operations`).toBe(1)
      const path = from.length === 1 ? '/from/file' : '/to/file'
      expect(string(await survivor.readFile(path))).toBe('moving')
      // The next change of those directories gets through, settling the dead transaction first.
      await survivor.rename(path, '/from/back')
      expect(await survivor.readdir('/from')).toEqual([{ name: 'back', type: 'file' }])
    }
  })

  it('store timeouts of unknown outcome leave file operations correct', async () => {
    for (let seed = 1; seed <= 5; seed++) {
      const random = testRandom(seed)
      const { cluster } = await createFileSystemCluster({ nodeIds: ['a', 'b', 'c'], seed })
      const metadata = createMemoryMetadataStore({ faults: { random, timeoutProbability: 0.15 } })
      const fs = createFileSystem(
        {
          metadata,
          bricks: cluster.node('a'),
          clock: realClock,
          wallClock: realWallClock,
          random,
          sleep: realSleep,
        },
        { chunkBytes: 16 },
      )
      await fs.mkdir('/a')
      await fs.mkdir('/b')
      for (let i = 0; i < 10; i++) await fs.writeFile(`/a/${i}`, text(`file ${i} `.repeat(i)))
      for (let i = 0; i < 10; i += 2) await fs.rename(`/a/${i}`, `/b/${i}`)
      for (let i = 1; i < 10; i += 4) await fs.unlink(`/a/${i}`)
      await fs.rmdir('/b').catch(() => {})
      const message = seedBanner(seed, testFile, 'store timeouts')
      expect(
        (await fs.readdir('/a')).map((entry) => entry.name),
        message,
      ).toEqual(['3', '7'])
      expect(
        (await fs.readdir('/b')).map((entry) => entry.name),
        message,
      ).toEqual(['0', '2', '4', '6', '8'])
      for (const i of [3, 7])
        expect(string(await fs.readFile(`/a/${i}`)), message).toBe(`file ${i} `.repeat(i))
    }
  })
})

describe('directories and formats', () => {
  it('a directory too big for one metadata value keeps its listing in a brick and works as before', async () => {
    const { client, metadata } = await createFileSystemCluster({ nodeIds: ['a', 'b', 'c'], seed: 9 })
    const fs = client('a')
    await fs.mkdir('/big')
    const names = Array.from(
      { length: 160 },
      (_, index) => `${String(index).padStart(4, '0')}-${'x'.repeat(200)}`,
    )
    for (const name of names) await fs.mkdir(`/big/${name}`)
    const values = metadata.entries().map(([, entry]) => entry.value.length)
    expect(Math.max(...values)).toBeLessThan(metadataValueBytesMax)
    expect((await client('b').readdir('/big')).map((entry) => entry.name)).toEqual(names)
    await client('b').rename(`/big/${names[0]}`, '/moved')
    await client('c').rmdir(`/big/${names[1]}`)
    expect(await client('a').readdir('/big')).toHaveLength(158)
    expect(await client('a').readdir('/')).toEqual([
      { name: 'big', type: 'directory' },
      { name: 'moved', type: 'directory' },
    ])
  })

  it('readers refuse manifests and file heads of an unknown format version', async () => {
    const manifest = encodeManifest({ size: 0, chunkBytes: 1024, chunks: [] })
    expect(decodeManifest(manifest, 'test')).toEqual({ size: 0, chunkBytes: 1024, chunks: [] })
    const future = encodeCbor({ f: 'fabric-manifest', v: 2, size: 0, chunk: 1024, bricks: [] })
    expect(() => decodeManifest(future, 'test')).toThrow(StorageFormatError)
    expect(() => decodeManifest(new Uint8Array([0xff, 0x00]), 'test')).toThrow(StorageFormatError)
    const head = encodeCbor({ f: 'fabric-file', v: 9, size: 0, manifest: null, mtime: 0, gen: 1 })
    expect(() => decodeFileHead(head, 'test')).toThrow(StorageFormatError)
  })
})

describe('files over replicated bricks', () => {
  async function writeLarge(fs: FileSystem, path: string, bytes: Uint8Array) {
    const fd = await fs.open(path, 'w')
    for (let offset = 0; offset < bytes.length; offset += 10_000)
      await fs.write(fd, bytes.subarray(offset, Math.min(bytes.length, offset + 10_000)))
    await fs.close(fd)
  }

  it('successive chunks of a file are striped over the nodes, and the file reads back from any node', async () => {
    const nodes = ['a', 'b', 'c', 'd', 'e']
    const { client, cluster, metadata } = await createFileSystemCluster({
      nodeIds: nodes,
      seed: 10,
      chunkBytes: 4096,
    })
    const content = testRandom(10).bytes(12 * 4096 + 100)
    await writeLarge(client('a'), '/striped', content)
    const heads = metadata
      .entries()
      .filter(([key]) => key.startsWith('fs/default/i/') && !key.endsWith('/root'))
    expect(heads).toHaveLength(1)
    for (const node of nodes)
      expect(Buffer.from(await client(node).readFile('/striped')).equals(content)).toBe(true)
    // Every node holds some of the file's bricks; the writer holds all of them.
    for (const node of nodes) expect(cluster.node(node).store.stats().bricks).toBeGreaterThan(0)
    expect(cluster.node('a').store.stats().bricks).toBe(14)
  })

  it('small files written on one node spread their other replicas evenly over the other nodes', async () => {
    const nodes = ['a', 'b', 'c', 'd', 'e']
    const { client, cluster } = await createFileSystemCluster({ nodeIds: nodes, seed: 13 })
    const random = testRandom(13)
    for (let index = 0; index < 200; index++) await client('a').writeFile(`/${index}`, random.bytes(100))
    const others = nodes.slice(1).map((node) => cluster.node(node).store.stats().bricks)
    const mean = others.reduce((sum, count) => sum + count, 0) / others.length
    for (const count of others)
      expect(Math.abs(count - mean) / mean, `bricks per node ${others.join(', ')}`).toBeLessThan(0.25)
    // Each file: a data brick and a manifest brick, 3 replicas each, one of them on the writer.
    expect(cluster.node('a').store.stats().bricks).toBe(400)
  })

  it('with r = 3, losing any two nodes that hold a file leaves it readable, and repair brings every brick back to 3', async () => {
    const nodes = ['a', 'b', 'c', 'd', 'e']
    const content = testRandom(11).bytes(6 * 1000 + 7)
    for (let first = 0; first < nodes.length; first++)
      for (let second = first + 1; second < nodes.length; second++) {
        const lost = [nodes[first]!, nodes[second]!]
        const { client, cluster } = await createFileSystemCluster({
          nodeIds: nodes,
          seed: 11,
          chunkBytes: 1000,
          root: join(root, `loss-${directoryCounter++}`),
        })
        await writeLarge(client('a'), '/precious', content)
        const cids: string[] = []
        for (const node of nodes)
          for await (const cid of cluster.node(node).store.list()) cids.push(cid.toString())
        for (const node of lost) await cluster.kill(node)
        const reader = nodes.find((node) => !lost.includes(node))!
        const read = Buffer.from(await client(reader).readFile('/precious'))
        expect(read.equals(content), `after losing ${lost.join(' and ')}`).toBe(true)
        await cluster.repairAll()
        for (const cid of new Set(cids)) expect(cluster.holders(parseBrickCid(cid))).toHaveLength(3)
        await cluster.close()
      }
  })

  it('a file that asks for 5 replicas gets them for every brick, and repair keeps 5 after the writer and another holder are lost', async () => {
    const nodes = ['a', 'b', 'c', 'd', 'e', 'f', 'g']
    const { client, cluster } = await createFileSystemCluster({
      nodeIds: nodes,
      seed: 14,
      chunkBytes: 1000,
      root: join(root, `replicas-${directoryCounter++}`),
    })
    const fd = await client('a').open('/five', 'w', { replicaCount: 5 })
    const content = testRandom(14).bytes(4500)
    await client('a').write(fd, content)
    await client('a').close(fd)
    expect((await client('b').stat('/five')).replicaCount).toBe(5)
    const cids: string[] = []
    for await (const cid of cluster.node('a').store.list()) cids.push(cid.toString())
    expect(cids).toHaveLength(6)
    for (const cid of cids) expect(cluster.holders(parseBrickCid(cid))).toHaveLength(5)
    // Files without a count of their own keep the default.
    await client('a').writeFile('/three', text('default'))
    expect((await client('a').stat('/three')).replicaCount).toBeUndefined()
    const other = cluster.holders(parseBrickCid(cids[0]!)).find((node) => node !== 'a')!
    await cluster.kill('a')
    await cluster.kill(other)
    await cluster.repairAll()
    for (const cid of cids) expect(cluster.holders(parseBrickCid(cid))).toHaveLength(5)
    const reader = nodes.find((node) => node !== 'a' && node !== other)!
    expect(Buffer.from(await client(reader).readFile('/five')).equals(content)).toBe(true)
    await cluster.close()
  })

  it('a brick corrupted on disk is detected when the file is read, the read succeeds, and the copy is repaired', async () => {
    const { client, cluster } = await createFileSystemCluster({
      nodeIds: ['a', 'b', 'c'],
      seed: 12,
      chunkBytes: 1000,
      root: join(root, `corrupt-${directoryCounter++}`),
    })
    const content = testRandom(12).bytes(5000)
    await writeLarge(client('a'), '/file', content)
    const victims: string[] = []
    for await (const cid of cluster.node('b').store.list()) {
      const bytes = (await cluster.node('b').store.get(cid))!
      if (bytes.length !== 1000) continue
      const damaged = bytes.slice()
      damaged[0]! ^= 1
      cluster.damage('b', cid, damaged)
      victims.push(cid.toString())
    }
    expect(victims.length).toBe(5)
    expect(Buffer.from(await client('b').readFile('/file')).equals(content)).toBe(true)
    expect(cluster.node('b').counters()).toMatchObject({ corruptCopiesDetected: 5, localCopiesRestored: 5 })
    for await (const cid of cluster.node('b').store.list())
      if (victims.includes(cid.toString())) expect(await cluster.node('b').store.get(cid)).toBeDefined()
    // Five chunks and the manifest, all back.
    expect(cluster.node('b').store.stats().bricks).toBe(6)
    await cluster.close()
  })
})
