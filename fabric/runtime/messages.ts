/** Messages of the process runtime between nodes (protocol `/fabric/runtime/1`, CBOR on the wire). */

export type RuntimeMessage =
  /** Claim and run a thread (see `StartRequest`). */
  | StartRequest
  /**
   * Several starts to one node (start-batches.ts): answered by `started` with a reply to each, in
   * order. The spawners' logs they carry travel once each, in `logs`; a start names its own by
   * `logIndex` (and carries no `log` of its own).
   */
  | { type: 'starts'; starts: StartRequest[]; logs?: StartLog[] }
  /** Keep this context save of a thread (a replica in memory). */
  | {
      type: 'save'
      pid: string
      tid: string
      epoch: number
      sequence: number
      baseSequence: number | null
      bytes: Uint8Array
    }
  /**
   * Keep a thread's replay log: values it saw (clock readings) since save `afterSequence` (0: since
   * its start), as [call sequence number, decimal value], and `sync` replies no register records
   * (primitives/reply-log.ts) as [call sequence number, result, payload]. Sent before an effect that
   * may depend on them becomes visible.
   */
  | {
      type: 'log'
      pid: string
      tid: string
      epoch: number
      afterSequence: number
      entries: Array<[number, string]>
      replies?: Array<[number, number, Uint8Array | null]>
      /**
       * The entries continue the log held for the same incarnation and save from its entry number
       * `from` on (absent: they are the whole log). A receiver that holds fewer refuses (`log gap`).
       */
      from?: number
    }
  /** Send the chain of saves held for a thread (full save first), and the log that follows it. */
  | { type: 'fetch-saves'; pid: string; tid: string }
  /** The thread ended: drop its saves. */
  | { type: 'drop-saves'; pid: string; tid: string }
  /** The program's module, by digest. */
  | { type: 'fetch-program'; digest: string }
  /**
   * From the home of a new process: fetch this program from the sender and compile it now, so the
   * first thread placed on the receiver does not wait for it.
   */
  | { type: 'load-program'; digest: string }
  /** Output of a thread, to the process's home node. `callSequence` makes it exactly-once. */
  | { type: 'output'; pid: string; tid: string; fd: number; callSequence: number; bytes: Uint8Array }
  /** A thread was placed on `node` (to the home node, which watches its process's threads). */
  | { type: 'placed'; pid: string; tid: string; node: string }
  /**
   * A thread ended (to the home node and to the node that spawned it, which may be joining it).
   * `early`: sent before the record says so (for joins only; the home waits for the durable one).
   */
  | { type: 'ended'; pid: string; tid: string; outcome?: EndedOutcome; early?: boolean }
  /**
   * Several notices (`placed`, `ended`, `drop-saves`) to one node in one message: those a node
   * produces while its previous notices to that node are on their way travel together.
   */
  | { type: 'notices'; notices: Notice[] }
  /** Stop the threads of a process (it ended) on the receiver. */
  | { type: 'stop'; pid: string }
  /** From a submitter: run this program; the receiver becomes its home. */
  | { type: 'submit'; program: Uint8Array; args: string[]; env: string[] }
  /** From a submitter: output from chunk `from` on, waiting up to `waitMs` for some. */
  | { type: 'attach'; pid: string; from: number; waitMs: number }
  /** From a submitter or operator: end a process. */
  | { type: 'kill'; pid: string }
  /**
   * From an operator (to any node): the processes of the cluster, which the receiver gathers from
   * every live node. `homed` (between nodes): only the processes homed on the receiver, each thread
   * with what its node says; `local` (from a home): only the threads running on the receiver.
   */
  | { type: 'ps'; local?: boolean; homed?: boolean }
  /** A coordination object changed: calls waiting on it here should look again (primitives/engine.ts). */
  | { type: 'sync-wake'; key: string }
  /**
   * From a process's home to its home replicas: what a new home needs should this one be lost. The
   * first copy a replica gets (and any copy after one it missed) carries the process record, the
   * program and the replicas, with every entry so far; later ones only the new entries, in order.
   */
  | {
      type: 'home-copy'
      pid: string
      record?: Uint8Array
      program?: Uint8Array
      replicas?: string[]
      entries: HomeCopyEntry[]
    }
  /** A process's home was lost and `home` took over: its output and notices go there now. */
  | { type: 'home-moved'; pid: string; home: string }
  /**
   * From a home replica about to take a process over: the output chunks from index `from` on that
   * the receiver's copy holds (another replica may have got more before the home was lost).
   */
  | { type: 'fetch-home-copy'; pid: string; from: number }

/**
 * Claim and run a thread: the receiver writes `record` (the thread's record as read at `version`,
 * or a new thread's at version 0) back with itself as node, state `running` and epoch + 1, by one
 * compare-and-swap on `version`, and runs it only if that succeeds.
 *
 * A start to one of the spawner's save replicas may carry the spawner's replay log that must be
 * durable before the child's record exists (`log`, or in a `starts` message the log at `logIndex`):
 * the receiver keeps it first, as a `log` message, and refuses the start
 * (`startLogRefusedReason`) without claiming when it does not.
 */
export type StartRequest = {
  type: 'start'
  pid: string
  tid: string
  version: number
  record: Uint8Array
  log?: StartLog
  logIndex?: number
}

/** A spawner's replay log as a start carries it: the fields of a `log` message (of the same process). */
export type StartLog = Omit<Extract<RuntimeMessage, { type: 'log' }>, 'type'>

/** A message that only informs its receiver: nothing waits for its reply but the next notices. */
export type Notice = Extract<RuntimeMessage, { type: 'placed' | 'ended' | 'drop-saves' }>

export const noticeTypes: ReadonlySet<string> = new Set(['placed', 'ended', 'drop-saves'])

/**
 * One thing a home copies to its replicas: an output chunk (by its index), a placement, an end; a
 * whole copy also lists the last output call shown per thread and fd (`shown`) that the home keeps.
 */
export type HomeCopyEntry =
  | { kind: 'output'; index: number; tid: string; fd: number; callSequence: number; bytes: Uint8Array }
  | { kind: 'placed'; tid: string; node: string }
  | { kind: 'ended'; tid: string }
  | { kind: 'shown'; tid: string; fd: number; callSequence: number }

export type RuntimeReply =
  | { type: 'ok' }
  | { type: 'refused'; reason: string }
  | {
      type: 'saves'
      chain: Uint8Array[]
      epoch: number
      sequences?: number[]
      log?: {
        epoch: number
        afterSequence: number
        entries: Array<[number, string]>
        replies?: Array<[number, number, Uint8Array | null]>
      }
    }
  /** The replies to a `starts` message, one per start, in order. */
  | { type: 'started'; replies: RuntimeReply[] }
  /** A `start` found the record changed: another claim won; it is `state` on `node`. */
  | { type: 'claimed'; node: string; state: string }
  | { type: 'program'; bytes: Uint8Array }
  | { type: 'submitted'; pid: string }
  | {
      type: 'output'
      chunks: Array<{ tid: string; fd: number; bytes: Uint8Array }>
      next: number
      result: { exitCode: number; error: string | null } | null
    }
  | { type: 'processes'; processes: ProcessSummary[] }
  /** Output chunks of a home copy, in order (`fetch-home-copy`). */
  | { type: 'home-copy-output'; entries: Array<Extract<HomeCopyEntry, { kind: 'output' }>> }

/** How a thread ended, as its record says (so a joiner need not read the record). */
export interface EndedOutcome {
  state: 'done' | 'failed'
  result: Uint8Array | null
}

export interface ProcessSummary {
  pid: string
  home: string
  state: string
  threads: ThreadSummary[]
}

export interface ThreadSummary {
  tid: string
  node: string
  /**
   * `running here` or `starting here` (claimed, not running yet, on the node that answered),
   * `running`, or `starting` (not running yet on `node`); of an ended process, its record's state.
   */
  state: string
  /** Wall-clock time of the latest save, ms since the epoch (as the running node reads it). */
  lastSaveMs: number | null
  /** The incarnation: raised by each claim. */
  epoch?: number
  /** The latest save: its sequence number, its age when the running node answered, its size. */
  lastSave?: { sequence: number; ageMs: number | null; bytes: number } | null
}

export const runtimeMessageTypes: ReadonlySet<string> = new Set([
  'submit',
  'attach',
  'kill',
  'ps',
  'start',
  'starts',
  'save',
  'log',
  'fetch-saves',
  'drop-saves',
  'fetch-program',
  'load-program',
  'output',
  'placed',
  'ended',
  'notices',
  'stop',
  'sync-wake',
  'home-copy',
  'home-moved',
  'fetch-home-copy',
])
