/**
 * Fabric nodes (membership + coordination store) inside the simulator, wired exactly as the real
 * node wires them, but over the simulated network and clocks.
 */

import type { AcceptorRecord, AcceptorStorage } from '../coord/acceptor.ts'
import type { StoreMessage } from '../coord/messages.ts'
import { createStore, type Store, type StoreOptions } from '../coord/store.ts'
import {
  createMembership,
  type MemberKind,
  type Membership,
  type MembershipMessage,
  type MembershipOptions,
} from '../membership/membership.ts'
import type { NodeEnvironment, NodeFactory, NodeId } from './simulator.ts'

export const storeTickIntervalMs = 10

type Envelope =
  | { protocol: 'membership'; body: MembershipMessage }
  | { protocol: 'store'; body: StoreMessage }

export interface SimFabricNode {
  store: Store
  membership: Membership
  environment: NodeEnvironment
}

export interface SimFabricOptions {
  kind?: MemberKind
  /** Nodes to contact when (re)starting. */
  seeds: readonly NodeId[]
  /** On a node's first start, create the cluster with these members as every shard's candidates. */
  genesis?: readonly NodeId[]
  store?: StoreOptions
  membership?: MembershipOptions
  /** Called on every (re)start with the fresh node, so tests can reach it. */
  onStart?(node: SimFabricNode): void
}

export function memoryAcceptorStorage(disk: Map<string, unknown>): AcceptorStorage {
  return {
    append(records) {
      let log = disk.get('acceptor') as AcceptorRecord[] | undefined
      if (log === undefined) {
        log = []
        disk.set('acceptor', log)
      }
      log.push(...records)
    },
    load: () => [...((disk.get('acceptor') as AcceptorRecord[] | undefined) ?? [])],
  }
}

export function simFabricNode(options: SimFabricOptions): NodeFactory {
  return (environment) => {
    const kind = options.kind ?? 'server'
    const firstStart = !environment.disk.has('acceptor')
    const membership = createMembership(
      {
        self: {
          id: environment.self,
          incarnation: environment.incarnation,
          kind,
          capacity: { cores: 1, memoryBytes: 1 << 30, speedScore: 1 },
          addresses: [],
        },
        clock: environment.clock,
        random: environment.random,
        send: (to, body) => environment.send(to, { protocol: 'membership', body } satisfies Envelope),
      },
      options.membership,
    )
    const store = createStore(
      {
        self: environment.self,
        clock: environment.clock,
        random: environment.random,
        send: (to, body) => environment.send(to, { protocol: 'store', body } satisfies Envelope),
        servers: () => membership.liveServers(),
        storage: kind === 'server' ? memoryAcceptorStorage(environment.disk) : undefined,
      },
      options.store,
    )
    if (firstStart && kind === 'server' && options.genesis?.includes(environment.self))
      store.genesis(options.genesis)
    membership.join(options.seeds)
    options.onStart?.({ store, membership, environment })
    return {
      receive(from, message) {
        const envelope = message as Envelope
        if (envelope.protocol === 'membership') membership.receive(from, envelope.body)
        else store.receive(from, envelope.body)
      },
      tickers: [
        { intervalMs: membership.tickIntervalMs, tick: () => membership.tick() },
        { intervalMs: storeTickIntervalMs, tick: () => store.tick() },
      ],
      disconnected: (peer) => membership.disconnected(peer),
    }
  }
}
