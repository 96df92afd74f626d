// Monte Carlo estimate of pi over many threads.
//
//   npx fabric build examples/pi/pi.ts
//   npx fabric run examples/pi/pi.wasm -- 16 2000000     (threads, samples per thread)
//
// Each thread draws points in the unit square from its own xorshift generator (seeded by its
// index, so the result is the same on every run and after any restore) and returns how many fell
// inside the quarter circle. Threads save their context every 100,000 samples.

import { args, checkpoint, print, setResultString, spawnString, Thread, threadArgString } from "fabric"

const samplesPerCheckpoint = 100_000

export function sample(): void {
  const parts = threadArgString().split(" ")
  const index = U64.parseInt(parts[0])
  const samples = I64.parseInt(parts[1])
  let state: u64 = 0x9e3779b97f4a7c15 ^ ((index + 1) * 0xbf58476d1ce4e5b9)
  let inside: i64 = 0
  for (let done: i64 = 0; done < samples; done += samplesPerCheckpoint) {
    const blockEnd = min(done + samplesPerCheckpoint, samples)
    for (let drawn = done; drawn < blockEnd; drawn++) {
      state ^= state << 13
      state ^= state >> 7
      state ^= state << 17
      const x = <f64>(state >> 11) / 9007199254740992.0
      state ^= state << 13
      state ^= state >> 7
      state ^= state << 17
      const y = <f64>(state >> 11) / 9007199254740992.0
      if (x * x + y * y <= 1.0) inside++
    }
    checkpoint()
  }
  setResultString(inside.toString())
}

export function main(): i32 {
  const argv = args()
  const threadCount = argv.length > 1 ? I32.parseInt(argv[1]) : 8
  const samples = argv.length > 2 ? I64.parseInt(argv[2]) : 1_000_000
  const threads = new Array<Thread>()
  for (let index = 0; index < threadCount; index++) {
    threads.push(spawnString("sample", index.toString() + " " + samples.toString()))
  }
  let inside: i64 = 0
  for (let index = 0; index < threadCount; index++) {
    const count = I64.parseInt(threads[index].joinString())
    print("thread " + index.toString() + ": " + count.toString() + " of " + samples.toString() + " inside")
    inside += count
  }
  const total = <f64>samples * <f64>threadCount
  print("pi is about " + (4.0 * <f64>inside / total).toString() + " from " + total.toString() + " samples")
  return 0
}
