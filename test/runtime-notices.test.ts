// NoticeSender: a node's notices to one peer travel together, one message per round trip.
import { describe, expect, test } from 'vitest'
import { systemTimers } from '../fabric/platform.ts'
import type { Notice, RuntimeMessage, RuntimeReply } from '../fabric/runtime/messages.ts'
import { NoticeSender, noticeAnswerWaitMsMax } from '../fabric/runtime/notices.ts'

const ended = (tid: string): Notice => ({
  type: 'ended',
  pid: 'p',
  tid,
  outcome: { state: 'done', result: null },
})

function recorder() {
  const sent: Array<{ to: string; message: RuntimeMessage; answer: (reply: RuntimeReply | Error) => void }> =
    []
  const request = (to: string, message: RuntimeMessage) =>
    new Promise<RuntimeReply>((resolve, reject) => {
      sent.push({ to, message, answer: (reply) => (reply instanceof Error ? reject(reply) : resolve(reply)) })
    })
  return { sent, request }
}

const settle = () => new Promise((resolve) => setImmediate(resolve))

describe('NoticeSender', () => {
  test('the notices of one turn to one node go in one message; a single notice goes as itself', async () => {
    const { sent, request } = recorder()
    const notices = new NoticeSender('self', request, systemTimers)
    notices.send('b', ended('0.1'))
    notices.send('b', { type: 'placed', pid: 'p', tid: '0.2', node: 'c' })
    notices.send('c', ended('0.3'))
    await settle()
    expect(sent.map(({ to, message }) => [to, message])).toEqual([
      [
        'b',
        { type: 'notices', notices: [ended('0.1'), { type: 'placed', pid: 'p', tid: '0.2', node: 'c' }] },
      ],
      ['c', ended('0.3')],
    ])
  })

  test('notices produced while the previous message to that node travels wait for its answer, then go together', async () => {
    const { sent, request } = recorder()
    const notices = new NoticeSender('self', request, systemTimers)
    notices.send('b', ended('0.1'))
    await settle()
    notices.send('b', ended('0.2'))
    notices.send('b', ended('0.3'))
    await settle()
    expect(sent).toHaveLength(1)
    // A failed message does not stop the next ones.
    sent[0]!.answer(new Error('no runtime reply'))
    await settle()
    expect(sent).toHaveLength(2)
    expect(sent[1]!.message).toEqual({ type: 'notices', notices: [ended('0.2'), ended('0.3')] })
    sent[1]!.answer({ type: 'ok' })
    await settle()
    notices.send('b', ended('0.4'))
    await settle()
    expect(sent.map(({ message }) => message).at(-1)).toEqual(ended('0.4'))
  })

  test('an answer that does not come holds the next notices up for a bounded time only', async () => {
    const { sent, request } = recorder()
    const notices = new NoticeSender('self', request, systemTimers)
    notices.send('b', ended('0.1'))
    await settle()
    notices.send('b', ended('0.2'))
    await new Promise((resolve) => setTimeout(resolve, noticeAnswerWaitMsMax + 100))
    expect(sent.map(({ message }) => message)).toEqual([ended('0.1'), ended('0.2')])
  })

  test("this node's own notices are delivered at once, each by itself", async () => {
    const { sent, request } = recorder()
    const notices = new NoticeSender('self', request, systemTimers)
    notices.send('self', ended('0.1'))
    notices.send('self', ended('0.2'))
    expect(sent.map(({ to, message }) => [to, message])).toEqual([
      ['self', ended('0.1')],
      ['self', ended('0.2')],
    ])
  })
})
