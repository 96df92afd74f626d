/**
 * A linearizable coordination store in one process (each operation is atomic on the event loop):
 * for `fabric run --local`, where the threads of one process share variables, locks and queues
 * without a cluster, and for in-process tests. Leases expire on this process's monotonic clock.
 */

import { applyOperation, type Operation } from '../coord/register.ts'
import { type Clock, systemClock } from '../platform.ts'
import type { CoordinationClient, Register } from './services.ts'

const nextTurn: (callback: () => void) => void =
  typeof setImmediate === 'function' ? setImmediate : (callback) => setTimeout(callback, 0)

interface Cell {
  version: number
  value: Uint8Array | null
  holder: string | null
  token: number
  ttlMs: number
  expiresAt: number
}

export class MemoryStore implements CoordinationClient {
  private readonly cells = new Map<string, Cell>()
  private readonly clock: Clock

  constructor(clock: Clock = systemClock) {
    this.clock = clock
  }

  private cell(key: string): Cell {
    let cell = this.cells.get(key)
    if (cell === undefined) {
      cell = { version: 0, value: null, holder: null, token: 0, ttlMs: 0, expiresAt: 0 }
      this.cells.set(key, cell)
    }
    if (cell.holder !== null && cell.expiresAt <= this.clock.now()) cell.holder = null
    return cell
  }

  private async apply(key: string, change: (cell: Cell) => boolean): Promise<Register> {
    // Answer on a later turn, as a real store would: callers must not rely on synchronous results.
    await new Promise<void>((resolve) => nextTurn(resolve))
    const cell = this.cell(key)
    const ok = change(cell)
    return { ok, version: cell.version, value: cell.value, holder: cell.holder, token: cell.token }
  }

  /** Keys under `prefix` that hold a value or a live lease: what a get shows as written (tests). */
  writtenKeys(prefix: string): string[] {
    return [...this.cells.keys()].filter((key) => {
      if (!key.startsWith(prefix)) return false
      const cell = this.cell(key)
      return cell.value !== null || cell.holder !== null
    })
  }

  get(key: string) {
    return this.apply(key, () => true)
  }
  put(key: string, value: Uint8Array) {
    return this.apply(key, (cell) => {
      cell.version++
      cell.value = value
      return true
    })
  }
  cas(key: string, expectedVersion: number, value: Uint8Array) {
    return this.apply(key, (cell) => {
      if (cell.version !== expectedVersion) return false
      cell.version++
      cell.value = value
      return true
    })
  }
  acquire(key: string, holder: string, ttlMs: number) {
    return this.apply(key, (cell) => {
      if (cell.holder !== null && cell.holder !== holder) return false
      if (cell.holder !== holder) cell.token++
      cell.holder = holder
      cell.ttlMs = ttlMs
      cell.expiresAt = this.clock.now() + ttlMs
      return true
    })
  }
  renew(key: string, holder: string, token: number) {
    return this.apply(key, (cell) => {
      if (cell.holder !== holder || cell.token !== token || this.clock.now() > cell.expiresAt) return false
      cell.expiresAt = this.clock.now() + cell.ttlMs
      return true
    })
  }
  /** As the store's delete: no value, no lease; the version and the token count on. */
  delete(key: string) {
    return this.apply(key, (cell) => {
      if (cell.value === null && cell.holder === null) return true
      cell.version++
      cell.value = null
      cell.holder = null
      return true
    })
  }
  /** As the store's forget, at once: the keys of `groups` go. */
  forget(groups: readonly string[]) {
    for (const key of [...this.cells.keys()])
      if (groups.some((group) => key.startsWith(group))) this.cells.delete(key)
  }
  /** As the store's entry operations, by the same code (fabric/coord/register.ts). */
  entryCas(key: string, entry: string, expectedVersion: number, value: Uint8Array | null) {
    return this.applyEntry(key, { kind: 'entry-cas', entry, expectedVersion, value })
  }
  entryGet(key: string, entry: string) {
    return this.applyEntry(key, { kind: 'entry-get', entry })
  }
  private async applyEntry(key: string, operation: Operation): Promise<Register> {
    await new Promise<void>((resolve) => nextTurn(resolve))
    const cell = this.cell(key)
    const { state, result } = applyOperation(
      { version: cell.version, value: cell.value, lease: null, token: cell.token },
      operation,
      false,
    )
    cell.version = state.version
    cell.value = state.value
    return { ...result, holder: cell.holder, token: cell.token }
  }
  release(key: string, holder: string, token: number) {
    return this.apply(key, (cell) => {
      if (cell.holder !== holder || cell.token !== token) return false
      cell.holder = null
      return true
    })
  }
}
