// Guest locks in the simulator: sync engines on simulated nodes over the real store protocol, with
// message loss, clock drift and partitions. Holders write a fenced variable with their token; the
// fencing check must hold: a write accepted after another finished never carries an older token.
import { expect, test } from 'vitest'
import type { Operation } from '../fabric/coord/register.ts'
import { SyncEngine } from '../fabric/runtime/primitives/engine.ts'
import { encodeSyncRequest } from '../fabric/runtime/primitives/request.ts'
import type { CoordinationClient, Register } from '../fabric/runtime/services.ts'
import type { SimFabricNode } from '../fabric/sim/cluster.ts'
import { simFabricNode } from '../fabric/sim/cluster.ts'
import { createSimulator, type Simulator, seedBanner } from '../fabric/sim/simulator.ts'
import { SyncError, SyncOp } from '../host/abi.ts'

const seeds = process.env.FABRIC_SOAK === '1' ? 20 : 3
const nodeIds = ['n0', 'n1', 'n2', 'n3', 'n4']
const clientNodes = ['n0', 'n1', 'n2', 'n3']
const runMs = 6000

interface FencedWrite {
  client: string
  token: number
  callMs: number
  returnMs: number
}

function storeOn(sim: Simulator, live: Map<string, SimFabricNode>, id: string): CoordinationClient {
  let grants = 0
  const submit = (key: string, operation: Operation) =>
    new Promise<Register>((resolve, reject) => {
      const node = live.get(id)
      if (node === undefined || !sim.isUp(id)) return reject(new Error(`${id} is down`))
      node.store.submit(key, operation, { timeoutMs: 1500 }, (outcome) =>
        outcome.ok ? resolve(outcome.result) : reject(outcome.error),
      )
    })
  return {
    get: (key) => submit(key, { kind: 'get' }),
    put: (key, value) => submit(key, { kind: 'put', value }),
    cas: (key, expectedVersion, value) => submit(key, { kind: 'cas', expectedVersion, value }),
    acquire: (key, holder, ttlMs) =>
      submit(key, { kind: 'acquire', holder, ttlMs, grant: `${id}/${grants++}` }),
    renew: (key, holder, token) => submit(key, { kind: 'renew', holder, token, grant: `${id}/${grants++}` }),
    release: (key, holder, token) => submit(key, { kind: 'release', holder, token }),
    delete: (key) => submit(key, { kind: 'delete' }),
    entryCas: (key, entry, expectedVersion, value) =>
      submit(key, { kind: 'entry-cas', entry, expectedVersion, value }),
    entryGet: (key, entry) => submit(key, { kind: 'entry-get', entry }),
    forget: (groups) => live.get(id)?.store.forget(groups),
  }
}

async function scenario(seed: number): Promise<{ writes: FencedWrite[]; stale: number; faults: string[] }> {
  const sim = createSimulator({
    seed,
    network: { lossRate: [0, 0.01, 0.03][seed % 3]!, clockDriftMax: 0.02 },
  })
  const live = new Map<string, SimFabricNode>()
  for (const id of nodeIds)
    sim.addNode(
      id,
      simFabricNode({
        seeds: nodeIds,
        genesis: nodeIds,
        store: { shardCount: 4, replicaCount: 3 },
        onStart: (node) => live.set(node.environment.self, node),
      }),
    )
  sim.runFor(500)
  const engines = new Map<string, SyncEngine>()
  for (const id of clientNodes) {
    engines.set(
      id,
      new SyncEngine({
        store: storeOn(sim, live, id),
        self: id,
        clock: { now: () => live.get(id)!.environment.clock.now() },
        timers: {
          after: (delayMs, callback) => {
            let cancelled = false
            sim.at(delayMs, () => {
              if (!cancelled) callback()
            })
            return { cancel: () => (cancelled = true) }
          },
          every: () => ({ cancel: () => {} }),
        },
        random: () => sim.random.next(),
        // A wake notice is a hint: it may be lost like any message.
        notify: (node, key) => sim.at(1, () => engines.get(node)?.wake(key)),
      }),
    )
  }
  const writes: FencedWrite[] = []
  let stale = 0
  let running = true
  const clients = clientNodes.map(async (id, index) => {
    const engine = engines.get(id)!
    const thread = {
      pid: 'p',
      tid: `0.${index}`,
      requestSave: () => engine.saveCommitted('p', `0.${index}`, sequence),
      setGroup: async () => {},
      stopped: () => false,
      // Calls are never replayed here: nothing to log.
      replayed: () => undefined,
      logReply: () => {},
    }
    let sequence = 0
    const call = (request: Parameters<typeof encodeSyncRequest>[0]) =>
      engine.call(thread, { callSequence: ++sequence, payload: encodeSyncRequest(request), outCapacity: 64 })
    while (running) {
      const taken = await call({ op: SyncOp.lockAcquire, name: 'L', a: 300n, b: 2000n })
      if (taken.result !== 8) continue
      const token = new DataView(taken.payload!.buffer, taken.payload!.byteOffset, 8).getBigInt64(0, true)
      const callMs = sim.now()
      const written = await call({
        op: SyncOp.fencedSet,
        name: 'F',
        a: token,
        value: new Uint8Array([index]),
      })
      if (written.result === 0) writes.push({ client: id, token: Number(token), callMs, returnMs: sim.now() })
      else if (written.result === SyncError.staleToken) stale++
      await new Promise<void>((resolve) => sim.at(sim.random.next() * 80, resolve))
      await call({ op: SyncOp.lockRelease, name: 'L', a: token })
    }
  })
  const faults: string[] = []
  const fault = () => {
    if (sim.now() > runMs - 1000) return
    const minority = [nodeIds[Math.floor(sim.random.next() * nodeIds.length)]!]
    sim.partition([minority, nodeIds.filter((id) => !minority.includes(id))])
    faults.push(`${sim.now().toFixed(0)}ms partition [${minority}]`)
    sim.at(200 + sim.random.next() * 600, () => {
      sim.heal()
      faults.push(`${sim.now().toFixed(0)}ms heal`)
      sim.at(200 + sim.random.next() * 600, fault)
    })
  }
  sim.at(300, fault)
  // The engines are async: let their promise chains run between simulated milliseconds.
  for (let step = 0; step < runMs; step++) {
    sim.runFor(1)
    await new Promise((resolve) => setImmediate(resolve))
  }
  running = false
  void clients
  return { writes, stale, faults }
}

test(`guest locks under partitions, loss and clock drift: fenced writes never go back to an older token (${seeds} seeds)`, async () => {
  for (let seed = 1; seed <= seeds; seed++) {
    const { writes, faults, stale } = await scenario(seed)
    if (process.env.FABRIC_SIM_VERBOSE)
      console.log(
        `seed ${seed}: ${writes.length} writes, ${stale} stale, ${new Set(writes.map((w) => w.token)).size} tokens, ${faults.length} faults`,
      )
    const banner = seedBanner(seed, 'test/primitives-simulation.test.ts', 'guest locks')
    expect(writes.length, `${banner}: too few writes to prove anything`).toBeGreaterThan(20)
    for (const a of writes)
      for (const b of writes)
        if (a.returnMs < b.callMs && a.token > b.token)
          expect.fail(
            `${banner}\n${faults.join('\n')}\nwrite with token ${b.token} (${b.client}) accepted after token ${a.token} (${a.client})`,
          )
    // Each holder's writes carry its own token: distinct holders never share one.
    const holderOfToken = new Map<number, string>()
    for (const write of writes) {
      const known = holderOfToken.get(write.token)
      if (known !== undefined) expect(known, banner).toBe(write.client)
      holderOfToken.set(write.token, write.client)
    }
  }
}, 120_000)
