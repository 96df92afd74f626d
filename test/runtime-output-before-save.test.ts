// Issue 4 in process: output a thread wrote before a context save is shown even when its node dies
// after the save while that output is still on its way to the home (a restore from the save does
// not write it again, so the save must not become restorable before the output is shown).
import { afterEach, expect, test } from 'vitest'
import { guestBytes } from './support/guests.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

const writerCount = 6
/** How long each writer computes after its save: it still runs when its node dies. */
const computeMs = 1500
/** How long output from the victim is held before the victim is killed: saves replicate well within it. */
const holdMs = 500

let cluster: InProcessCluster
afterEach(() => cluster?.close())

test('output written before a save is shown when the node dies after the save, with that output not yet at the home', async () => {
  cluster = new InProcessCluster()
  for (const id of ['node-a', 'node-b', 'node-c', 'node-d']) await cluster.addNode(id)
  const home = cluster.runtime('node-a')
  let victim: string | null = null
  let savesFromVictim = 0
  // The first node other than the home that sends output becomes the victim: its output does not
  // reach the home (it is retried, as after a lost message), and it dies a little later.
  cluster.intercept = (from, _to, message) => {
    if (from === 'node-a') return undefined
    if (message.type === 'save' && from === victim) savesFromVictim++
    if (message.type !== 'output') return undefined
    if (victim === null) {
      victim = from
      setTimeout(() => cluster.kill(from), holdMs)
    }
    if (from === victim) throw new Error('output held back by the test')
    return undefined
  }
  const process = await home.submit(guestBytes('test/fixtures/as/print-then-save.ts'), {
    args: ['print-then-save', String(writerCount), String(computeMs)],
    seed: 1,
    saveIntervalMs: 600_000,
  })
  let output = ''
  process.onOutput((chunk) => {
    output += new TextDecoder().decode(chunk.bytes)
  })
  expect(await process.result).toEqual({ exitCode: 0, error: null })
  expect(victim).not.toBeNull()
  const lines = output.trim().split('\n').sort()
  const expected = ['joined']
  for (let index = 0; index < writerCount; index++)
    expected.push(`before save ${index}`, `after save ${index}`)
  expect(lines).toEqual(expected.sort())
  // The victim's saves after the held output were not sent while it was held.
  expect(savesFromVictim).toBe(0)
}, 120_000)
