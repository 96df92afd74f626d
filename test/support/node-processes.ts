/**
 * Starts `fabric node` processes on loopback for real-process tests, and makes sure every child
 * dies with the test (even when it fails or the runner exits).
 */

import { type ChildProcess, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = new URL('../../', import.meta.url).pathname
const nodeBinary = join(root, 'node_modules/.bin/node')
const cli = join(root, 'fabric/cli/bin.js')

export interface NodeProcess {
  name: string
  dataDirectory: string
  child: ChildProcess
  peerId: string
  address: string
  /** Every address the node listens on (the first is `address`), with /p2p/<peer id> as printed. */
  addresses: string[]
  /** stderr lines with the wall-clock time (ms) they arrived. */
  lines: { atMs: number; text: string }[]
}

const children = new Set<ChildProcess>()
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL')
})

export function killAll(): void {
  for (const child of children) child.kill('SIGKILL')
  children.clear()
}

export function temporaryDirectory(): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), 'fabric-test-'))
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) }
}

export async function startNodeProcess(options: {
  name: string
  dataDirectory: string
  clusterKey: string
  bootstrap?: string[]
  port?: number
  /** Only membership and the coordination store (no runtime, no storage); default true. */
  coreOnly?: boolean
  /** More `fabric node` options. */
  args?: string[]
}): Promise<NodeProcess> {
  const args = [
    cli,
    'node',
    '--listen',
    `/ip4/127.0.0.1/tcp/${options.port ?? 0}`,
    '--data-dir',
    options.dataDirectory,
    '--cluster-key',
    options.clusterKey,
  ]
  // Tests of the fabric core (membership, store) leave out the process runtime and storage.
  if (options.coreOnly ?? true) args.push('--core-only')
  args.push(...(options.args ?? []))
  if (options.bootstrap !== undefined && options.bootstrap.length > 0)
    args.push('--bootstrap', options.bootstrap.join(','))
  const child = spawn(nodeBinary, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  children.add(child)
  child.on('exit', () => children.delete(child))
  const lines: NodeProcess['lines'] = []
  let stderrBuffer = ''
  child.stderr!.on('data', (data: Buffer) => {
    stderrBuffer += data.toString()
    const parts = stderrBuffer.split('\n')
    stderrBuffer = parts.pop()!
    for (const text of parts) lines.push({ atMs: Date.now(), text })
  })
  return await new Promise((resolve, reject) => {
    let stdout = ''
    const timer = setTimeout(
      () =>
        reject(
          new Error(
            `${options.name} did not start in 30 s:\n${stdout}\n${lines.map((line) => line.text).join('\n')}`,
          ),
        ),
      30_000,
    )
    child.stdout!.on('data', (data: Buffer) => {
      stdout += data.toString()
      if (!stdout.includes('ready\n')) return
      clearTimeout(timer)
      const peerId = /peer-id (\S+)/.exec(stdout)![1]!
      const addresses = [...stdout.matchAll(/listening (\S+)/g)].map((match) => match[1]!)
      const address = addresses[0]!
      resolve({
        name: options.name,
        dataDirectory: options.dataDirectory,
        child,
        peerId,
        address,
        addresses,
        lines,
      })
    })
    child.on('exit', (code) => {
      clearTimeout(timer)
      reject(
        new Error(
          `${options.name} exited with ${code} before it was ready:\n${lines.map((line) => line.text).join('\n')}`,
        ),
      )
    })
  })
}

export function aliveCount(node: NodeProcess): number {
  for (let index = node.lines.length - 1; index >= 0; index--) {
    const match = /; (\d+) alive$/.exec(node.lines[index]!.text)
    if (match) return Number(match[1])
  }
  return 1
}

export async function waitFor(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const start = Date.now()
  while (!condition()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
