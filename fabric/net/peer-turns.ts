/**
 * Requests to one peer taking turns: at most `max` in flight to each peer, the others waiting in the
 * order they came, and a finished request hands its turn straight to the next. Requests that each
 * open a stream of their own use it (libp2p refuses more than 64 outbound streams of one protocol
 * to a peer at once), so a burst of them waits instead of failing.
 *
 *   const turn = peerTurns(32)
 *   const reply = await turn(peer, () => request(peer, message))
 */

export type PeerTurns = <T>(peer: string, task: () => Promise<T>) => Promise<T>

export function peerTurns(max: number): PeerTurns {
  const peers = new Map<string, { running: number; waiting: (() => void)[] }>()
  return async (peer, task) => {
    let turns = peers.get(peer)
    if (turns === undefined) {
      turns = { running: 0, waiting: [] }
      peers.set(peer, turns)
    }
    const held = turns
    if (held.running < max) held.running++
    else await new Promise<void>((resolve) => held.waiting.push(resolve))
    try {
      return await task()
    } finally {
      const next = held.waiting.shift()
      if (next !== undefined) next()
      else if (--held.running === 0) peers.delete(peer)
    }
  }
}
