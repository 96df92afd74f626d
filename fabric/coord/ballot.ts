import type { NodeId } from './register.ts'

/**
 * A CASPaxos ballot. `epoch` is the shard configuration the ballot belongs to, so every ballot of
 * a newer configuration is higher than every ballot of an older one.
 */
export interface Ballot {
  epoch: number
  round: number
  proposer: NodeId
}

export const zeroBallot: Ballot = { epoch: 0, round: 0, proposer: '' }

export function compareBallots(a: Ballot, b: Ballot): number {
  if (a.epoch !== b.epoch) return a.epoch - b.epoch
  if (a.round !== b.round) return a.round - b.round
  return a.proposer < b.proposer ? -1 : a.proposer > b.proposer ? 1 : 0
}
