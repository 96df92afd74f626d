// A thread's replay log on its save replicas: continuations carry only the new entries.
import { describe, expect, test } from 'vitest'
import { isRuntimeMessage } from '../fabric/runtime/message-validation.ts'
import { SaveReplicas } from '../fabric/runtime/save-replicas.ts'

const entries = (from: number, to: number) =>
  Array.from({ length: to - from }, (_, index): [number, string] => [
    from + index + 1,
    String(1000 + from + index),
  ])
const log = { pid: 'p', tid: '0', epoch: 1, afterSequence: 0 }

describe('replay logs on save replicas', () => {
  test('a continuation appends to the log held for the same incarnation and save', () => {
    const replicas = new SaveReplicas()
    expect(replicas.keepLog({ ...log, entries: entries(0, 3) })).toBe('kept')
    expect(replicas.keepLog({ ...log, entries: entries(3, 5), from: 3 })).toBe('kept')
    expect(replicas.log('p', '0')?.entries).toEqual(entries(0, 5))
    // One that overlaps what is held replaces the tail it repeats.
    expect(replicas.keepLog({ ...log, entries: entries(4, 7), from: 4 })).toBe('kept')
    expect(replicas.log('p', '0')?.entries).toEqual(entries(0, 7))
    // A continuation that arrives after a longer one changes nothing.
    expect(replicas.keepLog({ ...log, entries: entries(3, 4), from: 3 })).toBe('kept')
    expect(replicas.log('p', '0')?.entries).toEqual(entries(0, 7))
  })

  test('a continuation that does not follow what is held is refused as a gap, a whole log is not', () => {
    const replicas = new SaveReplicas()
    expect(replicas.keepLog({ ...log, entries: entries(2, 4), from: 2 })).toBe('gap')
    expect(replicas.keepLog({ ...log, entries: entries(0, 2) })).toBe('kept')
    expect(replicas.keepLog({ ...log, entries: entries(5, 6), from: 5 })).toBe('gap')
    // Another save's log does not continue this one.
    expect(replicas.keepLog({ ...log, afterSequence: 1, entries: entries(2, 3), from: 2 })).toBe('gap')
    // An older incarnation's is refused as stale.
    expect(replicas.keepLog({ ...log, epoch: 2, entries: entries(0, 1) })).toBe('kept')
    expect(replicas.keepLog({ ...log, entries: entries(0, 9) })).toBe('stale')
    expect(replicas.log('p', '0')?.entries).toEqual(entries(0, 1))
  })

  test('the start of a continuation is checked on the wire', () => {
    const message = { type: 'log', ...log, entries: entries(0, 1) }
    expect(isRuntimeMessage({ ...message, from: 4 })).toBe(true)
    expect(isRuntimeMessage({ ...message, from: -1 })).toBe(false)
    expect(isRuntimeMessage({ ...message, from: 'x' })).toBe(false)
  })
})
