// A parallel matrix power in rounds: M(r+1) = A x M(r), one band of rows per thread, with a
// barrier between rounds. Integers modulo a prime, so the checksum is exact.
//
//   npx fabric build examples/matmul-barrier/matmul-barrier.ts
//   npx fabric run examples/matmul-barrier/matmul-barrier.wasm -- 64 40 4   (size, rounds, threads)
//
// Thread t computes rows of M(r+1) from all of M(r): each round it reads every band of M(r) from
// shared variables (a band is stored in chunks), writes its band of M(r+1), and waits at the
// barrier until every band is written. Rounds alternate between two sets of variables (by the round's parity), so one barrier
// per round is enough: nobody writes a set while somebody may still read it. The threads work in
// the context group "matmul" (its names are its own); main checks the result against the same
// power computed on its own.

import { args, Barrier, Context, exit, group, print, SharedVar, spawn, Thread, threadArg } from "fabric"

const modulus: u64 = 1_000_000_007
const groupName = "matmul"
/**
 * Entries of all the chunks one round's readers hold at a time, summed over the threads: every
 * thread reads every chunk, and the runtime keeps each read's result with the variable until the
 * reader's next context save (for exactly-once replay), all within one 64 KiB register. So a
 * chunk gets smaller as threads grow: 16 KiB / threads, at least 64 entries.
 */
const chunkEntriesPerRound = 4096
const chunkEntriesMin = 64
const sizeMax = 1024
const roundsMax = 100_000
const threadsMax = 256

/** Entry (i, j) of A: small, fixed and not symmetric. */
function entryOfA(row: i32, column: i32): u32 {
  return <u32>((row * 31 + column * 17 + row * column) % 97 + 1)
}

function bandStart(band: i32, size: i32, threads: i32): i32 {
  return <i32>((<i64>band * <i64>size) / <i64>threads)
}

function chunkName(round: i32, band: i32, chunk: i32): string {
  return "m/" + (round & 1).toString() + "/" + band.toString() + "/" + chunk.toString()
}

function chunkEntries(threads: i32): i32 {
  return max(chunkEntriesMin, chunkEntriesPerRound / threads)
}

/** Writes rows [first, end) of M(round), `entries`, as the chunks of `band`. */
function writeBand(context: Context, round: i32, band: i32, threads: i32, entries: Uint32Array): void {
  const perChunk = chunkEntries(threads)
  for (let start = 0, chunk = 0; start < entries.length; start += perChunk, chunk++) {
    const end = min(start + perChunk, entries.length)
    const bytes = new ArrayBuffer((end - start) * 4)
    memory.copy(changetype<usize>(bytes), changetype<usize>(entries.dataStart) + <usize>(start * 4), (end - start) * 4)
    context.sharedVar(chunkName(round, band, chunk)).set(bytes)
  }
}

/** Rows [first, end) of A x M, where M is size x size, row-major. */
function multiplyRows(m: Uint32Array, size: i32, first: i32, end: i32): Uint32Array {
  const out = new Uint32Array((end - first) * size)
  for (let row = first; row < end; row++) {
    for (let column = 0; column < size; column++) {
      let sum: u64 = 0
      for (let k = 0; k < size; k++) {
        sum = (sum + <u64>entryOfA(row, k) * <u64>unchecked(m[k * size + column])) % modulus
      }
      unchecked((out[(row - first) * size + column] = <u32>sum))
    }
  }
  return out
}

function matrixA(size: i32): Uint32Array {
  const a = new Uint32Array(size * size)
  for (let row = 0; row < size; row++) {
    for (let column = 0; column < size; column++) a[row * size + column] = entryOfA(row, column)
  }
  return a
}

/** Reads M(round) from the bands in `context`. */
function readMatrix(context: Context, round: i32, size: i32, threads: i32): Uint32Array {
  const m = new Uint32Array(size * size)
  const perChunk = chunkEntries(threads)
  for (let band = 0; band < threads; band++) {
    const first = bandStart(band, size, threads) * size
    const end = bandStart(band + 1, size, threads) * size
    for (let start = first, chunk = 0; start < end; start += perChunk, chunk++) {
      const expected = (min(start + perChunk, end) - start) * 4
      const bytes = context.sharedVar(chunkName(round, band, chunk)).get()
      if (bytes == null || bytes.byteLength != expected) {
        throw new Error("chunk " + chunk.toString() + " of band " + band.toString() + " of round " + round.toString() +
          " is missing or has the wrong size")
      }
      memory.copy(changetype<usize>(m.dataStart) + <usize>(start * 4), changetype<usize>(bytes), expected)
    }
  }
  return m
}

function checksum(m: Uint32Array, size: i32): u64 {
  let sum: u64 = 0
  for (let index = 0; index < size * size; index++) {
    sum = (sum + <u64>m[index] * <u64>((index % 1000) + 1)) % modulus
  }
  return sum
}

/** Argument: size, rounds, threads, this thread's band (4 bytes each). */
export function worker(): void {
  const arg = threadArg()
  const base = changetype<usize>(arg)
  const size = load<i32>(base, 0)
  const rounds = load<i32>(base, 4)
  const threads = load<i32>(base, 8)
  const band = load<i32>(base, 12)
  const context = group(groupName)
  const barrier = context.barrier("round", threads)
  const first = bandStart(band, size, threads)
  const end = bandStart(band + 1, size, threads)
  for (let round = 0; round < rounds; round++) {
    const m = round == 0 ? matrixA(size) : readMatrix(context, round, size, threads)
    const rows = multiplyRows(m, size, first, end)
    writeBand(context, round + 1, band, threads, rows)
    const passed = barrier.wait()
    if (passed != round) {
      throw new Error("thread " + band.toString() + " passed barrier round " + passed.toString() + " in round " + round.toString())
    }
  }
}

function argument(argv: string[], index: i32, fallback: i32, max: i32, what: string): i32 {
  if (argv.length <= index) return fallback
  const value = I32.parseInt(argv[index])
  if (value < 1 || value > max) {
    print("matmul-barrier: " + what + " must be a whole number from 1 to " + max.toString() + ", got " + argv[index])
    exit(2)
  }
  return value
}

export function main(): i32 {
  const argv = args()
  const size = argument(argv, 1, 64, sizeMax, "size")
  const rounds = argument(argv, 2, 40, roundsMax, "rounds")
  const threads = argument(argv, 3, 4, min(threadsMax, size), "threads (at most the size)")
  print("A is " + size.toString() + " x " + size.toString() + ", " + rounds.toString() + " rounds on " +
    threads.toString() + " threads: A^" + (rounds + 1).toString() + " modulo " + modulus.toString())
  const workers = new Array<Thread>()
  for (let band = 0; band < threads; band++) {
    const arg = new ArrayBuffer(16)
    const base = changetype<usize>(arg)
    store<i32>(base, size, 0)
    store<i32>(base, rounds, 4)
    store<i32>(base, threads, 8)
    store<i32>(base, band, 12)
    workers.push(spawn("worker", arg))
  }
  for (let band = 0; band < threads; band++) workers[band].join()
  const result = readMatrix(new Context(groupName), rounds, size, threads)
  let expected = matrixA(size)
  for (let round = 0; round < rounds; round++) expected = multiplyRows(expected, size, 0, size)
  let wrong = 0
  for (let index = 0; index < size * size; index++) if (result[index] != expected[index]) wrong++
  print("checksum: " + checksum(result, size).toString() + " (computed alone: " + checksum(expected, size).toString() + ")")
  print(wrong == 0 ? "the product is exact" : "THE PRODUCT IS WRONG in " + wrong.toString() + " entries")
  return wrong == 0 ? 0 : 1
}
