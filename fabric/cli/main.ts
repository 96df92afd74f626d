/**
 * The `fabric` command line.
 *
 *   fabric build prog.ts|prog.c [-o prog.wasm]
 *   fabric run [options] prog.wasm [-- args...]     (an embedded local cluster, or --join one)
 *   fabric ps --join <multiaddr>[,...];  fabric kill|attach <pid> --join <multiaddr>[,...]
 *   fabric fs ls|put|get|cat|rm|mkdir|mv|stat|du ... --join <multiaddr>
 *
 * Expected failures print one line `fabric: ...` and exit with code 2 (bad input) or 1.
 */

import { FabricHostError, InvalidModuleError } from '../../host/errors.ts'
import { loadClusterKey } from '../net/cluster-key.ts'
import type { ProcessSummary } from '../runtime/messages.ts'
import { attachToProcess, killProcess, listProcesses } from '../runtime/submit-client.ts'
import { build } from './build.ts'
import { fsCommand, fsUsage } from './fs-command.ts'
import { clusterKeyCommand, kvCommand, nodeCommand, nodeUsage } from './node-command.ts'
import { runCluster } from './run-cluster.ts'
import { runLocal } from './run-local.ts'

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`
}

function formatProcesses(processes: ProcessSummary[]): string {
  const lines = [
    'PID               STATE    THREAD       NODE          EPOCH  LAST SAVE (SEQUENCE, AGE, SIZE)',
  ]
  for (const entry of processes) {
    lines.push(`${entry.pid.padEnd(17)} ${entry.state.padEnd(8)} ${''.padEnd(12)} ${entry.home.slice(-12)}`)
    for (const thread of entry.threads) {
      const last = thread.lastSave
      const age =
        last?.ageMs != null
          ? `${(last.ageMs / 1000).toFixed(1)} s ago`
          : thread.lastSaveMs === null
            ? 'age unknown'
            : `${((Date.now() - thread.lastSaveMs) / 1000).toFixed(1)} s ago`
      const save = last == null ? '-' : `#${last.sequence}, ${age}, ${formatBytes(last.bytes)}`
      lines.push(
        `${''.padEnd(17)} ${thread.state.slice(0, 8).padEnd(8)} ${thread.tid.padEnd(12)} ${thread.node.slice(-12).padEnd(13)} ${String(thread.epoch ?? '-').padEnd(6)} ${save}`,
      )
    }
  }
  return `${lines.join('\n')}\n`
}

const usage = `usage:
  fabric build <prog.ts|prog.c> [-o <prog.wasm>]
  fabric run [--join <multiaddr> [--cluster-key <hex|file>] | --nodes N] [--env NAME=VALUE]...
             <prog.wasm> [-- args...]
      Runs on the cluster a node of which --join names, else on an embedded local cluster of
      N node processes (default: the cores, at least 3) that stops when the program ends.
      --join a,b,...: the first node is the process's home; should it be lost, the output
      follows the process through the others.
  fabric run --local [--workers N] [--memory-max-mib N] [--cpu-budget-s N] [--save-interval-ms N]
             [--map-dir <host-dir>:<guest-dir>] [--env NAME=VALUE]... <prog.wasm> [-- args...]
      Runs in this process on a worker pool sized to the cores (no cluster).
  fabric ps --join <multiaddr>[,<more>] [--cluster-key <hex|file>]
      Lists the cluster's processes and threads (any node answers; the next is asked if one does not).
  fabric attach <pid> --join <multiaddr>[,<more>] [--cluster-key <hex|file>]
      Shows a process's output from its start and follows it to its end (after a disconnect),
      through any node, to whichever node is its home now.
  fabric kill <pid> --join <multiaddr>[,<more>] [--cluster-key <hex|file>]
      Ends a process, through any node (it finds the process's current home).
${nodeUsage}
${fsUsage}`

class UsageError extends Error {}

interface Parsed {
  positional: string[]
  options: Map<string, string>
  /** Every value of options that may repeat (`--env A=1 --env B=2`). */
  repeated: Map<string, string[]>
  rest: string[]
}

const repeatable = new Set(['env'])
/** Options that take no value. */
const flags = new Set(['local'])

function parse(argv: string[], known: Set<string>): Parsed {
  const positional: string[] = []
  const options = new Map<string, string>()
  const repeated = new Map<string, string[]>()
  let index = 0
  while (index < argv.length) {
    const word = argv[index]!
    if (word === '--') return { positional, options, repeated, rest: argv.slice(index + 1) }
    if (word.startsWith('-')) {
      const name = word.replace(/^-+/, '')
      if (!known.has(name)) throw new UsageError(`unknown option ${word}`)
      if (flags.has(name)) {
        options.set(name, 'true')
        index++
        continue
      }
      const value = argv[index + 1]
      if (value === undefined) throw new UsageError(`option ${word} needs a value`)
      options.set(name, value)
      if (repeatable.has(name)) repeated.set(name, [...(repeated.get(name) ?? []), value])
      index += 2
    } else {
      // Once the program is named, everything after it belongs to the program.
      positional.push(word)
      index++
      if (positional.length === 1 && known.has('program-args'))
        return { positional, options, repeated, rest: argv.slice(index) }
    }
  }
  return { positional, options, repeated, rest: [] }
}

function numberOption(options: Map<string, string>, name: string): number | undefined {
  const value = options.get(name)
  if (value === undefined) return undefined
  const number = Number(value)
  if (!Number.isFinite(number) || number <= 0)
    throw new UsageError(`--${name} takes a positive number, got ${value}`)
  return number
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  switch (command) {
    case 'build': {
      const parsed = parse(rest, new Set(['o', 'output']))
      if (parsed.positional.length !== 1) throw new UsageError('fabric build takes one source file')
      const result = build({
        source: parsed.positional[0]!,
        output: parsed.options.get('o') ?? parsed.options.get('output'),
      })
      process.stderr.write(`built ${result.output} (${result.bytes} bytes)\n`)
      return 0
    }
    case 'run': {
      const parsed = parse(
        rest,
        new Set([
          'workers',
          'memory-max-mib',
          'cpu-budget-s',
          'save-interval-ms',
          'map-dir',
          'env',
          'local',
          'join',
          'cluster-key',
          'nodes',
          'program-args',
        ]),
      )
      if (parsed.positional.length !== 1) throw new UsageError('fabric run takes one program (.wasm)')
      if (!parsed.options.has('local')) {
        for (const option of ['workers', 'memory-max-mib', 'cpu-budget-s', 'save-interval-ms', 'map-dir']) {
          if (parsed.options.has(option)) throw new UsageError(`--${option} goes with --local`)
        }
        return await runCluster({
          program: parsed.positional[0]!,
          args: parsed.rest[0] === '--' ? parsed.rest.slice(1) : parsed.rest,
          env: parsed.repeated.get('env') ?? [],
          join: parsed.options.get('join'),
          clusterKey: parsed.options.get('cluster-key'),
          nodeCount: numberOption(parsed.options, 'nodes'),
        })
      }
      const cpuBudgetS = numberOption(parsed.options, 'cpu-budget-s')
      return await runLocal({
        program: parsed.positional[0]!,
        args: parsed.rest[0] === '--' ? parsed.rest.slice(1) : parsed.rest,
        workers: numberOption(parsed.options, 'workers'),
        memoryMaxMiB: numberOption(parsed.options, 'memory-max-mib'),
        cpuBudgetMs: cpuBudgetS === undefined ? undefined : cpuBudgetS * 1000,
        saveIntervalMs: numberOption(parsed.options, 'save-interval-ms'),
        mapDirectory: parsed.options.get('map-dir'),
        env: parsed.repeated.get('env') ?? [],
      })
    }
    case 'ps': {
      const parsed = parse(rest, new Set(['join', 'cluster-key']))
      const join = parsed.options.get('join')
      if (join === undefined) throw new UsageError('fabric ps needs --join <multiaddr of a node>[,<more>]')
      const key = parsed.options.get('cluster-key')
      const processes = await listProcesses({
        node: join.split(',')[0]!,
        otherNodes: join.split(',').slice(1),
        clusterKey: key === undefined ? undefined : loadClusterKey(key),
      })
      process.stdout.write(formatProcesses(processes))
      return 0
    }
    case 'attach': {
      const parsed = parse(rest, new Set(['join', 'cluster-key']))
      const join = parsed.options.get('join')
      if (join === undefined || parsed.positional.length !== 1) {
        throw new UsageError('fabric attach takes <pid> and --join <multiaddr of a node>[,<more>]')
      }
      const key = parsed.options.get('cluster-key')
      const result = await attachToProcess({
        node: join.split(',')[0]!,
        otherNodes: join.split(',').slice(1),
        clusterKey: key === undefined ? undefined : loadClusterKey(key),
        pid: parsed.positional[0]!,
        onOutput: (chunk) => (chunk.fd === 2 ? process.stderr : process.stdout).write(chunk.bytes),
      })
      if (result.error !== null) throw new FabricHostError(result.error)
      return result.exitCode
    }
    case 'kill': {
      const parsed = parse(rest, new Set(['join', 'cluster-key']))
      const join = parsed.options.get('join')
      if (join === undefined || parsed.positional.length !== 1) {
        throw new UsageError('fabric kill takes <pid> and --join <multiaddr of a node>[,<more>]')
      }
      const key = parsed.options.get('cluster-key')
      await killProcess(
        {
          node: join.split(',')[0]!,
          otherNodes: join.split(',').slice(1),
          clusterKey: key === undefined ? undefined : loadClusterKey(key),
        },
        parsed.positional[0]!,
      )
      return 0
    }
    case 'node':
      return await nodeCommand(rest)
    case 'kv':
      return await kvCommand(rest)
    case 'fs':
      return await fsCommand(rest)
    case 'cluster-key':
      return await clusterKeyCommand()
    case undefined:
    case 'help':
    case '--help':
      process.stdout.write(`${usage}\n`)
      return command === undefined ? 2 : 0
    default:
      throw new UsageError(`unknown command ${command}`)
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    if (error instanceof UsageError) {
      process.stderr.write(`fabric: ${error.message}\n${usage}\n`)
      process.exitCode = 2
    } else if (error instanceof InvalidModuleError || (error as NodeJS.ErrnoException)?.code === 'ENOENT') {
      process.stderr.write(`fabric: ${(error as Error).message.split('\n')[0]}\n`)
      process.exitCode = 2
    } else if (error instanceof FabricHostError) {
      process.stderr.write(`fabric: ${error.message}\n`)
      process.exitCode = error.code === 'BUILD_FAILED' ? 2 : 1
    } else {
      throw error
    }
  },
)
