/**
 * Storage figures on real `fabric node` processes over libp2p (`npm run bench`, suite `storage`):
 *
 * - sequential write and read of a large file (default 1 GiB, `FABRIC_BENCH_STORAGE_MIB` for a
 *   quick run) over 3 local node processes, r = 3, through `/fabric/fs/1` as `fabric fs` does,
 *   as ratios of the raw disk (one file, 1 MiB writes, one fsync; read back) and of a raw libp2p
 *   stream (TCP + cluster key + noise + yamux, two nodes in this process) measured in the same run;
 * - striped against unstriped reads of the file's bricks from a client that holds none
 *   (`/fabric/bricks/1` fetches, 8 in flight: spread over the 3 holders, or all from one);
 * - small files: creates per second (open, write 1 KiB, close, one request each) and the median
 *   stat latency, with the metadata in the coordination store;
 * - re-replication: a fourth node joins and one of the three is SIGKILLed; the time from the kill
 *   until every brick of the file has 3 live replicas again (checked on the nodes' disks).
 */

import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { open, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { generateClusterKey, loadClusterKey } from '../../fabric/net/cluster-key.ts'
import { createNetwork } from '../../fabric/net/network.ts'
import { startNode } from '../../fabric/net/node.ts'
import { diskBrickPath } from '../../storage/block-store-disk.ts'
import { brickCid, type CID } from '../../storage/brick.ts'
import { brickProtocol } from '../../storage/brick-peers-libp2p.ts'
import { mapLimited } from '../../storage/concurrency.ts'
import { connectFileClient } from '../../storage/file-client.ts'
import { encodeStorageFrame, readFrame, writeFrame } from '../../storage/stream-frames.ts'
import { killAll, type NodeProcess, startNodeProcess, waitFor } from '../support/node-processes.ts'
import type { BenchRow } from './host-bench.ts'

const mebibyte = 1024 * 1024
const largeFileMebibytes = Number(process.env.FABRIC_BENCH_STORAGE_MIB ?? 1024)
const rawStreamMebibytes = Math.min(largeFileMebibytes, 256)
const smallFiles = 300
const smallFileBytes = 1024
const statSamples = 500
const readsInFlight = 8
const reReplicationTimeoutMs = 600_000

const rate = (bytes: number, milliseconds: number) => bytes / 1e6 / (milliseconds / 1000)
/** A ratio with two significant digits, so that small ones do not print as 0.00. */
const ratio = (value: number) => value.toPrecision(2)
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!

/** 1 MiB blocks that differ in their first bytes, so that no two chunks share a brick. */
function blockAt(block: Uint8Array, index: number): Uint8Array {
  block[0] = index & 0xff
  block[1] = (index >> 8) & 0xff
  block[2] = (index >> 16) & 0xff
  return block
}

async function rawStreamRate(clusterKey: Uint8Array): Promise<number> {
  const log = () => {}
  const receiver = await startNode({ listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], clusterKey, log })
  const sender = await startNode({ listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: [], clusterKey, log })
  const totalBytes = rawStreamMebibytes * mebibyte
  try {
    await receiver.network.libp2p.handle('/fabric/bench-raw/1', async (stream: Stream) => {
      let received = 0
      stream.addEventListener('message', (event) => {
        received += event.data.byteLength
        if (received >= totalBytes) stream.send(Uint8Array.of(1))
      })
    })
    await sender.network.dial(receiver.addresses())
    const payload = new Uint8Array(mebibyte).fill(7)
    const started = performance.now()
    const stream = await sender.network.libp2p.dialProtocol(
      peerIdFromString(receiver.peerId),
      '/fabric/bench-raw/1',
    )
    const acknowledged = new Promise((resolve) => stream.addEventListener('message', resolve, { once: true }))
    for (let offset = 0; offset < totalBytes; offset += mebibyte)
      if (!stream.send(payload)) await stream.onDrain()
    await acknowledged
    const milliseconds = performance.now() - started
    stream.abort(new Error('done'))
    return rate(totalBytes, milliseconds)
  } finally {
    await sender.stop()
    await receiver.stop()
  }
}

export async function storageNetBench(): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const root = mkdtempSync(join(tmpdir(), 'fabric-storage-net-bench-'))
  const clusterKey = generateClusterKey()
  const bytes = largeFileMebibytes * mebibyte
  const size = `${largeFileMebibytes >= 1024 ? `${largeFileMebibytes / 1024} GiB` : `${largeFileMebibytes} MiB`}`
  try {
    // ---- raw disk: the source file itself, 1 MiB writes and one fsync, then read back.
    const sourcePath = join(root, 'source.bin')
    const block = new Uint8Array(mebibyte)
    for (let index = 0; index < mebibyte; index++) block[index] = (index * 2654435761) >>> 24
    let started = performance.now()
    const handle = await open(sourcePath, 'w')
    for (let index = 0; index < largeFileMebibytes; index++) await handle.write(blockAt(block, index))
    await handle.sync()
    await handle.close()
    const rawWrite = rate(bytes, performance.now() - started)
    started = performance.now()
    const readHandle = await open(sourcePath, 'r')
    for (let index = 0; index < largeFileMebibytes; index++) await readHandle.read(block, 0, mebibyte)
    await readHandle.close()
    const rawRead = rate(bytes, performance.now() - started)
    const cids: CID[] = []
    for (let index = 0; index < largeFileMebibytes; index++) cids.push(await brickCid(blockAt(block, index)))

    const rawStream = await rawStreamRate(loadClusterKey(clusterKey))

    // ---- three node processes, r = 3.
    const start = (name: string, bootstrap?: string[]) =>
      startNodeProcess({ name, dataDirectory: join(root, name), clusterKey, bootstrap, coreOnly: false })
    const first = await start('n0')
    const nodes: NodeProcess[] = [
      first,
      ...(await Promise.all(['n1', 'n2'].map((name) => start(name, [first.address])))),
    ]
    const storageNodes = (node: NodeProcess) => {
      for (let index = node.lines.length - 1; index >= 0; index--) {
        const match = /; (\d+) storage nodes$/.exec(node.lines[index]!.text)
        if (match) return Number(match[1])
      }
      return 1
    }
    await waitFor(() => nodes.every((node) => storageNodes(node) === 3), 60_000, '3 storage nodes')
    const files = await connectFileClient({ nodes: [first.address], clusterKey })

    started = performance.now()
    await files.putFile(sourcePath, '/large.bin')
    const writeRate = rate(bytes, performance.now() - started)
    const reader = await connectFileClient({ nodes: [nodes[1]!.address], clusterKey })
    let received = 0
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        received += chunk.length
        done()
      },
    })
    started = performance.now()
    await reader.getFile('/large.bin', sink)
    const readRate = rate(bytes, performance.now() - started)
    if (received !== bytes) throw new Error(`read ${received} of ${bytes} bytes`)
    rows.push(
      {
        name: `storage: sequential write, ${size}, 3 node processes, r = 3`,
        value: writeRate.toFixed(0),
        unit: 'MB/s',
        note:
          `ratio ${ratio(writeRate / rawWrite)} of the raw disk (${rawWrite.toFixed(0)} MB/s) and ${ratio(writeRate / rawStream)} of a raw libp2p stream ` +
          `(${rawStream.toFixed(0)} MB/s); fabric fs put through one node: each 1 MiB brick hashed, written and flushed on 3 nodes that share this disk and 2 cores`,
      },
      {
        name: `storage: sequential read, ${size}, through another node`,
        value: readRate.toFixed(0),
        unit: 'MB/s',
        note: `ratio ${ratio(readRate / rawRead)} of the raw disk (${rawRead.toFixed(0)} MB/s, read back at once, so from the page cache) and ${ratio(readRate / rawStream)} of the raw libp2p stream; fabric fs get, hash checked on read`,
      },
    )
    await reader.close()

    // ---- striped against unstriped reads from a client that holds nothing.
    const brickClient = await createNetwork({
      privateKey: await generateKeyPair('Ed25519'),
      listen: [],
      clusterKey: loadClusterKey(clusterKey),
      protocols: new Set(),
      log: () => {},
      client: true,
    })
    for (const node of nodes) brickClient.addAddresses(node.peerId, [node.address])
    const fetchFrom = async (node: NodeProcess, cid: CID) => {
      const stream = await brickClient.libp2p.dialProtocol(peerIdFromString(node.peerId), brickProtocol)
      const reply = readFrame(stream, { bytesMax: 32 * mebibyte, timeoutMs: 60_000 })
      await writeFrame(stream, encodeStorageFrame({ t: 'fetch', cid: cid.bytes }, 32 * mebibyte))
      const body = (await reply) as { bytes?: Uint8Array }
      await stream.close()
      if (!(body.bytes instanceof Uint8Array)) throw new Error('fetch came back empty')
      return body.bytes.length
    }
    const readSample = cids.slice(0, Math.min(cids.length, 256))
    const timeReads = async (holderOf: (index: number) => NodeProcess) => {
      const begin = performance.now()
      await mapLimited(readSample, readsInFlight, (cid, index) => fetchFrom(holderOf(index), cid))
      return rate(readSample.length * mebibyte, performance.now() - begin)
    }
    const unstriped = await timeReads(() => nodes[0]!)
    const striped = await timeReads((index) => nodes[index % nodes.length]!)
    await brickClient.stop()
    rows.push({
      name: `storage: striped read from a non-holder, ${readsInFlight} bricks in flight`,
      value: striped.toFixed(0),
      unit: 'MB/s',
      note: `${readSample.length} MiB over /fabric/bricks/1 spread over the 3 holders; unstriped (all from one holder) ${unstriped.toFixed(0)} MB/s (ratio ${ratio(striped / unstriped)}); the holders share this machine's 2 cores`,
    })

    // ---- small files and stat latency, metadata in the coordination store.
    const small = new Uint8Array(smallFileBytes).fill(3)
    started = performance.now()
    for (let index = 0; index < smallFiles; index++) await files.writeFile(`/small-${index}`, small)
    const createsPerSecond = smallFiles / ((performance.now() - started) / 1000)
    const statMs: number[] = []
    for (let sample = 0; sample < statSamples; sample++) {
      const begin = performance.now()
      await files.stat(`/small-${sample % smallFiles}`)
      statMs.push(performance.now() - begin)
    }
    rows.push(
      {
        name: `storage: small-file creates (${smallFileBytes} B: open, write, close)`,
        value: createsPerSecond.toFixed(0),
        unit: 'files/s',
        note: 'one client, one request at a time through /fabric/fs/1; each file: a data and a manifest brick on 3 nodes (flushed), directory and head CAS in the coordination store',
      },
      {
        name: 'storage: stat latency (median)',
        value: median(statMs).toFixed(2),
        unit: 'ms',
        note: `${statSamples} stats from a client through /fabric/fs/1 (one request each); the node reads the root directory and the file head from the coordination store`,
      },
    )
    await files.close()

    // ---- re-replication: a fourth node joins, one of the three is SIGKILLed.
    const fourth = await start('n3', [first.address])
    nodes.push(fourth)
    const victim = nodes[2]!
    victim.child.kill('SIGKILL')
    const killedAt = performance.now()
    const survivors = nodes.filter((node) => node !== victim)
    const holders = (cid: CID) =>
      survivors.filter((node) => existsSync(diskBrickPath(join(node.dataDirectory, 'bricks'), cid))).length
    await waitFor(
      () => cids.every((cid) => holders(cid) >= 3),
      reReplicationTimeoutMs,
      'every brick back at 3 replicas',
    )
    const reReplicationMs = performance.now() - killedAt
    if (process.env.FABRIC_BENCH_VERBOSE === '1')
      for (const node of survivors)
        for (const line of node.lines)
          if (/storage|membership/.test(line.text)) process.stderr.write(`${node.name} ${line.text}\n`)
    rows.push({
      name: `storage: re-replicate ${size} after a node loss`,
      value: (reReplicationMs / 1000).toFixed(1),
      unit: 's',
      note: `from the SIGKILL of one of 3 holders (a fourth node had just joined) to every brick at 3 replicas again; includes failure detection; repair rate-limited to 256 MiB/s per node`,
    })
    // A last check that nothing was lost.
    const check = await connectFileClient({ nodes: [fourth.address], clusterKey })
    const copyPath = join(root, 'copy.bin')
    await check.getFile('/large.bin', copyPath)
    await check.close()
    const [source, copy] = await Promise.all([readFile(sourcePath), readFile(copyPath)])
    if (Buffer.compare(source, copy) !== 0) throw new Error('the file read back differs from its source')
  } finally {
    killAll()
    rmSync(root, { recursive: true, force: true })
  }
  return rows
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const row of await storageNetBench())
    console.log(`${row.name}: ${row.value} ${row.unit} (${row.note})`)
}
