import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, test } from 'vitest'
import type { AcceptorRecord } from '../fabric/coord/acceptor.ts'
import type { StoreMessage } from '../fabric/coord/messages.ts'
import { MessageRejectedError } from '../fabric/errors.ts'
import { compactionRecordsPerTurn, openAcceptorLog } from '../fabric/net/acceptor-log.ts'
import { ByteReader, ByteWriter } from '../fabric/net/byte-codec.ts'
import {
  decodeAcceptorRecord,
  decodeStoreMessage,
  encodeAcceptorRecord,
  encodeStoreMessage,
} from '../fabric/net/store-codec.ts'
import { decodeEnvelope, encodeFrame } from '../fabric/net/wire.ts'
import { seededRandom } from './support/run.ts'

const proposer = '12D3KooWHVqRjtuxWUirxR2gYieKyH2xFR7Cxw3urQjWU5X19Cc5'
const other = '12D3KooWLQXrnEqmHkEQgNfHzrLis3p6AAgP8apbr3dFndidkh5m'
const record = new Uint8Array(279).map((_, index) => (index * 31) % 256)
const ballot = { epoch: 2, round: 3582, proposer }

/** The messages that have a binary form, with each optional part present and absent. */
const binaryMessages: StoreMessage[] = [
  { type: 'prepare', shard: 57, epoch: 2, key: 'threads/05d178da0ab44efb/0/7212', ballot },
  { type: 'promise', shard: 0, key: 'k', ballot, accepted: null, leaseElapsedMs: 0 },
  {
    type: 'promise',
    shard: 63,
    key: 'locks/ä/€/𝄞',
    ballot,
    accepted: {
      ballot: { epoch: 1, round: 0, proposer: other },
      state: {
        version: 9,
        value: null,
        lease: { holder: other, token: 12, grant: `${other}#7`, ttlMs: 3000 },
        token: 12,
      },
    },
    leaseElapsedMs: 1234.5678,
  },
  {
    type: 'accept',
    shard: 39,
    epoch: 2,
    key: 'threads/05d178da0ab44efb/0/7283',
    ballot: { epoch: 2, round: 0, proposer },
    state: {
      version: 1,
      value: record,
      lease: null,
      token: 0,
      writers: [[proposer, `${proposer}#2q6hj#2831`]],
    },
    next: ballot,
  },
  {
    type: 'accept',
    shard: 1,
    epoch: Number.MAX_SAFE_INTEGER,
    key: 'big',
    ballot: { epoch: 0, round: 0, proposer: '' },
    state: { version: 2 ** 40, value: new Uint8Array(64 * 1024).fill(7), lease: null, token: 2 ** 33 },
  },
  { type: 'accepted', shard: 10, key: 'threads/p/0/8054', ballot, next: { ...ballot, round: 4000 } },
  { type: 'accepted', shard: 10, key: 'threads/p/0/8054', ballot },
]

const slotRecords: AcceptorRecord[] = [
  { type: 'slot', shard: 3, key: 'threads/p/main', slot: { promised: ballot, accepted: null } },
  {
    type: 'slot',
    shard: 4,
    key: 'threads/p/0/1',
    slot: {
      promised: { ...ballot, round: 9 },
      accepted: {
        ballot,
        state: { version: 3, value: record, lease: null, token: 0, writers: [[proposer, `${proposer}#x#1`]] },
      },
    },
  },
]

function expectRejected(decode: () => unknown): MessageRejectedError {
  try {
    decode()
  } catch (error) {
    expect(error).toBeInstanceOf(MessageRejectedError)
    return error as MessageRejectedError
  }
  throw new Error('decoded what it should have refused')
}

describe('store messages in their binary form', () => {
  test('each kind with a binary form decodes to the message encoded, also inside a frame', () => {
    for (const message of binaryMessages) {
      const encoded = encodeStoreMessage(message)
      expect(encoded).not.toBeNull()
      expect(decodeStoreMessage(encoded!)).toEqual(message)
      const frame = encodeFrame('store', message)
      expect(new DataView(frame.buffer).getUint32(0)).toBe(frame.length - 4)
      expect(decodeEnvelope(frame.subarray(4), new Set(['store'])).b).toEqual(message)
    }
  })

  test('an accept of a thread record writes its proposer once: its bytes are the record plus under 100', () => {
    const accept = binaryMessages[3]!
    expect(encodeStoreMessage(accept)!.length).toBeLessThan(record.length + proposer.length + 100)
  })

  test('the other store messages still travel, as CBOR', () => {
    const reject: StoreMessage = {
      type: 'reject',
      shard: 2,
      key: 'k',
      ballot,
      reason: 'ballot',
      promised: ballot,
      view: { epoch: 2, members: [proposer, other], installed: true, sealed: false },
    }
    expect(encodeStoreMessage(reject)).toBeNull()
    const frame = encodeFrame('store', reject)
    expect(decodeEnvelope(frame.subarray(4), new Set(['store'])).b).toEqual(reject)
  })

  test('every truncation and extension of an encoding is refused as malformed, not misread', () => {
    for (const message of binaryMessages.filter((each) => each.type !== 'accept' || each.shard !== 1)) {
      const encoded = encodeStoreMessage(message)!
      for (let length = 0; length < encoded.length; length++)
        expect(expectRejected(() => decodeStoreMessage(encoded.subarray(0, length))).code).toBe(
          'MESSAGE_MALFORMED',
        )
      const longer = new Uint8Array(encoded.length + 1)
      longer.set(encoded)
      expect(expectRejected(() => decodeStoreMessage(longer)).message).toMatch(/bytes after the end/)
    }
  })

  test('bytes changed at random give a message or a MessageRejectedError, nothing else', () => {
    let state = 11
    const random = (n: number) => {
      state = (state * 1103515245 + 12345) & 0x7fffffff
      return state % n
    }
    for (let trial = 0; trial < 5000; trial++) {
      const encoded = encodeStoreMessage(binaryMessages[random(binaryMessages.length - 1)]!)!.slice()
      for (let changes = 1 + random(4); changes > 0; changes--) encoded[random(encoded.length)] = random(256)
      try {
        decodeStoreMessage(encoded)
      } catch (error) {
        expect(error).toBeInstanceOf(MessageRejectedError)
      }
    }
  })

  test('a newer format, a length past the end, a reference to no string and an unsafe integer are refused', () => {
    const encoded = encodeStoreMessage(binaryMessages[0]!)!
    const newer = encoded.slice()
    newer[1] = 2
    expect(expectRejected(() => decodeStoreMessage(newer)).code).toBe('MESSAGE_UNKNOWN_VERSION')

    const writer = new ByteWriter()
    writer.uint(1000)
    expect(() => new ByteReader(writer.finish()).bytes()).toThrow(/longer than the message/)
    expect(() => new ByteReader(Uint8Array.of((5 << 2) | 1)).string()).toThrow(/unknown string/)
    const unsafe = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f)
    expect(() => new ByteReader(unsafe).uint()).toThrow(/too large/)
    expect(() => new ByteReader(new Uint8Array(9).fill(0x80)).uint()).toThrow(/too long/)
  })
})

describe('byte codec', () => {
  test('integers of either sign, floats, strings that repeat or extend earlier ones read back as written', () => {
    const integers = [0, 1, -1, 127, -128, 2 ** 31, -(2 ** 31), 2 ** 40 + 3, -(2 ** 50)]
    const strings = [proposer, proposer, `${proposer}#1`, '', 'ü€𝄞', 'x'.repeat(300), proposer]
    const writer = new ByteWriter()
    for (const value of integers) writer.int(value)
    writer.float(-0.125)
    for (const value of strings) writer.string(value)
    const bytes = writer.finish()
    const reader = new ByteReader(bytes)
    expect(integers.map(() => reader.int())).toEqual(integers)
    expect(reader.float()).toBe(-0.125)
    expect(strings.map(() => reader.string())).toEqual(strings)
    reader.end()
    expect(() => writer.uint(-1)).toThrow(RangeError)
  })

  test('short strings read again, and strings that share a hash slot, read back as written', () => {
    // More strings than the reader keeps lately, so slots are shared and replaced; each written in
    // a message of its own (no back references), and every one read twice, in another order.
    const random = seededRandom(7)
    const strings = Array.from({ length: 5000 }, (_, index) => {
      const length = 1 + Math.floor(random() * 64)
      const base = Array.from({ length }, () => String.fromCharCode(32 + Math.floor(random() * 95))).join('')
      // Pairs of the same length one byte apart.
      return index % 2 === 0 ? base : `${base.slice(0, -1)}${base.endsWith('a') ? 'b' : 'a'}`
    })
    const read = (value: string) => {
      const writer = new ByteWriter()
      writer.string(value)
      return new ByteReader(writer.finish()).string()
    }
    expect(strings.map(read)).toEqual(strings)
    expect([...strings].reverse().map(read)).toEqual([...strings].reverse())
  })
})

describe('acceptor log records', () => {
  test('slot records in their binary form and the others as CBOR are loaded back as written', () => {
    const directory = mkdtempSync(join(tmpdir(), 'fabric-acceptor-log-'))
    try {
      const shard: AcceptorRecord = {
        type: 'shard',
        shard: 3,
        epoch: 2,
        members: [proposer, other],
        installed: true,
        sealBallot: null,
        next: null,
      }
      for (const each of slotRecords) expect(decodeAcceptorRecord(encodeAcceptorRecord(each)!)).toEqual(each)
      expect(encodeAcceptorRecord(shard)).toBeNull()
      const log = openAcceptorLog(directory)
      log.append([shard, slotRecords[0]!])
      log.append([slotRecords[1]!])
      log.close()
      const reopened = openAcceptorLog(directory)
      expect(reopened.load()).toEqual([shard, ...slotRecords])
      reopened.close()
    } finally {
      rmSync(directory, { recursive: true, force: true })
    }
  })

  test('compaction rewrites the log only once it has grown to twice its last snapshot, and loses nothing', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'fabric-log-'))
    try {
      const slot = (index: number): AcceptorRecord => ({
        type: 'slot',
        shard: index % 64,
        key: `threads/p/0/${index}`,
        slot: {
          promised: ballot,
          accepted: { ballot, state: { version: 1, value: record, lease: null, token: 0 } },
        },
      })
      // A snapshot of 40 slots (about 13 KiB) is larger than the 4 KiB threshold.
      const live = Array.from({ length: 40 }, (_, index) => slot(index))
      const log = openAcceptorLog(directory, { compactAtBytes: 4096 })
      log.append(live)
      expect(await log.compactIfLarge(() => live)).toBe(true)
      // Past the threshold, but not yet twice the snapshot: left as it is (it was rewritten at
      // every check before, each time in full).
      log.append([slot(40)])
      expect(await log.compactIfLarge(() => [...live, slot(40)])).toBe(false)
      const more = Array.from({ length: 40 }, (_, index) => slot(41 + index))
      log.append(more)
      const all = [...live, slot(40), ...more]
      expect(await log.compactIfLarge(() => all)).toBe(true)
      log.append([slot(81)])
      log.close()
      const reopened = openAcceptorLog(directory)
      expect(reopened.load()).toEqual([...all, slot(81)])
      reopened.close()
    } finally {
      rmSync(directory, { recursive: true, force: true })
    }
  })

  test('records appended while a compaction runs go to the log in use and follow the snapshot in the new one', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'fabric-log-'))
    try {
      const slot = (index: number, version = 1): AcceptorRecord => ({
        type: 'slot',
        shard: index % 64,
        key: `threads/p/0/${index}`,
        slot: {
          promised: ballot,
          accepted: { ballot, state: { version, value: record, lease: null, token: 0 } },
        },
      })
      const count = compactionRecordsPerTurn * 3
      const live = Array.from({ length: count }, (_, index) => slot(index))
      const log = openAcceptorLog(directory, { compactAtBytes: 4096 })
      log.append(live)
      const compacted = log.compactIfLarge(() => live)
      // The event loop turns while it runs (it encodes a few thousand records per turn, then syncs
      // off the loop): a record appended in a turn goes to the log in use at once (a reply may
      // depend on it) and into the new log after the snapshot.
      let turns = 0
      let done = false
      void compacted.then(() => {
        done = true
      })
      while (!done) {
        await new Promise((resolve) => setImmediate(resolve))
        if (done) break
        log.append([slot(count + turns), slot(turns, 2)])
        log.flush()
        turns++
      }
      expect(await compacted).toBe(true)
      expect(turns).toBeGreaterThanOrEqual(2)
      const appended = Array.from({ length: turns }, (_, index) => [
        slot(count + index),
        slot(index, 2),
      ]).flat()
      // What a restart reads: the snapshot, then what came after it, in order.
      log.close()
      const reopened = openAcceptorLog(directory)
      expect(reopened.load()).toEqual([...live, ...appended])
      reopened.close()
    } finally {
      rmSync(directory, { recursive: true, force: true })
    }
  })
})
