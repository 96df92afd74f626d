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
import { PacedGroups } from './paced-groups.ts'
import type { NodeId } from './services.ts'

/** Notices queued for one node beyond which the oldest are dropped (a peer that does not answer). */
export const noticesQueuedMax = 65_536
/**
 * How long the next notices wait for the answer to the previous message: a reply that is lost or
 * slow must not hold a node's notices up (a home that misses a placement cannot restart the thread).
 */
export const noticeAnswerWaitMsMax = 500

export class NoticeSender {
  private readonly self: NodeId
  private readonly request: (to: NodeId, message: RuntimeMessage) => Promise<RuntimeReply>
  private readonly timers: Timers
  private readonly queues = new Map<NodeId, PacedGroups<Notice>>()

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
      queue = new PacedGroups<Notice>({
        timers: this.timers,
        answerWaitMsMax: noticeAnswerWaitMsMax,
        groupMax: noticesPerMessageMax,
        queuedMax: noticesQueuedMax,
        send: (notices) =>
          this.request(to, notices.length === 1 ? notices[0]! : { type: 'notices', notices }),
        onIdle: () => this.queues.delete(to),
      })
      this.queues.set(to, queue)
    }
    queue.push(notice)
  }
}
