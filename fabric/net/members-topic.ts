/**
 * Membership traffic shared by server and browser nodes: direct membership messages, and the
 * members topic on gossipsub, where each node publishes its member record now and then and every
 * record heard is a heartbeat from its sender. A message that does not decode is refused with a
 * log line; one naming another sender is ignored.
 */

import {
  type MemberInfo,
  type Membership,
  type MembershipMessage,
  membershipMessageTypes,
} from '../membership/membership.ts'
import { membersTopic, type Network } from './network.ts'
import { decodeEnvelope, encodeFrame } from './wire.ts'

/** Hands a direct membership message to `membership`; a malformed one is refused with a log line. */
export function receiveMembershipMessage(
  network: Network,
  membership: Membership,
  from: string,
  body: unknown,
): void {
  const type = typeof body === 'object' && body !== null ? (body as { type: unknown }).type : undefined
  if (typeof type === 'string' && membershipMessageTypes.has(type))
    membership.receive(from, body as MembershipMessage)
  else network.refuse(from, 'malformed membership message')
}

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
