/**
 * Bounded parallelism: run a task per item with at most `limit` in flight. The first failure stops
 * new tasks from starting; the call waits for the running ones and then throws that failure.
 */

export async function forEachLimited<T>(
  items: Iterable<T> | AsyncIterable<T>,
  limit: number,
  run: (item: T) => Promise<void>,
): Promise<void> {
  const inFlight = new Set<Promise<void>>()
  let failure: { error: unknown } | undefined
  for await (const item of items) {
    if (failure !== undefined) break
    const task: Promise<void> = run(item)
      .catch((error: unknown) => {
        failure ??= { error }
      })
      .finally(() => inFlight.delete(task))
    inFlight.add(task)
    if (inFlight.size >= limit) await Promise.race(inFlight)
  }
  await Promise.all(inFlight)
  if (failure !== undefined) throw failure.error
}

/** Maps `items` with at most `limit` calls in flight, keeping the order of the results. */
export async function mapLimited<T, R>(
  items: readonly T[],
  limit: number,
  run: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length)
  await forEachLimited(
    items.map((item, index) => ({ item, index })),
    limit,
    async ({ item, index }) => {
      results[index] = await run(item, index)
    },
  )
  return results
}
