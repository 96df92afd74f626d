/** Node adapter: a host directory mapped into guests, answering WASI file calls. */

import { GuestCallError } from './errors.ts'
import type { GuestFileSystem } from './files.ts'

export interface DirectoryMapping {
  /** Directory on this machine. */
  hostDirectory: string
  /** Where guests see it (their preopened directory). */
  guestDirectory: string
}

export function nodeDirectoryFileSystem(_mapping: DirectoryMapping): GuestFileSystem {
  return {
    async handle() {
      throw new GuestCallError('mapped directories are not implemented yet')
    },
  }
}
