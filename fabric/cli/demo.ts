/**
 * `npm start`: builds Monte Carlo pi, starts an embedded local cluster of node processes, runs the
 * program undisturbed, then runs it again while one node (not the one the program was submitted
 * to) is killed with SIGKILL mid-run, and shows that the result is the same.
 */

import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { runOnCluster } from '../runtime/submit-client.ts'
import { build, defaultOutput } from './build.ts'
import { defaultNodeCount, type LocalCluster, startLocalCluster } from './local-cluster.ts'

const root = join(import.meta.dirname, '../..')
const source = join(root, 'examples/pi/pi.ts')
const args = ['pi', '24', '8000000']

async function runPi(cluster: LocalCluster, killAtMs: number | null) {
  let output = ''
  const started = performance.now()
  const timer =
    killAtMs === null
      ? null
      : setTimeout(() => {
          const victim = cluster.nodes.length - 1
          cluster.kill(victim)
          console.log(
            `  ... SIGKILL to node ${victim} at ${Math.round(killAtMs)} ms; its threads resume elsewhere`,
          )
        }, killAtMs)
  const result = await runOnCluster({
    node: cluster.nodes[0]!.address,
    program: new Uint8Array(readFileSync(defaultOutput(source))),
    args,
    onOutput: (chunk) => {
      output += new TextDecoder().decode(chunk.bytes)
    },
  })
  if (timer !== null) clearTimeout(timer)
  if (result.error !== null) throw new Error(result.error)
  return { output, ms: performance.now() - started }
}

console.log(`Building ${source} ...`)
build({ source })
const nodeCount = defaultNodeCount()
console.log(`Starting an embedded cluster of ${nodeCount} node processes on loopback ...`)
let cluster = await startLocalCluster({ nodeCount })
console.log(`\nMonte Carlo pi, ${args[1]} threads x ${args[2]} samples, undisturbed:`)
const reference = await runPi(cluster, null)
process.stdout.write(reference.output.split('\n').slice(-2).join('\n'))
console.log(`(${reference.ms.toFixed(0)} ms)`)
await cluster.stop()

cluster = await startLocalCluster({ nodeCount })
console.log('\nThe same program on a fresh cluster; one node is killed mid-run:')
const disturbed = await runPi(cluster, reference.ms * 0.4)
process.stdout.write(disturbed.output.split('\n').slice(-2).join('\n'))
console.log(`(${disturbed.ms.toFixed(0)} ms)`)
await cluster.stop()
const same = disturbed.output === reference.output
console.log(same ? '\nSame output, thread by thread: nothing was lost.' : '\nOUTPUT DIFFERS')
process.exitCode = same ? 0 : 1
