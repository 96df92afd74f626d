/**
 * A process's home lost mid-run, on real `fabric node` processes: one of the home's replicas takes
 * the process over from its copy of the output, and the submitter, following it through another
 * node, gets the whole output of an undisturbed run and the exit code.
 */

import { afterEach, describe, expect, test } from 'vitest'
import { type LocalCluster, startLocalCluster } from '../fabric/cli/local-cluster.ts'
import { runOnCluster } from '../fabric/runtime/submit-client.ts'
import { guestBytes } from './support/guests.ts'

const waves = guestBytes('test/fixtures/as/waves.ts')
const wavesArgs = ['waves', '16', '4']

describe('a process whose home is lost, on real node processes', () => {
  let cluster: LocalCluster | undefined
  afterEach(async () => {
    await cluster?.stop()
    cluster = undefined
  })

  test('the home SIGKILLed mid-run: a home replica takes the process over and the submitter gets the whole output', async () => {
    const lines: Array<{ node: number; text: string }> = []
    cluster = await startLocalCluster({ nodeCount: 4, log: (node, text) => lines.push({ node, text }) })
    const nodes = cluster.nodes
    let reference = ''
    const undisturbed = await runOnCluster({
      node: nodes[0]!.address,
      program: waves,
      args: wavesArgs,
      onOutput: (chunk) => {
        reference += new TextDecoder().decode(chunk.bytes)
      },
    })
    expect(undisturbed).toEqual({ exitCode: 0, error: null })

    // Node 1 is the home; the submitter knows the other nodes too.
    const home = nodes[1]!
    let output = ''
    let pid = ''
    let killedAtLine = 0
    const result = await runOnCluster({
      node: home.address,
      otherNodes: [nodes[0]!.address, nodes[2]!.address, nodes[3]!.address],
      program: waves,
      args: wavesArgs,
      onSubmitted: (submitted) => {
        pid = submitted
      },
      onOutput: (chunk) => {
        output += new TextDecoder().decode(chunk.bytes)
        const seen = output.split('\n').length - 1
        if (killedAtLine === 0 && seen >= 3) {
          killedAtLine = seen
          cluster!.kill(home.index)
        }
      },
    })
    const takeover = lines.find((line) => line.text.includes(`took over as home of process ${pid}`))
    console.log(`runtime: home killed after ${killedAtLine} lines; ${takeover?.text ?? 'no takeover logged'}`)
    expect(killedAtLine).toBeGreaterThan(0)
    expect(result).toEqual({ exitCode: 0, error: null })
    expect(output).toBe(reference)
    expect(takeover).toBeDefined()
  }, 120_000)
})
