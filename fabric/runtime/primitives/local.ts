/**
 * Guest coordination for a process that runs on one machine (`fabric run --local`): a sync engine
 * over an in-memory store, served through LocalProcess's hooks. The same programs run here as on a
 * cluster; waiters are all local, so wake notices never leave the engine. Each thread's log of
 * replies (reply-log.ts) lives here too: a worker restarted from a save in this process replays it.
 *
 *   const process = new LocalProcess({ pool, program, ...localSyncOptions('local') })
 */

import type { ProcessOptions } from '../../../host/local-process.ts'
import { systemClock, systemTimers } from '../../platform.ts'
import { MemoryStore } from '../memory-store.ts'
import { createSyncEngine } from './engine.ts'
import { ReplyLog } from './reply-log.ts'

export function localSyncOptions(pid: string): Pick<ProcessOptions, 'onSave' | 'serveCall'> {
  const sync = createSyncEngine({
    store: new MemoryStore(),
    self: 'local',
    clock: systemClock,
    timers: systemTimers,
    notify: () => {},
  })
  const logs = new Map<number, ReplyLog>()
  const logOf = (threadId: number) => {
    let log = logs.get(threadId)
    if (log === undefined) {
      log = new ReplyLog()
      logs.set(threadId, log)
    }
    return log
  }
  return {
    onSave: (threadId, save) => {
      logOf(threadId).saved(save.summary.callSequence)
      sync.saveCommitted(pid, `${threadId}`, save.summary.callSequence)
    },
    serveCall: (threadId, call, thread) =>
      call.name === 'sync'
        ? sync.call(
            {
              pid,
              tid: `${threadId}`,
              requestSave: thread.requestSave,
              stopped: thread.stopped,
              setGroup: async () => {},
              replayed: (callSequence) => logs.get(threadId)?.find(callSequence),
              logReply: (callSequence, reply) => {
                if (logOf(threadId).add(callSequence, reply)) thread.requestSave()
              },
            },
            { callSequence: call.callSequence, payload: call.payload, outCapacity: call.args[0] ?? 0 },
          )
        : Promise.resolve({ result: -1 }),
  }
}
