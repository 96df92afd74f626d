/**
 * Starts of threads (`start` messages) to one node in one turn go as one `starts` message, answered
 * by one `started` message with a reply per start: a batch of spawns placed on a node costs one
 * request and one reply instead of one each (each costs an encoding, a decoding, a check and a
 * timer on both sides). A turn's single start goes as itself.
 *
 * A spawner's replay log that several starts of a batch carry (the same object: one spawn batch's
 * log for that node) travels once, in the message's `logs`. A message carries at most
 * `startsLogBytesMax` of logs (as `startLogBytes` counts them); more starts go in another message.
 *
 *   const starts = new StartBatcher(self, (to, message) => messenger.request(to, message))
 *   const reply = await starts.request(node, { type: 'start', pid, tid, version, record })
 */

import { startsPerMessageMax } from './message-validation.ts'
import type { RuntimeMessage, RuntimeReply, StartLog, StartRequest } from './messages.ts'
import type { NodeId } from './services.ts'

/**
 * The largest log a start carries, as `startLogBytes` counts it: a spawner whose log since its
 * last save is larger sends it as a `log` message only, and its starts wait for that.
 */
export const startLogBytesMax = 64 * 1024
/** Logs in one `starts` message, in all (several spawners' starts may go to one node in one turn). */
export const startsLogBytesMax = 512 * 1024

/** About the bytes `log` takes on the wire (CBOR): its values and payloads plus a little per item. */
export function startLogBytes(log: StartLog): number {
  let bytes = 64
  for (const [, value] of log.entries) bytes += value.length + 12
  for (const [, , payload] of log.replies ?? []) bytes += (payload?.length ?? 0) + 20
  return bytes
}

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
          let batch: Pending[] = []
          let logs = new Set<StartLog>()
          let logBytes = 0
          for (const pending of created) {
            const log = pending.start.log
            const newLogBytes = log === undefined || logs.has(log) ? 0 : startLogBytes(log)
            if (
              batch.length > 0 &&
              (batch.length === startsPerMessageMax || logBytes + newLogBytes > startsLogBytesMax)
            ) {
              this.sendBatch(to, batch)
              batch = []
              logs = new Set()
              logBytes = 0
            }
            batch.push(pending)
            if (newLogBytes > 0) logs.add(log!)
            logBytes += newLogBytes
          }
          if (batch.length > 0) this.sendBatch(to, batch)
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
    // Each log once: the starts name theirs by its index.
    const logs: StartLog[] = []
    const starts = batch.map(({ start }): StartRequest => {
      if (start.log === undefined) return start
      const { log, ...rest } = start
      let logIndex = logs.indexOf(log)
      if (logIndex < 0) logIndex = logs.push(log) - 1
      return { ...rest, logIndex }
    })
    this.send(to, { type: 'starts', starts, ...(logs.length === 0 ? {} : { logs }) }).then(
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
