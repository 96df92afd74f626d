/**
 * The `fabric` command line.
 *
 *   fabric build prog.ts|prog.c [-o prog.wasm]
 *   fabric run [options] prog.wasm [-- args...]
 *
 * Expected failures print one line `fabric: ...` and exit with code 2 (bad input) or 1.
 */

import { FabricHostError, InvalidModuleError } from '../../host/errors.ts'
import { build } from './build.ts'
import { clusterKeyCommand, kvCommand, nodeCommand, nodeUsage } from './node-command.ts'
import { runLocal } from './run-local.ts'

const usage = `usage:
  fabric build <prog.ts|prog.c> [-o <prog.wasm>]
  fabric run [--workers N] [--memory-max-mib N] [--cpu-budget-s N] [--save-interval-ms N]
             [--map-dir <host-dir>:<guest-dir>] [--env NAME=VALUE]... <prog.wasm> [-- args...]
${nodeUsage}`

class UsageError extends Error {}

interface Parsed {
  positional: string[]
  options: Map<string, string>
  /** Every value of options that may repeat (`--env A=1 --env B=2`). */
  repeated: Map<string, string[]>
  rest: string[]
}

const repeatable = new Set(['env'])

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
          'program-args',
        ]),
      )
      if (parsed.positional.length !== 1) throw new UsageError('fabric run takes one program (.wasm)')
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
    case 'node':
      return await nodeCommand(rest)
    case 'kv':
      return await kvCommand(rest)
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
