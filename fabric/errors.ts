/**
 * Expected failures of the fabric core (network, membership, coordination store). Each carries a
 * stable `code` and a message that says what happened and what to do about it.
 */

export class FabricError extends Error {
  readonly code: string
  constructor(code: string, message: string) {
    super(message)
    this.name = new.target.name
    this.code = code
  }
}

/** The operation did not complete in time; it may or may not have taken effect. */
export class StoreTimeoutError extends FabricError {
  constructor(key: string, timeoutMs: number) {
    super(
      'STORE_TIMEOUT',
      `operation on key "${key}" did not complete within ${timeoutMs} ms; it may or may not have taken effect. ` +
        'Check that a majority of the key’s replicas is reachable, then retry (read before re-writing).',
    )
  }
}

/** Too many operations are queued on this node. */
export class StoreOverloadedError extends FabricError {
  constructor(limit: number) {
    super('STORE_OVERLOADED', `more than ${limit} operations are pending on this node; retry later`)
  }
}

/** A public API was called with a bad argument. */
export class InvalidArgumentError extends FabricError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', message)
  }
}

/** A wire message was refused before or while decoding. */
export class MessageRejectedError extends FabricError {
  constructor(reason: 'too-large' | 'malformed' | 'unknown-version', message: string) {
    super(`MESSAGE_${reason.toUpperCase().replaceAll('-', '_')}`, message)
  }
}

/** The cluster key is missing or malformed. */
export class ClusterKeyError extends FabricError {
  constructor(message: string) {
    super('CLUSTER_KEY', message)
  }
}

/** A node could not be reached or refused the request. */
export class NodeUnreachableError extends FabricError {
  constructor(message: string) {
    super('NODE_UNREACHABLE', message)
  }
}

/** Persistent state in the data directory could not be read. */
/** A browser node could not join: no server node answered over WebSockets, or none let it in (a missing or wrong cluster key). */
export class BrowserJoinError extends FabricError {
  constructor(message: string) {
    super('BROWSER_JOIN', message)
  }
}

export class DataDirectoryError extends FabricError {
  constructor(message: string) {
    super('DATA_DIRECTORY', message)
  }
}

/**
 * A thread's files cannot be kept with its context: its journal is too large or damaged, another
 * incarnation of the thread took it over, or a restored thread repeats calls in another order.
 */
export class GuestFilesError extends FabricError {
  constructor(message: string) {
    super('GUEST_FILES', message)
  }
}
