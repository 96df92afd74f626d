/**
 * An acceptor replica's slots by key, with the keys of each group indexed so that a group can be
 * forgotten without a scan. A key's group is its first two path segments with their slashes
 * (`threads/<pid>/` for `threads/<pid>/0/7`); a key of fewer than three segments (`proc/<pid>`)
 * has none and is never forgotten.
 *
 *   const slots = new Slots()
 *   slots.set('threads/p1/0/7', slot)
 *   slots.forget('threads/p1/')        // ['threads/p1/0/7']
 */

import type { Slot } from './acceptor.ts'

/** Key groups one `forget` message names at most (Store.forget sends more in several). */
export const forgetGroupsPerMessageMax = 64

/** A group as `Slots.forget` takes it: two non-empty segments, each followed by a slash. */
const groupPattern = /^[^/]+\/[^/]+\/$/

export function isGroup(prefix: string): boolean {
  return groupPattern.test(prefix)
}

/** The group of `key`, or null for a key of fewer than three segments. */
export function groupOf(key: string): string | null {
  const first = key.indexOf('/')
  if (first <= 0) return null
  const second = key.indexOf('/', first + 1)
  if (second <= first + 1 || second === key.length - 1) return null
  return key.slice(0, second + 1)
}

export class Slots {
  private readonly byKey = new Map<string, Slot>()
  private readonly byGroup = new Map<string, Set<string>>()

  static of(entries: Iterable<readonly [string, Slot]>): Slots {
    const slots = new Slots()
    for (const [key, slot] of entries) slots.set(key, slot)
    return slots
  }

  get size(): number {
    return this.byKey.size
  }

  get(key: string): Slot | undefined {
    return this.byKey.get(key)
  }

  has(key: string): boolean {
    return this.byKey.has(key)
  }

  set(key: string, slot: Slot): void {
    if (!this.byKey.has(key)) {
      const group = groupOf(key)
      if (group !== null) {
        let keys = this.byGroup.get(group)
        if (keys === undefined) {
          keys = new Set()
          this.byGroup.set(group, keys)
        }
        keys.add(key)
      }
    }
    this.byKey.set(key, slot)
  }

  /** Drops the slots of every key in `group`; returns their keys. */
  forget(group: string): string[] {
    const keys = this.byGroup.get(group)
    if (keys === undefined) return []
    this.byGroup.delete(group)
    for (const key of keys) this.byKey.delete(key)
    return [...keys]
  }

  [Symbol.iterator](): MapIterator<[string, Slot]> {
    return this.byKey.entries()
  }
}
