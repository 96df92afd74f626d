/**
 * The members topic on gossipsub, shared by server and browser nodes: each node publishes its
 * member record there now and then, and every record heard is a heartbeat from its sender. A
 * message that does not decode is refused with a log line; one naming another sender is ignored.
 */

import type { MemberInfo, Membership } from '../membership/membership.ts'
import { membersTopic, type Network } from './network.ts'
import { decodeEnvelope, encodeFrame } from './wire.ts'

/** Subscribes `membership` to the members topic; returns the function that announces this node. */
export function joinMembersTopic(network: Network, membership: Membership, self: string): () => void {
  const pubsub = network.libp2p.services.pubsub as unknown as {
    subscribe(topic: string): void
    publish(topic: string, data: Uint8Array): Promise<unknown>
    addEventListener(type: 'message', listener: (event: CustomEvent) => void): void
  }
  pubsub.subscribe(membersTopic)
  pubsub.addEventListener('message', (event) => {
    const message = event.detail as { topic: string; data: Uint8Array; from?: { toString(): string } }
    if (message.topic !== membersTopic || message.from === undefined) return
    try {
      const body = decodeEnvelope(message.data, new Set(['membership'])).b as MemberInfo
      const from = message.from.toString()
      if (body?.id === from) membership.receive(from, { type: 'heartbeat', sender: body, news: [] })
    } catch (error) {
      network.refuse(message.from.toString(), `gossipsub: ${(error as Error).message}`)
    }
  })
  return () => {
    const info = membership.member(self)
    if (info !== undefined)
      pubsub.publish(membersTopic, encodeFrame('membership', info).subarray(4)).catch(() => {})
  }
}
