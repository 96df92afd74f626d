/**
 * Storage figures for `npm run bench`: sequential write and read of a large file over three
 * in-process nodes with disk block stores, next to raw disk write and read of the same bytes;
 * striped against unstriped reads; re-replication after a node loss; small-file creates and stat
 * latency. The metadata store is the in-memory one, so the small-file figures leave out the
 * coordination store's round trips.
 *
 * The large file is `FABRIC_BENCH_STORAGE_MIB` MiB (default 256; the figure is 1024).
 * `FABRIC_BENCH_SYNC=0` turns off the per-brick flush, to see what the flush costs.
 *
 * `npm run bench` measures storage on node processes over libp2p instead (`storage-net-bench.ts`);
 * this suite runs on its own (`node test/bench/storage-bench.ts`) to see the storage layer's cost
 * without the network.
 */

import { mkdtempSync, rmSync } from 'node:fs'
import { mkdir, open, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { decodeCbor } from '../../storage/cbor.ts'
import { mapLimited } from '../../storage/concurrency.ts'
import { decodeManifest } from '../../storage/manifest.ts'
import { decodeFileHead } from '../../storage/records.ts'
import { createFileSystemCluster } from '../support/storage-file-systems.ts'
import { testRandom } from '../support/storage-random.ts'
import type { BenchRow } from './host-bench.ts'

const mebibyte = 1024 * 1024
const largeFileMebibytes = Number(process.env.FABRIC_BENCH_STORAGE_MIB ?? 256)
const writeBlockBytes = mebibyte
const smallFiles = 500
const smallFileBytes = 1024
const statSamples = 2000
const syncWrites = process.env.FABRIC_BENCH_SYNC !== '0'

function megabytesPerSecond(bytes: number, milliseconds: number): number {
  return bytes / 1e6 / (milliseconds / 1000)
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}

export async function storageBench(): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const root = mkdtempSync(join(tmpdir(), 'fabric-storage-bench-'))
  try {
    const bytes = largeFileMebibytes * mebibyte
    const block = testRandom(1).bytes(writeBlockBytes)
    // Vary each block a little so that no two chunks share a brick.
    const blockAt = (index: number) => {
      block[0] = index & 0xff
      block[1] = (index >> 8) & 0xff
      return block
    }

    // ---- raw disk baseline: one file, written in 1 MiB blocks, flushed once, then read back.
    const rawPath = join(root, 'raw.bin')
    let started = performance.now()
    const handle = await open(rawPath, 'w')
    for (let index = 0; index < largeFileMebibytes; index++) await handle.write(blockAt(index))
    await handle.sync()
    await handle.close()
    const rawWriteMs = performance.now() - started
    started = performance.now()
    const rawRead = await readFile(rawPath)
    const rawReadMs = performance.now() - started
    if (rawRead.length !== bytes) throw new Error('raw read came back short')
    await rm(rawPath)

    // ---- the layout's floor: three copies of every 1 MiB block as files of their own, no hashing, no flush.
    const layoutDirectory = join(root, 'layout')
    await mkdir(layoutDirectory)
    started = performance.now()
    for (let index = 0; index < largeFileMebibytes; index++)
      for (let copy = 0; copy < 3; copy++)
        await writeFile(join(layoutDirectory, `${index}-${copy}`), blockAt(index))
    const layoutWriteMs = performance.now() - started
    await rm(layoutDirectory, { recursive: true })

    // ---- the same bytes as one file over 3 nodes, r = 3, disk stores flushing every brick.
    const { client, cluster, metadata } = await createFileSystemCluster({
      nodeIds: ['a', 'b', 'c'],
      seed: 1,
      root: join(root, 'nodes'),
      syncWrites,
    })
    const fs = client('a')
    started = performance.now()
    const fd = await fs.open('/large', 'w')
    for (let index = 0; index < largeFileMebibytes; index++) await fs.write(fd, blockAt(index))
    await fs.close(fd)
    const fabricWriteMs = performance.now() - started
    started = performance.now()
    const readFd = await client('b').open('/large', 'r')
    let readBytes = 0
    for (;;) {
      const chunk = await client('b').read(readFd, writeBlockBytes)
      if (chunk.length === 0) break
      readBytes += chunk.length
    }
    await client('b').close(readFd)
    const fabricReadMs = performance.now() - started
    if (readBytes !== bytes) throw new Error('fabric read came back short')

    const rawWrite = megabytesPerSecond(bytes, rawWriteMs)
    const rawReadRate = megabytesPerSecond(bytes, rawReadMs)
    const fabricWrite = megabytesPerSecond(bytes, fabricWriteMs)
    const fabricRead = megabytesPerSecond(bytes, fabricReadMs)
    const layoutRate = megabytesPerSecond(bytes, layoutWriteMs)
    rows.push(
      {
        name: `storage: sequential write, ${largeFileMebibytes} MiB file, 3 nodes, r = 3`,
        value: fabricWrite.toFixed(0),
        unit: 'MB/s',
        note:
          `raw disk ${rawWrite.toFixed(0)} MB/s (ratio ${(fabricWrite / rawWrite).toFixed(2)}); ` +
          `the 3 in-process nodes share this disk: writing 3 copies as 1 MiB files alone runs at ${layoutRate.toFixed(0)} MB/s ` +
          `(ratio ${(fabricWrite / layoutRate).toFixed(2)}); every brick is also hashed${syncWrites ? ' and flushed (fsync)' : ''}`,
      },
      {
        name: `storage: sequential read, ${largeFileMebibytes} MiB file`,
        value: fabricRead.toFixed(0),
        unit: 'MB/s',
        note: `raw disk ${rawReadRate.toFixed(0)} MB/s (ratio ${(fabricRead / rawReadRate).toFixed(2)}); local replicas, hash checked on read`,
      },
    )

    // ---- striped against unstriped reads, from a fourth node that holds nothing.
    const headEntry = metadata
      .entries()
      .find(([key]) => key.startsWith('fs/default/i/') && !key.endsWith('/root'))!
    const envelope = decodeCbor(headEntry[1].value, 'bench', 1 << 20) as { d: Uint8Array }
    const head = decodeFileHead(envelope.d, 'large')
    const reader = await cluster.add('reader')
    const manifest = decodeManifest(await reader.get(head.manifest!), 'large')
    const chunks = manifest.chunks.filter((chunk) => chunk !== null)
    const timeRead = async (stripeOf: (index: number) => number) => {
      const begin = performance.now()
      await mapLimited(chunks, 8, async (chunk, index) => {
        await reader.get(chunk!.cid, { stripe: stripeOf(index) })
      })
      return megabytesPerSecond(bytes, performance.now() - begin)
    }
    const unstriped = await timeRead(() => 0)
    const striped = await timeRead((index) => index)
    rows.push({
      name: 'storage: striped read from a non-holder, 8 chunks in flight',
      value: striped.toFixed(0),
      unit: 'MB/s',
      note: `unstriped (all from one holder) ${unstriped.toFixed(0)} MB/s (ratio ${(striped / unstriped).toFixed(2)}); in-process nodes share one disk and CPU`,
    })

    // ---- re-replication after losing one of the four nodes.
    await cluster.kill('c')
    started = performance.now()
    await cluster.repairAll()
    const repairMs = performance.now() - started
    rows.push({
      name: `storage: re-replicate ${largeFileMebibytes} MiB after a node loss`,
      value: (repairMs / 1000).toFixed(1),
      unit: 's',
      note: `${megabytesPerSecond(bytes, repairMs).toFixed(0)} MB/s back to 3 replicas on the remaining nodes`,
    })
    await cluster.close()

    // ---- small files and stat latency, 3 nodes on disk.
    const small = await createFileSystemCluster({
      nodeIds: ['a', 'b', 'c'],
      seed: 2,
      root: join(root, 'small'),
    })
    const smallFs = small.client('a')
    await smallFs.mkdir('/small')
    const content = testRandom(2).bytes(smallFileBytes)
    started = performance.now()
    for (let index = 0; index < smallFiles; index++) await smallFs.writeFile(`/small/${index}`, content)
    const createsPerSecond = smallFiles / ((performance.now() - started) / 1000)
    const statMs: number[] = []
    const statFs = small.client('b')
    for (let sample = 0; sample < statSamples; sample++) {
      const begin = performance.now()
      await statFs.stat(`/small/${sample % smallFiles}`)
      statMs.push(performance.now() - begin)
    }
    rows.push(
      {
        name: `storage: small-file creates (${smallFileBytes} B, create + write + close)`,
        value: createsPerSecond.toFixed(0),
        unit: 'files/s',
        note: 'each: one data brick and one manifest brick on 3 nodes (flushed), two metadata CAS; in-memory metadata store',
      },
      {
        name: 'storage: stat latency (median)',
        value: (median(statMs) * 1000).toFixed(0),
        unit: 'µs',
        note: `path of depth 2, ${smallFiles} entries in the directory; in-memory metadata store`,
      },
    )
    await small.cluster.close()
  } finally {
    rmSync(root, { recursive: true, force: true })
  }
  return rows
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const row of await storageBench()) console.log(`${row.name}: ${row.value} ${row.unit} (${row.note})`)
}
