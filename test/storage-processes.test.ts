/**
 * Storage on real `fabric node` processes over libp2p: files written with `fabric fs put` survive
 * the SIGKILL of two nodes that hold them and are brought back to 3 replicas, a brick corrupted on
 * disk is detected on read and repaired, a node that joins takes its share of bricks, a restarted
 * node serves the bricks in its data dir, and hostile input on `/fabric/bricks/1` and
 * `/fabric/fs/1` is refused while the node carries on.
 *
 * Each `fabric fs` command is a process of its own (seconds on a loaded machine), so only the
 * steps about the command itself use it; the others call `/fabric/fs/1` through
 * `connectFileClient` in this process, the same client the command uses.
 */

import { spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromString } from '@libp2p/peer-id'
import { Encoder } from 'cbor-x'
import { afterAll, describe, expect, it } from 'vitest'
import { generateClusterKey, loadClusterKey } from '../fabric/net/cluster-key.ts'
import { createNetwork } from '../fabric/net/network.ts'
import { diskBrickPath } from '../storage/block-store-disk.ts'
import { brickCid, type CID } from '../storage/brick.ts'
import { brickProtocol } from '../storage/brick-peers-libp2p.ts'
import { connectFileClient, type FileClient } from '../storage/file-client.ts'
import { fileProtocol } from '../storage/file-protocol.ts'
import { encodeStorageFrame, readFrame, writeFrame } from '../storage/stream-frames.ts'
import {
  killAll,
  type NodeProcess,
  startNodeProcess,
  temporaryDirectory,
  waitFor,
} from './support/node-processes.ts'

/** After two of five nodes are SIGKILLed, every brick is back to 3 replicas within this bound. */
const replicationRestoredBoundMs = 30_000
/** A node that joins a 3-node cluster has its share (each node within 20% of the mean) within this bound. */
const rebalancedBoundMs = 60_000
const chunkBytes = 1024 * 1024
/** Each test starts processes and runs several `fabric fs` commands (a process each); a loaded 2-core machine needs the room. */
const testTimeoutMs = 180_000

const root = new URL('../', import.meta.url).pathname
const directory = temporaryDirectory()
const clients: FileClient[] = []
afterAll(async () => {
  await Promise.all(clients.map((client) => client.close().catch(() => {})))
  killAll()
  directory.remove()
})

/** A `/fabric/fs/1` client in this process, closed after the tests. */
async function filesVia(nodes: NodeProcess[], clusterKey: string): Promise<FileClient> {
  const client = await connectFileClient({ nodes: nodes.map((node) => node.address), clusterKey })
  clients.push(client)
  return client
}

function fabric(args: string[]): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(join(root, 'node_modules/.bin/node'), [join(root, 'fabric/cli/bin.js'), ...args])
    const stdout: Buffer[] = []
    let stderr = ''
    child.stdout.on('data', (data: Buffer) => stdout.push(data))
    child.stderr.on('data', (data: Buffer) => {
      stderr += data.toString()
    })
    child.on('exit', (code) => resolve({ code: code ?? -1, stdout: Buffer.concat(stdout), stderr }))
  })
}

async function fs(node: NodeProcess, clusterKey: string, ...args: string[]) {
  const result = await fabric(['fs', ...args, '--join', node.address, '--cluster-key', clusterKey])
  if (result.code !== 0)
    throw new Error(`fabric fs ${args.join(' ')} exited with ${result.code}: ${result.stderr}`)
  return result
}

function randomBytes(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length)
  let state = seed >>> 0 || 1
  for (let index = 0; index < length; index++) {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    bytes[index] = state & 0xff
  }
  return bytes
}

async function chunkCids(bytes: Uint8Array): Promise<CID[]> {
  const cids: CID[] = []
  for (let offset = 0; offset < bytes.length; offset += chunkBytes)
    cids.push(await brickCid(bytes.subarray(offset, offset + chunkBytes)))
  return cids
}

const bricksOf = (node: NodeProcess) => join(node.dataDirectory, 'bricks')
const holds = (node: NodeProcess, cid: CID) => existsSync(diskBrickPath(bricksOf(node), cid))
const holdersOf = (nodes: NodeProcess[], cid: CID) => nodes.filter((node) => holds(node, cid))

function brickBytesOnDisk(node: NodeProcess): number {
  let total = 0
  const walk = (path: string) => {
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      if (entry.name === '.tmp') continue
      const full = join(path, entry.name)
      if (entry.isDirectory()) walk(full)
      else if (entry.name.startsWith('b')) total += statSync(full).size
    }
  }
  if (existsSync(bricksOf(node))) walk(bricksOf(node))
  return total
}

function storageNodeCount(node: NodeProcess): number {
  for (let index = node.lines.length - 1; index >= 0; index--) {
    const match = /; (\d+) storage nodes$/.exec(node.lines[index]!.text)
    if (match) return Number(match[1])
  }
  return 1
}

async function startCluster(options: { count: number; prefix: string; clusterKey: string; args: string[] }) {
  const start = (index: number, bootstrap?: string[]) =>
    startNodeProcess({
      name: `${options.prefix}${index}`,
      dataDirectory: join(directory.path, `${options.prefix}${index}`),
      clusterKey: options.clusterKey,
      bootstrap,
      coreOnly: false,
      args: options.args,
    })
  const first = await start(0)
  const others = await Promise.all(
    Array.from({ length: options.count - 1 }, (_, index) => start(index + 1, [first.address])),
  )
  const nodes = [first, ...others]
  await waitFor(
    () => nodes.every((node) => storageNodeCount(node) === options.count),
    30_000,
    `every node to see ${options.count} storage nodes`,
  )
  return { nodes, start }
}

describe('storage on five node processes, r = 3', () => {
  const clusterKey = generateClusterKey()
  let nodes: NodeProcess[] = []
  const source = randomBytes(12 * chunkBytes + 12_345, 7)
  const sourcePath = join(directory.path, 'source.bin')
  writeFileSync(sourcePath, source)

  it(
    'a file put with fabric fs reads back intact after two nodes that hold it are SIGKILLed, and every brick is back to 3 replicas in bounded time',
    async () => {
      // Five coordination-store replicas too, so that the metadata keeps a majority when two nodes die.
      ;({ nodes } = await startCluster({ count: 5, prefix: 'a', clusterKey, args: ['--replicas', '5'] }))
      const writer = nodes[0]!
      await (await filesVia([writer], clusterKey)).mkdir('/data')
      await fs(writer, clusterKey, 'put', sourcePath, '/data/')
      const stat = await fs(writer, clusterKey, 'stat', '/data/source.bin')
      expect(stat.stdout.toString()).toContain(`size: ${source.length}`)

      const cids = await chunkCids(source)
      for (const cid of cids) expect(holdersOf(nodes, cid).length).toBeGreaterThanOrEqual(3)

      const victims = holdersOf(nodes, cids[0]!)
        .filter((node) => node !== writer)
        .slice(0, 2)
      expect(victims.length).toBe(2)
      for (const victim of victims) victim.child.kill('SIGKILL')
      const killedAtMs = Date.now()
      const survivors = nodes.filter((node) => !victims.includes(node))

      const reader = survivors[survivors.length - 1]!
      const copy = join(directory.path, 'copy-after-kill.bin')
      await fs(reader, clusterKey, 'get', '/data/source.bin', copy)
      expect(Buffer.compare(readFileSync(copy), Buffer.from(source))).toBe(0)

      await waitFor(
        () => cids.every((cid) => holdersOf(survivors, cid).length >= 3),
        replicationRestoredBoundMs,
        'every brick back to 3 replicas on the survivors',
      )
      process.stderr.write(
        `replication back to 3 on the survivors ${Date.now() - killedAtMs} ms after the SIGKILL\n`,
      )
      const again = join(directory.path, 'copy-after-repair.bin')
      await (await filesVia([survivors[1]!], clusterKey)).getFile('/data/source.bin', again)
      expect(Buffer.compare(readFileSync(again), Buffer.from(source))).toBe(0)
    },
    testTimeoutMs,
  )

  it(
    'a brick corrupted on disk is detected when read and the node puts back a good copy',
    async () => {
      const cids = await chunkCids(source)
      const node = nodes.find((each) => !each.child.killed && holds(each, cids[3]!))!
      const path = diskBrickPath(bricksOf(node), cids[3]!)
      const good = readFileSync(path)
      const bad = Buffer.from(good)
      for (let index = 100; index < 200; index++) bad[index] = bad[index]! ^ 0xff
      writeFileSync(path, bad)

      const copy = join(directory.path, 'copy-after-corruption.bin')
      await (await filesVia([node], clusterKey)).getFile('/data/source.bin', copy)
      expect(Buffer.compare(readFileSync(copy), Buffer.from(source))).toBe(0)
      await waitFor(
        () => existsSync(path) && Buffer.compare(readFileSync(path), good) === 0,
        10_000,
        'the corrupt copy to be replaced by a good one',
      )
    },
    testTimeoutMs,
  )

  it(
    'a node restarted with the same data dir serves the bricks it kept',
    async () => {
      const cids = await chunkCids(source)
      const victim = nodes.find((node) => node.child.killed)!
      const kept = cids.filter((cid) => holds(victim, cid))
      expect(kept.length).toBeGreaterThan(0)
      const restarted = await startNodeProcess({
        name: `${victim.name}-again`,
        dataDirectory: victim.dataDirectory,
        clusterKey,
        bootstrap: [nodes[0]!.address],
        coreOnly: false,
        args: ['--replicas', '5'],
      })
      nodes.push(restarted)
      await waitFor(() => storageNodeCount(restarted) >= 4, 30_000, 'the restarted node to see the others')
      const client = await brickClient(clusterKey, restarted)
      try {
        for (const cid of kept.slice(0, 4)) {
          const reply = (await client.request(brickProtocol, { t: 'fetch', cid: cid.bytes })) as {
            t: string
            bytes: Uint8Array
          }
          expect(reply.t).toBe('bytes')
          expect((await brickCid(reply.bytes)).equals(cid)).toBe(true)
        }
      } finally {
        await client.stop()
      }
    },
    testTimeoutMs,
  )

  it(
    'hostile input on /fabric/bricks/1 and /fabric/fs/1 is refused with a log line and the node carries on',
    async () => {
      const target = nodes[0]!
      const client = await brickClient(clusterKey, target)
      const encoder = new Encoder({ useRecords: false })
      const linesBefore = target.lines.length
      try {
        const oversized = new Uint8Array(4)
        new DataView(oversized.buffer).setUint32(0, 0x7fffffff)
        const garbage = new Uint8Array([0, 0, 0, 3, 0xff, 0xff, 0xff])
        const wrongVersion = frameOf(encoder.encode({ v: 99, b: { t: 'stats' } }))
        const unknownType = frameOf(encoder.encode({ v: 1, b: { t: 'format-disk' } }))
        const badCid = frameOf(encoder.encode({ v: 1, b: { t: 'fetch', cid: new Uint8Array([1, 2, 3]) } }))
        const fakeBytes = await brickCid(new Uint8Array([1, 2, 3]))
        const lyingStore = frameOf(
          encoder.encode({ v: 1, b: { t: 'store', cid: fakeBytes.bytes, bytes: new Uint8Array([4, 5, 6]) } }),
        )
        for (const bytes of [oversized, garbage, wrongVersion, unknownType, badCid])
          await client.raw(brickProtocol, bytes)
        const refusedStore = (await client.raw(brickProtocol, lyingStore)) as { t: string; code: string }
        expect(refusedStore).toMatchObject({ t: 'error', code: 'BRICK_CORRUPT' })
        expect(holds(target, fakeBytes)).toBe(false)
        for (const bytes of [oversized, garbage, frameOf(encoder.encode({ v: 1, b: { t: 'read', fd: -1 } }))])
          await client.raw(fileProtocol, bytes)
        await waitFor(
          () =>
            target.lines.slice(linesBefore).filter((line) => /refused message .*(bricks|fs):/.test(line.text))
              .length >= 6,
          5000,
          'log lines for the refused requests',
        )
        expect(target.child.exitCode).toBe(null)
        const listing = await (await filesVia([target], clusterKey)).readdir('/data')
        expect(listing.map((entry) => entry.name)).toEqual(['source.bin'])
      } finally {
        await client.stop()
      }
    },
    testTimeoutMs,
  )

  it(
    'fabric fs reports POSIX errors with exit code 1 and bad usage with 2',
    async () => {
      const node = nodes[0]!
      const joinArgs = ['--join', node.address, '--cluster-key', clusterKey]
      // Independent commands: at once.
      const [missing, notEmpty, noDirectory, usage] = await Promise.all([
        fabric(['fs', 'cat', '/nope', ...joinArgs]),
        fabric(['fs', 'rm', '/data', ...joinArgs]),
        fabric(['fs', 'put', sourcePath, '/missing/x.bin', ...joinArgs]),
        fabric(['fs', 'frobnicate', ...joinArgs]),
        fs(node, clusterKey, 'mkdir', '-p', '/x/y'),
      ])
      expect(missing.code).toBe(1)
      expect(missing.stderr).toContain('ENOENT')
      expect(notEmpty.code).toBe(1)
      expect(notEmpty.stderr).toContain('EISDIR')
      expect(noDirectory.code).toBe(1)
      expect(noDirectory.stderr).toContain("ENOENT: no such file or directory, open '/missing/x.bin'")
      expect(usage.code).toBe(2)
      await fs(node, clusterKey, 'mv', '/data/source.bin', '/x/y/moved.bin')
      const du = await fs(node, clusterKey, 'du', '/x')
      expect(du.stdout.toString()).toMatch(new RegExp(`^${source.length}\\t/x`))
      await fs(node, clusterKey, 'rm', '-r', '/x')
      expect((await fs(node, clusterKey, 'ls', '/')).stdout.toString()).toBe('data/\n')
    },
    testTimeoutMs,
  )
})

describe('storage on a 3-node cluster that grows to 4', () => {
  it(
    'the node that joins receives bricks until every node holds within 20% of the mean',
    async () => {
      const clusterKey = generateClusterKey()
      killAll()
      const { nodes, start } = await startCluster({ count: 3, prefix: 'b', clusterKey, args: [] })
      const source = randomBytes(24 * chunkBytes, 11)
      const sourcePath = join(directory.path, 'grow.bin')
      writeFileSync(sourcePath, source)
      await (await filesVia([nodes[0]!], clusterKey)).putFile(sourcePath, '/grow.bin')
      const joined = await start(3, [nodes[0]!.address])
      nodes.push(joined)
      const joinedAtMs = Date.now()
      const spreadEven = () => {
        const loads = nodes.map(brickBytesOnDisk)
        const mean = loads.reduce((sum, each) => sum + each, 0) / loads.length
        return loads.every((each) => Math.abs(each - mean) <= 0.2 * mean)
      }
      await waitFor(spreadEven, rebalancedBoundMs, 'the spread to be even within 20%')
      process.stderr.write(
        `rebalanced ${Date.now() - joinedAtMs} ms after the join: ${nodes.map((node) => brickBytesOnDisk(node)).join(', ')} bytes\n`,
      )
      // Nothing was lost on the way: every chunk still has 3 replicas, and the file reads back.
      const cids = await chunkCids(source)
      await waitFor(
        () => cids.every((cid) => holdersOf(nodes, cid).length >= 3),
        10_000,
        '3 replicas per brick',
      )
      const copy = join(directory.path, 'grow-copy.bin')
      await (await filesVia([joined], clusterKey)).getFile('/grow.bin', copy)
      expect(Buffer.compare(readFileSync(copy), Buffer.from(source))).toBe(0)
    },
    testTimeoutMs,
  )
})

function frameOf(payload: Uint8Array): Uint8Array {
  const framed = new Uint8Array(4 + payload.length)
  new DataView(framed.buffer).setUint32(0, payload.length)
  framed.set(payload, 4)
  return framed
}

/** A libp2p client with the cluster key that speaks the storage protocols directly, well or badly. */
async function brickClient(clusterKey: string, node: NodeProcess) {
  const network = await createNetwork({
    privateKey: await generateKeyPair('Ed25519'),
    listen: [],
    clusterKey: loadClusterKey(clusterKey),
    protocols: new Set(),
    log: () => {},
    client: true,
  })
  network.addAddresses(node.peerId, [node.address])
  const open = (protocol: string) =>
    network.libp2p.dialProtocol(peerIdFromString(node.peerId), protocol, {
      signal: AbortSignal.timeout(5000),
    })
  return {
    async request(protocol: string, body: unknown): Promise<unknown> {
      const stream = await open(protocol)
      const reply = readFrame(stream, { bytesMax: 32 * 1024 * 1024, timeoutMs: 10_000 })
      await writeFrame(stream, encodeStorageFrame(body, 32 * 1024 * 1024))
      return reply
    },
    /** Sends raw bytes; resolves with the reply, or undefined when the node reset the stream. */
    async raw(protocol: string, bytes: Uint8Array): Promise<unknown> {
      const stream = await open(protocol)
      const reply = readFrame(stream, { bytesMax: 32 * 1024 * 1024, timeoutMs: 10_000 }).catch(
        () => undefined,
      )
      stream.send(bytes)
      return reply
    },
    stop: () => network.stop(),
  }
}
