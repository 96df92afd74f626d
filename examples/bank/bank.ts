// Transfers between accounts under locks: the total never changes, every transfer applies once.
//
//   npx fabric build examples/bank/bank.ts
//   npx fabric run examples/bank/bank.wasm -- 8 8 100   (accounts, threads, transfers per thread)
//
// Each account is a shared variable (an i64 balance) with a lock of the same name. A transfer
// takes the two accounts' locks in account order (so two transfers never wait on each other in a
// cycle), moves the amount, counts itself in "transfers", and releases both. The writes are
// compare-and-swaps on the values read under the locks: when a lock's lease ran out while this
// thread was stopped (its node died and it resumed from a save later than the TTL), another holder
// may have changed the balance, and the swap fails instead of overwriting that work; the thread
// then reads again. Transfers commute, so the final balances depend only on the arguments: each
// thread draws its transfers from its own seeded generator.

import { args, exit, Lock, print, SharedVar, spawn, Thread, threadArg } from "fabric"

const initialBalance: i64 = 1_000_000
/** Long enough that a holder resumed on another node after a crash still holds its locks. */
const lockTtlMs: i64 = 10_000
const amountMax: u64 = 100
const accountsMax = 10_000
const threadsMax = 1000
const transfersMax = 1_000_000

function accountName(index: i32): string {
  return "account/" + index.toString()
}

/** Adds `delta` to `account` by compare-and-swap from the balance last read; returns the new balance. */
function move(account: SharedVar, balance: i64, delta: i64): void {
  let current = balance
  while (!account.compareAndSwapI64(current, current + delta)) current = account.getI64()
}

/** Argument: accounts, transfers, this thread's index (4 bytes each). */
export function teller(): void {
  const arg = threadArg()
  const base = changetype<usize>(arg)
  const accounts = load<i32>(base, 0)
  const transfers = load<i32>(base, 4)
  const index = load<i32>(base, 8)
  const applied = new SharedVar("transfers")
  let state: u64 = 0x9e3779b97f4a7c15 ^ (<u64>(index + 1) * 0xbf58476d1ce4e5b9)
  for (let done = 0; done < transfers; done++) {
    state ^= state << 13
    state ^= state >> 7
    state ^= state << 17
    const from = <i32>(state % <u64>accounts)
    const step = 1 + <i32>((state >> 20) % <u64>(accounts - 1))
    const to = (from + step) % accounts
    const amount = <i64>(1 + (state >> 40) % amountMax)
    const firstIndex = min(from, to)
    const secondIndex = max(from, to)
    const first = new Lock(accountName(firstIndex))
    const second = new Lock(accountName(secondIndex))
    first.acquire(lockTtlMs)
    second.acquire(lockTtlMs)
    const source = new SharedVar(accountName(from))
    const target = new SharedVar(accountName(to))
    move(source, source.getI64(), -amount)
    move(target, target.getI64(), amount)
    applied.add(1)
    second.release()
    first.release()
  }
}

function argument(argv: string[], index: i32, fallback: i32, min: i32, max: i32, what: string): i32 {
  if (argv.length <= index) return fallback
  const value = I32.parseInt(argv[index])
  if (value < min || value > max) {
    print("bank: " + what + " must be a whole number from " + min.toString() + " to " + max.toString() + ", got " + argv[index])
    exit(2)
  }
  return value
}

export function main(): i32 {
  const argv = args()
  const accounts = argument(argv, 1, 8, 2, accountsMax, "accounts")
  const threads = argument(argv, 2, 8, 1, threadsMax, "threads")
  const transfers = argument(argv, 3, 100, 1, transfersMax, "transfers per thread")
  print("bank: " + accounts.toString() + " accounts of " + initialBalance.toString() + ", " + threads.toString() +
    " threads x " + transfers.toString() + " transfers")
  for (let index = 0; index < accounts; index++) new SharedVar(accountName(index)).setI64(initialBalance)
  const tellers = new Array<Thread>()
  for (let index = 0; index < threads; index++) {
    const arg = new ArrayBuffer(12)
    const base = changetype<usize>(arg)
    store<i32>(base, accounts, 0)
    store<i32>(base, transfers, 4)
    store<i32>(base, index, 8)
    tellers.push(spawn("teller", arg))
  }
  for (let index = 0; index < threads; index++) tellers[index].join()
  let total: i64 = 0
  let weighted: i64 = 0
  for (let index = 0; index < accounts; index++) {
    const balance = new SharedVar(accountName(index)).getI64()
    total += balance
    weighted += balance * <i64>(index + 1)
  }
  const expectedTotal = initialBalance * <i64>accounts
  const applied = new SharedVar("transfers").getI64()
  const requested = <i64>threads * <i64>transfers
  print("total: " + total.toString() + " (at the start: " + expectedTotal.toString() + ")")
  print("transfers applied: " + applied.toString() + " of " + requested.toString())
  print("balances checksum: " + weighted.toString())
  const right = total == expectedTotal && applied == requested
  print(right ? "the books balance" : "THE BOOKS DO NOT BALANCE")
  return right ? 0 : 1
}
