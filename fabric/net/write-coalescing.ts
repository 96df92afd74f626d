/**
 * Merges the frames a connection's muxer sends in one turn of the event loop into one write.
 *
 * yamux hands every frame to the encrypted connection on its own: a data frame, and the window
 * update the receiver sends back for each data frame it gets. Each became a noise message, a
 * cluster-key encryption and a socket write, which on loopback wakes the receiving process once per
 * frame. Profiles of 3 node processes under store load put 60% of the nodes' time in that socket
 * write. Here the muxer's frames are collected until the event loop's check phase (after it has
 * handled every socket that was ready) and sent as one piece: the replies to a batch of requests,
 * their window updates and the frames of other streams on the same connection leave together.
 *
 * `beforeWrite` runs before any collected bytes go out: the node flushes its acceptor log there,
 * so a reply never leaves before the vote it reports is on disk (see acceptor-log.ts).
 */

import type { MessageStream, StreamMuxer, StreamMuxerFactory } from '@libp2p/interface'
import { Uint8ArrayList } from 'uint8arraylist'

/** Bytes collected per connection before they are sent at once, without waiting for the turn to end. */
export const coalescedBytesMax = 256 * 1024

type Send = (data: Uint8Array | Uint8ArrayList) => boolean

/** After the I/O of this turn of the event loop (Node); a browser has no such phase, so after this task. */
const afterThisTurn: (run: () => void) => void =
  typeof globalThis.setImmediate === 'function' ? (run) => setImmediate(run) : (run) => queueMicrotask(run)

/**
 * What runs at the end of the turn, in stages: first the messages batched per peer (network.ts),
 * whose sends then reach the connections' collected frames, which go out next in the same turn.
 */
export type TurnEndStage = 'messages' | 'connections'
const turnEndRuns: Record<TurnEndStage, Set<() => void>> = { messages: new Set(), connections: new Set() }
let turnEndScheduled = false

export function atTurnEnd(stage: TurnEndStage, run: () => void): void {
  turnEndRuns[stage].add(run)
  if (turnEndScheduled) return
  turnEndScheduled = true
  afterThisTurn(runTurnEnd)
}

function runTurnEnd(): void {
  turnEndScheduled = false
  for (const stage of ['messages', 'connections'] as const) {
    const runs = [...turnEndRuns[stage]]
    turnEndRuns[stage].clear()
    for (const run of runs) run()
  }
}

/**
 * Frames for one stream gathered during a turn and handed to `send` at its end as one piece: one
 * yamux frame, one window update back and one message event at the receiver (whose frame reader
 * splits them again), instead of one of each per frame. Peers' messages (network.ts), a client's
 * requests (client.ts) and a node's replies to a client (node.ts) go out this way.
 */
export class FramesPerTurn {
  /** Bytes gathered and not sent yet. */
  bytes = 0
  private frames: Uint8Array[] = []
  private readonly send: (piece: Uint8Array | Uint8ArrayList, frameCount: number) => void

  constructor(send: (piece: Uint8Array | Uint8ArrayList, frameCount: number) => void) {
    this.send = send
  }

  push(frame: Uint8Array): void {
    this.frames.push(frame)
    this.bytes += frame.length
    if (this.frames.length === 1) atTurnEnd('messages', this.flush)
  }

  private readonly flush = (): void => {
    const frames = this.frames
    this.frames = []
    this.bytes = 0
    if (frames.length > 0) this.send(joinFrames(frames), frames.length)
  }
}

/** Frames as one piece for a stream's `send` (a lone frame as itself). */
export function joinFrames(frames: Uint8Array[]): Uint8Array | Uint8ArrayList {
  return frames.length === 1 ? frames[0]! : new Uint8ArrayList(...frames)
}

export function coalescingMuxer<Components>(
  muxer: (components: Components) => StreamMuxerFactory,
  beforeWrite: () => void = () => {},
): (components: Components) => StreamMuxerFactory {
  return eachMuxer(muxer, (created) =>
    coalesceSends(created as unknown as { send: Send; status: string }, beforeWrite),
  )
}

/** `muxer`'s factory, with `adapt` applied to every muxer it creates (and the connection under it). */
export function eachMuxer<Components>(
  muxer: (components: Components) => StreamMuxerFactory,
  adapt: (created: StreamMuxer, connection: MessageStream) => void,
): (components: Components) => StreamMuxerFactory {
  return (components) => {
    const inner = muxer(components)
    return {
      protocol: inner.protocol,
      createStreamMuxer(connection) {
        const created = inner.createStreamMuxer(connection)
        adapt(created, connection)
        return created
      },
    }
  }
}

function coalesceSends(muxer: { send: Send; status: string }, beforeWrite: () => void): void {
  const sendNow = muxer.send.bind(muxer)
  let collected: Uint8ArrayList | undefined
  let scheduled = false
  const flush = (): boolean => {
    scheduled = false
    const data = collected
    collected = undefined
    if (data === undefined || data.byteLength === 0) return true
    beforeWrite()
    try {
      return sendNow(data)
    } catch {
      // The connection closed meanwhile: its streams learn that on their own.
      return false
    }
  }
  muxer.send = (data) => {
    // Closing (a go-away, the last frames): nothing may overtake what is already collected.
    if (muxer.status !== 'open') {
      flush()
      beforeWrite()
      return sendNow(data)
    }
    collected ??= new Uint8ArrayList()
    collected.append(data)
    if (collected.byteLength >= coalescedBytesMax) return flush()
    if (!scheduled) {
      scheduled = true
      atTurnEnd('connections', flush)
    }
    return true
  }
}
