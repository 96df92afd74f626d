/**
 * The DHT provider records that announce bricks (fabric/net/node-datastore.ts, issue 6): a lookup
 * of one brick's providers visits that brick's records only, and the records of other nodes are
 * bounded (least recently written dropped first) while this node's own are kept.
 */

import { Key } from 'interface-datastore'
import { describe, expect, it } from 'vitest'
import { createNodeDatastore, providerRecordPrefix } from '../fabric/net/node-datastore.ts'

const self = '12D3KooWSelf'
const time = Uint8Array.of(1, 2, 3)
const record = (content: string, peer: string) => new Key(`${providerRecordPrefix}${content}/${peer}`)

async function keysOf(query: AsyncIterable<{ key: Key }> | Iterable<{ key: Key }>): Promise<string[]> {
  const keys: string[] = []
  for await (const { key } of query) keys.push(key.toString())
  return keys.sort()
}

describe('provider records in the node datastore', () => {
  it("a lookup of one content's providers returns its records only; other queries see everything", async () => {
    const store = createNodeDatastore({ self })
    await store.put(record('CIQA', 'peer-1'), time)
    await store.put(record('CIQA', 'peer-2'), time)
    await store.put(record('CIQB', 'peer-1'), time)
    await store.put(new Key('/peers/peer-1'), time)
    // As kad-dht asks: the content's key as prefix, with or without the trailing slash.
    expect(await keysOf(store.query({ prefix: `${providerRecordPrefix}CIQA` }))).toEqual([
      `${providerRecordPrefix}CIQA/peer-1`,
      `${providerRecordPrefix}CIQA/peer-2`,
    ])
    expect(await keysOf(store.query({ prefix: `${providerRecordPrefix}CIQB/` }))).toHaveLength(1)
    expect(await keysOf(store.query({ prefix: `${providerRecordPrefix}CIQC` }))).toEqual([])
    // The DHT's hourly sweep over every record, and the peer store's own prefix.
    expect(await keysOf(store.query({ prefix: '/dht/provider' }))).toHaveLength(3)
    expect(await keysOf(store.query({ prefix: '/peers' }))).toEqual(['/peers/peer-1'])
    const keys: string[] = []
    for await (const key of store.queryKeys({ prefix: `${providerRecordPrefix}CIQA` }))
      keys.push(key.toString())
    expect(keys.sort()).toEqual([`${providerRecordPrefix}CIQA/peer-1`, `${providerRecordPrefix}CIQA/peer-2`])
    await store.delete(record('CIQA', 'peer-1'))
    expect(await keysOf(store.query({ prefix: `${providerRecordPrefix}CIQA` }))).toEqual([
      `${providerRecordPrefix}CIQA/peer-2`,
    ])
    expect(store.stats()).toMatchObject({ providerRecords: 2, providerRecordsDropped: 0 })
  })

  it("other nodes' records are bounded, least recently written dropped first; this node's own are kept", async () => {
    const store = createNodeDatastore({ self, providerRecordsMax: 4 })
    for (let index = 0; index < 3; index++) await store.put(record(`OWN${index}`, self), time)
    for (let index = 0; index < 4; index++) await store.put(record(`C${index}`, 'peer-1'), time)
    // Written again: now the most recent, so C1 goes first when C4 arrives, then C2.
    await store.put(record('C0', 'peer-1'), time)
    await store.put(record('C4', 'peer-1'), time)
    await store.put(record('C5', 'peer-1'), time)
    const left = await keysOf(store.query({ prefix: '/dht/provider' }))
    expect(left.filter((key) => key.endsWith(`/${self}`))).toHaveLength(3)
    expect(left.filter((key) => !key.endsWith(`/${self}`))).toEqual(
      ['C0', 'C3', 'C4', 'C5'].map((content) => `${providerRecordPrefix}${content}/peer-1`),
    )
    expect(await store.has(record('C1', 'peer-1'))).toBe(false)
    expect(await keysOf(store.query({ prefix: `${providerRecordPrefix}C1` }))).toEqual([])
    expect(store.stats()).toEqual({ providerRecords: 7, providerRecordsDropped: 2 })
    // A batch (as the peer store writes) goes through the same bound.
    const batch = store.batch()
    batch.put(record('C7', 'peer-2'), time)
    await batch.commit()
    expect(store.stats()).toEqual({ providerRecords: 7, providerRecordsDropped: 3 })
    expect(await store.has(record('C3', 'peer-1'))).toBe(false)
  })
})
