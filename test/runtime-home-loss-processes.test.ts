/**
 * A process's home lost mid-run, on real `fabric node` processes: one of the home's replicas takes
 * the process over from its copy of the output, and the submitter, following it through another
 * node, gets the whole output of an undisturbed run and the exit code. Then twice (the home, then
 * the replica that took it over), with `fabric ps` through a node that is not the home; and the
 * `fabric ps` and `fabric kill` commands given the lost home and another node.
 */

import { execFile } from 'node:child_process'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { afterEach, describe, expect, test } from 'vitest'
import { type LocalCluster, type LocalNode, startLocalCluster } from '../fabric/cli/local-cluster.ts'
import { listProcesses, runOnCluster } from '../fabric/runtime/submit-client.ts'
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
    const reference = await undisturbedOutput(nodes[0]!, wavesArgs)

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

  test('the home SIGKILLed, then the replica that took it over: the process survives both, the submitter follows, ps through any node shows the current home', async () => {
    const lines: Array<{ node: number; text: string }> = []
    // Five nodes: the store (five replicas per shard) keeps a majority after losing two.
    cluster = await startLocalCluster({ nodeCount: 5, log: (node, text) => lines.push({ node, text }) })
    const nodes = cluster.nodes
    const args = ['waves', '24', '3']
    const reference = await undisturbedOutput(nodes[0]!, args)

    const home = nodes[1]!
    let output = ''
    let pid = ''
    let ended = false
    const running = runOnCluster({
      node: home.address,
      otherNodes: nodes.filter((node) => node !== home).map((node) => node.address),
      program: waves,
      args,
      onSubmitted: (submitted) => {
        pid = submitted
      },
      onOutput: (chunk) => {
        output += new TextDecoder().decode(chunk.bytes)
      },
    }).finally(() => {
      ended = true
    })
    const seen = () => output.split('\n').length - 1
    const until = async (condition: () => boolean, what: string) => {
      while (!condition()) {
        if (ended) throw new Error(`the process ended before ${what}`)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    }
    /** The node that logged taking the process over from `from`. */
    const takenOverFrom = (from: string) =>
      lines.find((line) => line.text.includes(`took over as home of process ${pid} from ${from}`))

    await until(() => seen() >= 3, 'the first kill')
    const firstKillAt = seen()
    cluster.kill(home.index)
    await until(() => takenOverFrom(home.peerId) !== undefined, 'the first take-over')
    const first = nodes[takenOverFrom(home.peerId)!.node]!

    // `fabric ps` through a node that is neither home: the process, running, at its new home.
    const via = nodes.find((node) => node.alive && node !== first)!
    const listed = (await listProcesses({ node: via.address })).find((entry) => entry.pid === pid)
    expect(listed?.home).toBe(first.peerId)
    expect(listed?.state).toBe('running')

    await until(() => seen() >= firstKillAt + 2, 'the second kill')
    const secondKillAt = seen()
    cluster.kill(first.index)
    const result = await running
    const second = takenOverFrom(first.peerId)
    console.log(
      `runtime: home killed after ${firstKillAt} lines, taken over by node ${first.index}, killed after ${secondKillAt} lines, taken over by node ${second?.node ?? 'none'}`,
    )
    expect(result).toEqual({ exitCode: 0, error: null })
    expect(output).toBe(reference)
    expect(second).toBeDefined()
    expect(secondKillAt).toBeLessThan(reference.split('\n').length - 1)

    // After the end, `ps` through any live node: the process ended, and, once the last threads'
    // end records (which their joiners did not wait for) are written, none left running.
    const live = nodes.find((node) => node.alive)!
    let after: Awaited<ReturnType<typeof listProcesses>>[number] | undefined
    for (const startedMs = Date.now(); Date.now() - startedMs < 10_000; ) {
      after = (await listProcesses({ node: live.address })).find((entry) => entry.pid === pid)
      if (after?.threads.every((thread) => !thread.state.startsWith('running'))) break
      await new Promise((resolve) => setTimeout(resolve, 250))
    }
    expect(after?.state).toBe('ended')
    expect(after?.threads.filter((thread) => thread.state.startsWith('running'))).toEqual([])
  }, 180_000)

  test('after a home loss, `fabric ps` and `fabric kill` given the lost home and another node reach the process at its new home', async () => {
    const lines: Array<{ node: number; text: string }> = []
    cluster = await startLocalCluster({ nodeCount: 4, log: (node, text) => lines.push({ node, text }) })
    const nodes = cluster.nodes
    const home = nodes[1]!
    let output = ''
    let pid = ''
    const running = runOnCluster({
      node: home.address,
      otherNodes: [nodes[0]!.address],
      program: waves,
      args: ['waves', '400', '2'],
      onSubmitted: (submitted) => {
        pid = submitted
      },
      onOutput: (chunk) => {
        output += new TextDecoder().decode(chunk.bytes)
      },
    })
    while (!output.includes('wave 1:')) await new Promise((resolve) => setTimeout(resolve, 20))
    cluster.kill(home.index)
    while (!lines.some((line) => line.text.includes(`took over as home of process ${pid}`)))
      await new Promise((resolve) => setTimeout(resolve, 20))
    const newHome =
      nodes[lines.find((line) => line.text.includes(`took over as home of process ${pid}`))!.node]!
    const other = nodes.find((node) => node.alive && node !== newHome)!
    // The lost home first, as an operator who does not know it was lost would name it.
    const join = `${home.address},${other.address}`
    const ps = await fabric(['ps', '--join', join])
    const row = ps.stdout.split('\n').find((line) => line.startsWith(pid))
    expect(row, ps.stdout + ps.stderr).toMatch(/ running /)
    expect(row).toContain(newHome.peerId.slice(-12))
    const kill = await fabric(['kill', pid, '--join', join])
    expect(kill.stderr).toBe('')
    expect(await running).toEqual({ exitCode: 137, error: 'killed' })
  }, 120_000)
})

const cli = join(import.meta.dirname, '..', 'fabric', 'cli', 'bin.js')

/** Runs the `fabric` command line; its exit code must be 0. */
async function fabric(args: string[]): Promise<{ stdout: string; stderr: string }> {
  return promisify(execFile)(process.execPath, [cli, ...args], { timeout: 60_000 })
}

/** The waves' output of a run through `node` that nothing disturbs; fails unless it exits 0. */
async function undisturbedOutput(node: LocalNode, args: string[]): Promise<string> {
  let output = ''
  const result = await runOnCluster({
    node: node.address,
    program: waves,
    args,
    onOutput: (chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    },
  })
  expect(result).toEqual({ exitCode: 0, error: null })
  return output
}
