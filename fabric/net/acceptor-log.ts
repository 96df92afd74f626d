/**
 * The acceptor's durable log in the data directory: framed records (slot records in their binary
 * form, store-codec.ts; the others cbor), compacted into a snapshot when it grows. Records are
 * collected and written with one write per turn of the event loop: `flush` runs before any bytes
 * leave the node (the network's `beforeWrite`, see write-coalescing.ts), so a record is in the
 * kernel before the reply that depends on it leaves (a SIGKILL cannot lose it; with `fsync` a power
 * cut cannot either). A reply delivered inside the node (to its own proposer) needs no write first:
 * what it leads to reaches others only over the network, after the flush. A crash before the flush
 * loses votes nobody has heard of.
 */

import {
  closeSync,
  existsSync,
  fsync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs'
import { join } from 'node:path'
import { Decoder, Encoder } from 'cbor-x'
import type { AcceptorRecord, AcceptorStorage } from '../coord/acceptor.ts'
import { DataDirectoryError } from '../errors.ts'
import { isBinaryForm } from './byte-codec.ts'
import { decodeAcceptorRecord, encodeAcceptorRecord } from './store-codec.ts'

export const acceptorLogBytesCompactAt = 16 * 1024 * 1024
/**
 * The log is compacted once it is this many times the size of its last snapshot (and past
 * `acceptorLogBytesCompactAt`): a snapshot larger than the threshold (the slots of some 50,000
 * threads) would otherwise be rewritten at every check, each rewrite costing more than the last.
 */
export const acceptorLogGrowthBeforeCompaction = 2
/**
 * Snapshot records encoded per turn of the event loop while compacting. In one go, the snapshot of
 * 21,000-24,000 slots held a node's event loop for 75-110 ms (56-86 ms encoding, 18-19 ms writing,
 * then a synchronous fsync); in turns of 2,000 records the longest turn took 6-13 ms.
 */
export const compactionRecordsPerTurn = 2000
const fileName = 'acceptor.log'
const encoder = new Encoder({ useRecords: false, mapsAsObjects: true, tagUint8Array: false })
const decoder = new Decoder({ useRecords: false, mapsAsObjects: true })

export interface AcceptorLog extends AcceptorStorage {
  /** Writes the records appended since the last flush (one write); also runs on its own after this turn. */
  flush(): void
  /**
   * Rewrites the log as `snapshot()` (the acceptor's records, taken at once) followed by the records
   * appended meanwhile, if it has grown past the threshold and to
   * `acceptorLogGrowthBeforeCompaction` times its last snapshot: encoded over several turns and
   * synced off the event loop, the log in use until the new one replaces it. Resolves with whether
   * it did (false also while another compaction runs, or if the log closes first).
   */
  compactIfLarge(snapshot: () => AcceptorRecord[]): Promise<boolean>
  close(): void
}

function frame(record: AcceptorRecord): Uint8Array {
  // Slot records, nearly all of them, in their binary form (store-codec.ts).
  const binary = encodeAcceptorRecord(record, true)
  if (binary !== null) return binary
  const body = encoder.encode(record)
  const framed = Buffer.alloc(4 + body.length)
  framed.writeUInt32BE(body.length, 0)
  framed.set(body, 4)
  return framed
}

/** `compactAtBytes`: the threshold (acceptorLogBytesCompactAt; tests use less). */
export function openAcceptorLog(
  directory: string,
  options: { fsync?: boolean; compactAtBytes?: number } = {},
): AcceptorLog {
  const path = join(directory, fileName)
  const compactAt = options.compactAtBytes ?? acceptorLogBytesCompactAt
  let fd = openSync(path, 'a')
  let bytes = statSync(path).size
  // The size of the last snapshot written (unknown for a log opened from disk: taken as none).
  let snapshotBytes = 0
  let collected: Uint8Array[] = []
  let scheduled = false
  let closed = false
  /** While a compaction runs: what was written to the log since its snapshot, to follow it. */
  let writtenSinceSnapshot: Uint8Array[] | null = null
  const flush = () => {
    scheduled = false
    if (collected.length === 0) return
    const data = collected.length === 1 ? collected[0]! : Buffer.concat(collected)
    collected = []
    writeSync(fd, data)
    bytes += data.length
    writtenSinceSnapshot?.push(data)
    if (options.fsync) fsyncSync(fd)
  }
  return {
    append(records) {
      for (const record of records) collected.push(frame(record))
      if (!scheduled) {
        scheduled = true
        setImmediate(flush)
      }
    },
    flush,
    load() {
      if (!existsSync(path)) return []
      const data = readFileSync(path)
      const records: AcceptorRecord[] = []
      let offset = 0
      while (offset + 4 <= data.length) {
        const length = data.readUInt32BE(offset)
        if (offset + 4 + length > data.length) break // a torn final write: the reply was never sent
        try {
          // A Uint8Array, not a Buffer: values decoded from the binary form are views into it.
          const body = new Uint8Array(data.buffer, data.byteOffset + offset + 4, length)
          records.push(
            isBinaryForm(body) ? decodeAcceptorRecord(body) : (decoder.decode(body) as AcceptorRecord),
          )
        } catch (error) {
          throw new DataDirectoryError(`${path} is corrupt at byte ${offset}: ${(error as Error).message}`)
        }
        offset += 4 + length
      }
      return records
    },
    compactIfLarge(snapshot) {
      if (closed || writtenSinceSnapshot !== null) return Promise.resolve(false)
      flush()
      if (bytes < Math.max(compactAt, snapshotBytes * acceptorLogGrowthBeforeCompaction))
        return Promise.resolve(false)
      const records = snapshot()
      const since: Uint8Array[] = []
      writtenSinceSnapshot = since
      const temporary = `${path}.tmp`
      const frames: Uint8Array[] = []
      return new Promise<boolean>((resolve) => {
        const abandon = (out?: number) => {
          if (out !== undefined) closeSync(out)
          rmSync(temporary, { force: true })
          writtenSinceSnapshot = null
          resolve(false)
        }
        const encodeSome = () => {
          if (closed) return abandon()
          const end = Math.min(records.length, frames.length + compactionRecordsPerTurn)
          while (frames.length < end) frames.push(frame(records[frames.length]!))
          if (frames.length < records.length) {
            setImmediate(encodeSome)
            return
          }
          const snapshotData = Buffer.concat(frames)
          const out = openSync(temporary, 'w')
          writeSync(out, snapshotData)
          let sinceWritten = 0
          let sinceBytes = 0
          const writeSince = () => {
            for (; sinceWritten < since.length; sinceWritten++) {
              writeSync(out, since[sinceWritten]!)
              sinceBytes += since[sinceWritten]!.length
            }
          }
          writeSince()
          // The long sync off the event loop; what was appended meanwhile follows, synced at once.
          fsync(out, (error) => {
            if (error !== null || closed) return abandon(out)
            flush()
            writeSince()
            if (sinceWritten > 0) fsyncSync(out)
            closeSync(out)
            closeSync(fd)
            renameSync(temporary, path)
            fd = openSync(path, 'a')
            bytes = snapshotData.length + sinceBytes
            snapshotBytes = snapshotData.length
            writtenSinceSnapshot = null
            resolve(true)
          })
        }
        encodeSome()
      })
    },
    close() {
      flush()
      closed = true
      closeSync(fd)
    },
  }
}
