// Issue 4 (bench): a child goes to its spawner's node when that has an idle core, so a sequential
// spawn + join measures starts on the spawner's node. With `childrenElsewhere` every child runs on
// another node: the bench's remote thread start measures that.
import { describe, expect, test } from 'vitest'
import { decodeThread } from '../fabric/runtime/records.ts'
import { guestBytes } from './support/guests.ts'
import { InProcessCluster } from './support/runtime-cluster.ts'

const childCount = 24

/** Runs `childCount` tiny threads one at a time; returns, per child claimed, whether it ran on its spawner's node. */
async function childPlacements(childrenElsewhere: boolean): Promise<boolean[]> {
  const cluster = new InProcessCluster()
  try {
    for (const id of ['node-a', 'node-b', 'node-c'])
      await cluster.addNode(id, { runtime: { childrenElsewhere } })
    const onSpawnerNode: boolean[] = []
    const entryCas = cluster.store.entryCas.bind(cluster.store)
    cluster.store.entryCas = async (key, entry, expectedVersion, value) => {
      const result = await entryCas(key, entry, expectedVersion, value)
      // A claim that creates a child's record names the node that runs it and the one that spawned it.
      const record = value === null ? null : decodeThread(value)
      if (result.ok && expectedVersion === 0 && record !== null && record.tid !== '0')
        onSpawnerNode.push(record.node === record.spawnerNode)
      return result
    }
    const process = await cluster.runtime('node-a').submit(guestBytes('test/fixtures/as/tiny-threads.ts'), {
      args: ['tiny-threads', String(childCount), '1'],
    })
    let output = ''
    process.onOutput((chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    })
    expect(await process.result).toEqual({ exitCode: 0, error: null })
    expect(output).toBe(`joined ${childCount}\n`)
    return onSpawnerNode
  } finally {
    cluster.close()
  }
}

describe('children placed elsewhere', () => {
  test('by default a sequential spawn + join runs children on the spawner node (when it has an idle core)', async () => {
    const placements = await childPlacements(false)
    expect(placements).toHaveLength(childCount)
    expect(placements.some((here) => here)).toBe(true)
  })

  test('with childrenElsewhere no child runs on its spawner node', async () => {
    const placements = await childPlacements(true)
    expect(placements).toHaveLength(childCount)
    expect(placements.every((here) => !here)).toBe(true)
  })
})
