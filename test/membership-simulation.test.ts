import { describe, expect, it } from 'vitest'
import {
  createMembership,
  type Membership,
  type MembershipChange,
  type MembershipMessage,
} from '../fabric/membership/membership.ts'
import { createSimulator, type NodeId, type Simulator, seedBanner } from '../fabric/sim/simulator.ts'

const file = 'test/membership-simulation.test.ts'

interface Cluster {
  sim: Simulator
  nodes: Map<NodeId, Membership>
  changes: { at: number; observer: NodeId; change: MembershipChange }[]
  bytesSent: Map<NodeId, number>
  counting: { bytes: boolean }
}

function cluster(
  seed: number,
  count: number,
  options: { seeds?: number; lossRate?: number; joinSpreadMs?: number } = {},
): Cluster {
  const sim = createSimulator({ seed, network: { lossRate: options.lossRate ?? 0 } })
  const nodes = new Map<NodeId, Membership>()
  const changes: Cluster['changes'] = []
  const bytesSent = new Map<NodeId, number>()
  const counting = { bytes: false }
  const ids = Array.from({ length: count }, (_, index) => `node-${index}`)
  const seeds = ids.slice(0, options.seeds ?? 3)
  const start = (id: NodeId) =>
    sim.addNode(id, (environment) => {
      const membership = createMembership({
        self: {
          id,
          incarnation: environment.incarnation,
          kind: 'server',
          capacity: { cores: 2, memoryBytes: 1 << 30, speedScore: 1 },
          addresses: [`/ip4/127.0.0.1/tcp/${4000 + Number(id.slice(5))}`],
        },
        clock: environment.clock,
        random: environment.random,
        send(to, message) {
          if (counting.bytes) bytesSent.set(id, (bytesSent.get(id) ?? 0) + JSON.stringify(message).length)
          environment.send(to, message)
        },
      })
      membership.onChange((change) => changes.push({ at: sim.now(), observer: id, change }))
      membership.join(seeds)
      nodes.set(id, membership)
      return {
        receive: (from, message) => membership.receive(from, message as MembershipMessage),
        tickers: [{ intervalMs: membership.tickIntervalMs, tick: () => membership.tick() }],
        disconnected: (peer) => membership.disconnected(peer),
      }
    })
  ids.forEach((id, index) => {
    const spreadMs = options.joinSpreadMs ?? 0
    if (spreadMs === 0 || index < seeds.length) start(id)
    else sim.at((index / count) * spreadMs, () => start(id))
  })
  return { sim, nodes, changes, bytesSent, counting }
}

function converged(cluster: Cluster, expected: NodeId[]): boolean {
  const want = [...expected].sort().join()
  for (const id of expected) {
    if (!cluster.sim.isUp(id)) continue
    if (cluster.nodes.get(id)!.alive().join() !== want) return false
  }
  return true
}

function withSeed(name: string, seed: number, body: () => void, timeoutMs?: number): void {
  it(
    name,
    () => {
      try {
        body()
      } catch (error) {
        console.error(seedBanner(seed, file, name))
        throw error
      }
    },
    timeoutMs,
  )
}

describe('membership in the simulator', () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    withSeed(
      `10 nodes joining through 3 seeds converge on the same live set within 2 s (seed ${seed})`,
      seed,
      () => {
        const c = cluster(seed, 10)
        const ids = [...c.nodes.keys()]
        expect(c.sim.runUntil(() => converged(c, ids), 2000)).toBe(true)
      },
    )

    withSeed(`a crashed node is declared dead by every other node within 1.5 s (seed ${seed})`, seed, () => {
      const c = cluster(seed, 10, { lossRate: 0.01 })
      const ids = [...c.nodes.keys()]
      c.sim.runUntil(() => converged(c, ids), 3000)
      const victim = ids[Math.floor(c.sim.random.next() * ids.length)]!
      const crashedAt = c.sim.now()
      c.sim.crash(victim)
      const rest = ids.filter((id) => id !== victim)
      expect(c.sim.runUntil(() => converged(c, rest), 1500)).toBe(true)
      expect(c.sim.now() - crashedAt).toBeLessThan(1500)
    })
  }

  for (const seed of [21, 22, 23, 24, 25]) {
    withSeed(
      `a node whose process does not run for 2 s is not declared dead, while a crashed node is within 1.5 s (seed ${seed})`,
      seed,
      () => {
        const c = cluster(seed, 10, { lossRate: 0.01 })
        const ids = [...c.nodes.keys()]
        c.sim.runUntil(() => converged(c, ids), 3000)
        const victim = ids[Math.floor(c.sim.random.next() * ids.length)]!
        const others = ids.filter((id) => id !== victim)
        const stalled = others[Math.floor(c.sim.random.next() * others.length)]!
        const from = c.sim.now()
        // The stall begins just before the crash, as when a loaded machine starves a process.
        c.sim.stall(stalled, 2000)
        c.sim.runFor(100)
        const crashedAt = c.sim.now()
        c.sim.crash(victim)
        // Every node that runs sees the victim gone and the stalled node still there.
        const running = others.filter((id) => id !== stalled)
        const want = [...others].sort().join()
        const seen = () => running.every((id) => c.nodes.get(id)!.alive().join() === want)
        expect(c.sim.runUntil(seen, 1500)).toBe(true)
        expect(c.sim.now() - crashedAt).toBeLessThan(1500)
        c.sim.runFor(3000)
        expect(converged(c, others)).toBe(true)
        const wrongDeaths = c.changes.filter(
          ({ at, change }) => at > from && change.member.status !== 'alive' && change.member.id !== victim,
        )
        expect(wrongDeaths).toEqual([])
      },
    )
  }

  withSeed(
    'a node cut off by a partition (connections open, silent) is declared dead by the others within 4 s',
    26,
    () => {
      const c = cluster(26, 10)
      const ids = [...c.nodes.keys()]
      c.sim.runUntil(() => converged(c, ids), 3000)
      const rest = ids.filter((id) => id !== 'node-6')
      const cutAt = c.sim.now()
      c.sim.partition([['node-6'], rest])
      expect(c.sim.runUntil(() => converged(c, rest), 4000)).toBe(true)
      console.log(`partitioned node declared dead everywhere after ${(c.sim.now() - cutAt).toFixed(0)} ms`)
    },
  )

  withSeed('a node that leaves cleanly is gone from every view at once (within 300 ms)', 11, () => {
    const c = cluster(11, 10)
    const ids = [...c.nodes.keys()]
    c.sim.runUntil(() => converged(c, ids), 3000)
    c.nodes.get('node-4')!.leave()
    c.sim.crash('node-4')
    const rest = ids.filter((id) => id !== 'node-4')
    expect(c.sim.runUntil(() => converged(c, rest), 300)).toBe(true)
    expect(
      c.changes.some(({ change }) => change.member.id === 'node-4' && change.member.status === 'left'),
    ).toBe(true)
  })

  withSeed('a restarted node is alive again everywhere, with a higher incarnation', 12, () => {
    const c = cluster(12, 10)
    const ids = [...c.nodes.keys()]
    c.sim.runUntil(() => converged(c, ids), 3000)
    c.sim.crash('node-7')
    c.sim.runUntil(
      () =>
        converged(
          c,
          ids.filter((id) => id !== 'node-7'),
        ),
      2000,
    )
    c.sim.restart('node-7')
    expect(c.sim.runUntil(() => converged(c, ids), 2000)).toBe(true)
  })

  withSeed('no live node is declared dead in 60 s with 2% message loss', 13, () => {
    const c = cluster(13, 10, { lossRate: 0.02 })
    const ids = [...c.nodes.keys()]
    c.sim.runUntil(() => converged(c, ids), 3000)
    const from = c.sim.now()
    c.sim.runFor(60_000)
    const deaths = c.changes.filter(({ at, change }) => at > from && change.member.status !== 'alive')
    expect(deaths).toEqual([])
  })

  withSeed(
    'per-node membership traffic stays bounded from 100 to 1,000 nodes',
    14,
    () => {
      const perNode = (count: number) => {
        // Nodes join one after another over 10 s, as a cluster grows.
        const c = cluster(14, count, { seeds: 5, joinSpreadMs: 10_000 })
        c.sim.runFor(10_000)
        const ids = [...c.nodes.keys()]
        for (let waitedMs = 0; waitedMs < 10_000 && !converged(c, ids); waitedMs += 100) c.sim.runFor(100)
        expect(converged(c, ids)).toBe(true)
        // Let the news of the joins die down: steady state is what must stay bounded.
        c.sim.runFor(15_000)
        c.counting.bytes = true
        const sentBefore = new Map(c.sim.stats.sentBy)
        const bytesBefore = new Map(ids.map((id) => [id, 0]))
        const windowMs = 5000
        c.sim.runFor(windowMs)
        let messagesMax = 0
        let bytesTotal = 0
        for (const id of ids) {
          messagesMax = Math.max(
            messagesMax,
            (c.sim.stats.sentBy.get(id)! - sentBefore.get(id)!) / (windowMs / 1000),
          )
          bytesTotal += (c.bytesSent.get(id) ?? 0) - bytesBefore.get(id)!
        }
        // Mean bytes: one node answering a straggler's anti-entropy request with a full page is fine.
        return { messagesMax, bytesMean: bytesTotal / ids.length / (windowMs / 1000) }
      }
      const hundred = perNode(100)
      const thousand = perNode(1000)
      console.log(
        `membership traffic per node (messages: max over nodes; bytes: mean): 100 nodes ${hundred.messagesMax.toFixed(0)} msg/s ${(hundred.bytesMean / 1024).toFixed(1)} KiB/s; ` +
          `1000 nodes ${thousand.messagesMax.toFixed(0)} msg/s ${(thousand.bytesMean / 1024).toFixed(1)} KiB/s`,
      )
      expect(thousand.messagesMax).toBeLessThan(hundred.messagesMax * 1.5)
      expect(thousand.bytesMean).toBeLessThan(hundred.bytesMean * 1.5)
    },
    120_000,
  )
})
