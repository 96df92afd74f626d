// GroupedWrites: end records asked for while a group travels are submitted together afterwards.
import { describe, expect, test } from 'vitest'
import { systemTimers } from '../fabric/platform.ts'
import { GroupedWrites, groupAnswerWaitMsMax } from '../fabric/runtime/grouped-writes.ts'
import type { Register } from '../fabric/runtime/services.ts'

const settle = () => new Promise((resolve) => setImmediate(resolve))
const register = (version: number): Register => ({ ok: true, version, value: null, holder: null, token: 0 })

function store() {
  const submitted: Array<{ key: string; turn: number; answer: (register: Register | Error) => void }> = []
  let turn = 0
  const tick = () => turn++
  // Each write's value names it (as an encoded record names its thread).
  const cas = (_version: number, value: Uint8Array) =>
    new Promise<Register>((resolve, reject) => {
      submitted.push({
        key: new TextDecoder().decode(value),
        turn,
        answer: (reply) => (reply instanceof Error ? reject(reply) : resolve(reply)),
      })
    })
  return { submitted, cas, tick }
}

describe('GroupedWrites', () => {
  test('writes asked for while a group travels wait for its answers, then go together; each gets its own answer', async () => {
    const { submitted, cas, tick } = store()
    const writes = new GroupedWrites(cas, systemTimers)
    const first = writes.cas(1, new TextEncoder().encode('a'), 'a')
    await settle()
    tick()
    const second = writes.cas(1, new TextEncoder().encode('b'), 'b')
    await settle()
    const third = writes.cas(1, new TextEncoder().encode('c'), 'c')
    await settle()
    expect(submitted.map(({ key }) => key)).toEqual(['a'])
    submitted[0]!.answer(register(2))
    expect(await first).toEqual(register(2))
    await settle()
    expect(submitted.map(({ key }) => key)).toEqual(['a', 'b', 'c'])
    expect(submitted[1]!.turn).toBe(submitted[2]!.turn)
    submitted[1]!.answer(register(3))
    submitted[2]!.answer(new Error('store did not answer'))
    expect(await second).toEqual(register(3))
    await expect(third).rejects.toThrow('store did not answer')
  })

  test('a write the store does not answer holds the next group up for a bounded time only', async () => {
    const { submitted, cas } = store()
    const writes = new GroupedWrites(cas, systemTimers)
    void writes.cas(1, new TextEncoder().encode('a'), 'a')
    await settle()
    void writes.cas(1, new TextEncoder().encode('b'), 'b')
    await new Promise((resolve) => setTimeout(resolve, groupAnswerWaitMsMax + 50))
    expect(submitted.map(({ key }) => key)).toEqual(['a', 'b'])
  })
})
