// Counts the primes below a bound, one block at a time, with a context save after each block.
//
//   npx fabric build examples/primes/primes.ts
//   npx fabric run examples/primes/primes.wasm -- 5000000 250000    (bound, block size)
//
// Kill the thread's worker (or, on a cluster, its node) at any moment: it continues from the save
// after its last finished block, and the output is the same as an undisturbed run's.

import { args, checkpoint, print } from "fabric"

function isPrime(candidate: u32): bool {
  if (candidate < 2) return false
  if (candidate % 2 == 0) return candidate == 2
  for (let divisor: u32 = 3; divisor * divisor <= candidate; divisor += 2) {
    if (candidate % divisor == 0) return false
  }
  return true
}

export function main(): i32 {
  const argv = args()
  const bound = argv.length > 1 ? U32.parseInt(argv[1]) : 2_000_000
  const block = argv.length > 2 ? U32.parseInt(argv[2]) : 100_000
  let count: u32 = 0
  for (let start: u32 = 0; start < bound; start += block) {
    const end = min(start + block, bound)
    for (let candidate = start; candidate < end; candidate++) {
      if (isPrime(candidate)) count++
    }
    print("below " + end.toString() + ": " + count.toString() + " primes")
    checkpoint()
  }
  print("total: " + count.toString() + " primes below " + bound.toString())
  return 0
}
