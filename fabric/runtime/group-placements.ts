/**
 * Where the threads of each context group are, as far as one node knows: the threads it placed or
 * runs, until they end, and the nodes that ran any of them, until the process ends. Placement
 * (placement.ts) keeps a group on those nodes while they have room, so a group whose short threads
 * all ended on a node goes back to it instead of to a random one.
 */

import type { NodeId } from './services.ts'

export class GroupPlacements {
  /** By `<pid>/<group>`: where each thread of the group is (tid to node). */
  private readonly threads = new Map<string, Map<string, NodeId>>()
  /** By `<pid>/<group>`: the nodes that ran threads of the group. */
  private readonly nodes = new Map<string, Set<NodeId>>()

  /** Thread `tid` of the group runs (or is being started) on `node`. */
  placed(pid: string, group: string, tid: string, node: NodeId): void {
    const key = groupKey(pid, group)
    const threads = this.threads.get(key) ?? new Map<string, NodeId>()
    threads.set(tid, node)
    this.threads.set(key, threads)
    const nodes = this.nodes.get(key) ?? new Set<NodeId>()
    nodes.add(node)
    this.nodes.set(key, nodes)
  }

  /** A placement on `node` that did not happen: neither the thread nor (if it was the only one) the node counts. */
  notPlaced(pid: string, group: string, tid: string, node: NodeId): void {
    const key = groupKey(pid, group)
    const threads = this.threads.get(key)
    threads?.delete(tid)
    if (![...(threads?.values() ?? [])].includes(node)) this.nodes.get(key)?.delete(node)
  }

  /** A thread ended: it no longer counts where its group is (its node still does). */
  threadEnded(pid: string, tid: string): void {
    for (const [key, threads] of this.threads) if (key.startsWith(`${pid}/`)) threads.delete(tid)
  }

  processEnded(pid: string): void {
    for (const groups of [this.threads, this.nodes])
      for (const key of [...groups.keys()]) if (key.startsWith(`${pid}/`)) groups.delete(key)
  }

  /** Threads of the group on each node that runs or ran some (0: all of them ended there). */
  load(pid: string, group: string): Map<NodeId, number> {
    const key = groupKey(pid, group)
    const load = new Map<NodeId, number>()
    for (const node of this.nodes.get(key) ?? []) load.set(node, 0)
    for (const node of this.threads.get(key)?.values() ?? []) load.set(node, (load.get(node) ?? 0) + 1)
    return load
  }
}

function groupKey(pid: string, group: string): string {
  return `${pid}/${group}`
}
