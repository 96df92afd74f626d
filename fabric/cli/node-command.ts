/**
 * `fabric node`, `fabric kv` and `fabric cluster-key`: run a node, use the coordination store from
 * a shell, and make a cluster key.
 *
 *   fabric cluster-key > cluster.key
 *   fabric node --listen /ip4/0.0.0.0/tcp/4001 --data-dir ./n1 --cluster-key cluster.key
 *   fabric node --listen /ip4/0.0.0.0/tcp/4002 --bootstrap /ip4/10.0.0.1/tcp/4001/p2p/12D3… --data-dir ./n2 --cluster-key cluster.key
 *   fabric kv put greeting hello --join /ip4/10.0.0.1/tcp/4001/p2p/12D3… --cluster-key cluster.key
 */

import { FabricError } from '../errors.ts'
import { connectClient } from '../net/client.ts'
import { generateClusterKey, loadClusterKey } from '../net/cluster-key.ts'
import { startNode } from '../net/node.ts'
import { startRuntimeNode } from '../runtime/runtime-node.ts'

export const nodeUsage = `  fabric node [--listen <multiaddr,...>] [--bootstrap <multiaddr,...>] [--data-dir <dir>]
              [--cluster-key <hex|file>] [--replicas 3|5] [--fsync] [--core-only] [--no-storage]
              [--brick-replicas N] [--ws-port N] [--children-elsewhere]
  fabric kv get <key> | put <key> <value> | cas <key> <expected-version> <value>
              --join <multiaddr,...> [--cluster-key <hex|file>] [--timeout-ms N]
  fabric cluster-key`

const defaultListen = ['/ip4/0.0.0.0/tcp/0', '/ip4/0.0.0.0/tcp/0/ws']

/**
 * The listen addresses with a WebSockets one added at `port` (on the host of the first address),
 * where browser nodes dial in: pages have no TCP.
 */
export function withWebSocketsPort(listen: readonly string[], port: number): string[] {
  const host = /^\/(ip4|ip6|dns4|dns6)\/[^/]+/.exec(listen[0] ?? '')?.[0] ?? '/ip4/0.0.0.0'
  return [...listen, `${host}/tcp/${port}/ws`]
}

class CommandUsageError extends FabricError {
  constructor(message: string) {
    super('USAGE', message)
  }
}

function parseFlags(argv: readonly string[], known: Record<string, 'value' | 'flag'>) {
  const positional: string[] = []
  const flags = new Map<string, string>()
  for (let index = 0; index < argv.length; index++) {
    const word = argv[index]!
    if (!word.startsWith('--')) {
      positional.push(word)
      continue
    }
    const name = word.slice(2)
    const kind = known[name]
    if (kind === undefined) throw new CommandUsageError(`unknown option ${word}`)
    if (kind === 'flag') flags.set(name, 'true')
    else {
      const value = argv[++index]
      if (value === undefined) throw new CommandUsageError(`option ${word} needs a value`)
      flags.set(name, value)
    }
  }
  return { positional, flags }
}

const list = (value: string | undefined) =>
  value === undefined
    ? []
    : value
        .split(',')
        .map((part) => part.trim())
        .filter((part) => part.length > 0)

async function guarded(body: () => Promise<number>): Promise<number> {
  try {
    return await body()
  } catch (error) {
    if (error instanceof FabricError) {
      process.stderr.write(`fabric: ${error.message}\n`)
      if (error instanceof CommandUsageError) process.stderr.write(`usage:\n${nodeUsage}\n`)
      return error instanceof CommandUsageError ||
        error.code === 'CLUSTER_KEY' ||
        error.code === 'INVALID_ARGUMENT'
        ? 2
        : 1
    }
    throw error
  }
}

export function nodeCommand(argv: readonly string[]): Promise<number> {
  return guarded(async () => {
    const { positional, flags } = parseFlags(argv, {
      listen: 'value',
      bootstrap: 'value',
      'data-dir': 'value',
      'cluster-key': 'value',
      replicas: 'value',
      fsync: 'flag',
      'core-only': 'flag',
      'no-storage': 'flag',
      'brick-replicas': 'value',
      'ws-port': 'value',
      'children-elsewhere': 'flag',
    })
    if (positional.length > 0)
      throw new CommandUsageError(`fabric node takes no arguments, got ${positional[0]}`)
    const webSocketsPort = flags.has('ws-port') ? Number(flags.get('ws-port')) : undefined
    if (
      webSocketsPort !== undefined &&
      !(Number.isInteger(webSocketsPort) && webSocketsPort >= 0 && webSocketsPort <= 65_535)
    )
      throw new CommandUsageError(`--ws-port takes a port from 0 to 65535, got ${flags.get('ws-port')}`)
    const listen = flags.has('listen') ? list(flags.get('listen')) : defaultListen
    const replicas = Number(flags.get('replicas') ?? 3)
    if (replicas !== 3 && replicas !== 5)
      throw new CommandUsageError(`--replicas takes 3 or 5, got ${flags.get('replicas')}`)
    const brickReplicas = flags.has('brick-replicas') ? Number(flags.get('brick-replicas')) : undefined
    if (
      brickReplicas !== undefined &&
      !(Number.isInteger(brickReplicas) && brickReplicas >= 1 && brickReplicas <= 16)
    )
      throw new CommandUsageError(`--brick-replicas takes 1 to 16, got ${flags.get('brick-replicas')}`)
    const clusterKeyText = flags.get('cluster-key')
    const nodeOptions = {
      listen: webSocketsPort === undefined ? listen : withWebSocketsPort(listen, webSocketsPort),
      bootstrap: list(flags.get('bootstrap')),
      dataDirectory: flags.get('data-dir'),
      clusterKey: clusterKeyText === undefined ? undefined : loadClusterKey(clusterKeyText),
      store: { replicaCount: replicas },
      fsync: flags.has('fsync'),
    }
    // A failed background task (a sweep, a notice, a peer's stream) is a bug to log, not a reason to
    // take the node down with every thread, save replica and brick it serves.
    process.on('unhandledRejection', (reason) => {
      const text = reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)
      process.stderr.write(`${new Date().toISOString()} bug: unhandled rejection: ${text}\n`)
    })
    // A core-only node serves membership and the coordination store but runs no programs and stores no files.
    const { node, stop } = flags.has('core-only')
      ? await startNode(nodeOptions).then((core) => ({ node: core, stop: () => core.stop() }))
      : await startRuntimeNode({
          ...nodeOptions,
          storage: flags.has('no-storage') ? undefined : { replicaCount: brickReplicas },
          childrenElsewhere: flags.has('children-elsewhere'),
        })
    process.stdout.write(`peer-id ${node.peerId}\n`)
    for (const address of node.addresses()) process.stdout.write(`listening ${address}\n`)
    process.stdout.write('ready\n')
    await new Promise<void>((resolve) => {
      const shutdown = (signal: string) => {
        process.stderr.write(`${new Date().toISOString()} ${signal}: leaving the cluster and shutting down\n`)
        stop().then(resolve, resolve)
      }
      process.once('SIGINT', () => shutdown('SIGINT'))
      process.once('SIGTERM', () => shutdown('SIGTERM'))
    })
    return 0
  })
}

export function kvCommand(argv: readonly string[]): Promise<number> {
  return guarded(async () => {
    const { positional, flags } = parseFlags(argv, {
      join: 'value',
      'cluster-key': 'value',
      'timeout-ms': 'value',
    })
    const [verb, key, ...rest] = positional
    const nodes = list(flags.get('join'))
    if (nodes.length === 0) throw new CommandUsageError('fabric kv needs --join <multiaddr of a node>')
    if (key === undefined) throw new CommandUsageError('fabric kv needs a key')
    const clusterKeyText = flags.get('cluster-key')
    const client = await connectClient({
      nodes,
      clusterKey: clusterKeyText === undefined ? undefined : loadClusterKey(clusterKeyText),
      timeoutMs: flags.has('timeout-ms') ? Number(flags.get('timeout-ms')) : undefined,
    })
    const encoder = new TextEncoder()
    const show = (value: Uint8Array | null) => (value === null ? null : new TextDecoder().decode(value))
    try {
      switch (verb) {
        case 'get': {
          const result = await client.get(key)
          process.stdout.write(
            `${JSON.stringify({ key, version: result.version, value: show(result.value) })}\n`,
          )
          return 0
        }
        case 'put': {
          if (rest.length !== 1) throw new CommandUsageError('fabric kv put takes <key> <value>')
          const result = await client.put(key, encoder.encode(rest[0]!))
          process.stdout.write(`${JSON.stringify({ key, version: result.version })}\n`)
          return 0
        }
        case 'cas': {
          const expected = Number(rest[0])
          if (rest.length !== 2 || !Number.isInteger(expected) || expected < 0)
            throw new CommandUsageError('fabric kv cas takes <key> <expected-version> <value>')
          const result = await client.cas(key, expected, encoder.encode(rest[1]!))
          process.stdout.write(
            `${JSON.stringify({ key, ok: result.ok, version: result.version, value: show(result.value) })}\n`,
          )
          return result.ok ? 0 : 3
        }
        default:
          throw new CommandUsageError(`fabric kv takes get, put or cas, got ${verb}`)
      }
    } finally {
      await client.close()
    }
  })
}

export async function clusterKeyCommand(): Promise<number> {
  process.stdout.write(`${generateClusterKey()}\n`)
  return 0
}
