/**
 * A deterministic, in-process simulator for the fabric's protocol state machines.
 *
 * N nodes run on one event queue. Every choice — message latency, loss, reordering, clock offset
 * and drift, tick jitter — is drawn from one seeded random source, so one seed reproduces a run.
 * Tests crash, restart, stall and partition nodes; a crashed node loses everything but its `disk`,
 * and the others' transports notice its connections close (`disconnected`), as a real operating
 * system closes a dead process's sockets. A stalled node is alive but does not run for a while
 * (a loaded machine): its ticks and the messages sent to it wait until it runs again.
 *
 *   const sim = createSimulator({ seed: 7 })
 *   sim.addNode('a', (env) => ({ receive: (from, message) => {}, tickers: [] }))
 *   sim.runFor(1000)
 */

import { type Clock, type Random, seededRandom } from '../platform.ts'

export type NodeId = string

export interface NetworkOptions {
  latencyMsMin: number
  latencyMsMax: number
  /** Probability that a message is dropped. */
  lossRate: number
  /** Probability that a message is delayed by up to `latencySpikeMsMax`, which reorders it. */
  spikeRate: number
  latencySpikeMsMax: number
  /** Each node's clock runs at a rate within 1 ± `clockDriftMax`. */
  clockDriftMax: number
}

export const networkDefaults: NetworkOptions = {
  latencyMsMin: 0.2,
  latencyMsMax: 3,
  lossRate: 0,
  spikeRate: 0.02,
  latencySpikeMsMax: 40,
  clockDriftMax: 0.01,
}

export interface NodeEnvironment {
  self: NodeId
  clock: Clock
  random: Random
  send(to: NodeId, message: unknown): void
  /** Survives crashes and restarts of this node. */
  disk: Map<string, unknown>
  /** How many times this node has been (re)started, from 0. */
  incarnation: number
}

export interface NodeProcess {
  receive(from: NodeId, message: unknown): void
  tickers: { intervalMs: number; tick(): void }[]
  /** The transport lost its connections to `peer` (the peer's process died). */
  disconnected?(peer: NodeId): void
}

export type NodeFactory = (environment: NodeEnvironment) => NodeProcess

export interface Simulator {
  readonly seed: number
  /** The simulated real time in milliseconds. */
  now(): number
  /** The simulator's own random source, for test scripts (derived from the seed). */
  readonly random: Random
  addNode(id: NodeId, factory: NodeFactory): void
  crash(id: NodeId): void
  restart(id: NodeId): void
  /** The node does not run for `durationMs`: no ticks, and messages to it wait until it runs again. */
  stall(id: NodeId, durationMs: number): void
  isUp(id: NodeId): boolean
  nodeIds(): NodeId[]
  process(id: NodeId): NodeProcess | undefined
  /** Converts a reading of `id`'s current clock to simulated real time. */
  localToReal(id: NodeId, localMs: number): number
  /** Nodes in different groups cannot talk; nodes in no group talk to everyone. */
  partition(groups: NodeId[][]): void
  heal(): void
  at(delayMs: number, action: () => void): void
  runFor(durationMs: number): void
  runUntil(condition: () => boolean, limitMs: number): boolean
  stats: { delivered: number; dropped: number; sentBy: Map<NodeId, number>; receivedBy: Map<NodeId, number> }
  setNetwork(update: Partial<NetworkOptions>): void
}

interface Event {
  timeMs: number
  sequence: number
  action: () => void
}

interface SimNode {
  id: NodeId
  factory: NodeFactory
  disk: Map<string, unknown>
  up: boolean
  generation: number
  incarnation: number
  clockOffsetMs: number
  clockRate: number
  startedAtMs: number
  process: NodeProcess | undefined
  stalledUntilMs: number
}

export function createSimulator(options: { seed: number; network?: Partial<NetworkOptions> }): Simulator {
  const seed = options.seed
  const random = seededRandom(seed)
  const scriptRandom = seededRandom(seed ^ 0x5eed)
  let network: NetworkOptions = { ...networkDefaults, ...options.network }
  const heap: Event[] = []
  const nodes = new Map<NodeId, SimNode>()
  let timeMs = 0
  let sequence = 0
  let groupOf = new Map<NodeId, number>()
  const stats = {
    delivered: 0,
    dropped: 0,
    sentBy: new Map<NodeId, number>(),
    receivedBy: new Map<NodeId, number>(),
  }

  function push(event: Event): void {
    heap.push(event)
    let index = heap.length - 1
    while (index > 0) {
      const parent = (index - 1) >> 1
      if (before(heap[parent]!, heap[index]!)) break
      ;[heap[parent], heap[index]] = [heap[index]!, heap[parent]!]
      index = parent
    }
  }

  function pop(): Event | undefined {
    const top = heap[0]
    const last = heap.pop()
    if (heap.length > 0 && last !== undefined) {
      heap[0] = last
      let index = 0
      for (;;) {
        const left = 2 * index + 1
        const right = left + 1
        let smallest = index
        if (left < heap.length && before(heap[left]!, heap[smallest]!)) smallest = left
        if (right < heap.length && before(heap[right]!, heap[smallest]!)) smallest = right
        if (smallest === index) break
        ;[heap[smallest], heap[index]] = [heap[index]!, heap[smallest]!]
        index = smallest
      }
    }
    return top
  }

  function schedule(delayMs: number, action: () => void): void {
    push({ timeMs: timeMs + Math.max(0, delayMs), sequence: sequence++, action })
  }

  function localNow(node: SimNode): number {
    return node.clockOffsetMs + (timeMs - node.startedAtMs) * node.clockRate
  }

  function connected(a: NodeId, b: NodeId): boolean {
    const groupA = groupOf.get(a)
    const groupB = groupOf.get(b)
    return groupA === undefined || groupB === undefined || groupA === groupB
  }

  function start(node: SimNode): void {
    node.up = true
    node.generation++
    node.startedAtMs = timeMs
    // A fresh process gets a fresh monotonic clock: arbitrary origin, its own drift.
    node.clockOffsetMs = Math.floor(random.next() * 1_000_000)
    node.clockRate = 1 + (random.next() * 2 - 1) * network.clockDriftMax
    const generation = node.generation
    const nodeRandom = seededRandom(Math.floor(random.next() * 2 ** 31))
    const environment: NodeEnvironment = {
      self: node.id,
      clock: { now: () => localNow(node) },
      random: nodeRandom,
      disk: node.disk,
      incarnation: node.incarnation,
      send(to, message) {
        if (!node.up || node.generation !== generation) return
        stats.sentBy.set(node.id, (stats.sentBy.get(node.id) ?? 0) + 1)
        if (to !== node.id && random.next() < network.lossRate) {
          stats.dropped++
          return
        }
        let latencyMs =
          to === node.id
            ? 0.01
            : network.latencyMsMin + random.next() * (network.latencyMsMax - network.latencyMsMin)
        if (to !== node.id && random.next() < network.spikeRate)
          latencyMs += random.next() * network.latencySpikeMsMax
        const deliver = () => {
          const target = nodes.get(to)
          if (target === undefined || !target.up || target.process === undefined || !connected(node.id, to)) {
            stats.dropped++
            return
          }
          if (target.stalledUntilMs > timeMs) {
            // It waits in the target's socket buffers until the target runs again.
            schedule(target.stalledUntilMs - timeMs, deliver)
            return
          }
          stats.delivered++
          stats.receivedBy.set(to, (stats.receivedBy.get(to) ?? 0) + 1)
          target.process.receive(node.id, message)
        }
        schedule(latencyMs, deliver)
      },
    }
    node.process = node.factory(environment)
    for (const ticker of node.process.tickers) {
      const realIntervalMs = ticker.intervalMs / node.clockRate
      const loop = () => {
        if (!node.up || node.generation !== generation) return
        if (node.stalledUntilMs > timeMs) {
          schedule(node.stalledUntilMs - timeMs, loop)
          return
        }
        ticker.tick()
        schedule(realIntervalMs * (0.9 + random.next() * 0.2), loop)
      }
      schedule(random.next() * realIntervalMs, loop)
    }
  }

  function nodeOf(id: NodeId): SimNode {
    const node = nodes.get(id)
    if (node === undefined) throw new Error(`simulator: no node ${id}`)
    return node
  }

  return {
    seed,
    now: () => timeMs,
    random: scriptRandom,
    addNode(id, factory) {
      if (nodes.has(id)) throw new Error(`simulator: node ${id} exists`)
      const node: SimNode = {
        id,
        factory,
        disk: new Map(),
        up: false,
        generation: 0,
        incarnation: 0,
        clockOffsetMs: 0,
        clockRate: 1,
        startedAtMs: 0,
        process: undefined,
        stalledUntilMs: 0,
      }
      nodes.set(id, node)
      start(node)
    },
    crash(id) {
      const node = nodeOf(id)
      node.up = false
      node.process = undefined
      node.stalledUntilMs = 0
      // The operating system closes the dead process's connections; each peer's transport notices
      // after about one message latency (later if that peer is stalled itself).
      for (const other of nodes.values()) {
        if (other === node || !other.up || !connected(id, other.id)) continue
        const generation = other.generation
        const notice = () => {
          if (!other.up || other.generation !== generation) return
          if (other.stalledUntilMs > timeMs) schedule(other.stalledUntilMs - timeMs, notice)
          else other.process?.disconnected?.(id)
        }
        schedule(network.latencyMsMin + random.next() * (network.latencyMsMax - network.latencyMsMin), notice)
      }
    },
    stall(id, durationMs) {
      const node = nodeOf(id)
      node.stalledUntilMs = Math.max(node.stalledUntilMs, timeMs + durationMs)
    },
    restart(id) {
      const node = nodeOf(id)
      if (node.up) return
      node.incarnation++
      start(node)
    },
    isUp: (id) => nodes.get(id)?.up ?? false,
    nodeIds: () => [...nodes.keys()],
    process: (id) => nodes.get(id)?.process,
    localToReal(id, localMs) {
      const node = nodeOf(id)
      return node.startedAtMs + (localMs - node.clockOffsetMs) / node.clockRate
    },
    partition(groups) {
      groupOf = new Map()
      groups.forEach((group, index) => {
        for (const id of group) groupOf.set(id, index)
      })
    },
    heal() {
      groupOf = new Map()
    },
    at: schedule,
    runFor(durationMs) {
      const end = timeMs + durationMs
      while (heap.length > 0 && heap[0]!.timeMs <= end) {
        const event = pop()!
        timeMs = event.timeMs
        event.action()
      }
      timeMs = end
    },
    runUntil(condition, limitMs) {
      const end = timeMs + limitMs
      while (!condition()) {
        if (heap.length === 0 || heap[0]!.timeMs > end) {
          timeMs = end
          return condition()
        }
        const event = pop()!
        timeMs = event.timeMs
        event.action()
      }
      return true
    },
    stats,
    setNetwork(update) {
      network = { ...network, ...update }
    },
  }
}

function before(a: Event, b: Event): boolean {
  return a.timeMs < b.timeMs || (a.timeMs === b.timeMs && a.sequence < b.sequence)
}

/** The line a failing simulation test prints so the run can be reproduced. */
export function seedBanner(seed: number, testFile: string, testName: string): string {
  return `SEED=${seed} — rerun: SEED=${seed} npx vitest run ${testFile} -t "${testName}"`
}
