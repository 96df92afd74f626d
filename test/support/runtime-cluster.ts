/**
 * An in-process cluster for runtime tests: node runtimes that share an in-memory linearizable store
 * and talk through direct calls. Killing a node stops its threads and timers and drops its messages,
 * as a SIGKILL would; the others see it depart after `detectionMs`.
 */

import { seededRandom, systemTimers } from '../../fabric/platform.ts'
import type { GuestFilesService } from '../../fabric/runtime/guest-files.ts'
import type { ProcessHandle } from '../../fabric/runtime/home-duties.ts'
import { MemoryStore } from '../../fabric/runtime/memory-store.ts'
import type { RuntimeMessage, RuntimeReply } from '../../fabric/runtime/messages.ts'
import { NodeRuntime, type NodeRuntimeOptions } from '../../fabric/runtime/node-runtime.ts'
import type { ClusterView, NodeId, PeerInfo } from '../../fabric/runtime/services.ts'
import { instrumentInWorker } from '../../host/instrument-node.ts'
import { loadProgram, type Program } from '../../host/program.ts'
import { nodeWorkerFactory } from '../../host/worker-node.ts'
import { WorkerPool } from '../../host/worker-pool.ts'

/** The output of `process` as text, growing as it arrives (`printed.text`). */
export function collectOutput(process: ProcessHandle): { text: string } {
  const printed = { text: '' }
  process.onOutput((chunk) => {
    printed.text += new TextDecoder().decode(chunk.bytes)
  })
  return printed
}

interface Member {
  id: NodeId
  alive: boolean
  handler: ((from: NodeId, message: RuntimeMessage) => Promise<RuntimeReply>) | null
  runtime: NodeRuntime
  pool: WorkerPool
  departureListeners: Array<(id: NodeId) => void>
}

/**
 * The shared store as `member` reaches it: once the node is killed, its calls fail. A killed node's
 * runtime is stopped, but work it had in flight still runs here, and without this it could write
 * records a SIGKILLed process never would (say, the end of a thread whose output it showed as home
 * but could no longer copy to anyone, which then was lost with it).
 */
function storeOf(store: MemoryStore, member: Member): MemoryStore {
  return new Proxy(store, {
    get(target, property, receiver) {
      const value: unknown = Reflect.get(target, property, receiver)
      if (typeof value !== 'function') return value
      return (...args: unknown[]) =>
        member.alive
          ? (value as (...args: unknown[]) => unknown).apply(target, args)
          : Promise.reject(new Error(`node ${member.id} is dead`))
    },
  })
}

export class InProcessCluster {
  readonly store = new MemoryStore()
  private readonly members = new Map<NodeId, Member>()
  private readonly programs = new Map<string, Promise<Program>>()
  private readonly detectionMs: number

  constructor(options: { detectionMs?: number } = {}) {
    this.detectionMs = options.detectionMs ?? 300
  }

  runtime(id: NodeId): NodeRuntime {
    return this.members.get(id)!.runtime
  }

  ids(): NodeId[] {
    return [...this.members.keys()]
  }

  /** The node that runs thread `tid` (of any process) now, if one does. */
  nodeRunning(tid: string): NodeId | undefined {
    return this.ids().find((id) =>
      this.runtime(id)
        .localThreads()
        .some((thread) => thread.tid === tid),
    )
  }

  liveIds(): NodeId[] {
    return [...this.members.values()].filter((member) => member.alive).map((member) => member.id)
  }

  async addNode(
    id: NodeId,
    options: {
      seed?: number
      speedScore?: number
      files?: GuestFilesService
      runtime?: NodeRuntimeOptions
    } = {},
  ): Promise<NodeRuntime> {
    const pool = new WorkerPool({ createWorker: nodeWorkerFactory, runningMax: 1 })
    const cluster: ClusterView = {
      self: id,
      live: () => this.livePeers(),
      onDeparture: (listener) => {
        member.departureListeners.push(listener)
        return () => {}
      },
    }
    const member: Member = {
      id,
      alive: true,
      handler: null,
      pool,
      departureListeners: [],
      runtime: null as unknown as NodeRuntime,
    }
    const speedScore = options.speedScore ?? 1
    ;(member as { speedScore?: number }).speedScore = speedScore
    member.runtime = new NodeRuntime(
      {
        cluster,
        store: storeOf(this.store, member),
        messenger: {
          request: (to, message) => this.deliver(id, to, message),
          serve: (handler) => {
            member.handler = handler
          },
        },
        pool,
        loadProgram: (bytes) => this.load(bytes),
        random: seededRandom(options.seed ?? id.length * 7919 + id.charCodeAt(id.length - 1)),
        timers: systemTimers,
        files: options.files,
        log: (line) => this.logs.push(`${id}: ${line}`),
      },
      options.runtime,
    )
    this.members.set(id, member)
    await member.runtime.start()
    return member.runtime
  }

  /** Lines the runtimes logged, with the node's id. */
  readonly logs: string[] = []

  /**
   * Consulted for every message between live nodes: a reply it returns is the answer, and the
   * message is not delivered (a test's faults: a node that refuses starts, say).
   */
  intercept: ((from: NodeId, to: NodeId, message: RuntimeMessage) => RuntimeReply | undefined) | null = null

  /** Sends a runtime message as node `from` would. */
  send(from: NodeId, to: NodeId, message: RuntimeMessage): Promise<RuntimeReply> {
    return this.deliver(from, to, message)
  }

  /** A clean leave: the node hands its threads over, then goes; the others see it leave at once. */
  async leave(id: NodeId): Promise<void> {
    const member = this.members.get(id)!
    await member.runtime.drain()
    member.alive = false
    member.runtime.stop()
    member.pool.close()
    for (const other of this.members.values()) {
      if (other.alive) for (const listener of other.departureListeners) listener(id)
    }
  }

  /** As SIGKILL: the node stops at once; the others notice after the detection delay. */
  kill(id: NodeId): void {
    const member = this.members.get(id)!
    member.alive = false
    member.runtime.stop()
    member.pool.close()
    setTimeout(() => {
      for (const other of this.members.values()) {
        if (other.alive) for (const listener of other.departureListeners) listener(id)
      }
    }, this.detectionMs)
  }

  close(): void {
    for (const member of this.members.values()) {
      if (member.alive) {
        member.alive = false
        member.runtime.stop()
        member.pool.close()
      }
    }
  }

  private livePeers(): PeerInfo[] {
    return [...this.members.values()]
      .filter((member) => member.alive)
      .map((member) => ({
        id: member.id,
        kind: 'server' as const,
        capacity: {
          cores: 1,
          memoryBytes: 2 ** 30,
          speedScore: (member as { speedScore?: number }).speedScore ?? 1,
        },
      }))
  }

  private load(bytes: Uint8Array): Promise<Program> {
    const key = `${bytes.length}:${bytes[bytes.length - 1]}:${bytes[bytes.length >> 1]}`
    let pending = this.programs.get(key)
    if (pending === undefined) {
      pending = loadProgram(bytes, { instrument: instrumentInWorker })
      this.programs.set(key, pending)
    }
    return pending
  }

  private async deliver(from: NodeId, to: NodeId, message: RuntimeMessage): Promise<RuntimeReply> {
    await new Promise((resolve) => setImmediate(resolve))
    const sender = this.members.get(from)
    const target = this.members.get(to)
    if (sender?.alive !== true) throw new Error(`${from} is down`)
    if (target?.alive !== true || target.handler === null) throw new Error(`cannot reach ${to}`)
    const intercepted = this.intercept?.(from, to, message)
    if (intercepted !== undefined) return intercepted
    const reply = await target.handler(from, message)
    // A node killed while it handled the message never answers (a home that acknowledged output
    // it could no longer copy would lose it).
    if (!target.alive) throw new Error(`${to} went down before it answered`)
    return reply
  }
}
