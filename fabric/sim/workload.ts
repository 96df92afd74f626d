/**
 * A randomized store workload under faults: concurrent clients issue get, put, cas and lease
 * operations while the scenario crashes, restarts, replaces and partitions nodes. Returns the
 * history and the lease holdings for the checkers. Everything derives from the seed.
 */

import type { Operation } from '../coord/register.ts'
import { leaseMarginRatio, type Outcome } from '../coord/store.ts'
import { type SimFabricNode, simFabricNode } from './cluster.ts'
import { checkLinearizable, describeHistory, type HistoryOperation } from './linearizability.ts'
import { createSimulator, type NodeId } from './simulator.ts'

export interface ScenarioOptions {
  seed: number
  nodeCount?: number
  replicaCount?: number
  clientCount?: number
  faultPeriodMs?: number
  settleMs?: number
  keys?: readonly string[]
  /**
   * A share (0..1) of the data operations that go to entries of one register of entries
   * (`entryKey`; entry-get and entry-cas on a few entry names) instead of plain keys.
   */
  entryShare?: number
}

export const entryKey = 'entries'
const entryNames = ['e0', 'e1', 'e2']

export interface LeaseHolding {
  holder: string
  token: number
  fromMs: number
  untilMs: number
}

export interface ScenarioReport {
  seed: number
  history: HistoryOperation[]
  holdings: LeaseHolding[]
  faults: string[]
  violations: string[]
  completed: number
  indeterminate: number
}

export const leaseKey = 'lease'
export const leaseTtlMs = 250
export const operationTimeoutMs = 1500

export function runStoreScenario(options: ScenarioOptions): ScenarioReport {
  const seed = options.seed
  const nodeCount = options.nodeCount ?? 5
  const clientCount = options.clientCount ?? 4
  const faultPeriodMs = options.faultPeriodMs ?? 4000
  const settleMs = options.settleMs ?? 2500
  const keys = options.keys ?? ['a', 'b', 'c']
  // Without entries, no extra draw: the plain scenarios' seeds stay as they were.
  const entryShare = options.entryShare ?? 0
  const sim = createSimulator({
    seed,
    network: { lossRate: [0, 0, 0.01, 0.03][seed % 4]!, clockDriftMax: 0.02 },
  })
  const live = new Map<NodeId, SimFabricNode>()
  const initial = Array.from({ length: nodeCount }, (_, index) => `n${index}`)
  const storeOptions = { shardCount: 4, replicaCount: options.replicaCount ?? 3 }
  const factory = (seeds: NodeId[], genesis?: NodeId[]) =>
    simFabricNode({
      seeds,
      genesis,
      store: storeOptions,
      onStart: (node) => live.set(node.environment.self, node),
    })
  for (const id of initial) sim.addNode(id, factory(initial, initial))

  const history: HistoryOperation[] = []
  const holdings: LeaseHolding[] = []
  const faults: string[] = []
  const violations: string[] = []
  let replacements = 0
  const encoder = new TextEncoder()

  // ---- clients ----
  interface Client {
    name: string
    node: NodeId
    session: number
    busy: boolean
    knownVersion: Map<string, number>
    lease: { token: number; holding: LeaseHolding | null; untilLocalMs: number } | null
  }
  const clients: Client[] = Array.from({ length: clientCount }, (_, index) => ({
    name: `c${index}`,
    node: initial[index % initial.length]!,
    session: 0,
    busy: false,
    knownVersion: new Map(),
    lease: null,
  }))
  let sequence = 0

  function holderOf(client: Client): string {
    return `${client.name}.${client.session}`
  }

  function endHolding(client: Client, atMs: number): void {
    const holding = client.lease?.holding
    if (holding != null) {
      holding.untilMs = Math.min(holding.untilMs, atMs)
      client.lease!.holding = null
    }
  }

  function issue(client: Client): void {
    if (client.busy || !sim.isUp(client.node)) return
    const node = live.get(client.node)
    if (node === undefined) return
    const roll = sim.random.next()
    let key: string
    let operation: Operation
    const holder = holderOf(client)
    if (roll < 0.25) {
      key = leaseKey
      const clock = node.environment.clock
      if (client.lease !== null && clock.now() >= client.lease.untilLocalMs)
        endHolding(client, sim.localToReal(client.node, client.lease.untilLocalMs))
      if (client.lease === null)
        operation = { kind: 'acquire', holder, ttlMs: leaseTtlMs, grant: `${holder}/${sequence++}` }
      else if (sim.random.next() < 0.7)
        operation = { kind: 'renew', holder, token: client.lease.token, grant: `${holder}/${sequence++}` }
      else {
        endHolding(client, sim.now())
        operation = { kind: 'release', holder, token: client.lease.token }
      }
    } else if (entryShare > 0 && sim.random.next() < entryShare) {
      key = entryKey
      const entry = entryNames[Math.floor(sim.random.next() * entryNames.length)]!
      const value = encoder.encode(`${client.name}-${sequence++}`)
      if (roll < 0.45) operation = { kind: 'entry-get', entry }
      else
        operation = {
          kind: 'entry-cas',
          entry,
          expectedVersion: client.knownVersion.get(`${key}/${entry}`) ?? 0,
          value: roll < 0.5 ? null : value,
        }
    } else {
      key = keys[Math.floor(sim.random.next() * keys.length)]!
      const value = encoder.encode(`${client.name}-${sequence++}`)
      if (roll < 0.55) operation = { kind: 'get' }
      else if (roll < 0.75) operation = { kind: 'put', value }
      else operation = { kind: 'cas', expectedVersion: client.knownVersion.get(key) ?? 0, value }
    }
    const record: HistoryOperation = {
      client: holder,
      key,
      operation,
      callMs: sim.now(),
      returnMs: null,
      result: null,
    }
    history.push(record)
    client.busy = true
    const session = client.session
    const startLocalMs = node.environment.clock.now()
    const nodeId = client.node
    node.store.submit(key, operation, { timeoutMs: operationTimeoutMs }, (outcome: Outcome) => {
      if (client.session !== session) return
      client.busy = false
      if (outcome.ok) {
        record.returnMs = sim.now()
        record.result = outcome.result
        const result = outcome.result
        if (operation.kind === 'entry-get' || operation.kind === 'entry-cas')
          client.knownVersion.set(`${key}/${operation.entry}`, result.version)
        else if (key !== leaseKey) client.knownVersion.set(key, result.version)
        else if (operation.kind === 'acquire' || operation.kind === 'renew') {
          if (result.ok) {
            const untilLocalMs = startLocalMs + leaseTtlMs * (1 - leaseMarginRatio)
            endHolding(client, sim.now())
            const holding: LeaseHolding = {
              holder,
              token: result.token,
              fromMs: sim.now(),
              untilMs: sim.localToReal(nodeId, untilLocalMs),
            }
            if (holding.untilMs > holding.fromMs) holdings.push(holding)
            client.lease = { token: result.token, holding, untilLocalMs }
          } else {
            endHolding(client, sim.now())
            client.lease = null
          }
        } else if (operation.kind === 'release') client.lease = null
      } else if (key === leaseKey && operation.kind !== 'release') {
        // Unknown outcome: a careful holder stops using the lease, and forgets it.
        endHolding(client, sim.now())
        client.lease = null
      } else if (operation.kind === 'release') client.lease = null
      sim.at(sim.random.next() * 15, () => issue(client))
    })
  }

  function clientNodeDown(node: NodeId): void {
    for (const client of clients) {
      if (client.node !== node) continue
      endHolding(client, sim.now())
      client.lease = null
      client.busy = false
      client.session++
    }
  }

  // ---- faults ----
  const down = new Set<NodeId>()
  const members = new Set(initial)
  function randomMember(filter: (id: NodeId) => boolean): NodeId | undefined {
    const candidates = [...members].filter(filter)
    if (candidates.length === 0) return undefined
    return candidates[Math.floor(sim.random.next() * candidates.length)]
  }
  function scheduleFault(): void {
    if (sim.now() >= faultPeriodMs) return
    const roll = sim.random.next()
    if (roll < 0.35 && down.size < 2) {
      const victim = randomMember((id) => !down.has(id))
      if (victim !== undefined) {
        sim.crash(victim)
        down.add(victim)
        clientNodeDown(victim)
        faults.push(`${sim.now().toFixed(0)}ms crash ${victim}`)
        const replace = sim.random.next() < 0.15 && replacements < 1
        sim.at(150 + sim.random.next() * 700, () => {
          down.delete(victim)
          if (replace) {
            // Its disk is gone: it comes back as a new member under a new id.
            replacements++
            members.delete(victim)
            const fresh = `${victim}r${replacements}`
            members.add(fresh)
            sim.addNode(fresh, factory([...members]))
            for (const client of clients) if (client.node === victim) client.node = fresh
            faults.push(`${sim.now().toFixed(0)}ms replace ${victim} by ${fresh}`)
          } else {
            sim.restart(victim)
            faults.push(`${sim.now().toFixed(0)}ms restart ${victim}`)
          }
          for (const client of clients) if (client.node === victim || !client.busy) issue(client)
        })
      }
    } else if (roll < 0.6) {
      const size = 1 + Math.floor(sim.random.next() * 2)
      const minority: NodeId[] = []
      for (let index = 0; index < size; index++) {
        const id = randomMember((candidate) => !minority.includes(candidate))
        if (id !== undefined) minority.push(id)
      }
      const rest = [...members].filter((id) => !minority.includes(id))
      sim.partition([minority, rest])
      faults.push(`${sim.now().toFixed(0)}ms partition [${minority}] | [${rest}]`)
      sim.at(200 + sim.random.next() * 500, () => {
        sim.heal()
        faults.push(`${sim.now().toFixed(0)}ms heal`)
      })
    }
    sim.at(200 + sim.random.next() * 400, scheduleFault)
  }

  // Let membership settle before the first operation.
  sim.runFor(500)
  for (const client of clients) issue(client)
  sim.at(300, scheduleFault)
  sim.runFor(faultPeriodMs)
  sim.heal()
  for (const id of [...down]) {
    sim.restart(id)
    down.delete(id)
  }
  for (const client of clients) issue(client)
  sim.runFor(settleMs)
  // Stop issuing: let in-flight operations finish or time out.
  for (const client of clients) client.session++
  sim.runFor(operationTimeoutMs + 100)
  for (const client of clients) endHolding(client, sim.now())

  // ---- checks ----
  const verdict = checkLinearizable(history)
  if (!verdict.ok)
    violations.push(
      `history of key "${verdict.key}" is not linearizable:\n${describeHistory(verdict.operations)}`,
    )
  violations.push(...checkFencing(history), ...checkExclusiveHoldings(holdings))
  const completed = history.filter((operation) => operation.result !== null).length
  return {
    seed,
    history,
    holdings,
    faults,
    violations,
    completed,
    indeterminate: history.length - completed,
  }
}

/** Fencing tokens: each token names one holder, and a later grant to a new holder never has a smaller token. */
export function checkFencing(history: readonly HistoryOperation[]): string[] {
  const problems: string[] = []
  const grants = history.filter(
    (operation) =>
      operation.key === leaseKey && operation.operation.kind === 'acquire' && operation.result?.ok,
  )
  const holderOfToken = new Map<number, string>()
  for (const grant of grants) {
    const holder = grant.result!.holder!
    const known = holderOfToken.get(grant.result!.token)
    if (known !== undefined && known !== holder)
      problems.push(`fencing token ${grant.result!.token} granted to both ${known} and ${holder}`)
    holderOfToken.set(grant.result!.token, holder)
  }
  for (const a of grants)
    for (const b of grants)
      if (
        a.returnMs! < b.callMs &&
        a.result!.holder !== b.result!.holder &&
        a.result!.token >= b.result!.token
      )
        problems.push(
          `fencing token went from ${a.result!.token} (${a.result!.holder}) to ${b.result!.token} (${b.result!.holder})`,
        )
  return problems
}

/** No two holders believe they hold the lease at the same real instant. */
export function checkExclusiveHoldings(holdings: readonly LeaseHolding[]): string[] {
  const problems: string[] = []
  const sorted = [...holdings].sort((a, b) => a.fromMs - b.fromMs)
  for (let index = 0; index < sorted.length; index++)
    for (let other = index + 1; other < sorted.length; other++) {
      const a = sorted[index]!
      const b = sorted[other]!
      if (b.fromMs >= a.untilMs) break
      if (a.holder !== b.holder && b.fromMs < a.untilMs && a.fromMs < b.untilMs)
        problems.push(
          `lease held by ${a.holder} (token ${a.token}) during [${a.fromMs.toFixed(2)}, ${a.untilMs.toFixed(2)}] and by ${b.holder} (token ${b.token}) from ${b.fromMs.toFixed(2)}`,
        )
    }
  return problems
}
