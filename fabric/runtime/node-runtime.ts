/**
 * The process runtime of one node: runs the threads placed on it (driving host/), places and claims
 * threads, keeps context saves for other nodes' threads, and starts the processes submitted through
 * it. What it does as the home of a process (keeping its output, restarting threads whose node died,
 * ending it, `attach`, `kill`, `ps`) is in home-duties.ts, which reaches back only through narrow
 * callbacks.
 *
 *   const runtime = createNodeRuntime({ cluster, store, messenger, pool, loadProgram, random, timers })
 *   await runtime.start()
 *   const process = await runtime.submit(programBytes, { args: ['prog', '8'] })
 *   process.onOutput((tid, fd, bytes) => ...)
 *   const { exitCode } = await process.result
 *
 * Start is two-phase: the placer chooses a node and sends it the thread's record as read (a new
 * thread's at version 0); that node claims it by one compare-and-swap on that version (itself as
 * node, state `running`, epoch + 1), creating a new thread's record with its claim, and only then
 * runs it. A spawn returns at once: its child joins a batch that is made durable (the replay log
 * the spawner follows first, then the children's records, all at once) before the spawner's next
 * visible effect, join, end or save replication, all of which queue behind it (a child placed on
 * one of the spawner's save replicas has that log ride with its start, kept there before the claim,
 * instead of waiting for it); a child goes to its spawner's node when that has an idle core. Every
 * later write of the running incarnation is a cas on the version it claimed, so an incarnation that
 * was replaced fails its next write and stops. A node holds a lease on its own key `node/<id>`; the
 * home of a process that sees the node depart takes that lease once it has expired (which fences
 * the node: its renewal fails and it stops its threads) and places the node's threads elsewhere,
 * where they resume from their latest save.
 */

import {
  decodeSpawnPayload,
  exportedFunctions,
  importModuleFabric,
  importModuleWasi,
  JoinError,
  SpawnError,
} from '../../host/abi.ts'
import type { FabricHostError } from '../../host/errors.ts'
import { WorkerLostError } from '../../host/errors.ts'
import type { Program } from '../../host/program.ts'
import { decodeSave, type EncodedSave, equalBytes } from '../../host/snapshot.ts'
import {
  type HostCall,
  type HostCallReply,
  type ThreadOutcome,
  ThreadRunner,
} from '../../host/thread-runner.ts'
import type { WorkerPool } from '../../host/worker-pool.ts'
import { type Clock, type Random, systemClock, type TimerHandle, type Timers } from '../platform.ts'
import { GroupPlacements } from './group-placements.ts'
import { GroupedWrites } from './grouped-writes.ts'
import type { GuestFileSession, GuestFilesService } from './guest-files.ts'
import { HomeDuties, homeSweepMs, type ProcessHandle, storeRetryMs } from './home-duties.ts'
import type {
  EndedOutcome,
  Notice,
  ProcessSummary,
  RuntimeMessage,
  RuntimeReply,
  StartLog,
} from './messages.ts'
import { NoticeSender } from './notices.ts'
import { chooseNode, chooseSaveReplicas } from './placement.ts'
import { createSyncEngine, isSyncRead, type SyncEngine, type SyncThread } from './primitives/engine.ts'
import { type LoggedReply, ReplyLog } from './primitives/reply-log.ts'
import { ProgramCache } from './program-cache.ts'
import {
  childThreadId,
  decodeProcess,
  decodeThread,
  encodeRecord,
  keys,
  type ProcessRecord,
  parentThreadId,
  recordFormatVersion,
  type ThreadRecord,
  threadNumber,
} from './records.ts'
import { SaveReplicas } from './save-replicas.ts'
import type { ClusterView, CoordinationClient, Messenger, NodeId, Register } from './services.ts'
import { StartBatcher, startLogBytes, startLogBytesMax } from './start-batches.ts'
import { ThreadRecords } from './thread-records.ts'

export type { OutputChunk, ProcessHandle, ProcessResult } from './home-duties.ts'

export const nodeLeaseTtlMsDefault = 1000
export const saveReplicaCountDefault = 2
export const saveIntervalMsDefault = 1000
export const memoryPagesMaxDefault = 16384
export const cpuBudgetMsDefault = 3_600_000
/** Attempts to hand a placed thread to a node before the process fails. */
export const startAttemptsMax = 8
/** Outcomes of ended threads a node remembers for joins that come after the `ended` notice. */
export const endedOutcomesMax = 10_000
/** Attempts to get a claimed thread ready to run (process record, program, saves, files) before it fails. */
export const runAttemptsMax = 6
/** Pause before the next attempt to get a thread ready, times the attempts so far. */
export const runRetryMs = 200
/** Ended processes a node remembers, to refuse starts of their threads that arrive late. */
export const endedProcessesMax = 10_000
/**
 * How long a submit keeps trying to have the main thread placed while no node takes it (store
 * timeouts during a membership change, say) before the process fails. A spawned child is placed
 * until its process ends, as a run queue holds a thread until a core is free; each such period
 * without a taker is logged, and the process record is read to see whether the process still runs.
 */
export const placementWaitMsDefault = 30_000
/** Pause between two rounds of placing a thread that no node took; it doubles up to the next. */
export const spawnPlacementRetryMs = 250
export const spawnPlacementRetryMsMax = 2000
/** Attempts to record a thread's end while the store does not answer. */
export const endWriteAttemptsMax = 50
/** Reads the runtime asks the store for again, when it did not answer in time, before it gives up. */
export const storeReadAttemptsMax = 20
/** How long a placer waits before asking again nodes that all refused a thread. */
export const startRetryMs = 100
/** How often a joiner re-reads the record of the thread it waits for, besides `ended` notices. */
export const joinPollMs = 250
/** Record reads of a join between two notices to the home that the awaited child runs somewhere. */
export const joinPollsPerHomeNotice = 8
/** Restarts of one thread on this node after its worker died, before the thread fails. */
export const localRestartsMax = 20
/**
 * Spawns of one thread whose children are not durable yet: the next spawn waits for them. Spawns
 * return at once and their children are made durable in batches, off the guest's path. The thread's
 * worker answers that many spawns itself (one-way messages) before it waits for the acknowledgements.
 */
export const spawnsPendingMax = 1024
/** Nodes a home asks to load a new program at submit (each fetches it from the home at once). */
export const programPreloadNodesMax = 16
/** A replica's refusal of a log continuation that does not follow what it holds. */
export const logGapReason = 'log gap'
/**
 * How a node's refusal of a start whose carried log it did not keep begins: the placer then waits
 * until a save replica kept the log (its `log` message) and starts the thread without it.
 */
export const startLogRefusedReason = 'start log not kept'
/** How long a leaving node waits for each thread's hand-over save. */
export const drainTimeoutMsDefault = 5000
/** Home sweeps between two checks for processes that ended without a `stop` reaching this node (5 s). */
export const processEndCheckEverySweeps = 10
/** How often a leaving node looks whether its claims under way and its hand-over saves are done. */
export const drainPollMs = 10
/**
 * A thread whose output cannot reach its process's home keeps sending it while the process runs (a
 * lost home is replaced meanwhile, and the record names the new one); it says so in the log once
 * per this interval.
 */
export const outputWaitLogIntervalMs = 30_000
/**
 * The pause between tries of output whose home did not answer doubles up to this: each try reads
 * the process record again, and a home gone for minutes must not cost the store ten reads a second
 * per waiting thread.
 */
export const outputRetryMsMax = 2000
/** Store attempts to record that a thread was stopped because its process ended. */
export const stoppedWriteAttemptsMax = 5

export interface NodeRuntimeComponents {
  cluster: ClusterView
  store: CoordinationClient
  messenger: Messenger
  pool: WorkerPool
  /** Validates, instruments (cached) and compiles a program. */
  loadProgram(bytes: Uint8Array): Promise<Program>
  random: Random
  timers: Timers
  /** Monotonic time for the timeouts of guests' waits; the system clock by default. */
  clock?: Clock
  /** The cluster file system for guests' WASI file calls (guest-files.ts); without it they see no files. */
  files?: GuestFilesService
  log?: (line: string) => void
}

export interface NodeRuntimeOptions {
  nodeLeaseTtlMs?: number
  saveReplicaCount?: number
  /** How long a submit waits for a node to take the main thread (`placementWaitMsDefault`). */
  placementWaitMs?: number
  /** Ended processes a home keeps for `attach` and `ps` (`keptEndedProcessesMaxDefault`). */
  keptEndedProcessesMax?: number
  /** Output bytes of ended processes a home keeps in all (`keptEndedOutputBytesMaxDefault`). */
  keptEndedOutputBytesMax?: number
  /**
   * Runs no child thread on its spawner's node while another server node is live (default false: a
   * child goes to its spawner's node when that has an idle core). For measuring starts on another
   * node (the bench's remote thread start).
   */
  childrenElsewhere?: boolean
  /** Ended threads a home remembers per process, with their output dedupe (`endedThreadsKeptMaxDefault`). */
  endedThreadsKeptMax?: number
  /** Output chunks a home keeps per process (`outputChunksKeptMaxDefault`). */
  outputChunksKeptMax?: number
  /** Programs no running process uses that a node keeps compiled (`idleProgramsMaxDefault`). */
  idleProgramsMax?: number
  /** How long after a process ends its home has the store forget its keys (`processKeysForgetDelayMsDefault`). */
  processKeysForgetDelayMs?: number
}

export interface SubmitOptions {
  args?: string[]
  env?: string[]
  seed?: number
  saveIntervalMs?: number
  memoryPagesMax?: number
  cpuBudgetMs?: number
}

interface LocalThread {
  pid: string
  tid: string
  epoch: number
  /** Store version of the thread record this incarnation last wrote. */
  version: number
  record: ThreadRecord
  runner: ThreadRunner | null
  /** This incarnation's saves since the last full one, to bring a new replica up to date. */
  chain: EncodedSave[]
  replicas: NodeId[]
  outputQueue: Promise<void>
  /** Saves go out one after another, so a delta never reaches a replica before its base. */
  replicationQueue: Promise<void>
  restarts: number
  stopped: boolean
  /**
   * The thread's open files, when the node serves files: a new thread's from its first file call, a
   * resumed one's from its start; kept across restarts of its worker here.
   */
  files: GuestFileSession | null
  /** Values the guest saw (clock readings) since its last save, replayed should it restart. */
  log: Array<[number, bigint]>
  /** The save the log follows (0: the thread's start). */
  logBase: number
  /** Entries of `log` known to be on the replicas. */
  logSent: number
  /** Entries of `log` each replica confirmed, for the save `logAckedBase`: later sends carry only the rest. */
  logAcked: Map<NodeId, number>
  logAckedBase: number
  /** `sync` replies no register records, since the last save: replayed, and sent with `log`. */
  replies: ReplyLog
  /** Whether `replies` changed since it was last sent. */
  repliesUnsent: boolean
  /** The batch that new spawns join, until it starts being placed or a save is taken. */
  openSpawns: SpawnBatch | null
  /** Children spawned whose records are not durable yet. */
  spawnsPending: number
  /** It ran to its end, which is being recorded (a `stop` of its process does not cut that short). */
  ending?: boolean
  /** Stopped because its process ended (its record then says so, unless it ended by itself). */
  processEnded?: boolean
}

/** A thread's replay log on its way to its save replicas: what follows save `afterSequence`. */
interface OutgoingLog {
  entries: Array<[number, bigint]>
  replies: LoggedReply[]
  afterSequence: number
}

/**
 * Children spawned by one thread, made durable together (on the thread's replication queue, after
 * the saves taken before them and before those taken after), with the replay log they follow.
 */
interface SpawnBatch {
  children: Array<{
    tid: string
    entry: string
    arg: Uint8Array
    group: string | undefined
    /** Placed on the spawner's node, which had an idle core at the spawn (counted in `startingHere`). */
    here: boolean
  }>
  /** The thread's log (values seen, replies got) when the latest of them was spawned, and the save it follows. */
  log: Array<[number, bigint]>
  replies: LoggedReply[]
  logBase: number
  /** Settles once the batch's children are placed (or their placement failed). */
  placed: Promise<void>
}

/**
 * The log a batch of spawns follows, on its way to the spawner's save replicas: a child's start
 * waits until one kept it, unless the child goes to a save replica, whose start carries it (the
 * child's node keeps it before its claim creates the child's record).
 */
interface SpawnLog {
  /**
   * Sends the log as `log` messages to the save replicas (on the first call only: a batch whose
   * starts all carry it sends none) and settles true once one kept it (or when no save replica is
   * live to keep it); false when the spawner stopped first: then its children are not placed.
   */
  kept(): Promise<boolean>
  /**
   * The log a start to `node` carries: undefined when it cannot (`node` is not a save replica, or
   * the log is larger than a start carries), and the start waits for `kept()`; null when `node`
   * confirmed the whole log already.
   */
  forStart(node: NodeId): StartLog | null | undefined
  /** `node` kept the log carried by a start. */
  keptBy(node: NodeId): void
}

function randomHex(random: Random, bytes: number): string {
  let out = ''
  for (let index = 0; index < bytes; index++) {
    out += Math.floor(random.next() * 256)
      .toString(16)
      .padStart(2, '0')
  }
  return out
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>))
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, '0')).join('')
}

export class NodeRuntime {
  private readonly components: NodeRuntimeComponents
  private readonly leaseTtlMs: number
  private readonly placementWaitMs: number
  private readonly replicaCount: number
  private readonly childrenElsewhere: boolean
  private readonly self: NodeId
  private readonly local = new Map<string, LocalThread>()
  /**
   * Per thread (`pid/tid`), the discard of a stopped incarnation's files still under way: a new
   * incarnation on this node opens its files only after it, or it could attach to the old view.
   */
  private readonly filesAbandoning = new Map<string, Promise<void>>()
  /** What this node does as the home of processes, and as a home replica. */
  private readonly homeDuties: HomeDuties
  private readonly replicas = new SaveReplicas()
  /**
   * Compiled programs and their bytes, kept while a process that has not ended here uses them, and
   * the latest few idle ones. A process uses its program from when this node learns its record
   * (submit, take-over as home, a read of the record) until `processEnded`.
   */
  private readonly programs: ProgramCache<Program>
  private readonly processes = new Map<string, Promise<ProcessRecord>>()
  private readonly joinWaiters = new Map<string, Set<(outcome?: EndedOutcome) => void>>()
  /** Processes known to have ended (a `stop` came, or this home ended them), oldest first. */
  private readonly endedProcesses = new Set<string>()
  /** Ended threads' outcomes by record key, oldest first (a join may come after the notice). */
  private readonly endedOutcomes = new Map<string, EndedOutcome>()
  private readonly timerHandles: TimerHandle[] = []
  private leaseToken = 0
  private leaseHeld = false
  /** Renewals in a row that got no answer; past a lease's worth, this node stops its threads. */
  private renewalsUnanswered = 0
  private stopped = false
  /** Leaving: no new threads are claimed here. */
  private draining = false
  /** Guests' shared variables, locks, queues and barriers (the `sync` call). */
  private readonly sync: SyncEngine
  /** Where the threads of each context group are: placement keeps a group on few nodes. */
  private readonly groups = new GroupPlacements()
  /** Threads being claimed here and not running yet (`pid/tid`): `ps` shows them `starting here`. */
  private readonly claiming = new Set<string>()
  /** Threads this node is claiming for itself (placed here because it had idle cores). */
  private startingHere = 0
  /** Placements, ends and dropped saves told to other nodes, several per message under load. */
  private readonly notices: NoticeSender
  /** Starts to other nodes, those of one turn to one node in one message. */
  private readonly starts: StartBatcher
  /** Threads' end records, written in groups (several per store frame and acceptor write under load). */
  private readonly endWrites: GroupedWrites<ThreadRecord>
  /** Where thread records live and the one way to read and write them. */
  private readonly threadRecords: ThreadRecords

  constructor(components: NodeRuntimeComponents, options: NodeRuntimeOptions = {}) {
    this.components = components
    this.self = components.cluster.self
    this.leaseTtlMs = options.nodeLeaseTtlMs ?? nodeLeaseTtlMsDefault
    this.placementWaitMs = options.placementWaitMs ?? placementWaitMsDefault
    this.replicaCount = options.saveReplicaCount ?? saveReplicaCountDefault
    this.childrenElsewhere = options.childrenElsewhere === true
    this.programs = new ProgramCache(options.idleProgramsMax)
    this.threadRecords = new ThreadRecords(components.store)
    // The record itself says which thread it is, and so where it lives.
    this.endWrites = new GroupedWrites(
      (version, value, record) => this.threadRecords.casRecord(version, value, record),
      components.timers,
    )
    this.starts = new StartBatcher(this.self, (to, message) => components.messenger.request(to, message))
    this.notices = new NoticeSender(
      this.self,
      (to, message) => components.messenger.request(to, message),
      components.timers,
    )
    this.homeDuties = new HomeDuties(
      components,
      {
        leaseTtlMs: this.leaseTtlMs,
        keptEndedProcessesMax: options.keptEndedProcessesMax,
        keptEndedOutputBytesMax: options.keptEndedOutputBytesMax,
        endedThreadsKeptMax: options.endedThreadsKeptMax,
        outputChunksKeptMax: options.outputChunksKeptMax,
        processKeysForgetDelayMs: options.processKeysForgetDelayMs,
      },
      {
        isStopped: () => this.stopped,
        threadsRunningHere: () => this.local.values(),
        threadsStartingHere: () => this.claiming,
        handOver: (pid, tid, version, record, choice) => this.handOver(pid, tid, version, record, choice),
        processEnded: (pid) => this.processEnded(pid),
        processTakenOver: (record, programBytes) => {
          this.processes.set(record.pid, Promise.resolve(record))
          this.programs.use(record.pid, record.programDigest)
          this.programs.setBytes(record.programDigest, programBytes)
        },
        backgroundFailed: this.backgroundFailed,
      },
    )
    this.sync = createSyncEngine({
      store: components.store,
      self: this.self,
      clock: components.clock ?? systemClock,
      timers: components.timers,
      random: () => components.random.next(),
      notify: (node, key) =>
        void components.messenger.request(node, { type: 'sync-wake', key }).catch(() => {}),
    })
  }

  /** Takes this node's lease and starts serving. */
  async start(): Promise<void> {
    this.components.messenger.serve((from, message) => this.handle(from, message))
    await this.acquireOwnLease()
    this.timerHandles.push(this.components.timers.every(this.leaseTtlMs / 3, () => void this.renewOwnLease()))
    let sweeps = 0
    this.timerHandles.push(
      this.components.timers.every(homeSweepMs, () => {
        void this.homeDuties.sweepHomes().catch(this.backgroundFailed)
        if (++sweeps % processEndCheckEverySweeps === 0)
          void this.checkProcessesEnded().catch(this.backgroundFailed)
      }),
    )
    this.components.cluster.onDeparture(
      (id) => void this.homeDuties.nodeDeparted(id).catch(this.backgroundFailed),
    )
  }

  /**
   * Work started in the background (sweeps, recoveries, hand-overs) that failed, mostly a store that
   * did not answer in time under load: logged, and the next sweep tries again. It must not end the
   * node as an unhandled rejection would.
   */
  private readonly backgroundFailed = (error: unknown): void => {
    this.components.log?.(
      `runtime: background work failed: ${error instanceof Error ? error.message : String(error)}`,
    )
  }

  /** Stops every local thread and timer (the node is shutting down or was fenced for good). */
  stop(): void {
    this.stopped = true
    for (const handle of this.timerHandles.splice(0)) handle.cancel()
    for (const thread of this.local.values()) this.stopThread(thread)
  }

  /**
   * Hands every thread running here to other nodes with no lost work: each takes a save (at once if
   * it waits in a call, else at its next blocking call, within `timeoutMs`), the save reaches its
   * replicas, and the thread is placed elsewhere. New threads are refused meanwhile.
   */
  async drain(timeoutMs = drainTimeoutMsDefault): Promise<void> {
    this.draining = true
    // New claims are refused from now on; those under way finish first, and their threads are
    // handed over with the rest (else they would start here after the drain, and be lost with it).
    for (let waitedMs = 0; this.claiming.size > 0 && waitedMs < timeoutMs; waitedMs += drainPollMs)
      await this.pause(drainPollMs)
    await Promise.all([...this.local.values()].map((thread) => this.handOff(thread, timeoutMs)))
  }

  private async handOff(thread: LocalThread, timeoutMs: number): Promise<void> {
    const lastBefore = thread.chain.at(-1)
    thread.runner?.requestSave()
    // A thread that has not started running yet (its program loading) has no work to save.
    for (
      let waitedMs = 0;
      thread.runner !== null && thread.chain.at(-1) === lastBefore && !thread.stopped && waitedMs < timeoutMs;
      waitedMs += drainPollMs
    ) {
      await this.pause(drainPollMs)
    }
    if (thread.stopped) {
      this.components.log?.(
        `runtime: thread ${thread.tid} of ${thread.pid} stopped here before its hand-over (it ended, or its process did)`,
      )
      return
    }
    thread.stopped = true
    this.local.delete(`${thread.pid}/${thread.tid}`)
    thread.runner?.kill('thread handed over to another node')
    await thread.outputQueue
    await thread.replicationQueue
    this.abandonFiles(thread)
    const read = await this.threadRecords.get(thread.pid, thread.tid).catch(() => undefined)
    if (read?.value == null || read.version !== thread.version) {
      // Its home restarts it from its record once this node is gone.
      this.components.log?.(
        `runtime: thread ${thread.tid} of ${thread.pid} not handed over: its record ${read === undefined ? 'could not be read' : 'changed meanwhile'}`,
      )
      return
    }
    const node = await this.handOver(thread.pid, thread.tid, read.version, decodeThread(read.value), {
      exclude: this.self,
    })
    if (node !== null)
      this.components.log?.(`runtime: handed thread ${thread.tid} of ${thread.pid} to ${node}`)
  }

  /** Number of threads running here (for tests, `ps` and load reports). */
  runningCount(): number {
    return this.local.size
  }

  /** How much this node keeps of a process's threads as its home and as a home replica (for tests). */
  homeThreadCounts(pid: string): ReturnType<HomeDuties['homeThreadCounts']> {
    return this.homeDuties.homeThreadCounts(pid)
  }

  /** Programs this node holds: those a process that has not ended here uses, and the idle ones kept. */
  programsHeld(): { inUse: number; idle: number } {
    return this.programs.counts()
  }

  /** What `fabric ps` shows: the processes homed here with each thread's node, state, epoch, last save. */
  listProcesses(): Promise<ProcessSummary[]> {
    return this.homeDuties.processSummaries('homed')
  }

  localThreads(): Array<{ pid: string; tid: string; epoch: number }> {
    return [...this.local.values()].map(({ pid, tid, epoch }) => ({ pid, tid, epoch }))
  }

  /** Submits a program; this node becomes the process's home. */
  async submit(programBytes: Uint8Array, options: SubmitOptions = {}): Promise<ProcessHandle> {
    const digest = await sha256Hex(programBytes)
    // A program held here already (submitted again, say) is not compiled again; one whose fetch
    // failed (a preload from a home that lost it) is compiled from the bytes given here.
    const held = this.programs.program(digest)?.catch(() => this.components.loadProgram(programBytes))
    const main = await (held ?? this.components.loadProgram(programBytes))
    const pid = randomHex(this.components.random, 8)
    this.programs.use(pid, digest)
    this.programs.setBytes(digest, programBytes)
    if (this.programs.program(digest) === undefined) this.programs.setProgram(digest, Promise.resolve(main))
    const record: ProcessRecord = {
      formatVersion: recordFormatVersion,
      pid,
      programDigest: digest,
      args: options.args ?? ['program'],
      env: options.env ?? [],
      home: this.self,
      seed: options.seed ?? Math.floor(this.components.random.next() * 2 ** 32),
      state: 'running',
      exitCode: null,
      error: null,
      saveIntervalMs: options.saveIntervalMs ?? saveIntervalMsDefault,
      memoryPagesMax: options.memoryPagesMax ?? memoryPagesMaxDefault,
      cpuBudgetMs: options.cpuBudgetMs ?? cpuBudgetMsDefault,
    }
    const handle = this.homeDuties.open(record, programBytes)
    const written = await this.components.store.cas(keys.process(pid), 0, encodeRecord(record))
    if (!written.ok) {
      this.programs.release(pid)
      throw new Error(`process id ${pid} is taken; submit again`)
    }
    this.processes.set(pid, Promise.resolve(record))
    // The other nodes load the program meanwhile: a thread placed there starts without waiting.
    const others = this.components.cluster.live().filter((peer) => peer.id !== this.self)
    for (const peer of others.slice(0, programPreloadNodesMax)) {
      void this.components.messenger.request(peer.id, { type: 'load-program', digest }).catch(() => {})
    }
    // The submitter has the process id at once; a main thread that no node takes (within the
    // placement window) ends the process with an error it sees, instead of a submit that times out.
    void this.placeThread(pid, '0', main.mainEntry, new Uint8Array(0)).catch((error: Error) =>
      this.homeDuties.end(pid, { exitCode: 1, error: `the main thread could not start: ${error.message}` }),
    )
    return handle
  }

  // --- messages -------------------------------------------------------------------------------

  private async handle(from: NodeId, message: RuntimeMessage): Promise<RuntimeReply> {
    switch (message.type) {
      case 'start':
        // The spawner's log it carries is kept before the claim can create the child's record.
        if (message.log !== undefined) {
          const refusal = this.keepStartLog(message.log)
          if (refusal !== null) return refusal
        }
        return this.claim(message.pid, message.tid, message.version, message.record)
      case 'starts': {
        const logRefusals = (message.logs ?? []).map((log) => this.keepStartLog(log))
        return {
          type: 'started',
          replies: await Promise.all(
            message.starts.map(
              (start) =>
                (start.logIndex === undefined ? null : logRefusals[start.logIndex]) ??
                this.claim(start.pid, start.tid, start.version, start.record).catch(
                  (error: Error): RuntimeReply => ({ type: 'refused', reason: error.message }),
                ),
            ),
          ),
        }
      }
      case 'save': {
        const kept = this.replicas.keep(message)
        return kept ? { type: 'ok' } : { type: 'refused', reason: 'save does not follow the chain held' }
      }
      case 'log': {
        const { type: _type, ...log } = message
        const kept = this.replicas.keepLog(log)
        if (kept === 'kept') return { type: 'ok' }
        return { type: 'refused', reason: kept === 'gap' ? logGapReason : 'a later incarnation is held' }
      }
      case 'fetch-saves': {
        const chain = this.replicas.chain(message.pid, message.tid)
        const log = this.replicas.log(message.pid, message.tid)
        return {
          type: 'saves',
          chain: chain?.saves ?? [],
          epoch: chain?.epoch ?? -1,
          sequences: chain?.sequences ?? [],
          ...(log === undefined ? {} : { log }),
        }
      }
      case 'drop-saves':
        this.replicas.drop(message.pid, message.tid)
        return { type: 'ok' }
      case 'load-program':
        if (!this.stopped) void this.program(message.digest, from).catch(() => {})
        return { type: 'ok' }
      case 'fetch-program': {
        const bytes = this.programs.bytes(message.digest)
        return bytes === undefined
          ? { type: 'refused', reason: 'unknown program' }
          : { type: 'program', bytes }
      }
      case 'output':
      case 'placed':
      case 'home-copy':
      case 'fetch-home-copy':
      case 'attach':
      case 'kill':
      case 'ps':
        return this.homeDuties.handle(message)
      case 'home-moved': {
        this.homeDuties.homeMoved(message.pid, message.home)
        const cached = this.processes.get(message.pid)
        if (cached !== undefined)
          this.processes.set(
            message.pid,
            cached.then((record) => ({ ...record, home: message.home })),
          )
        // A home that took the process over knows where threads run from the lost home's copies,
        // which miss a placement whose copy was on its way: each thread running here tells it.
        for (const thread of this.local.values())
          if (thread.pid === message.pid && !thread.stopped)
            this.notices.send(message.home, {
              type: 'placed',
              pid: thread.pid,
              tid: thread.tid,
              node: this.self,
            })
        return { type: 'ok' }
      }
      case 'notices':
        // In order; the ends (most notices) are taken at once, without a turn of their own each.
        for (const notice of message.notices)
          if (notice.type === 'ended')
            this.threadEnded(notice.pid, notice.tid, notice.outcome, notice.early === true)
          else await this.handle(from, notice)
        return { type: 'ok' }
      case 'ended':
        this.threadEnded(message.pid, message.tid, message.outcome, message.early === true)
        return { type: 'ok' }
      case 'stop':
        this.stopProcessHere(message.pid)
        return { type: 'ok' }
      case 'submit': {
        const handle = await this.submit(message.program, { args: message.args, env: message.env })
        return { type: 'submitted', pid: handle.pid }
      }
      case 'sync-wake':
        this.sync.wake(message.key)
        return { type: 'ok' }
    }
    void from
    return { type: 'refused', reason: 'unknown message' }
  }

  /** Waits `ms` on the injected timers. */
  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => this.components.timers.after(ms, resolve))
  }

  /** Keeps the spawner's log a start carries, as a `log` message; the start's refusal if not kept. */
  private keepStartLog(log: StartLog): RuntimeReply | null {
    const kept = this.replicas.keepLog(log)
    if (kept === 'kept') return null
    return {
      type: 'refused',
      reason: `${startLogRefusedReason}: ${kept === 'gap' ? logGapReason : 'a later incarnation is held'}`,
    }
  }

  // --- placing and claiming -------------------------------------------------------------------

  private loadByNode(): Map<NodeId, number> {
    const load = new Map<NodeId, number>()
    load.set(this.self, this.local.size)
    return load
  }

  /** Starts a new thread: the node that will run it creates its record with its claim. Idempotent per tid. */
  private async placeThread(
    pid: string,
    tid: string,
    entry: string,
    arg: Uint8Array,
    group?: string,
    options: { here?: boolean; log?: SpawnLog } = {},
  ): Promise<void> {
    const record: ThreadRecord = {
      formatVersion: recordFormatVersion,
      pid,
      tid,
      entry,
      arg,
      state: 'placed',
      node: '',
      epoch: 0,
      saveReplicas: [],
      result: null,
      exitCode: null,
      error: null,
      spawnerNode: this.self,
      ...(group === undefined ? {} : { group }),
    }
    // A replayed spawn finds the record there: the claim fails and names the node that holds it.
    const here = options.here === true ? this.self : undefined
    // Another server must be live to take the child (asked again each round: they may all go).
    const elsewhere = () =>
      this.childrenElsewhere &&
      tid !== '0' &&
      this.components.cluster.live().some((peer) => peer.id !== this.self && peer.kind === 'server')
    // No node taking the thread (each refused or did not answer: a store that did not answer in a
    // membership change, say) must not lose it: its joiner would find no such thread. So it is
    // placed again until its record exists: a child while its process runs (its spawner's next
    // effect, join or save waits meanwhile), the main thread for `placementWaitMs`.
    const clock = this.components.clock ?? systemClock
    const startedMs = clock.now()
    let reportedMs = 0
    for (let pauseMs = spawnPlacementRetryMs, round = 0; ; round++) {
      if (
        (await this.handOver(pid, tid, 0, record, {
          prefer: round === 0 ? here : undefined,
          exclude: elsewhere() ? this.self : undefined,
          log: options.log,
        })) !== null ||
        this.stopped
      )
        return
      // Its spawner stopped before its log was kept: the incarnation that replaced it spawns it.
      if (options.log !== undefined && !(await options.log.kept())) return
      const waitedMs = clock.now() - startedMs
      if (this.endedProcesses.has(pid)) return // killed meanwhile: nothing to start
      const read = await this.threadRecords.get(pid, tid).catch(() => undefined)
      if (read?.value != null) return
      if (waitedMs - reportedMs >= this.placementWaitMs) {
        if (tid === '0')
          throw new Error(`no node took thread ${tid} of process ${pid} in ${this.placementWaitMs} ms`)
        reportedMs = waitedMs
        this.components.log?.(
          `runtime: no node took thread ${tid} of process ${pid} for ${Math.round(waitedMs / 1000)} s; placing it again while the process runs`,
        )
        // A `stop` that did not arrive: the process record says whether the process still runs.
        const process = await this.components.store.get(keys.process(pid)).catch(() => undefined)
        if (process?.value != null && decodeProcess(process.value).state !== 'running') return
      }
      await this.pause(pauseMs)
      pauseMs = Math.min(pauseMs * 2, spawnPlacementRetryMsMax)
    }
  }

  /**
   * Has a node claim the thread whose record read `record` at `version` (0: a new thread), and tells
   * the home where it runs. A node that refuses or cannot be reached is passed over. Returns the node
   * that runs the thread, or null when another claim won or no node took it.
   */
  private async handOver(
    pid: string,
    tid: string,
    version: number,
    record: ThreadRecord,
    choice: { exclude?: NodeId; prefer?: NodeId; log?: SpawnLog } = {},
  ): Promise<NodeId | null> {
    const passedOver = new Set<NodeId>(choice.exclude === undefined ? [] : [choice.exclude])
    const encoded = encodeRecord(record)
    // Threads of one context group go near each other.
    const group = record.group
    for (let attempt = 0; attempt < startAttemptsMax && !this.stopped; attempt++) {
      let candidates = this.components.cluster.live().filter((peer) => !passedOver.has(peer.id))
      if (candidates.length === 0) {
        // Every node refused (still starting, say): wait a little and ask them all again.
        await this.pause(startRetryMs)
        passedOver.clear()
        if (choice.exclude !== undefined) passedOver.add(choice.exclude)
        candidates = this.components.cluster.live().filter((peer) => !passedOver.has(peer.id))
        if (candidates.length === 0) break
      }
      const node =
        attempt === 0 && choice.prefer !== undefined && candidates.some((peer) => peer.id === choice.prefer)
          ? choice.prefer
          : chooseNode({
              candidates,
              load: this.loadByNode(),
              groupThreads: group === undefined ? undefined : this.groups.load(pid, group),
              random: this.components.random,
            })
      // Counted before the answer: the next placements of the same batch see it, so a group that
      // spills off a full node spills to one other node, not to several at random.
      if (group !== undefined) this.groups.placed(pid, group, tid, node)
      // The spawner's log must be durable before the child's record exists: on the child's node,
      // kept before its claim, when that is a save replica; else on a replica that confirmed it.
      const log = choice.log
      const carried = log === undefined || node === this.self ? undefined : log.forStart(node)
      if (log !== undefined && carried === undefined && !(await log.kept())) return null
      if (node === this.self) this.startingHere++
      const start = (carrying: StartLog | null | undefined) =>
        this.starts
          .request(node, {
            type: 'start',
            pid,
            tid,
            version,
            record: encoded,
            ...(carrying == null ? {} : { log: carrying }),
          })
          .catch((error: Error): RuntimeReply => ({ type: 'refused', reason: error.message }))
      let reply = await start(carried).finally(() => {
        if (node === this.self) this.startingHere--
      })
      if (carried != null) {
        if (reply.type === 'refused' && reply.reason.startsWith(startLogRefusedReason)) {
          // The node did not keep the log (it holds a later incarnation's, or missed a part): the
          // child starts there once a replica confirmed the `log` message.
          if (!(await log!.kept())) return null
          reply = await start(undefined)
        } else if (reply.type === 'ok' || reply.type === 'claimed') log!.keptBy(node)
      }
      if (reply.type === 'ok') {
        this.tellHome(pid, tid, node)
        return node
      }
      if (group !== undefined) this.groups.notPlaced(pid, group, tid, node)
      if (reply.type === 'claimed') {
        // Another claim won (or this one did and its answer was lost): the home must watch that node.
        if (reply.state === 'running') this.tellHome(pid, tid, reply.node)
        return null
      }
      passedOver.add(node)
    }
    this.components.log?.(`runtime: could not start thread ${tid} of process ${pid}`)
    return null
  }

  /** Whether a thread placed here now would compute at once (counting those being claimed). */
  private hasIdleCore(): boolean {
    return this.leaseHeld && !this.draining && this.startingHere < this.components.pool.idleSlots
  }

  /** Tells the home of `pid` that thread `tid` runs on `node` (it restarts it should `node` die). */
  private tellHome(pid: string, tid: string, node: NodeId): void {
    void this.processRecord(pid)
      .then((process) => this.notices.send(process.home, { type: 'placed', pid, tid, node }))
      .catch(() => {})
  }

  /** Second phase of a start: claims the thread by one cas on `version` and runs it. */
  private async claim(
    pid: string,
    tid: string,
    version: number,
    recordBytes: Uint8Array,
  ): Promise<RuntimeReply> {
    if (this.stopped || this.draining || !this.leaseHeld)
      return { type: 'refused', reason: 'node is not serving' }
    let record: ThreadRecord
    try {
      record = decodeThread(recordBytes)
    } catch (error) {
      return { type: 'refused', reason: (error as Error).message }
    }
    if (record.pid !== pid || record.tid !== tid)
      return { type: 'refused', reason: 'record of another thread' }
    if (record.state === 'done' || record.state === 'failed')
      return { type: 'claimed', node: record.node, state: record.state }
    if (this.endedProcesses.has(pid)) return { type: 'refused', reason: `process ${pid} has ended` }
    // A start that arrives after its process ended must not run: the process record says so (read
    // alongside the claim; a node that ran threads of the process has it already).
    const processRead = this.processRecord(pid).catch(() => undefined)
    const claimed: ThreadRecord = { ...record, node: this.self, state: 'running', epoch: record.epoch + 1 }
    // Until it runs here, `ps` shows it `starting here` (a home's orphan check leaves it be).
    this.claiming.add(`${pid}/${tid}`)
    try {
      return await this.claimAndRun(pid, tid, version, claimed, record, processRead)
    } finally {
      this.claiming.delete(`${pid}/${tid}`)
    }
  }

  private async claimAndRun(
    pid: string,
    tid: string,
    version: number,
    claimed: ThreadRecord,
    record: ThreadRecord,
    processRead: Promise<ProcessRecord | undefined>,
  ): Promise<RuntimeReply> {
    // A cas the store did not confirm in time may have applied: the record tells.
    const written = await this.threadRecords
      .cas(pid, tid, version, encodeRecord(claimed), claimed)
      .catch(() =>
        this.readRetrying(() => this.threadRecords.get(pid, tid)).then((read) => ({
          ...read,
          ok: this.isClaim(read, claimed),
        })),
      )
    if (!written.ok) {
      const existing = written.value === null ? null : decodeThread(written.value)
      if (existing === null) return { type: 'refused', reason: 'no such thread' }
      return { type: 'claimed', node: existing.node, state: existing.state }
    }
    if (this.stopped) return { type: 'refused', reason: 'node is not serving' }
    const process = await processRead
    if (this.endedProcesses.has(pid) || (process !== undefined && process.state !== 'running')) {
      // Claimed as its process ended (its stop came while the claim was on its way): it never runs,
      // and its record must not stay `running`.
      this.components.log?.(`runtime: refused thread ${tid} of ${pid}: the process has ended`)
      void this.writeStoppedRecord(pid, tid, written.version, claimed)
      return { type: 'refused', reason: `process ${pid} has ended` }
    }
    const thread: LocalThread = {
      pid,
      tid,
      epoch: claimed.epoch,
      version: written.version,
      record: claimed,
      runner: null,
      chain: [],
      replicas: [],
      outputQueue: Promise.resolve(),
      replicationQueue: Promise.resolve(),
      restarts: 0,
      stopped: false,
      files: null,
      log: [],
      logBase: 0,
      logSent: 0,
      logAcked: new Map(),
      logAckedBase: 0,
      replies: new ReplyLog(),
      repliesUnsent: false,
      openSpawns: null,
      spawnsPending: 0,
    }
    this.local.set(`${pid}/${tid}`, thread)
    if (claimed.epoch > 1)
      this.components.log?.(`runtime: resuming thread ${tid} of ${pid} (epoch ${claimed.epoch})`)
    void this.run(thread, record).catch((error: Error) => {
      this.components.log?.(`runtime: thread ${tid} of ${pid} could not run: ${error.message}`)
      void this.finishThread(thread, { kind: 'error', error: error as FabricHostError }).catch(
        this.backgroundFailed,
      )
    })
    return { type: 'ok' }
  }

  /** Whether `read` holds the claim `claimed` (this node's, at its epoch). */
  private isClaim(read: Register, claimed: ThreadRecord): boolean {
    if (read.value === null) return false
    const record = decodeThread(read.value)
    return record.node === claimed.node && record.epoch === claimed.epoch && record.state === 'running'
  }

  private async processRecord(pid: string): Promise<ProcessRecord> {
    let pending = this.processes.get(pid)
    if (pending === undefined) {
      pending = this.readRetrying(() => this.components.store.get(keys.process(pid))).then((read) => {
        if (read.value === null) throw new Error(`no process ${pid}`)
        const record = decodeProcess(read.value)
        // Its program is in use here until the process ends here (not if it ended already).
        if (record.state === 'running' && !this.endedProcesses.has(pid))
          this.programs.use(pid, record.programDigest)
        return record
      })
      this.processes.set(pid, pending)
      pending.catch(() => this.processes.delete(pid))
    }
    return pending
  }

  /** Reads, asking again while the store does not answer in time (a busy or changing cluster). */
  private async readRetrying(read: () => Promise<Register>): Promise<Register> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await read()
      } catch (error) {
        if (attempt >= storeReadAttemptsMax || this.stopped) throw error
        await this.pause(storeRetryMs)
      }
    }
  }

  /** The compiled program `digest`, fetched from `home` and compiled unless held here. */
  private program(digest: string, home: NodeId): Promise<Program> {
    let pending = this.programs.program(digest)
    if (pending === undefined) {
      const loading = (async () => {
        let bytes = this.programs.bytes(digest)
        if (bytes === undefined) {
          const reply = await this.components.messenger.request(home, { type: 'fetch-program', digest })
          if (reply.type !== 'program') throw new Error(`home ${home} does not have program ${digest}`)
          if ((await sha256Hex(reply.bytes)) !== digest) throw new Error(`program ${digest} arrived damaged`)
          bytes = reply.bytes
          this.programs.setBytes(digest, bytes)
        }
        return this.components.loadProgram(bytes)
      })()
      this.programs.setProgram(digest, loading)
      loading.catch(() => this.programs.forgetProgram(digest, loading))
      pending = loading
    }
    return pending
  }

  /**
   * The latest chain of saves among `replicas` (highest epoch, then longest), and the longest replay
   * log that follows it.
   */
  private async fetchChain(
    pid: string,
    tid: string,
    replicas: readonly NodeId[],
  ): Promise<{
    saves: Uint8Array[]
    sequences: number[]
    log: Array<[number, bigint]>
    replies: LoggedReply[]
  }> {
    const replies = await Promise.all(
      replicas.map((node) =>
        this.components.messenger.request(node, { type: 'fetch-saves', pid, tid }).catch(() => undefined),
      ),
    )
    let best: { epoch: number; saves: Uint8Array[]; sequences: number[] } = {
      epoch: -1,
      saves: [],
      sequences: [],
    }
    for (const reply of replies) {
      if (reply?.type !== 'saves' || reply.chain.length === 0) continue
      if (
        best.saves.length === 0 ||
        reply.epoch > best.epoch ||
        (reply.epoch === best.epoch && reply.chain.length > best.saves.length)
      ) {
        best = { epoch: reply.epoch, saves: reply.chain, sequences: reply.sequences ?? [] }
      }
    }
    const base = best.sequences.at(-1) ?? 0
    let log: { entries: Array<[number, string]>; replies?: LoggedReply[] } = { entries: [] }
    const length = (held: typeof log) => held.entries.length + (held.replies?.length ?? 0)
    for (const reply of replies) {
      if (reply?.type !== 'saves' || reply.log === undefined || reply.log.afterSequence !== base) continue
      if (length(reply.log) > length(log)) log = reply.log
    }
    return {
      ...best,
      log: log.entries.map(([sequence, value]) => [sequence, BigInt(value)]),
      replies: log.replies ?? [],
    }
  }

  // --- running --------------------------------------------------------------------------------

  /**
   * Runs a claimed thread. Getting it ready (its process record, the program from the home, its
   * saves, its files) may fail for a while on a busy cluster: a request to the home that timed out
   * must not fail the thread (its joiner would get an error), so it is tried again here.
   */
  private async run(thread: LocalThread, previous: ThreadRecord): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.runOnce(thread, previous)
      } catch (error) {
        if (attempt >= runAttemptsMax || thread.stopped || this.stopped) throw error
        this.components.log?.(
          `runtime: thread ${thread.tid} of ${thread.pid} could not start running (attempt ${attempt}): ${(error as Error).message}`,
        )
        await this.pause(runRetryMs * attempt)
      }
    }
  }

  private async runOnce(thread: LocalThread, previous: ThreadRecord): Promise<void> {
    const loading = this.processRecord(thread.pid)
    // A thread that ran before resumes from its saves and replays its log; they are on the nodes
    // its record names, and the log of a thread that never saved is on the nodes its node chose.
    const holders =
      previous.epoch === 0
        ? []
        : [
            ...new Set([
              ...previous.saveReplicas,
              ...chooseSaveReplicas(previous.node, this.components.cluster.live(), this.replicaCount),
            ]),
          ]
    // The program and the saves come from different nodes: fetch them at once.
    const [process, program, restore] = await Promise.all([
      loading,
      loading.then((process) => this.program(process.programDigest, process.home)),
      holders.length > 0 ? this.fetchChain(thread.pid, thread.tid, holders) : null,
    ])
    const restoreSaves = restore === null || restore.saves.length === 0 ? null : restore.saves
    if (thread.epoch > 1) {
      // Which save a moved thread resumes from: what a hand-over or a recovery kept of its work.
      const from =
        restoreSaves === null ? 'its start (no save held)' : `save ${restore!.sequences.at(-1) ?? '?'}`
      this.components.log?.(`runtime: thread ${thread.tid} of ${thread.pid} resumes from ${from}`)
    }
    // A resumed thread reopens its files as they were at the save it resumes from; a new one opens
    // its session at its first file call (most threads make none).
    if (this.components.files !== undefined && thread.epoch > 1)
      await this.openFiles(
        thread,
        restoreSaves === null
          ? null
          : (await decodeSave(restoreSaves[restoreSaves.length - 1]!)).callSequence,
      )
    if (thread.stopped) {
      this.abandonFiles(thread)
      return
    }
    if (restore !== null && restore.sequences.length === restore.saves.length) {
      // The restored chain is this incarnation's too: a replica new to the thread gets it whole
      // before the deltas that follow it.
      thread.chain = restore.saves.map((bytes, index) => ({
        bytes,
        summary: {
          threadId: threadNumber(thread.tid),
          sequence: restore.sequences[index]!,
          baseSequence: index === 0 ? null : restore.sequences[index - 1]!,
          callSequence: 0,
          memoryPages: 0,
          pageCount: 0,
          takenAtMs: 0,
        },
      }))
    }
    if (restore !== null) {
      // Replayed values are not reported again by the guest: keep them for this node's replicas.
      thread.log = restore.log
      thread.logBase = restore.sequences.at(-1) ?? 0
      thread.logSent = 0
      thread.replies = new ReplyLog(restore.replies)
      thread.repliesUnsent = false
    }
    this.launch(thread, process, program, restoreSaves)
  }

  /**
   * Makes the values the guest saw since its last save durable on the save replicas, before an
   * effect that may depend on them becomes visible (output, a spawn, a call, its end), so a restart
   * anywhere replays them: sent again until a replica keeps them (`sendLogUntilKept`). Nothing to
   * send, nothing to wait for. The thread may be stopped when this returns (it was replaced).
   */
  private async flushLog(thread: LocalThread): Promise<void> {
    if (thread.log.length === thread.logSent && !thread.repliesUnsent && thread.spawnsPending === 0) return
    // The save this log follows, and the children spawned before, must be durable first.
    await thread.replicationQueue
    if (thread.log.length === thread.logSent && !thread.repliesUnsent) return
    const afterSequence = thread.logBase
    const replies = thread.replies.list()
    thread.repliesUnsent = false
    const kept = await this.sendLogUntilKept(thread, { entries: thread.log.slice(), replies, afterSequence })
    if (!kept && thread.logBase === afterSequence) thread.repliesUnsent = true
  }

  /**
   * Sends a thread's log (the values it saw, the replies it got) that follows save `afterSequence`
   * to its save replicas; whether one kept it.
   */
  private async sendLog(thread: LocalThread, log: OutgoingLog): Promise<boolean> {
    const { entries, replies, afterSequence } = log
    if (entries.length === 0 && replies.length === 0) return true
    const { acked, message, replicas } = this.logDelivery(thread, log)
    // A replica that confirmed part of this log gets the rest only (the log grows with every clock
    // reading until the next save; sending it whole each time made each effect cost the whole log).
    const sendTo = async (node: NodeId): Promise<boolean> => {
      const from = Math.min(acked.get(node) ?? 0, entries.length)
      if (from === entries.length && replies.length === 0) return true
      let reply = await this.components.messenger
        .request(node, { type: 'log', ...message(from) })
        .catch(() => undefined)
      if (reply?.type === 'refused' && reply.reason === logGapReason && from > 0)
        reply = await this.components.messenger
          .request(node, { type: 'log', ...message(0) })
          .catch(() => undefined)
      if (reply?.type !== 'ok') {
        acked.delete(node)
        return false
      }
      if (thread.logAckedBase === afterSequence)
        acked.set(node, Math.max(acked.get(node) ?? 0, entries.length))
      return true
    }
    // One replica that keeps it is enough (as for a save's log since the runtime began): the effect
    // waits for the first answer that says so, not for the slowest replica.
    const kept = await new Promise<boolean>((resolve) => {
      let unanswered = replicas.length
      if (unanswered === 0) resolve(false)
      for (const node of replicas) {
        void sendTo(node).then((ok) => {
          unanswered--
          if (ok) resolve(true)
          else if (unanswered === 0) resolve(false)
        })
      }
    })
    if (kept && thread.logBase === afterSequence) thread.logSent = Math.max(thread.logSent, entries.length)
    return kept
  }

  /**
   * Where a thread's log that follows save `afterSequence` goes (its save replicas), what each
   * confirmed of it, and the log from entry `from` on as a `log` message carries it.
   */
  private logDelivery(
    thread: LocalThread,
    log: OutgoingLog,
  ): { replicas: NodeId[]; acked: Map<NodeId, number>; message: (from: number) => StartLog } {
    const { entries, replies, afterSequence } = log
    if (thread.logAckedBase !== afterSequence) {
      thread.logAcked = new Map()
      thread.logAckedBase = afterSequence
    }
    return {
      replicas: chooseSaveReplicas(this.self, this.components.cluster.live(), this.replicaCount),
      acked: thread.logAcked,
      message: (from) => ({
        pid: thread.pid,
        tid: thread.tid,
        epoch: thread.epoch,
        afterSequence,
        entries: entries.slice(from).map(([sequence, value]) => [sequence, value.toString()]),
        ...(replies.length === 0 ? {} : { replies }),
        ...(from === 0 ? {} : { from }),
      }),
    }
  }

  /**
   * Sends a thread's log until a save replica keeps it: nothing that may depend on the values the
   * thread saw may become visible before they are durable (a child's record above all: a restored
   * spawner that read other values would spawn it with another arg and find the first one's
   * record). True once kept, or when no save replica is live (nowhere to keep it, nor to restore
   * from); false once the thread stopped, or turns out replaced (its record names a later
   * incarnation), which also stops it here.
   */
  private async sendLogUntilKept(thread: LocalThread, log: OutgoingLog): Promise<boolean> {
    for (
      let pauseMs = storeRetryMs, tries = 1;
      ;
      pauseMs = Math.min(pauseMs * 2, outputRetryMsMax), tries++
    ) {
      if (await this.sendLog(thread, log)) return true
      if (thread.stopped || this.stopped) return false
      if (chooseSaveReplicas(this.self, this.components.cluster.live(), this.replicaCount).length === 0)
        return true
      if (tries === 1)
        this.components.log?.(
          `runtime: no save replica kept the log of thread ${thread.tid} of ${thread.pid}; its next effect waits, trying again`,
        )
      const read = await this.threadRecords.get(thread.pid, thread.tid).catch(() => undefined)
      const record = read?.value == null ? null : decodeThread(read.value)
      if (record !== null && (record.epoch !== thread.epoch || record.node !== this.self)) {
        this.components.log?.(
          `runtime: thread ${thread.tid} of ${thread.pid} was taken over; stopping this incarnation`,
        )
        this.stopThread(thread)
        return false
      }
      await this.pause(pauseMs)
    }
  }

  /**
   * The log a batch of spawns follows: what a start to each save replica carries of it, and, for a
   * child whose start cannot carry it, the log sent to the replicas (`sendLogUntilKept`).
   */
  private spawnLog(thread: LocalThread, log: OutgoingLog): SpawnLog {
    const { entries, replies, afterSequence } = log
    let kept: Promise<boolean> | undefined
    const { acked, message, replicas } = this.logDelivery(thread, log)
    // One object per node: the starts of a batch to one node carry it once (start-batches.ts).
    const carried = new Map<NodeId, StartLog | null | undefined>()
    return {
      kept: () => {
        kept ??= this.sendLogUntilKept(thread, log)
        return kept
      },
      forStart: (node) => {
        if (!replicas.includes(node)) return undefined
        if (carried.has(node)) return carried.get(node)
        const from = Math.min(acked.get(node) ?? 0, entries.length)
        let start: StartLog | null | undefined = null
        if (from < entries.length || replies.length > 0) {
          start = message(from)
          if (startLogBytes(start) > startLogBytesMax) start = undefined
        }
        carried.set(node, start)
        return start
      },
      keptBy: (node) => {
        // As the node's answer to the `log` message would count (sendLog).
        if (thread.logAckedBase === afterSequence)
          acked.set(node, Math.max(acked.get(node) ?? 0, entries.length))
        if (thread.logBase === afterSequence) thread.logSent = Math.max(thread.logSent, entries.length)
      },
    }
  }

  /**
   * Opens the thread's file session: a resumed incarnation's as its journal says it was at the save
   * it resumes from (`restoredCallSequence`, null: at its start), once a stopped incarnation's files
   * here are discarded.
   */
  private async openFiles(
    thread: LocalThread,
    restoredCallSequence: number | null,
  ): Promise<GuestFileSession> {
    await this.filesAbandoning.get(`${thread.pid}/${thread.tid}`)
    const resumed = thread.epoch > 1
    const files = await this.components.files!.session({
      pid: thread.pid,
      tid: thread.tid,
      resumed,
      restoredCallSequence: resumed ? restoredCallSequence : null,
      requestSave: () => thread.runner?.requestSave(),
    })
    thread.files = files
    return files
  }

  private launch(
    thread: LocalThread,
    process: ProcessRecord,
    program: Program,
    restore: Uint8Array[] | null,
  ): void {
    const runner = new ThreadRunner(
      this.components.pool,
      {
        module: program.module,
        globalCount: program.globalCount,
        moduleDigest: program.moduleDigest,
        instanceReusable: program.instanceReusable,
        entry: thread.record.entry,
        arg: thread.record.arg,
        threadId: threadNumber(thread.tid),
        seed: (process.seed ^ threadNumber(thread.tid)) >>> 0,
        args: process.args,
        env: process.env,
        limits: { memoryPagesMax: process.memoryPagesMax, cpuBudgetMs: process.cpuBudgetMs },
        saveIntervalMs: process.saveIntervalMs,
        incrementalSaves: true,
        files: this.components.files !== undefined,
        preopens: this.components.files === undefined ? [] : [...this.components.files.preopens],
        restore,
        replayLog: thread.log.slice(),
        nextSaveSequence: 1,
        spawnsAheadMax: spawnsPendingMax,
      },
      {
        output: (fd, bytes, callSequence) => this.sendOutput(thread, process, fd, bytes, callSequence),
        call: (call) => this.serveCall(thread, process, call),
        spawn: (callSequence, payload) => this.spawnAnswered(thread, program, callSequence, payload),
        save: (save) => {
          // Its files are committed and its open-file table journaled before the save can be restored.
          const filesSaved = thread.files?.checkpoint(save.summary.callSequence)
          filesSaved?.catch((error: Error) =>
            this.components.log?.(
              `runtime: files of thread ${thread.tid} of ${thread.pid}: ${error.message}`,
            ),
          )
          // Children spawned before the save are made durable before it travels (they are on the
          // replication queue ahead of it): a restore from it never skips a spawn whose child is missing.
          thread.openSpawns = null
          // The save becomes restorable only once the output the guest wrote before it is shown: a
          // restore from it does not write that output again, so a node lost in between would lose
          // it. Until then the log stays as the output before the save needs it (its values must be
          // durable before the output shows); outputs after the save wait for its replication.
          const taken = () => {
            // The save covers what the guest saw up to its call; the log starts again from it.
            thread.log = thread.log.filter(([sequence]) => sequence > save.summary.callSequence)
            thread.logBase = save.summary.sequence
            thread.logSent = 0
            thread.replies.saved(save.summary.callSequence)
            thread.repliesUnsent = thread.replies.size > 0
            thread.replicationQueue = thread.replicationQueue
              .then(() => filesSaved)
              .then(() => this.replicate(thread, save))
              .catch(() => {})
          }
          thread.outputQueue = thread.outputQueue.then(taken, taken)
        },
        log: (callSequence, value) => {
          thread.log.push([callSequence, value])
        },
      },
    )
    thread.runner = runner
    runner.done.then((outcome) => {
      if (thread.runner !== runner || thread.stopped) return
      if (
        outcome.kind === 'error' &&
        outcome.error instanceof WorkerLostError &&
        thread.restarts < localRestartsMax
      ) {
        thread.restarts++
        const chain = thread.chain.length > 0 ? thread.chain.map((save) => save.bytes) : null
        this.launch(thread, process, program, chain)
        return
      }
      void this.finishThread(thread, outcome).catch(this.backgroundFailed)
    })
  }

  private sendOutput(
    thread: LocalThread,
    process: ProcessRecord,
    fd: number,
    bytes: Uint8Array,
    callSequence: number,
  ) {
    const message: RuntimeMessage = {
      type: 'output',
      pid: thread.pid,
      tid: thread.tid,
      fd,
      callSequence,
      bytes,
    }
    thread.outputQueue = thread.outputQueue.then(async () => {
      await this.flushLog(thread)
      // The home may be lost and taken over meanwhile: each attempt goes to the home the process
      // record names (read again after a failure). Output is never dropped while the process runs
      // (the thread's end waits for it); once the process ended, nobody shows it any more.
      let home = process.home
      const clock = this.components.clock ?? systemClock
      const startedMs = clock.now()
      let reportedMs = 0
      for (let pauseMs = storeRetryMs; !thread.stopped; pauseMs = Math.min(pauseMs * 2, outputRetryMsMax)) {
        try {
          const reply = await this.components.messenger.request(home, message)
          if (reply.type === 'ok') return
          throw new Error(
            `home ${home} refused the output: ${reply.type === 'refused' ? reply.reason : reply.type}`,
          )
        } catch (error) {
          await this.pause(pauseMs)
          const waitedMs = clock.now() - startedMs
          if (waitedMs - reportedMs >= outputWaitLogIntervalMs) {
            reportedMs = waitedMs
            this.components.log?.(
              `runtime: output of thread ${thread.tid} of ${thread.pid} has waited ${Math.round(waitedMs / 1000)} s for home ${home}: ${(error as Error).message}`,
            )
          }
          this.processes.delete(thread.pid)
          const record = await this.processRecord(thread.pid).catch(() => undefined)
          if (record !== undefined && record.state !== 'running') return
          if (record !== undefined) home = record.home
        }
      }
    })
  }

  /** Sends a save to the thread's replicas; a new replica first gets the whole chain. */
  private async replicate(thread: LocalThread, save: EncodedSave): Promise<void> {
    // A stopped incarnation's save must not reach the replicas: the spawns ahead of it on the queue
    // were dropped when it stopped (placeSpawns), so an incarnation restored from this save would
    // join children that no node ever placed (join -1). The next one restores from an earlier save
    // and spawns them again.
    if (thread.stopped) return
    if (save.summary.baseSequence === null) thread.chain = [save]
    else thread.chain.push(save)
    const replicas = chooseSaveReplicas(this.self, this.components.cluster.live(), this.replicaCount)
    const fresh = replicas.filter((node) => !thread.replicas.includes(node))
    const chain = thread.chain.slice()
    const send = async (node: NodeId, saves: EncodedSave[]) => {
      for (const each of saves) {
        const reply = await this.components.messenger.request(node, {
          type: 'save',
          pid: thread.pid,
          tid: thread.tid,
          epoch: thread.epoch,
          sequence: each.summary.sequence,
          baseSequence: each.summary.baseSequence,
          bytes: each.bytes,
        })
        if (reply.type !== 'ok') return false
      }
      return true
    }
    const results = await Promise.all(
      replicas.map(async (node) => {
        try {
          if (fresh.includes(node)) return await send(node, chain)
          return (await send(node, [save])) || (await send(node, chain))
        } catch {
          return false
        }
      }),
    )
    const holding = replicas.filter((_node, index) => results[index])
    if (thread.stopped || holding.length === 0) return
    // A thread that uses sync objects confirms each save on all its replicas in its record: once
    // that cas succeeds, any later incarnation restores from this save or a later one, so the
    // results the objects keep for calls before it can go. (A save of an incarnation that was
    // already replaced fails the cas and prunes nothing.)
    const confirm = holding.length === replicas.length && this.sync.tracks(thread.pid, thread.tid)
    const known = thread.record.saveReplicas
    if (!confirm && holding.length === known.length && holding.every((node) => known.includes(node))) return
    thread.replicas = holding
    const written = await this.writeRecord(thread, { ...thread.record, saveReplicas: holding })
    if (written && confirm) this.sync.saveCommitted(thread.pid, thread.tid, save.summary.callSequence)
  }

  /**
   * A cas on the version this incarnation last wrote; failure means it was replaced: it stops. A cas
   * the store did not confirm in time may have applied (or may apply later, found by the next
   * proposer): the record tells, so a timeout is not taken for a take-over, nor our own write for
   * someone else's.
   */
  private async writeRecord(thread: LocalThread, next: ThreadRecord): Promise<boolean> {
    const { pid, tid } = thread
    const encoded = encodeRecord(next)
    for (let attempt = 1; ; attempt++) {
      let written: Register
      try {
        written = await this.threadRecords.cas(pid, tid, thread.version, encoded, next)
      } catch (error) {
        if (attempt >= storeReadAttemptsMax || this.stopped || thread.stopped) throw error
        const read = await this.readRetrying(() => this.threadRecords.get(pid, tid))
        // Not applied (yet): the same cas again (a late apply of the first one makes it fail on a
        // record that holds our bytes, which counts as written below).
        if (read.version === thread.version) continue
        written = { ...read, ok: false }
      }
      if (!written.ok && written.value !== null && equalBytes(written.value, encoded))
        written = { ...written, ok: true }
      if (!written.ok) {
        this.components.log?.(
          `runtime: thread ${thread.tid} of ${thread.pid} was taken over; stopping this incarnation`,
        )
        this.stopThread(thread)
        return false
      }
      thread.version = written.version
      thread.record = next
      return true
    }
  }

  private async serveCall(
    thread: LocalThread,
    process: ProcessRecord,
    call: HostCall,
  ): Promise<HostCallReply> {
    // A call other than spawn (it flushes on its own, off the guest's path) and join may have an
    // effect that others see: what the guest saw before it must be durable first.
    const spawnOrJoin = call.module === importModuleFabric && (call.name === 'spawn' || call.name === 'join')
    // A sync read shows nothing to others either.
    const syncRead = call.module === importModuleFabric && call.name === 'sync' && isSyncRead(call.payload)
    if (!spawnOrJoin && !syncRead) {
      await this.flushLog(thread)
      // Replaced meanwhile: its call has no effect (its worker is stopped).
      if (thread.stopped) return new Promise(() => {})
    }
    if (call.module === importModuleWasi && this.components.files !== undefined) {
      const files = thread.files ?? (await this.openFiles(thread, null))
      // Stopped meanwhile: as above (its session never opened a file).
      if (thread.stopped) return new Promise(() => {})
      return files.handle(call)
    }
    if (call.name === 'spawn') {
      const program = await this.program(process.programDigest, process.home)
      const spawned = this.spawnChild(thread, program, call.callSequence, call.payload)
      if (typeof spawned === 'number') return { result: spawned }
      if (thread.spawnsPending >= spawnsPendingMax) await thread.replicationQueue
      return { result: call.callSequence }
    }
    if (call.name === 'join') return this.join(thread, call.args[0]!)
    if (call.name === 'sync') {
      return this.sync.call(this.syncThread(thread), {
        callSequence: call.callSequence,
        payload: call.payload,
        outCapacity: call.args[0] ?? 0,
      })
    }
    return { result: -1 }
  }

  /**
   * Spawn `payload` at `callSequence`: the child's id derives from the call's op id, so a replayed
   * spawn finds the same child. The child joins a batch that is made durable (each record created
   * with its claim by the node that runs it) after what the guest saw before the spawn is on the
   * save replicas, and before the thread's next visible effect, its next save's replication, a join
   * or its end (all of which wait for the replication queue). Returns the promise that settles when
   * the child's batch is placed, or the spawn's error code for a payload or entry it refuses.
   */
  private spawnChild(
    thread: LocalThread,
    program: Program,
    callSequence: number,
    payload: Uint8Array | null,
  ): Promise<void> | number {
    const spawn = decodeSpawnPayload(payload)
    if (spawn === null) return SpawnError.tooManyThreads
    if (!exportedFunctions(program.module).has(spawn.entry)) return SpawnError.noSuchEntry
    return this.deferSpawn(thread, {
      tid: childThreadId(thread.tid, callSequence),
      entry: spawn.entry,
      arg: spawn.arg,
      group: thread.record.group,
    })
  }

  /**
   * A spawn the thread's worker answered itself (it made the same checks and returned the handle):
   * the child is deferred at once, in message order, so the thread's later calls, save and end come
   * after it as after a spawn call. A payload the worker should not have sent is logged and dropped.
   */
  private spawnAnswered(
    thread: LocalThread,
    program: Program,
    callSequence: number,
    payload: Uint8Array,
  ): Promise<void> {
    const spawned = this.spawnChild(thread, program, callSequence, payload)
    if (typeof spawned !== 'number') return spawned
    this.components.log?.(
      `runtime: thread ${thread.tid} of ${thread.pid} sent a spawn the host would refuse; dropped`,
    )
    return Promise.resolve()
  }

  /**
   * Adds a spawned child to the thread's open batch, queueing a new batch when none is open; the
   * promise settles when the batch is placed.
   */
  private deferSpawn(
    thread: LocalThread,
    spawned: Omit<SpawnBatch['children'][number], 'here'>,
  ): Promise<void> {
    // A child goes to its spawner's node when that has an idle core: no message to start it, and
    // its end notice reaches a joiner here at once.
    const here = !this.childrenElsewhere && this.hasIdleCore()
    if (here) this.startingHere++
    const child = { ...spawned, here }
    let batch = thread.openSpawns
    if (batch === null) {
      const opened: SpawnBatch = { children: [], log: [], replies: [], logBase: 0, placed: Promise.resolve() }
      batch = opened
      thread.openSpawns = opened
      thread.replicationQueue = thread.replicationQueue
        .then(() => this.placeSpawns(thread, opened))
        .catch(this.backgroundFailed)
      opened.placed = thread.replicationQueue
    }
    batch.children.push(child)
    batch.log = thread.log.slice()
    batch.replies = thread.replies.list().slice()
    batch.logBase = thread.logBase
    thread.spawnsPending++
    return batch.placed
  }

  /** Makes a batch of children durable: the log they follow first, then their records, all at once. */
  private async placeSpawns(thread: LocalThread, batch: SpawnBatch): Promise<void> {
    if (thread.openSpawns === batch) thread.openSpawns = null
    const reserved = new Set(batch.children.filter((child) => child.here))
    const release = (child: SpawnBatch['children'][number]) => {
      if (reserved.delete(child)) this.startingHere--
    }
    try {
      // A replaced incarnation's children come from the one that replaced it (the same ids).
      if (thread.stopped) return
      // What the guest saw before the spawns; values already on the replicas are not sent again.
      const sent = batch.logBase === thread.logBase && batch.log.length <= thread.logSent
      // The keys of the children that run here are read while the log travels: a read of an empty
      // key leaves this node's store proposer a promise on it, so the claim that creates the record
      // takes one round trip instead of two.
      this.threadRecords.prefetch(
        thread.pid,
        batch.children.filter((child) => child.here).map((child) => child.tid),
      )
      // A child placed on a save replica has its start carry the log; for the others, the log goes
      // to the replicas as a `log` message, and they wait until one kept it (handOver).
      const log =
        !sent || batch.replies.length > 0
          ? this.spawnLog(thread, {
              entries: batch.log,
              replies: batch.replies,
              afterSequence: batch.logBase,
            })
          : undefined
      await Promise.all(
        batch.children.map((child) =>
          this.placeThread(thread.pid, child.tid, child.entry, child.arg, child.group, {
            here: child.here,
            log,
          })
            .catch((error: Error) => {
              this.components.log?.(
                `runtime: spawn of ${child.entry} by thread ${thread.tid} failed: ${error.message}`,
              )
            })
            .finally(() => release(child)),
        ),
      )
    } finally {
      for (const child of [...reserved]) release(child)
      thread.spawnsPending -= batch.children.length
    }
  }

  /** What the sync engine may do with a thread running here. */
  private syncThread(thread: LocalThread): SyncThread {
    return {
      pid: thread.pid,
      tid: thread.tid,
      requestSave: () => thread.runner?.requestSave(),
      stopped: () => thread.stopped,
      replayed: (callSequence) => thread.replies.find(callSequence),
      logReply: (callSequence, reply) => {
        thread.repliesUnsent = true
        if (thread.replies.add(callSequence, reply)) thread.runner?.requestSave()
      },
      setGroup: async (group) => {
        this.groups.placed(thread.pid, group, thread.tid, this.self)
        if (thread.record.group === group) return
        // After any record write of a save in flight: two writes at once would look like a takeover.
        // The group holds for this incarnation's spawns even if the store cannot take the record
        // now: the next record write (a save's) carries it.
        const written = thread.replicationQueue.then(() =>
          this.writeRecord(thread, { ...thread.record, group }).catch((error: Error) => {
            this.components.log?.(
              `runtime: thread ${thread.tid} of ${thread.pid} joins group ${group}; its record will say so later: ${error.message}`,
            )
            thread.record = { ...thread.record, group }
            return false
          }),
        )
        thread.replicationQueue = written.then(() => {})
        await written
      },
    }
  }

  private async join(thread: LocalThread, handle: number): Promise<HostCallReply> {
    const tid = childThreadId(thread.tid, handle)
    const key = keys.thread(thread.pid, tid)
    const reply = (outcome: EndedOutcome): HostCallReply => {
      if (outcome.state === 'failed') return { result: JoinError.threadFailed }
      const result = outcome.result ?? new Uint8Array(0)
      return { result: result.length, payload: result }
    }
    // The child may still be in a batch of spawns that is not durable yet.
    if (thread.spawnsPending > 0) await thread.replicationQueue
    for (let polls = 0; ; polls++) {
      if (thread.stopped) return new Promise(() => {})
      // The child's node tells this node (its spawner's) when it ends; the record is read only when
      // no notice came for a while (the notice was lost, or the parent moved here since the spawn).
      const known = this.endedOutcomes.get(key)
      if (known !== undefined) return reply(known)
      // A resumed incarnation replays the joins of children an earlier one spawned, whose end
      // notices went to that one's node (lost, or elsewhere): their records are read at once, not
      // after a poll's wait each (50 such joins took 12 s).
      if (polls > 0 || thread.epoch === 1) {
        const outcome = await this.endNotice(key)
        if (outcome !== undefined) return reply(outcome)
        if (thread.stopped) continue
      }
      // A store that does not answer now is asked again at the next poll.
      const read = await this.threadRecords.get(thread.pid, tid).catch(() => undefined)
      if (read === undefined) continue
      if (read.value === null) return { result: -1 }
      const record = decodeThread(read.value)
      if (record.state === 'done') return reply({ state: 'done', result: record.result })
      if (record.state === 'failed') return { result: -3 }
      // Make sure the home watches the child (it restarts it should its node die), now and then
      // again, should the notice be lost.
      if (polls % joinPollsPerHomeNotice === 0) this.tellHome(thread.pid, tid, record.node)
    }
  }

  /** The end notice of thread `key`, or undefined when none came within a poll's wait. */
  private endNotice(key: string): Promise<EndedOutcome | undefined> {
    return new Promise((resolve) => {
      const waiters = this.joinWaiters.get(key) ?? new Set()
      this.joinWaiters.set(key, waiters)
      const wake = (ended?: EndedOutcome) => {
        waiters.delete(wake)
        if (waiters.size === 0) this.joinWaiters.delete(key)
        timer.cancel()
        resolve(ended)
      }
      const timer = this.components.timers.after(joinPollMs, () => wake())
      waiters.add(wake)
    })
  }

  private async finishThread(thread: LocalThread, outcome: ThreadOutcome): Promise<void> {
    if (thread.stopped) return
    // From here the thread's end is recorded even if its process ends meanwhile (its parent may
    // have joined it from the early notice below, and main ended): no record stays `running`.
    thread.ending = true
    await thread.outputQueue
    await this.flushLog(thread)
    // Its files are closed (committed) before anyone learns that it ended, so a join sees them.
    if (thread.files !== null)
      await thread.files
        .end()
        .catch((error: Error) =>
          this.components.log?.(
            `runtime: closing files of thread ${thread.tid} of ${thread.pid}: ${error.message}`,
          ),
        )
    const ended: Notice = {
      type: 'ended',
      pid: thread.pid,
      tid: thread.tid,
      outcome:
        outcome.kind === 'exit'
          ? { state: 'done', result: outcome.result }
          : { state: 'failed', result: null },
    }
    // The spawning node (where the parent most likely waits in `join`) learns the outcome before
    // it is durable: should this node die before the record says `done`, the thread runs again
    // from its last save and, replaying what it saw, ends the same way. The home, which ends the
    // process on the main thread's end, hears only once the record is written.
    const spawner = thread.record.spawnerNode
    const toldSpawner = spawner !== undefined && thread.tid !== '0' && !thread.stopped
    if (toldSpawner) this.notices.send(spawner, { ...ended, early: true })
    await thread.replicationQueue
    const done: ThreadRecord =
      outcome.kind === 'exit'
        ? {
            ...thread.record,
            state: 'done',
            result: outcome.result,
            exitCode: outcome.code,
            saveReplicas: [],
          }
        : { ...thread.record, state: 'failed', error: outcome.error.message, saveReplicas: [] }
    // A store that does not answer is asked again; a cas that fails because the first attempt did
    // apply finds this incarnation's end in the record. It is written even if this incarnation was
    // stopped meanwhile (its process ended, or this node lost its lease in a stall): the thread did
    // end so (its spawner may have joined it already), and the cas on the version it claimed fails
    // if another incarnation took it over.
    let written = false
    for (let attempt = 0; attempt < endWriteAttemptsMax; attempt++) {
      const outcome = await this.endWrites
        .cas(thread.version, encodeRecord(done), done)
        .catch(() => undefined)
      if (outcome !== undefined) {
        const current = outcome.ok || outcome.value === null ? null : decodeThread(outcome.value)
        written = outcome.ok || (current?.epoch === thread.epoch && current.state === done.state)
        if (!written) this.components.log?.(`runtime: thread ${thread.tid} of ${thread.pid} was taken over`)
        break
      }
      await this.pause(storeRetryMs)
    }
    this.local.delete(`${thread.pid}/${thread.tid}`)
    thread.stopped = true
    this.groups.threadEnded(thread.pid, thread.tid)
    if (!written) return
    this.sync.threadEnded(thread.pid, thread.tid)
    const process = await this.processRecord(thread.pid).catch(() => undefined)
    if (process === undefined) return
    // The home, and the spawning node if not told yet (a parent that moved finds out by polling).
    this.notices.send(process.home, ended)
    if (spawner !== undefined && !toldSpawner && spawner !== process.home) this.notices.send(spawner, ended)
    for (const node of thread.replicas)
      this.notices.send(node, { type: 'drop-saves', pid: thread.pid, tid: thread.tid })
  }

  private stopThread(thread: LocalThread, options: { processEnded?: boolean } = {}): void {
    if (thread.stopped) return
    thread.stopped = true
    thread.processEnded = options.processEnded === true
    this.local.delete(`${thread.pid}/${thread.tid}`)
    if (thread.ending && thread.processEnded) {
      // It ran to its end, which finishThread records (its files are closed there) though the
      // process ended meanwhile.
      this.sync.threadStopped(thread.pid, thread.tid)
      return
    }
    thread.runner?.kill('thread stopped on this node')
    if (thread.processEnded) void this.recordStoppedByProcessEnd(thread).catch(this.backgroundFailed)
    // Its process ended: its files are closed as at exit. Otherwise another incarnation may go on
    // with them, and this one's writes since its save must not land after that one's.
    if (options.processEnded === true) void thread.files?.end().catch(() => {})
    else this.abandonFiles(thread)
    this.sync.threadStopped(thread.pid, thread.tid)
  }

  /**
   * A thread stopped because its process ended (killed, or main returned without joining it): its
   * record says so (`failed`), so neither `ps` nor the store shows it `running` after the end. A cas on
   * the version this incarnation wrote: should another have taken it over, that one is stopped too.
   */
  private async recordStoppedByProcessEnd(thread: LocalThread): Promise<void> {
    await thread.replicationQueue.catch(() => {})
    await this.writeStoppedRecord(thread.pid, thread.tid, thread.version, thread.record)
  }

  /** Records a thread at `version` as stopped because its process ended (a cas: a later writer wins). */
  private async writeStoppedRecord(
    pid: string,
    tid: string,
    version: number,
    record: ThreadRecord,
  ): Promise<void> {
    const stopped: ThreadRecord = {
      ...record,
      state: 'failed',
      error: 'stopped: its process ended',
      saveReplicas: [],
    }
    for (let attempt = 0; attempt < stoppedWriteAttemptsMax; attempt++) {
      const written = await this.threadRecords
        .cas(pid, tid, version, encodeRecord(stopped))
        .catch(() => undefined)
      if (written !== undefined) return
      await this.pause(storeRetryMs)
    }
  }

  /** Drops a stopped incarnation's uncommitted file changes; a later incarnation here waits for it. */
  private abandonFiles(thread: LocalThread): void {
    if (thread.files === null) return
    const key = `${thread.pid}/${thread.tid}`
    const abandoning = thread.files.abandon().catch(() => {})
    this.filesAbandoning.set(key, abandoning)
    void abandoning.then(() => {
      if (this.filesAbandoning.get(key) === abandoning) this.filesAbandoning.delete(key)
    })
  }

  private threadEnded(pid: string, tid: string, outcome?: EndedOutcome, early = false): void {
    const key = keys.thread(pid, tid)
    if (outcome !== undefined) {
      this.endedOutcomes.set(key, outcome)
      if (this.endedOutcomes.size > endedOutcomesMax)
        this.endedOutcomes.delete(this.endedOutcomes.keys().next().value!)
      // The parent, if it runs here, may join the child in its worker without asking this node
      // (unless it waits for it here already: the answer goes with the reply).
      const parent = parentThreadId(tid)
      const runner = parent === null ? undefined : this.local.get(`${pid}/${parent}`)?.runner
      if (runner !== undefined && runner !== null && !this.joinWaiters.has(key))
        runner.childEnded(Number(tid.slice(parent!.length + 1)), {
          failed: outcome.state === 'failed',
          result: outcome.result,
        })
    }
    for (const wake of [...(this.joinWaiters.get(key) ?? [])]) wake(outcome)
    this.groups.threadEnded(pid, tid)
    if (!early) this.homeDuties.threadEnded(pid, tid)
  }

  /**
   * From now on, starts of the process's threads are refused here (its cached record is stale), and
   * its program is no longer in use by it. A `stop` that never reaches this node leaves the process
   * using its program here: that costs one program held per lost stop, never correctness.
   */
  private processEnded(pid: string): void {
    this.endedProcesses.add(pid)
    if (this.endedProcesses.size > endedProcessesMax)
      this.endedProcesses.delete(this.endedProcesses.values().next().value!)
    this.processes.delete(pid)
    this.programs.release(pid)
  }

  /**
   * The process ended: its threads here stop, and what this node holds for it goes (its program's
   * use, saves and logs kept for its threads, its sync keys, join outcomes). On its home's `stop`, or
   * when `checkProcessesEnded` finds its record ended.
   */
  private stopProcessHere(pid: string): void {
    this.processEnded(pid)
    this.homeDuties.processStopped(pid)
    for (const thread of [...this.local.values()])
      if (thread.pid === pid) this.stopThread(thread, { processEnded: true })
    this.replicas.dropProcess(pid)
    void this.sync.processEnded(pid)
    this.groups.processEnded(pid)
    for (const key of [...this.endedOutcomes.keys()])
      if (key.startsWith(keys.thread(pid, ''))) this.endedOutcomes.delete(key)
  }

  /**
   * A `stop` that never reached this node (lost, or sent while this node was cut off) would leave
   * the process's threads running here and its program, saves and sync keys held for good: every
   * `processEndCheckEverySweeps` home sweeps, the record of each process this node holds anything
   * for (and is not home of) is read, and a process found ended is stopped here as on its `stop`.
   */
  private async checkProcessesEnded(): Promise<void> {
    const held = new Set<string>([
      ...this.processes.keys(),
      ...[...this.local.values()].map((thread) => thread.pid),
      ...this.replicas.processIds(),
      ...this.sync.processIds(),
    ])
    for (const pid of held) {
      if (this.endedProcesses.has(pid) || this.homeDuties.isHome(pid) || this.stopped) continue
      const read = await this.components.store.get(keys.process(pid)).catch(() => undefined)
      if (read === undefined) continue // the next check asks again
      if (read.value !== null && decodeProcess(read.value).state === 'running') continue
      this.components.log?.(
        `runtime: process ${pid} ended without a stop reaching this node; stopping it here`,
      )
      this.stopProcessHere(pid)
    }
  }

  /** Places a thread this node stopped back on this node, unless it was moved meanwhile. */
  private async reclaim(thread: LocalThread): Promise<void> {
    const read = await this.threadRecords.get(thread.pid, thread.tid).catch(() => undefined)
    if (read?.value == null) return
    const record = decodeThread(read.value)
    // Still ours if nobody claimed it since (same node, same epoch), whatever we wrote meanwhile.
    if (record.node !== this.self || record.epoch !== thread.epoch || record.state !== 'running') return
    await this.handOver(thread.pid, thread.tid, read.version, record, { prefer: this.self })
  }

  // --- this node's lease ----------------------------------------------------------------------

  private async acquireOwnLease(): Promise<void> {
    for (;;) {
      const taken = await this.components.store
        .acquire(keys.node(this.self), this.self, this.leaseTtlMs)
        .catch(() => undefined) // a store timeout: try again
      if (this.stopped) return
      if (taken?.ok) {
        this.leaseToken = taken.token
        this.leaseHeld = true
        return
      }
      await this.pause(this.leaseTtlMs / 2)
    }
  }

  private async renewOwnLease(): Promise<void> {
    if (this.stopped || !this.leaseHeld) return
    const renewed = await this.components.store
      .renew(keys.node(this.self), this.self, this.leaseToken)
      .catch(() => undefined)
    if (renewed?.ok) {
      this.renewalsUnanswered = 0
      return
    }
    if (renewed === undefined && ++this.renewalsUnanswered < 3) return
    if (renewed !== undefined && renewed.holder === this.self && renewed.token === this.leaseToken) {
      // The lease outlived its TTL (this node stalled) but nobody took it: nothing of ours moved,
      // so acquiring it again (same token) keeps our threads.
      const again = await this.components.store
        .acquire(keys.node(this.self), this.self, this.leaseTtlMs)
        .catch(() => undefined)
      if (again?.ok && again.token === this.leaseToken) {
        this.renewalsUnanswered = 0
        return
      }
    }
    // Someone took our lease (we were declared dead), or we could not renew it for a whole TTL:
    // either way our threads may run elsewhere now, so this node must not run them on.
    this.leaseHeld = false
    this.renewalsUnanswered = 0
    this.components.log?.('runtime: this node lost its lease; stopping its threads')
    const orphans = [...this.local.values()]
    for (const thread of orphans) this.stopThread(thread)
    await this.acquireOwnLease()
    // Threads that nobody moved while we had no lease are ours to resume (from their saves).
    for (const thread of orphans) void this.reclaim(thread).catch(this.backgroundFailed)
  }
}

export function createNodeRuntime(
  components: NodeRuntimeComponents,
  options: NodeRuntimeOptions = {},
): NodeRuntime {
  return new NodeRuntime(components, options)
}
