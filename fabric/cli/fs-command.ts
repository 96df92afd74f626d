/**
 * `fabric fs`: the cluster file system from a shell, through any node (`--join`), with the cluster
 * key. Errors print as `fabric fs: <what>: <POSIX message>` and exit with 1; bad usage exits with 2.
 * Copies of at least {@link progressBytesMin} draw a progress bar on stderr when it is a terminal
 * (or with `--progress`).
 *
 *   fabric fs put ./results.csv /runs/1/ --join /ip4/10.0.0.1/tcp/4001/p2p/12D3… --cluster-key cluster.key
 *   fabric fs ls /runs/1 --join …;  fabric fs cat /runs/1/results.csv --join …
 */

import { basename } from 'node:path'
import { StorageError } from '../../storage/errors.ts'
import { type CopyProgress, connectFileClient, type FileClient } from '../../storage/file-client.ts'
import { FabricError } from '../errors.ts'
import { loadClusterKey } from '../net/cluster-key.ts'
import { systemClock } from '../platform.ts'

export const fsUsage = `  fabric fs ls [<path>] | stat <path> | du [<path>] | cat <path>...
            | put <local-file> <path> [--replicas N] | get <path> [<local-file>|-]
            | mkdir [-p] <path> | rm [-r] <path>... | mv <from> <to>
            --join <multiaddr,...> [--cluster-key <hex|file>] [--progress]`

/** Copies smaller than this draw no progress bar. */
export const progressBytesMin = 4 * 1024 * 1024
/** Redraws of the progress bar at most this often. */
export const progressRedrawIntervalMs = 100
const progressBarWidth = 30

class FsUsageError extends FabricError {
  constructor(message: string) {
    super('USAGE', message)
  }
}

interface Parsed {
  words: string[]
  join: string[]
  clusterKey: string | undefined
  replicas: number | undefined
  recursive: boolean
  parents: boolean
  progress: boolean
}

function parse(argv: readonly string[]): Parsed {
  const parsed: Parsed = {
    words: [],
    join: [],
    clusterKey: undefined,
    replicas: undefined,
    recursive: false,
    parents: false,
    progress: false,
  }
  for (let index = 0; index < argv.length; index++) {
    const word = argv[index]!
    const value = () => {
      const next = argv[++index]
      if (next === undefined) throw new FsUsageError(`option ${word} needs a value`)
      return next
    }
    if (word === '--join')
      parsed.join = value()
        .split(',')
        .map((part) => part.trim())
        .filter((part) => part.length > 0)
    else if (word === '--cluster-key') parsed.clusterKey = value()
    else if (word === '--replicas') {
      const text = value()
      parsed.replicas = Number(text)
      if (!Number.isInteger(parsed.replicas) || parsed.replicas < 1 || parsed.replicas > 16)
        throw new FsUsageError(`--replicas takes 1 to 16, got ${text}`)
    } else if (word === '-r' || word === '-R' || word === '--recursive') parsed.recursive = true
    else if (word === '-p' || word === '--parents') parsed.parents = true
    else if (word === '--progress') parsed.progress = true
    else if (word.startsWith('-') && word !== '-') throw new FsUsageError(`unknown option ${word}`)
    else parsed.words.push(word)
  }
  return parsed
}

function progressBar(label: string, force: boolean): ((progress: CopyProgress) => void) & { end(): void } {
  const enabled = force || process.stderr.isTTY === true
  let lastDrawMs = -Infinity
  let drawn = false
  const startMs = systemClock.now()
  const draw = ({ bytes, total }: CopyProgress, final = false) => {
    if (!enabled || total < progressBytesMin) return
    const now = systemClock.now()
    if (!final && now - lastDrawMs < progressRedrawIntervalMs) return
    lastDrawMs = now
    drawn = true
    const ratio = total === 0 ? 1 : Math.min(1, bytes / total)
    const filled = Math.round(ratio * progressBarWidth)
    const seconds = Math.max((now - startMs) / 1000, 0.001)
    const rate = bytes / 2 ** 20 / seconds
    process.stderr.write(
      `\r${label} [${'#'.repeat(filled)}${'.'.repeat(progressBarWidth - filled)}] ${(ratio * 100).toFixed(0).padStart(3)}% ` +
        `${(bytes / 2 ** 20).toFixed(1)}/${(total / 2 ** 20).toFixed(1)} MiB ${rate.toFixed(1)} MiB/s`,
    )
  }
  let latest: CopyProgress = { bytes: 0, total: 0 }
  const update = (progress: CopyProgress) => {
    latest = progress
    draw(progress)
  }
  return Object.assign(update, {
    end() {
      if (drawn) {
        draw(latest, true)
        process.stderr.write('\n')
      }
    },
  })
}

function formatTime(ms: number): string {
  return new Date(ms)
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, ' UTC')
}

async function removeTree(files: FileClient, path: string): Promise<void> {
  const stat = await files.stat(path)
  if (stat.type === 'file') return files.unlink(path)
  const prefix = path.endsWith('/') ? path : `${path}/`
  for (const entry of await files.readdir(path)) await removeTree(files, prefix + entry.name)
  await files.rmdir(path)
}

async function makeParents(files: FileClient, path: string): Promise<void> {
  const names = path.split('/').filter((name) => name.length > 0 && name !== '.')
  let prefix = ''
  for (const name of names) {
    prefix += `/${name}`
    try {
      await files.mkdir(prefix)
    } catch (error) {
      if ((error as StorageError).code !== 'EEXIST') throw error
      if ((await files.stat(prefix)).type !== 'directory') throw error
    }
  }
}

async function run(files: FileClient, verb: string, args: string[], parsed: Parsed): Promise<number> {
  const out = (text: string) => process.stdout.write(text)
  const needs = (count: number, shape: string) => {
    if (args.length !== count) throw new FsUsageError(`fabric fs ${verb} takes ${shape}`)
  }
  switch (verb) {
    case 'ls': {
      if (args.length > 1) throw new FsUsageError('fabric fs ls takes at most one path')
      const path = args[0] ?? '/'
      const stat = await files.stat(path)
      if (stat.type === 'file') {
        out(`${basename(path)}\n`)
        return 0
      }
      for (const entry of await files.readdir(path))
        out(`${entry.name}${entry.type === 'directory' ? '/' : ''}\n`)
      return 0
    }
    case 'stat': {
      needs(1, '<path>')
      const stat = await files.stat(args[0]!)
      out(`path: ${args[0]}\ntype: ${stat.type}\nsize: ${stat.size}\nmodified: ${formatTime(stat.mtimeMs)}\n`)
      out(`id: ${stat.id}\n`)
      if (stat.replicaCount !== undefined) out(`replicas: ${stat.replicaCount}\n`)
      return 0
    }
    case 'du': {
      if (args.length > 1) throw new FsUsageError('fabric fs du takes at most one path')
      const path = args[0] ?? '/'
      const usage = await files.du(path)
      out(`${usage.bytes}\t${path}\t(${usage.files} files, ${usage.directories} directories)\n`)
      return 0
    }
    case 'cat': {
      if (args.length === 0) throw new FsUsageError('fabric fs cat takes one or more paths')
      for (const path of args) await files.getFile(path, process.stdout)
      return 0
    }
    case 'put': {
      needs(2, '<local-file> <path>')
      let target = args[1]!
      if (target.endsWith('/')) target += basename(args[0]!)
      else {
        const existing = await files.stat(target).catch(() => undefined)
        if (existing?.type === 'directory') target = `${target}/${basename(args[0]!)}`
      }
      const bar = progressBar(`put ${basename(args[0]!)}`, parsed.progress)
      try {
        await files.putFile(args[0]!, target, { onProgress: bar, replicaCount: parsed.replicas })
      } finally {
        bar.end()
      }
      return 0
    }
    case 'get': {
      if (args.length < 1 || args.length > 2)
        throw new FsUsageError('fabric fs get takes <path> [<local-file>|-]')
      const local = args[1] ?? basename(args[0]!)
      if (local === '-') {
        await files.getFile(args[0]!, process.stdout)
        return 0
      }
      const bar = progressBar(`get ${basename(args[0]!)}`, parsed.progress)
      try {
        await files.getFile(args[0]!, local, { onProgress: bar })
      } finally {
        bar.end()
      }
      return 0
    }
    case 'mkdir': {
      if (args.length === 0) throw new FsUsageError('fabric fs mkdir takes one or more paths')
      for (const path of args) await (parsed.parents ? makeParents(files, path) : files.mkdir(path))
      return 0
    }
    case 'rm': {
      if (args.length === 0) throw new FsUsageError('fabric fs rm takes one or more paths')
      for (const path of args) {
        if (parsed.recursive) await removeTree(files, path)
        else await files.unlink(path)
      }
      return 0
    }
    case 'mv': {
      needs(2, '<from> <to>')
      let target = args[1]!
      const existing = await files.stat(target).catch(() => undefined)
      if (existing?.type === 'directory' && (await files.stat(args[0]!)).type === 'file')
        target = `${target.replace(/\/$/, '')}/${basename(args[0]!)}`
      await files.rename(args[0]!, target)
      return 0
    }
    default:
      throw new FsUsageError(`fabric fs takes ls, stat, du, cat, put, get, mkdir, rm or mv, got ${verb}`)
  }
}

export async function fsCommand(argv: readonly string[]): Promise<number> {
  let parsed: Parsed
  try {
    parsed = parse(argv)
    if (parsed.words.length === 0) throw new FsUsageError('fabric fs needs a command')
    if (parsed.join.length === 0) throw new FsUsageError('fabric fs needs --join <multiaddr of a node>')
  } catch (error) {
    process.stderr.write(`fabric fs: ${(error as Error).message}\nusage:\n${fsUsage}\n`)
    return 2
  }
  const [verb, ...args] = parsed.words
  let files: FileClient | undefined
  try {
    files = await connectFileClient({
      nodes: parsed.join,
      clusterKey: parsed.clusterKey === undefined ? undefined : loadClusterKey(parsed.clusterKey),
    })
    return await run(files, verb!, args, parsed)
  } catch (error) {
    if (error instanceof FsUsageError) {
      process.stderr.write(`fabric fs: ${error.message}\nusage:\n${fsUsage}\n`)
      return 2
    }
    if (error instanceof StorageError || error instanceof FabricError) {
      process.stderr.write(`fabric fs: ${error.message}\n`)
      return error.code === 'INVALID_ARGUMENT' || error.code === 'CLUSTER_KEY' ? 2 : 1
    }
    if ((error as NodeJS.ErrnoException).code !== undefined && (error as NodeJS.ErrnoException).syscall) {
      process.stderr.write(`fabric fs: ${(error as Error).message}\n`)
      return 1
    }
    throw error
  } finally {
    await files?.close()
  }
}
