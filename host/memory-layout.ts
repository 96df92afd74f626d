/** Sizes and names shared by the instrumenter and the worker runtime (no dependencies: workers load it). */

export const wasmPageBytes = 65536
export const wasmPagesMax = 65536
/** Pages of Asyncify's own memory: bounds the depth of the guest's stack at a blocking call. */
export const asyncifyMemoryPages = 16
/** Bytes at the start of Asyncify's memory that hold its [current, end] pointer pair. */
export const asyncifyHeaderBytes = 8
/** Global the host sets to the guest's memory limit, in pages. */
export const hostGlobalMemoryPagesMax = 'fabric_memory_pages_max'
/** Global the instrumentation sets to the page count of a refused memory.grow. */
export const hostGlobalMemoryRefusedPages = 'fabric_memory_refused_pages'
