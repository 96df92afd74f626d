/**
 * Registers that hold named entries: a register's value may be a map of entries, each with its own
 * version, so that many small records share one key and the writes of many of them queued on the
 * key go in one Paxos round (the proposer batches the requests of one key; coord/store.ts).
 *
 * An entry's version is the register's version after the write that last set it (0: absent). It
 * never repeats, even after a delete and a new write of the entry, so a compare-and-swap on an
 * entry's version cannot be fooled by an entry that was deleted and written again (no tombstones).
 *
 * The encoding is a small binary format, checked when decoded (register values come from anyone
 * who can write the key): a magic byte, the entry count, then per entry its name (UTF-8), version
 * and value. `decodeEntries` returns null for bytes that are not an entry map.
 *
 *   const entries = decodeEntries(register.value) // Map<name, { version, value }>
 */

export interface Entry {
  version: number
  value: Uint8Array
}

export type Entries = ReadonlyMap<string, Entry>

/** Longest entry name, in UTF-8 bytes. */
export const entryNameBytesMax = 512
const entriesMagic = 0xe1
/** magic + count (u32) */
const headerBytes = 5
/** name length (u16) + version (f64) + value length (u32) */
const entryOverheadBytes = 14

const textEncoder = new TextEncoder()
const textDecoder = new TextDecoder('utf-8', { fatal: true })

/** Decoded maps of values seen recently, so a batch of entry writes on one key decodes it once. */
const decoded = new WeakMap<Uint8Array, Entries>()

export const emptyEntries: Entries = new Map()

/** The entries in `value` (none for a register never written or emptied), or null if it holds something else. */
export function decodeEntries(value: Uint8Array | null): Entries | null {
  if (value === null) return emptyEntries
  const known = decoded.get(value)
  if (known !== undefined) return known
  const entries = parseEntries(value)
  if (entries !== null) decoded.set(value, entries)
  return entries
}

function parseEntries(value: Uint8Array): Entries | null {
  if (value.length < headerBytes || value[0] !== entriesMagic) return null
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength)
  const count = view.getUint32(1)
  const entries = new Map<string, Entry>()
  let offset = headerBytes
  for (let index = 0; index < count; index++) {
    if (offset + 2 > value.length) return null
    const nameBytes = view.getUint16(offset)
    offset += 2
    if (nameBytes > entryNameBytesMax || offset + nameBytes + 12 > value.length) return null
    let name: string
    try {
      name = textDecoder.decode(value.subarray(offset, offset + nameBytes))
    } catch {
      return null
    }
    offset += nameBytes
    const version = view.getFloat64(offset)
    const valueBytes = view.getUint32(offset + 8)
    offset += 12
    if (!Number.isSafeInteger(version) || version < 1 || offset + valueBytes > value.length) return null
    if (entries.has(name)) return null
    entries.set(name, { version, value: value.slice(offset, offset + valueBytes) })
    offset += valueBytes
  }
  return offset === value.length ? entries : null
}

/** The bytes of `entries`, as `decodeEntries` reads them. */
export function encodeEntries(entries: Entries): Uint8Array {
  // The names' bytes, in the entries' order (a map's order is its insertion order, both times).
  const names: Uint8Array[] = []
  let size = headerBytes
  for (const [name, entry] of entries) {
    const nameBytes = textEncoder.encode(name)
    names.push(nameBytes)
    size += entryOverheadBytes + nameBytes.length + entry.value.length
  }
  const out = new Uint8Array(size)
  const view = new DataView(out.buffer)
  out[0] = entriesMagic
  view.setUint32(1, entries.size)
  let offset = headerBytes
  let index = 0
  for (const entry of entries.values()) {
    const nameBytes = names[index++]!
    view.setUint16(offset, nameBytes.length)
    out.set(nameBytes, offset + 2)
    offset += 2 + nameBytes.length
    view.setFloat64(offset, entry.version)
    view.setUint32(offset + 8, entry.value.length)
    out.set(entry.value, offset + 12)
    offset += 12 + entry.value.length
  }
  decoded.set(out, entries)
  return out
}

/** Whether `name` may name an entry: a non-empty string of at most `entryNameBytesMax` bytes. */
export function isEntryName(name: unknown): name is string {
  return typeof name === 'string' && name.length > 0 && utf8BytesAtMost(name, entryNameBytesMax)
}

/** Whether `text` takes at most `bytes` bytes in UTF-8; encodes it only when its length leaves a doubt. */
export function utf8BytesAtMost(text: string, bytes: number): boolean {
  // A UTF-16 code unit takes at most 3 bytes in UTF-8 (a surrogate pair, 2 units, takes 4).
  return text.length * 3 <= bytes || textEncoder.encode(text).length <= bytes
}
