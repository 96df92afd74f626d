/**
 * The file system a guest sees through WASI, as the embedding provides it: for now a directory of
 * the host that the user maps explicitly (host/files-node.ts); later the distributed file system.
 */

import type { HostCall, HostCallReply } from './thread-runner.ts'

export interface GuestFileSystem {
  /** Guest names of the preopened directories, in fd order from 3. */
  readonly preopens: readonly string[]
  /** Answers one WASI file call from a thread (see host/wasi-files.ts for the encoding). */
  handle(threadId: number, call: HostCall): Promise<HostCallReply>
  /** The thread ended for good (it will not be restored): release what it left open. */
  threadEnded?(threadId: number): void
}
