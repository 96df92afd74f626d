/**
 * What a node does as the home of a process (the node it was submitted through, or the home replica
 * that took it over from a lost home): it keeps the process's output and copies it, with where each
 * thread runs, to the home replicas before showing it; it restarts the threads of nodes that died
 * or dropped them, ends the process when its main thread ends (or on `kill`), and answers `attach`
 * and `ps`. As a home replica of other nodes' processes, it keeps their copies and takes a process
 * over when its home departs. The thread side (claiming, running, placing threads) is the runtime's
 * (node-runtime.ts), reached through the narrow callbacks of `HomeRuntime`.
 *
 *   const duties = new HomeDuties(components, { leaseTtlMs }, runtime)
 *   const handle = duties.open(processRecord, programBytes)
 *   timers.every(homeSweepMs, () => void duties.sweepHomes())
 */

import type { EncodedSave } from '../../host/snapshot.ts'
import { InvalidArgumentError } from '../errors.ts'
import { type Clock, systemClock, type TimerHandle, type Timers } from '../platform.ts'
import { HomeCopies } from './home-copies.ts'
import { endedThreadsKeptMaxOf, type HomeThreadCounts, HomeThreads } from './home-threads.ts'
import type {
  HomeCopyEntry,
  ProcessSummary,
  RuntimeMessage,
  RuntimeReply,
  ThreadSummary,
} from './messages.ts'
import { chooseSaveReplicas } from './placement.ts'
import { syncKeyGroup } from './primitives/engine.ts'
import {
  decodeProcess,
  decodeThread,
  encodeRecord,
  keys,
  type ProcessRecord,
  type ThreadRecord,
} from './records.ts'
import type { ClusterView, CoordinationClient, Messenger, NodeId, Register } from './services.ts'
import { ThreadRecords, threadRecordKeys } from './thread-records.ts'

/** Output a home keeps per process for submitters that reconnect. */
export const outputBytesMax = 64 * 1024 * 1024
/**
 * Output calls (chunks) a home keeps per process, whatever their size: a whole copy to a new home
 * replica carries every kept chunk in one message (at most `homeCopyEntriesMax` entries, with the
 * thread state), so a process that printed a million short lines must not outgrow it. Output past
 * either bound is shown live but not kept (nor copied): a reconnecting submitter or a new home
 * misses it.
 */
export const outputChunksKeptMaxDefault = 500_000
/** How often a home tries to take the lease of a departed node until it has expired. */
export const fenceRetryMs = 50
/** How long a home keeps trying to fence a departed node. */
export const fenceWaitMsMax = 30_000
/** How long the runtime waits before asking the store again after it did not answer. */
export const storeRetryMs = 100
/** How often a home checks that the nodes of its threads still live. */
export const homeSweepMs = 500
/** Home sweeps between two checks that each live node runs the threads its records say it runs. */
export const orphanCheckEverySweeps = 4
/** Nodes that keep a copy of a home's state (output, placements) to take the process over. */
export const homeReplicaCountDefault = 2
/**
 * How long output waits for every home replica's copy to be confirmed; past it, one confirmation
 * is enough (without any, it waits for the replicas' answers).
 */
export const homeCopyWaitMsMax = 500
/** How long a placement or a child's end waits for others before its copy goes to the replicas. */
export const homeCopyLazyMs = 20
/** Replies of output a replica taking a process over fetches from another replica, at most. */
export const homeCopyFetchPagesMax = 1024
/** Sets of home replicas a piece of output is offered to before it goes on without a copy. */
export const homeCopyRoundsMax = 3
/** Output bytes in one `attach` reply, at most (one chunk may exceed it). */
export const attachReplyBytesMax = 1024 * 1024
/**
 * How long a node that is asked about a process homed elsewhere (`kill`, `attach`) waits for a live
 * home while a home replica takes the process over from a lost home.
 */
export const homeLookupWaitMsMax = 10_000
/** Pause before reading a process record again while its home is being replaced. */
export const homeLookupRetryMs = 100
/**
 * Ended processes a home keeps (their output for `attach`, their state for `ps`); past it the
 * oldest ended ones are dropped, so a long-lived home does not grow with every process it ran.
 */
export const keptEndedProcessesMaxDefault = 1000
/** Output bytes of ended processes a home keeps in all; past it the oldest ended ones are dropped (never the latest). */
export const keptEndedOutputBytesMaxDefault = 256 * 1024 * 1024
/** Records of leftover threads of ended processes a `ps` reads, at most (the rest show `ended?`). */
export const psRecordReadsMax = 1000
/**
 * How long after a process ends the store forgets its threads' records and its objects (Store.forget):
 * time for the writes still in flight at its end (the records of threads stopped by it) to land
 * first, since a write after the forget would create its key again.
 */
export const processKeysForgetDelayMsDefault = 5000

export interface ProcessResult {
  exitCode: number
  error: string | null
}

export interface OutputChunk {
  tid: string
  fd: number
  bytes: Uint8Array
}

export interface ProcessHandle {
  readonly pid: string
  readonly result: Promise<ProcessResult>
  /** Output so far, then each new chunk as it arrives. Returns an unsubscribe function. */
  onOutput(listener: (chunk: OutputChunk) => void, fromChunk?: number): () => void
}

/** The parts of the node's components the home duties use. */
export interface HomeDutiesComponents {
  cluster: ClusterView
  store: CoordinationClient
  messenger: Messenger
  timers: Timers
  /** Monotonic time for waits on a home being replaced; the system clock by default. */
  clock?: Clock
  log?: (line: string) => void
}

export interface HomeDutiesOptions {
  /** The nodes' lease TTL: a departed node's lease is taken (fencing it) for ten times it. */
  leaseTtlMs: number
  /** Ended processes kept for `attach` and `ps` (`keptEndedProcessesMaxDefault`). */
  keptEndedProcessesMax?: number
  /** Output bytes of ended processes kept in all (`keptEndedOutputBytesMaxDefault`). */
  keptEndedOutputBytesMax?: number
  /** Ended threads a home remembers per process, with their output dedupe (`endedThreadsKeptMaxDefault`). */
  endedThreadsKeptMax?: number
  /** Output chunks a home keeps per process (`outputChunksKeptMaxDefault`). */
  outputChunksKeptMax?: number
  /** How long after a process ends the store forgets its keys (`processKeysForgetDelayMsDefault`). */
  processKeysForgetDelayMs?: number
}

/** A thread running on this node, as `ps` shows it. */
export interface ThreadHere {
  pid: string
  tid: string
  epoch: number
  /** Its saves since the last full one (the last is its latest save). */
  chain: readonly EncodedSave[]
}

/** What the home duties need from the thread side of the runtime. */
export interface HomeRuntime {
  /** The node is shutting down or fenced for good: retries stop. */
  isStopped(): boolean
  /** Threads running here, and those being claimed here (`pid/tid`), for `ps`. */
  threadsRunningHere(): Iterable<ThreadHere>
  threadsStartingHere(): Iterable<string>
  /**
   * Has a node claim the thread whose record read `record` at `version` (0: a new thread); returns
   * the node that runs it, or null when another claim won or no node took it.
   */
  handOver(
    pid: string,
    tid: string,
    version: number,
    record: ThreadRecord,
    choice?: { exclude?: NodeId; prefer?: NodeId },
  ): Promise<NodeId | null>
  /** The process ended: starts of its threads are refused here from now on. */
  processEnded(pid: string): void
  /** This node took the process over as its home: its record and program are served from here. */
  processTakenOver(record: ProcessRecord, programBytes: Uint8Array): void
  /** Background work that failed (logged; the next sweep tries again). */
  backgroundFailed(error: unknown): void
}

/** The messages a home (or home replica) answers. */
export type HomeMessage = Extract<
  RuntimeMessage,
  { type: 'output' | 'placed' | 'home-copy' | 'fetch-home-copy' | 'attach' | 'kill' | 'ps' }
>

/** What a home keeps of one process homed on it. */
interface HomeProcess {
  record: ProcessRecord
  programBytes: Uint8Array
  /** Where its threads run, which ended lately, what output was shown (bounded: home-threads.ts). */
  threads: HomeThreads
  output: Array<OutputChunk & { callSequence: number }>
  outputBytes: number
  /** Output chunks given an index, copied to the replicas or on their way (published in order). */
  outputIndexed: number
  /** Nodes that keep a copy of this home's state, and those known to hold it whole. */
  replicas: NodeId[]
  replicasCurrent: Set<NodeId>
  /** Entries not copied yet, and the chain of copies (one at a time, in order). */
  copyPending: HomeCopyEntry[]
  copyQueue: Promise<void>
  /** Sends the lazy entries pending (`homeCopyLazyMs`), when some are. */
  copyTimer: TimerHandle | null
  /** This node took the process over from a lost home. */
  adopted: boolean
  listeners: Set<(chunk: OutputChunk) => void>
  result: Promise<ProcessResult>
  finish: (result: ProcessResult) => void
  finished: boolean
}

export class HomeDuties {
  private readonly components: HomeDutiesComponents
  /** Where thread records live (runtime/thread-records.ts). */
  private readonly threadRecords: ThreadRecords
  private readonly runtime: HomeRuntime
  private readonly self: NodeId
  private readonly leaseTtlMs: number
  private readonly keptEndedProcessesMax: number
  private readonly keptEndedOutputBytesMax: number
  private readonly endedThreadsKeptMax: number
  private readonly outputChunksKeptMax: number
  private readonly homes = new Map<string, HomeProcess>()
  /** Processes homed here that ended, oldest first (each still in `homes`). */
  private readonly endedHomes = new Set<string>()
  private readonly processKeysForgetDelayMs: number
  /** Processes that ended here, in order, with when the store forgets their keys. */
  private readonly keysToForget: Array<{ pid: string; atMs: number }> = []
  /** Other homes' state this node keeps as a home replica. */
  private readonly homeCopies: HomeCopies
  private sweeps = 0
  /** Threads found missing from their node at the last orphan check. */
  private orphanSuspects = new Set<string>()

  constructor(components: HomeDutiesComponents, options: HomeDutiesOptions, runtime: HomeRuntime) {
    this.components = components
    this.threadRecords = new ThreadRecords(components.store)
    this.runtime = runtime
    this.self = components.cluster.self
    this.leaseTtlMs = options.leaseTtlMs
    this.keptEndedProcessesMax = options.keptEndedProcessesMax ?? keptEndedProcessesMaxDefault
    this.keptEndedOutputBytesMax = options.keptEndedOutputBytesMax ?? keptEndedOutputBytesMaxDefault
    this.endedThreadsKeptMax = endedThreadsKeptMaxOf(options)
    this.outputChunksKeptMax = options.outputChunksKeptMax ?? outputChunksKeptMaxDefault
    this.processKeysForgetDelayMs = options.processKeysForgetDelayMs ?? processKeysForgetDelayMsDefault
    if (!Number.isSafeInteger(this.outputChunksKeptMax) || this.outputChunksKeptMax < 0)
      throw new InvalidArgumentError(
        `Expected outputChunksKeptMax to be an integer from 0 and up, got ${this.outputChunksKeptMax}`,
      )
    this.homeCopies = new HomeCopies({ endedThreadsKeptMax: this.endedThreadsKeptMax })
  }

  /** Makes this node the home of a new process (its record not written yet): output is kept from now on. */
  open(record: ProcessRecord, programBytes: Uint8Array): ProcessHandle {
    let finish!: (result: ProcessResult) => void
    const result = new Promise<ProcessResult>((resolve) => {
      finish = resolve
    })
    const home: HomeProcess = {
      record,
      programBytes,
      threads: new HomeThreads({ endedThreadsKeptMax: this.endedThreadsKeptMax }),
      output: [],
      outputBytes: 0,
      outputIndexed: 0,
      replicas: chooseSaveReplicas(this.self, this.components.cluster.live(), homeReplicaCountDefault),
      replicasCurrent: new Set(),
      copyPending: [],
      copyQueue: Promise.resolve(),
      copyTimer: null,
      adopted: false,
      listeners: new Set(),
      result,
      finish,
      finished: false,
    }
    this.homes.set(record.pid, home)
    return {
      pid: record.pid,
      result,
      onOutput: (listener, fromChunk = 0) => {
        for (const chunk of home.output.slice(fromChunk)) listener(chunk)
        home.listeners.add(listener)
        return () => home.listeners.delete(listener)
      },
    }
  }

  /** Ends a process homed here with `result` (its main thread could not start, say). */
  async end(pid: string, result: ProcessResult): Promise<void> {
    const home = this.homes.get(pid)
    if (home !== undefined) await this.endProcess(home, result)
  }

  /** Answers a message to this node as a home (or home replica); `kill` and `attach` of a process homed elsewhere go on to its home. */
  async handle(message: HomeMessage): Promise<RuntimeReply> {
    switch (message.type) {
      case 'output': {
        // Output for a process not homed here (a sender that read the record of a home that took
        // the process over an instant before it knew, or a stale record) is refused, not dropped:
        // the sender asks the record again.
        const home = this.homes.get(message.pid)
        if (home === undefined)
          return { type: 'refused', reason: `${this.self} is not the home of process ${message.pid}` }
        await this.homeOutput(home, message.tid, message.fd, message.callSequence, message.bytes)
        return { type: 'ok' }
      }
      case 'placed': {
        const home = this.homes.get(message.pid)
        if (home?.threads.placed(message.tid, message.node))
          this.copyLazily(home, { kind: 'placed', tid: message.tid, node: message.node })
        return { type: 'ok' }
      }
      case 'home-copy': {
        const { type: _type, ...copy } = message
        let kept = false
        try {
          kept = this.homeCopies.keep(copy)
        } catch (error) {
          return { type: 'refused', reason: (error as Error).message }
        }
        return kept ? { type: 'ok' } : { type: 'refused', reason: 'copy does not follow what is held' }
      }
      case 'fetch-home-copy': {
        const home = this.homes.get(message.pid)
        if (home === undefined)
          return {
            type: 'home-copy-output',
            entries: this.homeCopies.outputFrom(message.pid, message.from, attachReplyBytesMax),
          }
        const entries: Array<Extract<HomeCopyEntry, { kind: 'output' }>> = []
        let bytes = 0
        for (let index = message.from; index < home.output.length && bytes < attachReplyBytesMax; index++) {
          const chunk = home.output[index]
          if (chunk === undefined) break // indexed, its copy still on its way
          entries.push({ kind: 'output', index, ...chunk })
          bytes += chunk.bytes.length
        }
        return { type: 'home-copy-output', entries }
      }
      case 'attach':
        if (!this.homes.has(message.pid)) return this.forwardToHome(message)
        return this.attach(message.pid, message.from, message.waitMs)
      case 'kill': {
        const home = this.homes.get(message.pid)
        if (home === undefined) return this.forwardToHome(message)
        await this.endProcess(home, { exitCode: 137, error: 'killed' })
        return { type: 'ok' }
      }
      case 'ps':
        return {
          type: 'processes',
          processes: await this.processSummaries(
            message.local === true ? 'local' : message.homed === true ? 'homed' : 'cluster',
          ),
        }
    }
  }

  /** A thread of a process homed here ended (its end is recorded): the process ends with its main thread. */
  threadEnded(pid: string, tid: string): void {
    const home = this.homes.get(pid)
    if (home === undefined || !home.threads.end(tid)) return
    if (tid === '0') {
      void this.copyHome(home, { kind: 'ended', tid })
      void this.finishProcess(home).catch(this.runtime.backgroundFailed)
    } else this.copyLazily(home, { kind: 'ended', tid })
  }

  /** Whether this node is home of process `pid` (its end is decided here). */
  isHome(pid: string): boolean {
    return this.homes.has(pid)
  }

  /**
   * How much this node keeps of the threads of `pid`: as its home, and as a home replica (for
   * tests: both stay within `endedThreadsKeptMax` however many threads the process ran).
   */
  homeThreadCounts(pid: string): { home?: HomeThreadCounts; copy?: HomeThreadCounts } {
    return {
      home: this.homes.get(pid)?.threads.counts(),
      copy: this.homeCopies.get(pid)?.threads.counts(),
    }
  }

  /** Another node is the home of `pid` now: a copy kept of it here would be stale. */
  homeMoved(pid: string, home: NodeId): void {
    if (home !== this.self) this.homeCopies.drop(pid)
  }

  /** The process ended (its home stopped it): a copy kept of it here is no longer needed. */
  processStopped(pid: string): void {
    this.homeCopies.drop(pid)
  }

  /** A node departed: take over the processes it was home of (if this node keeps their copy), then restart its threads. */
  async nodeDeparted(departed: NodeId): Promise<void> {
    await this.adoptProcesses(departed)
    await this.recoverNode(departed)
  }

  /**
   * A `kill` or `attach` of a process homed elsewhere (a submitter or operator may name any node):
   * sent on to the home its record names, or handled here once this node is home. While a home
   * replica takes the process over from a lost home, the record still names the lost one: it is read
   * again until a live node is home, for at most `homeLookupWaitMsMax`.
   */
  private async forwardToHome(
    message: Extract<RuntimeMessage, { type: 'kill' | 'attach' }>,
  ): Promise<RuntimeReply> {
    const clock = this.components.clock ?? systemClock
    const deadline = clock.now() + homeLookupWaitMsMax
    let home: NodeId | null = null
    for (;;) {
      if (this.homes.has(message.pid)) return this.handle(message)
      const read = await this.components.store.get(keys.process(message.pid)).catch(() => undefined)
      if (read !== undefined && read.value === null)
        return { type: 'refused', reason: `no process ${message.pid}` }
      const record = read?.value == null ? undefined : decodeProcess(read.value)
      if (record !== undefined) {
        home = record.home
        const live = this.components.cluster.live().some((peer) => peer.id === record.home)
        if (record.home !== this.self && live)
          return this.components.messenger.request(record.home, message).catch(
            (error: Error): RuntimeReply => ({
              type: 'refused',
              reason: `the home ${record.home} of process ${message.pid} did not answer: ${error.message}`,
            }),
          )
        // A process that ended with its home lost is not taken over: its output went with the home.
        if (record.state !== 'running')
          return {
            type: 'refused',
            reason:
              record.home === this.self
                ? `process ${message.pid} has ended (${record.state}, exit code ${record.exitCode}); its home ${this.self} no longer keeps its output (it keeps at most ${this.keptEndedProcessesMax} ended processes and ${Math.round(this.keptEndedOutputBytesMax / 1024 / 1024)} MiB of their output)`
                : `process ${message.pid} has ended (${record.state}, exit code ${record.exitCode}); its home ${record.home}, which kept its output, is gone`,
          }
      }
      if (clock.now() >= deadline || this.runtime.isStopped())
        return {
          type: 'refused',
          reason:
            home === null
              ? `the store did not answer where process ${message.pid} is homed`
              : `the home ${home} of process ${message.pid} is not live and no node took the process over within ${homeLookupWaitMsMax} ms`,
        }
      await new Promise<void>((resolve) => this.components.timers.after(homeLookupRetryMs, resolve))
    }
  }

  /** Output of a process homed here from chunk `from` on; waits up to `waitMs` when there is none yet. */
  private async attach(pid: string, from: number, waitMs: number): Promise<RuntimeReply> {
    const home = this.homes.get(pid)
    if (home === undefined) return { type: 'refused', reason: `this node is not the home of process ${pid}` }
    const ready = () => home.output.length > from || home.finished
    if (!ready()) {
      await new Promise<void>((resolve) => {
        const wake = () => {
          home.listeners.delete(wake)
          timer.cancel()
          resolve()
        }
        const timer = this.components.timers.after(waitMs, wake)
        home.listeners.add(wake)
        home.result.then(wake)
      })
    }
    const chunks: OutputChunk[] = []
    let bytes = 0
    let next = from
    while (next < home.output.length && bytes < attachReplyBytesMax) {
      const { tid, fd, bytes: chunkBytes } = home.output[next++]!
      const chunk = { tid, fd, bytes: chunkBytes }
      chunks.push(chunk)
      bytes += chunk.bytes.length
    }
    const result = home.finished && next >= home.output.length ? await home.result : null
    return { type: 'output', chunks, next, result }
  }

  /** This node's threads, by process. */
  private localSummaries(): ProcessSummary[] {
    const byProcess = new Map<string, ProcessSummary>()
    const now = Date.now()
    const running = new Set<string>()
    for (const thread of this.runtime.threadsRunningHere()) {
      running.add(`${thread.pid}/${thread.tid}`)
      let summary = byProcess.get(thread.pid)
      if (summary === undefined) {
        summary = { pid: thread.pid, home: '', state: 'running', threads: [] }
        byProcess.set(thread.pid, summary)
      }
      const last = thread.chain.at(-1)
      // A chain restored from replicas does not say when its saves were taken.
      const takenAtMs = last === undefined || last.summary.takenAtMs === 0 ? null : last.summary.takenAtMs
      summary.threads.push({
        tid: thread.tid,
        node: this.self,
        state: 'running here',
        lastSaveMs: takenAtMs,
        epoch: thread.epoch,
        lastSave:
          last === undefined
            ? null
            : {
                sequence: last.summary.sequence,
                ageMs: takenAtMs === null ? null : Math.max(0, now - takenAtMs),
                bytes: last.bytes.length,
              },
      })
    }
    for (const key of this.runtime.threadsStartingHere()) {
      if (running.has(key)) continue
      const [pid, tid] = key.split('/') as [string, string]
      let summary = byProcess.get(pid)
      if (summary === undefined) {
        summary = { pid, home: '', state: 'running', threads: [] }
        byProcess.set(pid, summary)
      }
      summary.threads.push({ tid, node: this.self, state: 'starting here', lastSaveMs: null })
    }
    return [...byProcess.values()]
  }

  /**
   * What `ps` shows, by scope. `local`: the threads running here (what a home asks their nodes).
   * `homed`: the processes homed here, each thread with what its node says of it. `cluster` (what
   * an operator asks any node): the processes of every live home, the threads that run here marked
   * `running here`, then threads running here of processes no live home answered for.
   */
  async processSummaries(scope: 'local' | 'homed' | 'cluster'): Promise<ProcessSummary[]> {
    const here = this.localSummaries()
    if (scope === 'local') return here
    const homed = await this.homedSummaries(here)
    if (scope === 'homed') return homed
    const others = this.components.cluster.live().filter((peer) => peer.id !== this.self)
    const replies = await Promise.all(
      others.map((peer) =>
        this.components.messenger.request(peer.id, { type: 'ps', homed: true }).catch(() => undefined),
      ),
    )
    const byPid = new Map<string, ProcessSummary>()
    for (const summary of [
      ...homed,
      ...replies.flatMap((reply) => (reply?.type === 'processes' ? reply.processes : [])),
    ]) {
      // Two homes of one process (a home declared dead that still answers): the live one wins.
      const known = byPid.get(summary.pid)
      if (known === undefined || (known.state !== 'running' && summary.state === 'running'))
        byPid.set(summary.pid, summary)
    }
    const runningHere = new Map<string, ThreadSummary>()
    for (const summary of here)
      for (const thread of summary.threads) runningHere.set(`${summary.pid}/${thread.tid}`, thread)
    const summaries = [...byPid.values()].map((summary) => {
      const listed = new Set(summary.threads.map((thread) => thread.tid))
      return {
        ...summary,
        threads: [
          ...summary.threads.map((thread) => runningHere.get(`${summary.pid}/${thread.tid}`) ?? thread),
          // Threads that run here, which the home has not heard of yet.
          ...(here.find((entry) => entry.pid === summary.pid)?.threads ?? []).filter(
            (thread) => !listed.has(thread.tid),
          ),
        ],
      }
    })
    for (const summary of here) if (!byPid.has(summary.pid)) summaries.push(summary)
    return summaries
  }

  /**
   * The processes homed here, each thread with what its node says of it. An ended process lists the
   * threads whose end notice did not reach the home with the state their records say.
   */
  private async homedSummaries(here: ProcessSummary[]): Promise<ProcessSummary[]> {
    const homes = [...this.homes.values()]
    const nodes = new Set(
      homes.filter((home) => !home.finished).flatMap((home) => [...home.threads.running().values()]),
    )
    nodes.delete(this.self)
    const details = new Map<string, ThreadSummary>()
    const remember = (summaries: ProcessSummary[]) => {
      for (const summary of summaries)
        for (const thread of summary.threads) details.set(`${summary.pid}/${thread.tid}`, thread)
    }
    remember(here)
    await Promise.all(
      [...nodes].map(async (node) => {
        const reply = await this.components.messenger
          .request(node, { type: 'ps', local: true })
          .catch(() => undefined)
        if (reply?.type === 'processes') remember(reply.processes)
      }),
    )
    let recordReads = 0
    return Promise.all(
      homes.map(
        async (home): Promise<ProcessSummary> => ({
          pid: home.record.pid,
          home: this.self,
          state: home.finished ? 'ended' : 'running',
          threads: await Promise.all(
            [...home.threads.running()].map(async ([tid, node]): Promise<ThreadSummary> => {
              if (home.finished) {
                const read =
                  recordReads++ < psRecordReadsMax
                    ? await this.threadRecords.get(home.record.pid, tid).catch(() => undefined)
                    : undefined
                const record = read?.value == null ? null : decodeThread(read.value)
                return record === null
                  ? { tid, node, state: 'ended?', lastSaveMs: null }
                  : { tid, node: record.node, state: record.state, lastSaveMs: null, epoch: record.epoch }
              }
              const known = details.get(`${home.record.pid}/${tid}`)
              return known === undefined || known.node !== node
                ? { tid, node, state: 'starting', lastSaveMs: null }
                : { ...known, state: known.state === 'starting here' ? 'starting' : 'running' }
            }),
          ),
        }),
      ),
    )
  }

  /**
   * Output of a thread of a process homed here: shown once (by call sequence), and only once its
   * copy is on the home replicas, so a submitter never sees output that a new home would not have.
   */
  private async homeOutput(
    home: HomeProcess,
    tid: string,
    fd: number,
    callSequence: number,
    bytes: Uint8Array,
  ): Promise<void> {
    if (!home.threads.show(tid, fd, callSequence)) return
    const chunk = { tid, fd, bytes, callSequence }
    const kept =
      home.outputBytes + bytes.length <= outputBytesMax && home.outputIndexed < this.outputChunksKeptMax
    if (kept) home.outputBytes += bytes.length
    const index = kept ? home.outputIndexed++ : -1
    const copied = kept
      ? this.copyHome(home, { kind: 'output', index, tid, fd, callSequence, bytes })
      : home.copyQueue
    await copied
    if (kept) home.output[index] = chunk
    for (const listener of home.listeners) listener(chunk)
  }

  /**
   * Queues `entry` (a placement or a child's end) for the home replicas without sending it now: it
   * goes within `homeCopyLazyMs`, with the entries queued meanwhile, or sooner with the next copy
   * sent at once (output's). Should this home be lost first, the new one hears where threads run
   * from their nodes (`home-moved`).
   */
  private copyLazily(home: HomeProcess, entry: HomeCopyEntry): void {
    home.copyPending.push(entry)
    if (home.copyTimer !== null) return
    home.copyTimer = this.components.timers.after(homeCopyLazyMs, () => {
      home.copyTimer = null
      void this.copyHome(home)
    })
  }

  /**
   * Sends `entry` to the home replicas, after every entry before it; resolves once every replica
   * has it, or, past `homeCopyWaitMsMax`, once one has it: output is shown (and its sender told it
   * arrived) only when a node that may take the process over holds it, else losing this home would
   * lose it. Should no replica take it, other live nodes become the replicas, for at most
   * `homeCopyRoundsMax` rounds. A replica that missed a copy gets the whole state again.
   */
  private copyHome(home: HomeProcess, entry?: HomeCopyEntry): Promise<void> {
    if (entry !== undefined) home.copyPending.push(entry)
    home.copyQueue = home.copyQueue.then(async () => {
      const entries = home.copyPending.splice(0)
      // A replica that departed is replaced (the new one gets the whole state).
      const live = this.components.cluster.live()
      if (home.replicas.some((node) => !live.some((peer) => peer.id === node)))
        this.replaceHomeReplicas(home, chooseSaveReplicas(this.self, live, homeReplicaCountDefault))
      const behind = home.replicas.some((node) => !home.replicasCurrent.has(node))
      if ((entries.length === 0 && !behind) || home.finished) return
      const send = async (node: NodeId): Promise<boolean> => {
        const whole = !home.replicasCurrent.has(node)
        const message: RuntimeMessage = whole
          ? {
              type: 'home-copy',
              pid: home.record.pid,
              record: encodeRecord(home.record),
              program: home.programBytes,
              replicas: home.replicas,
              entries: this.homeState(home, entries),
            }
          : { type: 'home-copy', pid: home.record.pid, entries }
        const reply = await this.components.messenger.request(node, message).catch(() => undefined)
        if (reply?.type === 'ok') home.replicasCurrent.add(node)
        else home.replicasCurrent.delete(node)
        return reply?.type === 'ok'
      }
      const tried = new Set<NodeId>()
      for (let round = 0; round < homeCopyRoundsMax && !home.finished; round++) {
        const targets = home.replicas.filter((node) => !tried.has(node))
        if (targets.length === 0) return // no other node to copy to (a one-node cluster)
        // A whole copy shows the thread state as it is now, after entries queued since this round
        // began: they go with it, not after it (an end applied twice past a forgotten one would
        // make the copy differ from the home).
        if (round > 0) for (const entry of home.copyPending.splice(0)) entries.push(entry)
        for (const node of targets) tried.add(node)
        let confirmed = 0
        // A replica that does not answer (SIGKILLed and not yet declared dead, say) holds the
        // output up for `homeCopyWaitMsMax` at most, if another one has it; it is brought up to
        // date later.
        await new Promise<void>((resolve) => {
          let settled = 0
          let waited = false
          const check = () => {
            if (settled < targets.length && !(waited && confirmed > 0)) return
            timer.cancel()
            resolve()
          }
          const timer = this.components.timers.after(homeCopyWaitMsMax, () => {
            waited = true
            check()
          })
          for (const node of targets)
            void send(node).then((ok) => {
              if (ok) confirmed++
              settled++
              check()
            })
        })
        if (confirmed > 0) return
        this.replaceHomeReplicas(
          home,
          chooseSaveReplicas(
            this.self,
            this.components.cluster.live().filter((peer) => !tried.has(peer.id)),
            homeReplicaCountDefault,
          ),
        )
        this.components.log?.(
          `runtime: no home replica of process ${home.record.pid} took its copy; copying to ${home.replicas.join(', ') || 'no other node'}`,
        )
      }
    })
    return home.copyQueue
  }

  /**
   * New home replicas; the replaced ones that live are told to drop their copies (as `home-moved`
   * to this node does), so a stale copy never takes the process over.
   */
  private replaceHomeReplicas(home: HomeProcess, replicas: NodeId[]): void {
    for (const node of home.replicas) {
      if (replicas.includes(node)) continue
      home.replicasCurrent.delete(node)
      void this.components.messenger
        .request(node, { type: 'home-moved', pid: home.record.pid, home: this.self })
        .catch(() => {})
    }
    home.replicas = replicas
  }

  /**
   * Everything a new home replica needs: the output so far (with `pending`), then the thread state
   * as it is now (which `pending` is in already): the ends remembered in order, the placements, the
   * output dedupe. Built at once with the splice of `pending`, so later entries follow it exactly.
   */
  private homeState(home: HomeProcess, pending: HomeCopyEntry[]): HomeCopyEntry[] {
    const entries: HomeCopyEntry[] = []
    home.output.forEach((chunk, index) => {
      entries.push({ kind: 'output', index, ...chunk })
    })
    for (const entry of pending) if (entry.kind === 'output') entries.push(entry)
    for (const entry of home.threads.copyEntries()) entries.push(entry)
    return entries
  }

  /**
   * Takes over, from its copy, each process whose home was `departed`: the process record names this
   * node as home (one cas: one replica wins), the other nodes learn it, and this node restarts the
   * threads of the lost home and watches the rest, keeps the output and ends the process.
   */
  private async adoptProcesses(departed: NodeId): Promise<void> {
    if (departed === this.self) return
    for (const pid of this.homeCopies.homedOn(departed)) {
      const copy = this.homeCopies.get(pid)!
      const read = await this.components.store.get(keys.process(pid)).catch(() => undefined)
      if (read === undefined) continue // the next sweep tries again
      const current = read.value === null ? null : decodeProcess(read.value)
      if (current === null || current.state !== 'running' || current.home !== departed) {
        if (current?.home !== this.self) this.homeCopies.drop(pid)
        continue
      }
      await this.catchUpHomeCopy(pid, departed)
      const record: ProcessRecord = { ...current, home: this.self }
      const written = await this.components.store.cas(keys.process(pid), read.version, encodeRecord(record))
      if (!written.ok) continue
      this.homeCopies.drop(pid)
      let finish!: (result: ProcessResult) => void
      const result = new Promise<ProcessResult>((resolve) => {
        finish = resolve
      })
      const home: HomeProcess = {
        record,
        programBytes: copy.program,
        // The copy's thread state, kept as the home kept it (its output dedupe included).
        threads: copy.threads,
        output: copy.chunks.map((chunk) => ({ ...chunk })),
        outputBytes: copy.chunks.reduce((sum, chunk) => sum + chunk.bytes.length, 0),
        outputIndexed: copy.chunks.length,
        replicas: chooseSaveReplicas(
          this.self,
          this.components.cluster.live().filter((peer) => peer.id !== departed),
          homeReplicaCountDefault,
        ),
        replicasCurrent: new Set(),
        copyPending: [],
        copyQueue: Promise.resolve(),
        copyTimer: null,
        adopted: true,
        listeners: new Set(),
        result,
        finish,
        finished: false,
      }
      this.homes.set(pid, home)
      this.runtime.processTakenOver(record, copy.program)
      this.components.log?.(
        `runtime: took over as home of process ${pid} from ${departed} (${home.output.length} output chunks, ${home.threads.running().size} threads)`,
      )
      for (const peer of this.components.cluster.live()) {
        if (peer.id === this.self) continue
        void this.components.messenger
          .request(peer.id, { type: 'home-moved', pid, home: this.self })
          .catch(() => {})
      }
      // The new replicas get the whole state; the process may have ended meanwhile (its main
      // thread's end went to the lost home).
      void this.copyHome(home)
      void this.finishProcess(home).catch(this.runtime.backgroundFailed)
    }
  }

  /**
   * Before taking a process over: output that another home replica got and this one did not (the
   * lost home showed a chunk once one replica had it) is fetched from it, so no output shown is lost.
   */
  private async catchUpHomeCopy(pid: string, departed: NodeId): Promise<void> {
    const copy = this.homeCopies.get(pid)
    if (copy === undefined) return
    const live = new Set(this.components.cluster.live().map((peer) => peer.id))
    for (const node of copy.replicas) {
      if (node === this.self || node === departed || !live.has(node)) continue
      for (let page = 0; page < homeCopyFetchPagesMax; page++) {
        const held = this.homeCopies.get(pid)?.chunks.length ?? 0
        const reply = await this.components.messenger
          .request(node, { type: 'fetch-home-copy', pid, from: held })
          .catch(() => undefined)
        if (reply?.type !== 'home-copy-output' || reply.entries.length === 0) break
        if (!this.homeCopies.keep({ pid, entries: reply.entries })) break
        this.components.log?.(
          `runtime: fetched ${reply.entries.length} output chunks of process ${pid} from home replica ${node}`,
        )
      }
    }
  }

  private async finishProcess(home: HomeProcess): Promise<void> {
    if (home.finished) return
    // A store that does not answer in time (a busy machine) is asked again: the process must end.
    let read: Register | undefined
    while (read === undefined && !this.runtime.isStopped()) {
      read = await this.threadRecords.get(home.record.pid, '0').catch(() => undefined)
      if (read === undefined)
        await new Promise<void>((resolve) => this.components.timers.after(storeRetryMs, resolve))
    }
    if (read === undefined) return
    const main = read.value === null ? null : decodeThread(read.value)
    if (main === null || (main.state !== 'done' && main.state !== 'failed')) return
    const result: ProcessResult =
      main.state === 'done'
        ? { exitCode: main.exitCode ?? 0, error: null }
        : { exitCode: 1, error: main.error }
    await this.endProcess(home, result)
  }

  /** Stops every thread of a process homed here and records how it ended. */
  private async endProcess(home: HomeProcess, result: ProcessResult): Promise<void> {
    if (home.finished) return
    home.finished = true
    // Only copies to home replicas send the program, and an ended home copies nothing: its bytes
    // go now, not with the ended home (the node's program cache bounds the programs it keeps).
    home.programBytes = new Uint8Array(0)
    this.runtime.processEnded(home.record.pid)
    const nodes = new Set(this.components.cluster.live().map((peer) => peer.id))
    for (const node of nodes) {
      void this.components.messenger.request(node, { type: 'stop', pid: home.record.pid }).catch(() => {})
    }
    const record: ProcessRecord = {
      ...home.record,
      state: result.error === null ? 'done' : 'failed',
      ...result,
    }
    await this.components.store
      .put(keys.process(home.record.pid), encodeRecord(record))
      .catch(() => undefined)
    home.finish(result)
    this.endedHomes.add(home.record.pid)
    this.forgetOldEndedHomes()
    const clock = this.components.clock ?? systemClock
    this.keysToForget.push({ pid: home.record.pid, atMs: clock.now() + this.processKeysForgetDelayMs })
  }

  /**
   * The store forgets the thread records and objects of the processes that ended here
   * `processKeysForgetDelayMs` ago or more: every acceptor would otherwise keep a slot per thread
   * ever run, in memory and in its log (about 1.2 KB per thread on each node of 3).
   */
  private forgetEndedProcessKeys(): void {
    const now = (this.components.clock ?? systemClock).now()
    const groups: string[] = []
    while (this.keysToForget.length > 0 && this.keysToForget[0]!.atMs <= now) {
      const { pid } = this.keysToForget.shift()!
      groups.push(...threadRecordKeys.groups(pid), syncKeyGroup(pid))
    }
    if (groups.length > 0) this.components.store.forget(groups)
  }

  /**
   * Drops the oldest ended processes past `keptEndedProcessesMax` or `keptEndedOutputBytesMax`
   * (never the one that ended last): their output, placements and program go. An `attach` or `kill`
   * of one is then refused as ended, from its record.
   */
  private forgetOldEndedHomes(): void {
    let outputBytes = 0
    for (const pid of this.endedHomes) outputBytes += this.homes.get(pid)?.outputBytes ?? 0
    for (const pid of this.endedHomes) {
      const withinLimits =
        this.endedHomes.size <= this.keptEndedProcessesMax && outputBytes <= this.keptEndedOutputBytesMax
      if (withinLimits || this.endedHomes.size === 1) return
      outputBytes -= this.homes.get(pid)?.outputBytes ?? 0
      this.endedHomes.delete(pid)
      this.homes.delete(pid)
    }
  }

  /** Restarts elsewhere the threads of this node's processes that ran on a departed node. */
  private async recoverNode(departed: NodeId): Promise<void> {
    if (departed === this.self) return
    const lost: Array<{ pid: string; tid: string }> = []
    for (const home of this.homes.values()) {
      if (home.finished) continue
      for (const [tid, node] of home.threads.running())
        if (node === departed) lost.push({ pid: home.record.pid, tid })
    }
    if (lost.length === 0) return
    // The records are read while the lease runs out: a record the node wrote meanwhile (it was
    // not dead after all) has a new version, and the claim on the old one fails.
    const reads = lost.map(({ pid, tid }) => this.threadRecords.get(pid, tid).catch(() => undefined))
    await this.fenceNode(departed)
    await Promise.all(
      lost.map(async ({ pid, tid }, index) => {
        const read = await reads[index]!
        if (read?.value == null) return
        const record = decodeThread(read.value)
        if (record.state === 'done' || record.state === 'failed') return this.threadFoundEnded(pid, tid)
        if (record.node !== departed) return
        const node = await this.runtime.handOver(pid, tid, read.version, record, { exclude: departed })
        if (node !== null)
          this.components.log?.(`runtime: thread ${tid} of ${pid} moved from ${departed} to ${node}`)
      }),
    )
  }

  /**
   * A thread the home counts as running has a record that says it ended: its end notice was lost,
   * or a late `placed` notice came after the home forgot it ended (`endedThreadsKeptMax`). It ends
   * here (and on the replicas) as on its notice; a record that ended never runs again.
   */
  private threadFoundEnded(pid: string, tid: string): void {
    if (this.homes.get(pid)?.threads.isRunning(tid)) this.threadEnded(pid, tid)
  }

  /** Waits until `node`'s lease has expired and takes it, so the node can no longer renew. */
  private async fenceNode(node: NodeId): Promise<void> {
    for (let attempt = 0; attempt < fenceWaitMsMax / fenceRetryMs && !this.runtime.isStopped(); attempt++) {
      const taken = await this.components.store
        .acquire(keys.node(node), `fenced-by:${this.self}`, this.leaseTtlMs * 10)
        .catch(() => undefined)
      if (taken?.ok) return
      await new Promise<void>((resolve) => this.components.timers.after(fenceRetryMs, resolve))
    }
  }

  /**
   * Every `homeSweepMs`: finishes takeovers of lost homes, ends taken-over processes whose main thread
   * ended, restarts the threads of departed nodes and, every `orphanCheckEverySweeps`, looks for orphans.
   */
  async sweepHomes(): Promise<void> {
    this.forgetEndedProcessKeys()
    const live = new Set(this.components.cluster.live().map((peer) => peer.id))
    // Homes lost while a takeover could not finish (a store that did not answer) are taken over now.
    for (const home of this.homeCopies.homes()) if (!live.has(home)) await this.adoptProcesses(home)
    // A process taken over ends when its main thread does, whose end notice may have gone to the lost home.
    for (const home of this.homes.values())
      if (home.adopted && !home.finished) await this.finishProcess(home).catch(this.runtime.backgroundFailed)
    const departed = new Set<NodeId>()
    for (const home of this.homes.values()) {
      if (home.finished) continue
      for (const node of home.threads.running().values()) if (!live.has(node)) departed.add(node)
    }
    for (const node of departed) await this.recoverNode(node)
    if (++this.sweeps % orphanCheckEverySweeps === 0) await this.findOrphans(live)
  }

  /**
   * Threads whose record names a live node that does not run them (it stopped them when it lost its
   * lease, say): missing at two checks in a row, they are placed again. Epochs keep this safe even
   * if the node does run them after all: its next write fails and it stops.
   */
  private async findOrphans(live: ReadonlySet<NodeId>): Promise<void> {
    const byNode = new Map<NodeId, Array<{ pid: string; tid: string }>>()
    for (const home of this.homes.values()) {
      if (home.finished) continue
      for (const [tid, node] of home.threads.running()) {
        if (!live.has(node)) continue
        byNode.set(node, [...(byNode.get(node) ?? []), { pid: home.record.pid, tid }])
      }
    }
    const suspects = new Set<string>()
    for (const [node, threads] of byNode) {
      // The records of threads missing at the last check are read before the node is asked: a
      // node that claims one again meanwhile (it stopped its threads when it could not renew its
      // lease, then reclaimed them) changes its version, so the hand-over below fails instead of
      // taking the thread from the node that just claimed it.
      const reads = new Map(
        threads
          .filter(({ pid, tid }) => this.orphanSuspects.has(`${pid}/${tid}`))
          .map(({ pid, tid }) => [`${pid}/${tid}`, this.threadRecords.get(pid, tid).catch(() => undefined)]),
      )
      await Promise.all(reads.values())
      const reply = await this.components.messenger
        .request(node, { type: 'ps', local: true })
        .catch(() => undefined)
      if (reply?.type !== 'processes') continue
      const running = new Set(
        reply.processes.flatMap((entry) =>
          entry.threads
            .filter((thread) => thread.state === 'running here' || thread.state === 'starting here')
            .map((thread) => `${entry.pid}/${thread.tid}`),
        ),
      )
      for (const { pid, tid } of threads) {
        const key = `${pid}/${tid}`
        if (running.has(key)) continue
        suspects.add(key)
        const read = await reads.get(key)
        if (read?.value == null) continue
        const record = decodeThread(read.value)
        if (record.state === 'done' || record.state === 'failed') this.threadFoundEnded(pid, tid)
        if (record.node !== node || record.state !== 'running') continue
        this.components.log?.(`runtime: thread ${tid} of ${pid} is not running on ${node}; placing it again`)
        void this.runtime.handOver(pid, tid, read.version, record).catch(this.runtime.backgroundFailed)
      }
    }
    this.orphanSuspects = suspects
  }
}
