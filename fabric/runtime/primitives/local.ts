/**
 * Guest coordination for a process that runs on one machine (`fabric run --local`): a sync engine
 * over an in-memory store, served through LocalProcess's hooks. The same programs run here as on a
 * cluster; waiters are all local, so wake notices never leave the engine.
 *
 *   const process = new LocalProcess({ pool, program, ...localSyncOptions('local') })
 */

import type { ProcessOptions } from '../../../host/local-process.ts'
import { systemClock, systemTimers } from '../../platform.ts'
import { MemoryStore } from '../memory-store.ts'
import { createSyncEngine } from './engine.ts'

export function localSyncOptions(pid: string): Pick<ProcessOptions, 'onSave' | 'serveCall'> {
  const sync = createSyncEngine({
    store: new MemoryStore(),
    self: 'local',
    clock: systemClock,
    timers: systemTimers,
    notify: () => {},
  })
  return {
    onSave: (threadId, save) => sync.saveCommitted(pid, `${threadId}`, save.summary.callSequence),
    serveCall: (threadId, call, thread) =>
      call.name === 'sync'
        ? sync.call(
            {
              pid,
              tid: `${threadId}`,
              requestSave: thread.requestSave,
              stopped: thread.stopped,
              setGroup: async () => {},
            },
            { callSequence: call.callSequence, payload: call.payload, outCapacity: call.args[0] ?? 0 },
          )
        : Promise.resolve({ result: -1 }),
  }
}
