/** Messages of the process runtime between nodes (protocol `/fabric/runtime/1`, CBOR on the wire). */

export type RuntimeMessage =
  /** Claim and run a thread that was placed on the receiver. */
  | { type: 'start'; pid: string; tid: string }
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
  /** Send the chain of saves held for a thread (full save first). */
  | { type: 'fetch-saves'; pid: string; tid: string }
  /** The thread ended: drop its saves. */
  | { type: 'drop-saves'; pid: string; tid: string }
  /** The program's module, by digest. */
  | { type: 'fetch-program'; digest: string }
  /** Output of a thread, to the process's home node. `callSequence` makes it exactly-once. */
  | { type: 'output'; pid: string; tid: string; fd: number; callSequence: number; bytes: Uint8Array }
  /** A thread was placed on `node` (to the home node, which watches its process's threads). */
  | { type: 'placed'; pid: string; tid: string; node: string }
  /** A thread ended (to the home node and to the node that spawned it, which may be joining it). */
  | { type: 'ended'; pid: string; tid: string; outcome?: EndedOutcome }
  /** Stop the threads of a process (it ended) on the receiver. */
  | { type: 'stop'; pid: string }
  /** From a submitter: run this program; the receiver becomes its home. */
  | { type: 'submit'; program: Uint8Array; args: string[]; env: string[] }
  /** From a submitter: output from chunk `from` on, waiting up to `waitMs` for some. */
  | { type: 'attach'; pid: string; from: number; waitMs: number }
  /** From a submitter or operator: end a process. */
  | { type: 'kill'; pid: string }
  /** From an operator: the processes and threads this node knows of. */
  | { type: 'ps' }
  /** A coordination object changed: calls waiting on it here should look again (primitives/engine.ts). */
  | { type: 'sync-wake'; key: string }

export type RuntimeReply =
  | { type: 'ok' }
  | { type: 'refused'; reason: string }
  | { type: 'saves'; chain: Uint8Array[]; epoch: number }
  | { type: 'program'; bytes: Uint8Array }
  | { type: 'submitted'; pid: string }
  | {
      type: 'output'
      chunks: Array<{ tid: string; fd: number; bytes: Uint8Array }>
      next: number
      result: { exitCode: number; error: string | null } | null
    }
  | { type: 'processes'; processes: ProcessSummary[] }

/** How a thread ended, as its record says (so a joiner need not read the record). */
export interface EndedOutcome {
  state: 'done' | 'failed'
  result: Uint8Array | null
}

export interface ProcessSummary {
  pid: string
  home: string
  state: string
  threads: Array<{ tid: string; node: string; state: string; lastSaveMs: number | null }>
}

export const runtimeMessageTypes: ReadonlySet<string> = new Set([
  'submit',
  'attach',
  'kill',
  'ps',
  'start',
  'save',
  'fetch-saves',
  'drop-saves',
  'fetch-program',
  'output',
  'placed',
  'ended',
  'stop',
  'sync-wake',
])
