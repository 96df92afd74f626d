/**
 * A browser node: a member of the cluster that lives in a web page. It dials server nodes over
 * WebSockets with the cluster key (the same noise + private-network protector as every node), joins
 * membership as kind `browser`, and reaches the coordination store as a client of the servers it
 * dialled. It is never an acceptor (the store takes its acceptors from `liveServers()`), runs no
 * threads (it runs no runtime; placement prefers servers, and a start sent here would be refused),
 * and never counts as a storage replica; it listens on nothing, since pages cannot accept
 * connections, and the servers answer it over the connections it opened.
 *
 * The same code runs in Node (WebSockets works there too), which tests use.
 *
 *   const node = await startBrowserNode({ bootstrap: ['/ip4/10.0.0.1/tcp/4002/ws/p2p/12D3…'], clusterKey: hex })
 *   node.membership.liveServers()
 *   await node.client.get('config/x')
 *   await node.stop()
 */

import { generateKeyPair } from '@libp2p/crypto/keys'
import { multiaddr } from '@multiformats/multiaddr'
import { BrowserJoinError, InvalidArgumentError } from '../errors.ts'
import { type Capacity, createMembership, type Membership } from '../membership/membership.ts'
import { sleep, systemClock, systemRandom, systemTimers, type TimerHandle } from '../platform.ts'
import { connectClient, type FabricClient } from './client.ts'
import { loadClusterKey } from './cluster-key.ts'
import { joinMembersTopic, receiveMembershipMessage } from './members-topic.ts'
import { createNetwork, dialTimeoutMs, type Log, type Network } from './network.ts'

/** How often the page publishes its member record on the members topic, as servers do. */
export const browserAnnounceIntervalMs = 2000
/** How long joining may take before the page gives up with {@link BrowserJoinError}. */
export const browserJoinTimeoutMsDefault = 15_000
/** Pause between attempts to reach the bootstrap nodes while joining. */
export const browserJoinRetryMs = 500
/** Time the leave notice gets on the wire before the page closes its connections. */
const leaveNoticeMs = 50

export interface BrowserNodeOptions {
  /** WebSockets multiaddrs of server nodes, each ending in /p2p/<peer id>. */
  bootstrap: readonly string[]
  /** The cluster key as 64 hex digits (or the encoded pre-shared key); without it only keyless clusters answer. */
  clusterKey?: string | Uint8Array
  joinTimeoutMs?: number
  log?: Log
}

/** What the storage layer and the page use of a browser node; a subset of a server's `FabricNode`. */
export interface BrowserNode {
  peerId: string
  kind: 'browser'
  membership: Membership
  network: Network
  /** The coordination store, through the server nodes this page dialled. */
  client: FabricClient
  stop(): Promise<void>
}

function browserCapacity(): Capacity {
  const navigatorInfo = (
    globalThis as { navigator?: { hardwareConcurrency?: number; deviceMemory?: number } }
  ).navigator
  return {
    cores: Math.max(1, navigatorInfo?.hardwareConcurrency ?? 1),
    // `deviceMemory` (GiB, Chromium only) is coarse on purpose; a page gets a share of it at best.
    memoryBytes: Math.round((navigatorInfo?.deviceMemory ?? 1) * 2 ** 30),
    // Not measured: a browser node runs no threads, so nothing weighs it by speed yet.
    speedScore: 1,
  }
}

/** A page can dial only WebSockets, and must know whom it dials: `/.../ws/p2p/<peer id>` (or `/wss/`). */
function checkBootstrapAddress(address: string): void {
  let names: string[]
  try {
    names = multiaddr(address)
      .getComponents()
      .map((component) => component.name)
  } catch (error) {
    throw new InvalidArgumentError(
      `"${address.slice(0, 200)}" is not a multiaddr: ${(error as Error).message}`,
    )
  }
  if (!names.includes('ws') && !names.includes('wss'))
    throw new InvalidArgumentError(
      `${address} is not a WebSockets address; a page can only dial one (fabric node prints it as "listening .../ws/p2p/..."; --ws-port N adds one)`,
    )
  if (names.at(-1) !== 'p2p') throw new InvalidArgumentError(`Expected ${address} to end in /p2p/<peer id>`)
}

/**
 * Where the page sends store requests: the bootstrap nodes and every server it knows of by now
 * (their WebSockets addresses), so that it keeps reaching the store when a server goes away.
 */
function storeNodes(bootstrap: readonly string[], membership: Membership): string[] {
  const nodes = new Map<string, string>()
  for (const address of bootstrap) nodes.set(address.slice(address.lastIndexOf('/p2p/') + 5), address)
  for (const id of membership.liveServers()) {
    if (nodes.has(id)) continue
    const address = membership
      .member(id)
      ?.addresses.find((each) => /\/wss?\//.test(each) && each.endsWith(`/p2p/${id}`))
    if (address !== undefined) nodes.set(id, address)
  }
  return [...nodes.values()]
}

export async function startBrowserNode(options: BrowserNodeOptions): Promise<BrowserNode> {
  const log = options.log ?? (() => {})
  if (options.bootstrap.length === 0)
    throw new InvalidArgumentError('A browser node needs the WebSockets address of at least one server node')
  for (const address of options.bootstrap) checkBootstrapAddress(address)
  const joinTimeoutMs = options.joinTimeoutMs ?? browserJoinTimeoutMsDefault
  if (!(Number.isFinite(joinTimeoutMs) && joinTimeoutMs > 0))
    throw new InvalidArgumentError(
      `Expected joinTimeoutMs to be a positive number of milliseconds, got ${joinTimeoutMs}`,
    )
  const clusterKey =
    typeof options.clusterKey === 'string' ? loadClusterKey(options.clusterKey) : options.clusterKey
  /** The last failed dial, for the error a page that cannot join gets. */
  let lastDialProblem: string | undefined
  const network = await createNetwork({
    privateKey: await generateKeyPair('Ed25519'),
    listen: [],
    clusterKey,
    protocols: new Set(['membership', 'client']),
    log: (line) => {
      if (line.startsWith('could not reach')) lastDialProblem = line
      log(line)
    },
    browser: true,
  })
  const self = network.self
  const membership = createMembership({
    self: { id: self, incarnation: 1, kind: 'browser', capacity: browserCapacity(), addresses: [] },
    clock: systemClock,
    random: systemRandom,
    send: (to, body) => network.send(to, 'membership', body),
  })
  membership.onChange(({ member }) => {
    if (member.status === 'alive') network.addAddresses(member.id, member.addresses)
  })
  network.onPeerDisconnected((peer) => {
    if (membership.member(peer)?.status === 'alive') membership.disconnected(peer)
  })
  network.onPeerConnected((peer) => membership.connected(peer))
  network.onMessage((from, protocol, body) => {
    if (protocol === 'membership') receiveMembershipMessage(network, membership, from, body)
  })

  const announce = joinMembersTopic(network, membership, self)

  const timers: TimerHandle[] = [
    systemTimers.every(membership.tickIntervalMs, () => membership.tick()),
    systemTimers.every(browserAnnounceIntervalMs, announce),
  ]
  const stopAll = async () => {
    for (const timer of timers) timer.cancel()
    await network.stop()
  }

  // Join: dial the bootstrap nodes until one answers, then until membership hears from a server.
  const deadline = performance.now() + joinTimeoutMs
  let peers: string[] = []
  while (membership.liveServers().length === 0) {
    if (performance.now() > deadline) {
      await stopAll()
      throw new BrowserJoinError(
        peers.length === 0
          ? `no server node let this page in within ${joinTimeoutMs} ms (${options.bootstrap.join(', ')}): ` +
              'check the addresses (WebSockets, ending in /p2p/<peer id>) and that the page holds the cluster key' +
              (lastDialProblem === undefined ? '' : ` (${lastDialProblem})`)
          : `server nodes answered but membership did not admit this page within ${joinTimeoutMs} ms`,
      )
    }
    peers = await network.dial(
      options.bootstrap,
      Math.max(1, Math.min(dialTimeoutMs, deadline - performance.now())),
    )
    if (peers.length > 0) membership.join(peers)
    await sleep(browserJoinRetryMs)
  }
  log(`joined as a browser node through ${peers.length} server nodes`)

  let client: FabricClient
  try {
    client = await connectClient({ nodes: storeNodes(options.bootstrap, membership), network })
  } catch (error) {
    await stopAll()
    throw error
  }

  let stopped = false
  return {
    peerId: self,
    kind: 'browser',
    membership,
    network,
    client,
    async stop() {
      if (stopped) return
      stopped = true
      membership.leave()
      await client.close()
      // The leave notice goes out before the connections close.
      await sleep(leaveNoticeMs)
      await stopAll()
    },
  }
}
