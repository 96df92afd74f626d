/**
 * WASI preview 1 file calls inside the worker: marshals guest memory into host calls that the
 * embedding's `FileSystem` answers (host/files.ts), and writes the replies back into guest memory.
 * Every call here may block: the guest is suspended until the reply comes.
 */

import type { FileCalls } from './wasi.ts'

export interface FileCallBridge {
  memory(): WebAssembly.Memory
  /** Sends a call to the embedding; the reply's `result` is a WASI errno, `payload` any data. */
  callHost(
    name: string,
    args: number[],
    payload: Uint8Array | null,
  ): Promise<{ result: number; payload: Uint8Array | null }>
}

export function createFileCalls(_bridge: FileCallBridge): FileCalls {
  return {}
}
