/**
 * Notices to other nodes (a thread placed, a thread ended, saves to drop), sent together: the
 * notices of one turn go in one message, and those produced while it travels go in the next one
 * once it is answered. A node under load sends one message per peer per round trip instead of one
 * per notice (each costs an encryption, a frame and a system call on both sides); an idle node's
 * notice goes at once.
 *
 *   const notices = new NoticeSender(self, (to, message) => messenger.request(to, message), timers)
 *   notices.send(home, { type: 'placed', pid, tid, node })
 */

import type { Timers } from '../platform.ts'
import { noticesPerMessageMax } from './message-validation.ts'
import type { Notice, RuntimeMessage, RuntimeReply } from './messages.ts'
import type { NodeId } from './services.ts'

/** Notices queued for one node beyond which the oldest are dropped (a peer that does not answer). */
export const noticesQueuedMax = 65_536
/**
 * How long the next notices wait for the answer to the previous message: a reply that is lost or
 * slow must not hold a node's notices up (a home that misses a placement cannot restart the thread).
 */
export const noticeAnswerWaitMsMax = 500

interface Queue {
  notices: Notice[]
  sending: boolean
}

export class NoticeSender {
  private readonly self: NodeId
  private readonly request: (to: NodeId, message: RuntimeMessage) => Promise<RuntimeReply>
  private readonly timers: Timers
  private readonly queues = new Map<NodeId, Queue>()

  constructor(
    self: NodeId,
    request: (to: NodeId, message: RuntimeMessage) => Promise<RuntimeReply>,
    timers: Timers,
  ) {
    this.self = self
    this.request = request
    this.timers = timers
  }

  /** Sends `notice` to `to`, best effort (as any notice: the receivers also poll or sweep). */
  send(to: NodeId, notice: Notice): void {
    // This node's own notices take no wire and wait for nothing.
    if (to === this.self) {
      void this.request(to, notice).catch(() => {})
      return
    }
    let queue = this.queues.get(to)
    if (queue === undefined) {
      queue = { notices: [], sending: false }
      this.queues.set(to, queue)
    }
    queue.notices.push(notice)
    if (queue.notices.length > noticesQueuedMax) queue.notices.shift()
    if (queue.sending) return
    queue.sending = true
    // The rest of this turn's notices join the first message.
    queueMicrotask(() => this.sendQueued(to, queue))
  }

  private sendQueued(to: NodeId, queue: Queue): void {
    const notices = queue.notices.splice(0, noticesPerMessageMax)
    if (notices.length === 0) {
      queue.sending = false
      this.queues.delete(to)
      return
    }
    const message: RuntimeMessage = notices.length === 1 ? notices[0]! : { type: 'notices', notices }
    let next = true
    const sendNext = () => {
      if (!next) return
      next = false
      timer.cancel()
      this.sendQueued(to, queue)
    }
    const timer = this.timers.after(noticeAnswerWaitMsMax, sendNext)
    void this.request(to, message)
      .catch(() => undefined)
      .then(sendNext)
  }
}
