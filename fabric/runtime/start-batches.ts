/**
 * Starts of threads (`start` messages) to one node in one turn go as one `starts` message, answered
 * by one `started` message with a reply per start: a batch of spawns placed on a node costs one
 * request and one reply instead of one each (each costs an encoding, a decoding, a check and a
 * timer on both sides). A turn's single start goes as itself.
 *
 *   const starts = new StartBatcher(self, (to, message) => messenger.request(to, message))
 *   const reply = await starts.request(node, { type: 'start', pid, tid, version, record })
 */

import { startsPerMessageMax } from './message-validation.ts'
import type { RuntimeMessage, RuntimeReply, StartRequest } from './messages.ts'
import type { NodeId } from './services.ts'

interface Pending {
  start: StartRequest
  resolve: (reply: RuntimeReply) => void
  reject: (error: Error) => void
}

export class StartBatcher {
  private readonly self: NodeId
  private readonly send: (to: NodeId, message: RuntimeMessage) => Promise<RuntimeReply>
  private readonly queues = new Map<NodeId, Pending[]>()

  constructor(self: NodeId, send: (to: NodeId, message: RuntimeMessage) => Promise<RuntimeReply>) {
    this.self = self
    this.send = send
  }

  /** Asks `to` to claim and run a thread; resolves with its reply to this start. */
  request(to: NodeId, start: StartRequest): Promise<RuntimeReply> {
    if (to === this.self) return this.send(to, start)
    return new Promise((resolve, reject) => {
      let queue = this.queues.get(to)
      if (queue === undefined) {
        const created: Pending[] = []
        queue = created
        this.queues.set(to, created)
        queueMicrotask(() => {
          this.queues.delete(to)
          for (let first = 0; first < created.length; first += startsPerMessageMax)
            this.sendBatch(to, created.slice(first, first + startsPerMessageMax))
        })
      }
      queue.push({ start, resolve, reject })
    })
  }

  private sendBatch(to: NodeId, batch: Pending[]): void {
    if (batch.length === 1) {
      const [only] = batch
      this.send(to, only!.start).then(only!.resolve, only!.reject)
      return
    }
    this.send(to, { type: 'starts', starts: batch.map((pending) => pending.start) }).then(
      (reply) => {
        if (reply.type === 'started' && reply.replies.length === batch.length) {
          batch.forEach((pending, index) => {
            pending.resolve(reply.replies[index]!)
          })
          return
        }
        // A refusal of the whole message (a node not serving) is each start's refusal.
        const each: RuntimeReply =
          reply.type === 'refused' ? reply : { type: 'refused', reason: `unexpected reply ${reply.type}` }
        for (const pending of batch) pending.resolve(each)
      },
      (error: Error) => {
        for (const pending of batch) pending.reject(error)
      },
    )
  }
}
