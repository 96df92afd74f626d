import { describe, expect, it } from 'vitest'
import { StorageArgumentError } from '../storage/errors.ts'
import {
  createMemoryMetadataStore,
  type MetadataStore,
  metadataKeyBytesMax,
  metadataValueBytesMax,
} from '../storage/metadata-store.ts'
import { createMetadataTransactions, type MetadataTransactions } from '../storage/metadata-transactions.ts'
import type { Sleep } from '../storage/platform-types.ts'
import { realClock, realSleep } from './support/storage-cluster.ts'
import { seedBanner, testRandom } from './support/storage-random.ts'

const encoder = new TextEncoder()
const decoder = new TextDecoder()
const number = (value: number) => encoder.encode(String(value))
const amountOf = (data: Uint8Array | null) => (data === null ? 0 : Number(decoder.decode(data)))
const testFile = 'test/storage-metadata.test.ts'

describe('memory metadata store (the coordination store’s register semantics)', () => {
  it('version counts successful writes, 0 = never written; a failed cas returns the current state', async () => {
    const store = createMemoryMetadataStore()
    expect(await store.get('k')).toEqual({ ok: true, version: 0, value: null })
    expect(await store.cas('k', 0, number(1))).toEqual({ ok: true, version: 1, value: number(1) })
    expect(await store.cas('k', 0, number(2))).toEqual({ ok: false, version: 1, value: number(1) })
    expect(await store.put('k', number(3))).toEqual({ ok: true, version: 2, value: number(3) })
  })

  it('keys above 512 bytes and values above 64 KiB are refused', async () => {
    const store = createMemoryMetadataStore()
    await expect(store.get('k'.repeat(metadataKeyBytesMax + 1))).rejects.toBeInstanceOf(StorageArgumentError)
    await expect(store.put('k', new Uint8Array(metadataValueBytesMax + 1))).rejects.toBeInstanceOf(
      StorageArgumentError,
    )
    await store.put('k'.repeat(metadataKeyBytesMax), new Uint8Array(metadataValueBytesMax))
  })
})

function transactionsOver(
  metadata: MetadataStore,
  seed: number,
  sleep: Sleep = realSleep,
  clock = realClock,
) {
  return createMetadataTransactions({ metadata, clock, random: testRandom(seed), sleep }, { prefix: 'test/' })
}

async function transfer(transactions: MetadataTransactions, from: string, to: string, amount: number) {
  await transactions.transact([from, to], (views) => ({
    writes: new Map([
      [from, number(amountOf(views.get(from)!.data) - amount)],
      [to, number(amountOf(views.get(to)!.data) + amount)],
    ]),
    result: undefined,
  }))
}

async function total(transactions: MetadataTransactions, keys: readonly string[]) {
  let sum = 0
  for (const key of keys) sum += amountOf((await transactions.read(key)).data)
  return sum
}

describe('metadata transactions', () => {
  const accounts = ['a', 'b', 'c', 'd']

  it('concurrent multi-key transactions are atomic: transfers between keys keep the total', async () => {
    const metadata = createMemoryMetadataStore()
    const clients = Array.from({ length: 4 }, (_, index) => transactionsOver(metadata, index + 1))
    const random = testRandom(99)
    await Promise.all(
      clients.map(async (client) => {
        for (let i = 0; i < 40; i++) {
          const from = random.pick(accounts)
          const to = random.pick(accounts.filter((account) => account !== from))
          await transfer(client, from, to, 1 + random.below(10))
        }
      }),
    )
    expect(await total(clients[0]!, accounts)).toBe(0)
  })

  it('single-key updates from concurrent clients are never lost', async () => {
    const metadata = createMemoryMetadataStore()
    const clients = Array.from({ length: 5 }, (_, index) => transactionsOver(metadata, index + 10))
    await Promise.all(
      clients.map(async (client) => {
        for (let i = 0; i < 20; i++)
          await client.transact(['counter'], (views) => ({
            writes: new Map([['counter', number(amountOf(views.get('counter')!.data) + 1)]]),
            result: undefined,
          }))
      }),
    )
    expect(amountOf((await clients[0]!.read('counter')).data)).toBe(100)
  })

  it('store timeouts with unknown outcome (before or after applying) neither lose nor repeat a transaction', async () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const random = testRandom(seed)
      const metadata = createMemoryMetadataStore({ faults: { random, timeoutProbability: 0.2 } })
      const client = transactionsOver(metadata, seed)
      for (let i = 0; i < 30; i++) {
        const from = random.pick(accounts)
        await transfer(client, from, random.pick(accounts.filter((account) => account !== from)), 1 + i)
      }
      const clean = transactionsOver(metadata, 0)
      expect(await total(clean, accounts), seedBanner(seed, testFile, 'store timeouts')).toBe(0)
    }
  })

  it('a client that dies at any step of a transaction leaves it all-or-nothing, and the next writer settles it', async () => {
    // Count the store operations of one undisturbed transfer, then kill a client after each prefix of them.
    const probe = createMemoryMetadataStore()
    await transfer(transactionsOver(probe, 1), 'a', 'b', 5)
    const steps = probe.operationCount()
    expect(steps).toBeGreaterThan(6)
    for (let dieAfter = 0; dieAfter <= steps; dieAfter++) {
      const metadata = createMemoryMetadataStore()
      let operations = 0
      const dying: MetadataStore = {
        get: (key) =>
          ++operations > dieAfter ? Promise.reject(new Error('client died')) : metadata.get(key),
        put: (key, value) =>
          ++operations > dieAfter ? Promise.reject(new Error('client died')) : metadata.put(key, value),
        cas: (key, version, value) =>
          ++operations > dieAfter
            ? Promise.reject(new Error('client died'))
            : metadata.cas(key, version, value),
      }
      await transfer(transactionsOver(dying, 1), 'a', 'b', 5).catch(() => {})
      let fakeNowMs = 0
      const survivor = transactionsOver(
        metadata,
        2,
        async (delayMs) => {
          fakeNowMs += delayMs + 100
        },
        { now: () => fakeNowMs },
      )
      const seen = [amountOf((await survivor.read('a')).data), amountOf((await survivor.read('b')).data)]
      expect([`0,0`, `-5,5`], `died after ${dieAfter} operations`).toContain(seen.join())
      // A writer gets through (after aborting the dead transaction if it was still pending) and the total holds.
      await transfer(survivor, 'b', 'a', 1)
      expect(await total(survivor, ['a', 'b'])).toBe(0)
      const after = amountOf((await survivor.read('a')).data)
      expect([1, -4]).toContain(after)
    }
  })
})
