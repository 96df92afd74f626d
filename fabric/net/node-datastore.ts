/**
 * The node's libp2p datastore: in memory like libp2p's default, with the DHT's provider records
 * indexed by content and bounded in number.
 *
 * kad-dht keeps one provider record per (content, provider) under
 * `/dht/provider/<multihash>/<peer id>` and finds a content's providers with a prefix query. The
 * default memory datastore answers a prefix query by scanning every key it holds, so each lookup
 * cost grew with every brick in the cluster (a repair or rebalancing scan of n bricks cost n^2),
 * and the records grew with the cluster's data on every node: the holders refresh theirs daily,
 * and the DHT drops other nodes' records only 48 hours after their last refresh.
 *
 * Here a query for one content's providers visits that content's records only, and at most
 * {@link providerRecordsMax} records of other nodes are kept: beyond that the least recently
 * written is dropped. This node's own records are never dropped (there is one per brick it holds,
 * and its daily re-announcements come from them). A lookup that misses a dropped record still
 * finds the holder: storage asks every live storage node when the DHT names none.
 *
 *   const libp2p = await createLibp2p({ datastore: createNodeDatastore({ self: peerId.toString() }), ... })
 */

import type { AbortOptions } from '@libp2p/interface'
import { BaseDatastore, MemoryDatastore } from 'datastore-core'
import { Key, type KeyQuery, type Pair, type Query } from 'interface-datastore'

/** Provider records of other nodes kept at most (each takes a few hundred bytes of memory). */
export const providerRecordsMax = 250_000
/** Where kad-dht keeps provider records (its `datastorePrefix` default, `/dht`, plus `/provider/`). */
export const providerRecordPrefix = '/dht/provider/'

export interface NodeDatastoreOptions {
  /** This node's peer id: its own provider records are never dropped. */
  self: string
  /** Default {@link providerRecordsMax}. */
  providerRecordsMax?: number
}

/** What tests and diagnostics read of the datastore. */
export interface NodeDatastoreStats {
  /** Provider records held, this node's own included. */
  providerRecords: number
  /** Records of other nodes dropped to stay within the bound. */
  providerRecordsDropped: number
}

export type NodeDatastore = BaseDatastore & { stats(): NodeDatastoreStats }

export function createNodeDatastore(options: NodeDatastoreOptions): NodeDatastore {
  return new IndexedMemoryDatastore(options)
}

function* keysOf(records: Iterable<string>): Generator<Key> {
  for (const text of records) yield new Key(text)
}

/** `/dht/provider/<multihash>/<peer>` -> [`/dht/provider/<multihash>`, `<peer>`]; undefined for other keys. */
function providerRecordParts(text: string): [content: string, peer: string] | undefined {
  if (!text.startsWith(providerRecordPrefix)) return undefined
  const slash = text.lastIndexOf('/')
  if (slash <= providerRecordPrefix.length) return undefined
  return [text.slice(0, slash), text.slice(slash + 1)]
}

function notFound(): Error {
  // What libp2p's stores expect from a datastore for a missing key (they check the name).
  return Object.assign(new Error('Not Found'), { name: 'NotFoundError' })
}

/**
 * Provider records in a map of their own, indexed by content; everything else (the peer store,
 * the DHT's other records) in a plain memory datastore, so that neither scans the other.
 */
class IndexedMemoryDatastore extends BaseDatastore {
  private readonly self: string
  private readonly recordsMax: number
  private readonly rest = new MemoryDatastore()
  /** Provider records: full key -> value. */
  private readonly providers = new Map<string, Uint8Array>()
  /** Content key -> the full keys of its provider records. */
  private readonly byContent = new Map<string, Set<string>>()
  /** Other nodes' records, least recently written first. */
  private readonly others = new Set<string>()
  private dropped = 0

  constructor(options: NodeDatastoreOptions) {
    super()
    this.self = options.self
    this.recordsMax = options.providerRecordsMax ?? providerRecordsMax
  }

  stats(): NodeDatastoreStats {
    return { providerRecords: this.providers.size, providerRecordsDropped: this.dropped }
  }

  override put(key: Key, value: Uint8Array, options?: AbortOptions): Key | Promise<Key> {
    const text = key.toString()
    const parts = providerRecordParts(text)
    if (parts === undefined) return this.rest.put(key, value, options)
    options?.signal?.throwIfAborted()
    const [content, peer] = parts
    this.providers.set(text, value)
    let records = this.byContent.get(content)
    if (records === undefined) {
      records = new Set()
      this.byContent.set(content, records)
    }
    records.add(text)
    if (peer !== this.self) {
      // Rewritten: now the most recent.
      this.others.delete(text)
      this.others.add(text)
      while (this.others.size > this.recordsMax) {
        this.forget(this.others.values().next().value!)
        this.dropped++
      }
    }
    return key
  }

  override get(key: Key, options?: AbortOptions): Uint8Array | Promise<Uint8Array> {
    const text = key.toString()
    if (providerRecordParts(text) === undefined) return this.rest.get(key, options)
    const value = this.providers.get(text)
    if (value === undefined) throw notFound()
    return value
  }

  override has(key: Key, options?: AbortOptions): boolean | Promise<boolean> {
    const text = key.toString()
    if (providerRecordParts(text) === undefined) return this.rest.has(key, options)
    return this.providers.has(text)
  }

  override delete(key: Key, options?: AbortOptions): void | Promise<void> {
    const text = key.toString()
    if (providerRecordParts(text) === undefined) return this.rest.delete(key, options)
    this.forget(text)
  }

  override async *_all(query: Query, options?: AbortOptions): AsyncGenerator<Pair> {
    for (const text of this.providerKeys(query.prefix)) {
      options?.signal?.throwIfAborted()
      const value = this.providers.get(text)
      if (value !== undefined) yield { key: new Key(text), value }
    }
    if (this.mayHoldOthers(query.prefix)) yield* this.rest._all(query, options)
  }

  override async *_allKeys(query: KeyQuery, options?: AbortOptions): AsyncGenerator<Key> {
    yield* keysOf(this.providerKeys(query.prefix))
    if (this.mayHoldOthers(query.prefix)) yield* this.rest._allKeys(query, options)
  }

  /** The provider records a query with `prefix` may want: one content's when it names one (as kad-dht's lookups do). */
  private providerKeys(prefix: string | undefined): string[] {
    if (prefix === undefined || providerRecordPrefix.startsWith(prefix)) return [...this.providers.keys()]
    if (!prefix.startsWith(providerRecordPrefix)) return []
    const content = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix
    if (content.indexOf('/', providerRecordPrefix.length) >= 0)
      return [...this.providers.keys()].filter((text) => text.startsWith(prefix))
    return [...(this.byContent.get(content) ?? [])]
  }

  /** Whether keys other than provider records can start with `prefix`. */
  private mayHoldOthers(prefix: string | undefined): boolean {
    return prefix === undefined || !prefix.startsWith(providerRecordPrefix)
  }

  private forget(text: string): void {
    if (!this.providers.delete(text)) return
    const content = providerRecordParts(text)![0]
    const records = this.byContent.get(content)
    records?.delete(text)
    if (records?.size === 0) this.byContent.delete(content)
    this.others.delete(text)
  }
}
