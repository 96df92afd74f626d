/**
 * Errors of the host layer. Each names what happened and what to do; the CLI prints `message` alone.
 * `code` is stable and crosses worker boundaries (errors are rebuilt from `{ code, message }`).
 */

export class FabricHostError extends Error {
  readonly code: string = 'HOST_ERROR'
}

/** The bytes are not WebAssembly, or the module lacks what a Fabric guest needs. */
export class InvalidModuleError extends FabricHostError {
  override readonly code = 'INVALID_MODULE'
  override name = 'InvalidModuleError'
}

/** The guest executed a trap (unreachable, out-of-bounds access, division by zero, ...). */
export class GuestTrapError extends FabricHostError {
  override readonly code = 'GUEST_TRAP'
  override name = 'GuestTrapError'
}

/** The guest asked for more linear memory than its limit allows. */
export class MemoryLimitError extends FabricHostError {
  override readonly code = 'MEMORY_LIMIT'
  override name = 'MemoryLimitError'
}

/** The guest ran longer than its CPU time budget without finishing. */
export class CpuBudgetExceededError extends FabricHostError {
  override readonly code = 'CPU_BUDGET_EXCEEDED'
  override name = 'CpuBudgetExceededError'
}

/** The guest's call stack grew past the engine's limit (usually unbounded recursion). */
export class StackOverflowError extends FabricHostError {
  override readonly code = 'STACK_OVERFLOW'
  override name = 'StackOverflowError'
}

/** A context save is damaged, of an unknown version, or does not belong to this module. */
export class SnapshotError extends FabricHostError {
  override readonly code = 'SNAPSHOT_INVALID'
  override name = 'SnapshotError'
}

/** The guest called the host wrongly (bad pointer, unknown thread handle, ...). */
export class GuestCallError extends FabricHostError {
  override readonly code = 'GUEST_CALL'
  override name = 'GuestCallError'
}

/** The worker running a thread died (killed, or crashed) before the thread ended. */
export class WorkerLostError extends FabricHostError {
  override readonly code = 'WORKER_LOST'
  override name = 'WorkerLostError'
}

/** A tool needed to build a guest (clang, asc) is missing, or the source did not compile. */
export class BuildError extends FabricHostError {
  override readonly code = 'BUILD_FAILED'
  override name = 'BuildError'
}

const errorClasses = {
  INVALID_MODULE: InvalidModuleError,
  GUEST_TRAP: GuestTrapError,
  MEMORY_LIMIT: MemoryLimitError,
  CPU_BUDGET_EXCEEDED: CpuBudgetExceededError,
  STACK_OVERFLOW: StackOverflowError,
  SNAPSHOT_INVALID: SnapshotError,
  GUEST_CALL: GuestCallError,
  WORKER_LOST: WorkerLostError,
  BUILD_FAILED: BuildError,
} as const

export interface SerializedError {
  code: string
  message: string
}

export function serializeError(error: unknown): SerializedError {
  if (error instanceof FabricHostError) return { code: error.code, message: error.message }
  if (error instanceof Error) return { code: 'HOST_ERROR', message: error.message }
  return { code: 'HOST_ERROR', message: String(error) }
}

export function deserializeError(serialized: SerializedError): FabricHostError {
  const ErrorClass = errorClasses[serialized.code as keyof typeof errorClasses] ?? FabricHostError
  return new ErrorClass(serialized.message)
}
