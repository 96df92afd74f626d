import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterEach, describe, expect, test } from 'vitest'
import { type LocalCluster, nodeEnvironment, startLocalCluster } from '../fabric/cli/local-cluster.ts'
import { listProcesses, runOnCluster } from '../fabric/runtime/submit-client.ts'
import { guestBytes, repositoryRoot } from './support/guests.ts'
import { seededRandom } from './support/run.ts'

const seedCount = Number(process.env.FABRIC_RUNTIME_SEEDS ?? (process.env.FABRIC_SOAK ? 20 : 3))
const piArgs = ['pi', '50', '4000000']

async function runPi(cluster: LocalCluster, onProgress?: (chunks: number) => void) {
  let output = ''
  let chunks = 0
  const result = await runOnCluster({
    node: cluster.nodes[0]!.address,
    program: guestBytes('examples/pi/pi.ts'),
    args: piArgs,
    onOutput: (chunk) => {
      if (chunk.fd === 1) output += new TextDecoder().decode(chunk.bytes)
      onProgress?.(++chunks)
    },
  })
  return { output, result }
}

/**
 * `runPi`, failing after `ms` with what `ps` and the nodes' last runtime lines show, rather than
 * holding the suite until its timeout with nothing said.
 */
async function runPiWithin(cluster: LocalCluster, logs: string[], ms: number, where: string) {
  let timer: ReturnType<typeof setTimeout> | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(async () => {
      const ps = await listProcesses({ node: cluster.nodes[0]!.address }).then(
        (processes) => JSON.stringify(processes),
        (error: Error) => `ps failed: ${error.message}`,
      )
      const recent = logs.filter((line) => line.includes('runtime:')).slice(-40)
      reject(new Error(`${where}: no result after ${ms} ms; ps: ${ps}\n${recent.join('\n')}`))
    }, ms)
  })
  try {
    return await Promise.race([runPi(cluster), deadline])
  } finally {
    clearTimeout(timer)
  }
}

describe('distributed processes on real node processes', () => {
  let cluster: LocalCluster | undefined
  afterEach(async () => {
    await cluster?.stop()
    cluster = undefined
  })

  test(`a 50-thread program gives an undisturbed run's output when two nodes are SIGKILLed mid-run (${seedCount} seeds)`, async () => {
    cluster = await startLocalCluster({ nodeCount: 5 })
    const started = performance.now()
    const reference = await runPi(cluster)
    const referenceMs = performance.now() - started
    expect(reference.result).toEqual({ exitCode: 0, error: null })
    expect(reference.output).toContain('thread 49: ')
    await cluster.stop()
    for (let seed = 1; seed <= seedCount; seed++) {
      const random = seededRandom(seed)
      const logs: string[] = []
      cluster = await startLocalCluster({
        nodeCount: 5,
        log: (index, line) => logs.push(`node ${index}: ${line}`),
      })
      // Two nodes other than the submitter's (node 0), each at a random moment of the run.
      const victims = [1, 2, 3, 4].sort(() => random() - 0.5).slice(0, 2)
      const timers = victims.map((index) =>
        setTimeout(() => cluster!.kill(index), (0.1 + random() * 0.5) * referenceMs),
      )
      const where = `SEED=${seed} (killed nodes ${victims.join(', ')}); rerun: FABRIC_RUNTIME_SEEDS=${seed} npx vitest run test/runtime-cluster.test.ts`
      const run = await runPiWithin(cluster, logs, Math.max(60_000, 20 * referenceMs), where)
      for (const timer of timers) clearTimeout(timer)
      expect(run.result, where).toEqual({ exitCode: 0, error: null })
      expect(run.output, where).toBe(reference.output)
      await cluster.stop()
      cluster = undefined
    }
  }, 600_000)

  // Whenever the environment the nodes get preloads it (the machine has it, and it was not declined).
  test.runIf(process.platform === 'linux' && nodeEnvironment().LD_PRELOAD?.includes('tcmalloc') === true)(
    "the embedded cluster's nodes run with tcmalloc when the machine has it",
    async () => {
      cluster = await startLocalCluster({ nodeCount: 3 })
      for (const node of cluster.nodes)
        expect(readFileSync(`/proc/${node.process.pid}/maps`, 'utf8')).toContain('libtcmalloc_minimal')
      const { result, output } = await runPi(cluster)
      expect(result).toEqual({ exitCode: 0, error: null })
      expect(output).toContain('thread 49: ')
    },
  )

  test('a submitter that disconnects gets the whole output when it attaches again', async () => {
    cluster = await startLocalCluster({ nodeCount: 3 })
    const program = join(mkdtempSync(join(tmpdir(), 'fabric-attach-')), 'primes.wasm')
    writeFileSync(program, guestBytes('examples/primes/primes.ts'))
    const args = ['6000000', '200000']
    const home = cluster.nodes[0]!.address
    const cli = join(repositoryRoot, 'fabric/cli/bin.js')
    const reference = spawnSync(process.execPath, [cli, 'run', '--join', home, program, '--', ...args], {
      encoding: 'utf8',
    })
    expect(reference.status).toBe(0)
    expect(reference.stdout.split('\n').length).toBeGreaterThan(20)

    // A submitter that dies after a few lines; the process goes on without it.
    const submitter = spawn(process.execPath, [cli, 'run', '--join', home, program, '--', ...args])
    let pid = ''
    let seen = ''
    submitter.stderr.setEncoding('utf8').on('data', (text: string) => {
      pid ||= text.match(/process ([0-9a-f]+)/)?.[1] ?? ''
    })
    await new Promise<void>((resolve) => {
      submitter.stdout.setEncoding('utf8').on('data', (text: string) => {
        seen += text
        if (seen.split('\n').length > 3) {
          submitter.kill('SIGKILL')
          resolve()
        }
      })
    })
    expect(pid).not.toBe('')
    const attached = spawnSync(process.execPath, [cli, 'attach', pid, '--join', home], { encoding: 'utf8' })
    expect(attached.status).toBe(0)
    expect(attached.stdout).toBe(reference.stdout)
  }, 120_000)
})
