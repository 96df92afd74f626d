// StartBatcher: the starts of one turn to one node travel as one message, each with its own reply.
import { describe, expect, test } from 'vitest'
import { isRuntimeMessage, isRuntimeReply } from '../fabric/runtime/message-validation.ts'
import type { RuntimeMessage, RuntimeReply, StartRequest } from '../fabric/runtime/messages.ts'
import { StartBatcher } from '../fabric/runtime/start-batches.ts'

const start = (tid: string): StartRequest => ({
  type: 'start',
  pid: 'p',
  tid,
  version: 0,
  record: new Uint8Array(1),
})

describe('StartBatcher', () => {
  test('starts of one turn to one node go as one message and each gets its own reply; a lone start goes as itself', async () => {
    const sent: Array<[string, RuntimeMessage]> = []
    const starts = new StartBatcher('self', async (to, message): Promise<RuntimeReply> => {
      sent.push([to, message])
      if (message.type === 'starts')
        return {
          type: 'started',
          replies: message.starts.map((each) =>
            each.tid === '0.2' ? { type: 'claimed', node: 'c', state: 'running' } : { type: 'ok' },
          ),
        }
      return { type: 'ok' }
    })
    const replies = await Promise.all([
      starts.request('b', start('0.1')),
      starts.request('b', start('0.2')),
      starts.request('c', start('0.3')),
      starts.request('self', start('0.4')),
    ])
    expect(replies).toEqual([
      { type: 'ok' },
      { type: 'claimed', node: 'c', state: 'running' },
      { type: 'ok' },
      { type: 'ok' },
    ])
    expect(sent).toEqual([
      ['self', start('0.4')],
      ['b', { type: 'starts', starts: [start('0.1'), start('0.2')] }],
      ['c', start('0.3')],
    ])
  })

  test('a batch the node refuses or cannot be sent is refused or fails for each start', async () => {
    const refusing = new StartBatcher('self', async () => ({
      type: 'refused',
      reason: 'node is not serving',
    }))
    expect(
      await Promise.all([refusing.request('b', start('0.1')), refusing.request('b', start('0.2'))]),
    ).toEqual([
      { type: 'refused', reason: 'node is not serving' },
      { type: 'refused', reason: 'node is not serving' },
    ])
    const failing = new StartBatcher('self', async () => {
      throw new Error('cannot reach b')
    })
    const outcomes = await Promise.allSettled([
      failing.request('b', start('0.1')),
      failing.request('b', start('0.2')),
    ])
    expect(outcomes.map((outcome) => outcome.status)).toEqual(['rejected', 'rejected'])
  })

  test('starts and their replies are checked on the wire', () => {
    expect(isRuntimeMessage({ type: 'starts', starts: [start('0.1'), start('0.2')] })).toBe(true)
    expect(isRuntimeMessage({ type: 'starts', starts: [start('0.1'), { type: 'stop', pid: 'p' }] })).toBe(
      false,
    )
    expect(
      isRuntimeReply({ type: 'started', replies: [{ type: 'ok' }, { type: 'refused', reason: 'x' }] }),
    ).toBe(true)
    expect(isRuntimeReply({ type: 'started', replies: [{ type: 'started', replies: [] }] })).toBe(false)
    expect(isRuntimeReply({ type: 'started', replies: [{ type: 'nonsense' }] })).toBe(false)
  })
})
