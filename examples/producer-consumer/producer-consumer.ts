// Producers and consumers around one bounded queue: every item is consumed exactly once.
//
//   npx fabric build examples/producer-consumer/producer-consumer.ts
//   npx fabric run examples/producer-consumer/producer-consumer.wasm -- 4 4 500 16
//       (producers, consumers, items per producer, queue capacity)
//
// Producer p pushes the numbered items p*n+1 .. (p+1)*n (blocking while the queue is full). The
// consumers pop until the queue is closed and empty, and hand main the numbers they got; main
// closes the queue once every producer is done, then counts how often each number arrived. The
// output depends only on the arguments, whichever consumer got which item and whatever crashed.

import { args, exit, print, Queue, QueueStatus, setResult, spawn, Thread, threadArg } from "fabric"

const queueName = "items"
/** Threads of each kind, at most (each is a thread of the process). */
const threadsMax = 1000
/** Items in all, at most: each consumer returns its numbers as 4 bytes each in a 1 MiB result. */
const itemsMax = 200_000

class Settings {
  producers: i32 = 4
  consumers: i32 = 4
  itemsPerProducer: i32 = 500
  capacity: i32 = 16
}

function settingsArg(settings: Settings): ArrayBuffer {
  const bytes = new ArrayBuffer(16)
  const base = changetype<usize>(bytes)
  store<i32>(base, settings.producers, 0)
  store<i32>(base, settings.consumers, 4)
  store<i32>(base, settings.itemsPerProducer, 8)
  store<i32>(base, settings.capacity, 12)
  return bytes
}

function readSettings(bytes: ArrayBuffer): Settings {
  const base = changetype<usize>(bytes)
  const settings = new Settings()
  settings.producers = load<i32>(base, 0)
  settings.consumers = load<i32>(base, 4)
  settings.itemsPerProducer = load<i32>(base, 8)
  settings.capacity = load<i32>(base, 12)
  return settings
}

/** Argument: the settings, then the producer's index (4 bytes). */
export function produce(): void {
  const arg = threadArg()
  const settings = readSettings(arg)
  const index = load<i32>(changetype<usize>(arg), 16)
  const queue = new Queue(queueName, settings.capacity)
  const first = <i64>index * <i64>settings.itemsPerProducer + 1
  for (let item = first; item < first + settings.itemsPerProducer; item++) {
    if (queue.pushI64(item) != QueueStatus.ok) {
      throw new Error("producer " + index.toString() + ": the queue was closed before item " + item.toString())
    }
  }
}

/** Pops until the queue is closed and empty; the result is the item numbers, 4 bytes each. */
export function consume(): void {
  const settings = readSettings(threadArg())
  const queue = new Queue(queueName, settings.capacity)
  const got = new Array<i32>()
  while (queue.pop() == QueueStatus.ok) got.push(<i32>queue.itemI64())
  const result = new ArrayBuffer(got.length * 4)
  for (let index = 0; index < got.length; index++) store<i32>(changetype<usize>(result) + (<usize>index << 2), got[index])
  setResult(result)
}

function argument(argv: string[], index: i32, fallback: i32, max: i32, what: string): i32 {
  if (argv.length <= index) return fallback
  const value = I32.parseInt(argv[index])
  if (value < 1 || value > max) {
    print("producer-consumer: " + what + " must be a whole number from 1 to " + max.toString() + ", got " + argv[index])
    exit(2)
  }
  return value
}

export function main(): i32 {
  const argv = args()
  const settings = new Settings()
  settings.producers = argument(argv, 1, settings.producers, threadsMax, "producers")
  settings.consumers = argument(argv, 2, settings.consumers, threadsMax, "consumers")
  settings.itemsPerProducer = argument(argv, 3, settings.itemsPerProducer, itemsMax, "items per producer")
  settings.capacity = argument(argv, 4, settings.capacity, 65_536, "queue capacity")
  const total = <i64>settings.producers * <i64>settings.itemsPerProducer
  if (total > itemsMax) {
    print("producer-consumer: at most " + itemsMax.toString() + " items in all, got " + total.toString())
    return 2
  }
  print("producers: " + settings.producers.toString() + " x " + settings.itemsPerProducer.toString() +
    " items, consumers: " + settings.consumers.toString() + ", queue capacity: " + settings.capacity.toString())
  const shared = settingsArg(settings)
  const consumers = new Array<Thread>()
  for (let index = 0; index < settings.consumers; index++) consumers.push(spawn("consume", shared))
  const producers = new Array<Thread>()
  for (let index = 0; index < settings.producers; index++) {
    const arg = new ArrayBuffer(20)
    memory.copy(changetype<usize>(arg), changetype<usize>(shared), 16)
    store<i32>(changetype<usize>(arg), index, 16)
    producers.push(spawn("produce", arg))
  }
  for (let index = 0; index < producers.length; index++) producers[index].join()
  new Queue(queueName, settings.capacity).close()
  // times[k] counts the consumptions of item k + 1.
  const times = new Uint8Array(<i32>total)
  let consumed: i64 = 0
  let sum: i64 = 0
  let strays: i64 = 0
  for (let index = 0; index < consumers.length; index++) {
    const got = consumers[index].join()
    const count = got.byteLength >> 2
    for (let at = 0; at < count; at++) {
      const item = load<i32>(changetype<usize>(got) + (<usize>at << 2))
      consumed++
      sum += item
      if (item < 1 || <i64>item > total) strays++
      else if (times[item - 1] < 255) times[item - 1]++
    }
  }
  let missing: i64 = 0
  let duplicated: i64 = 0
  for (let index = 0; index < <i32>total; index++) {
    if (times[index] == 0) missing++
    else if (times[index] > 1) duplicated++
  }
  print("consumed " + consumed.toString() + " items of " + total.toString() + ", sum " + sum.toString() +
    " (expected " + (total * (total + 1) / 2).toString() + ")")
  print("missing: " + missing.toString() + ", consumed more than once: " + duplicated.toString() +
    ", not produced: " + strays.toString())
  const exact = missing == 0 && duplicated == 0 && strays == 0 && consumed == total
  print(exact ? "every item consumed exactly once" : "ITEMS LOST OR REPEATED")
  return exact ? 0 : 1
}
