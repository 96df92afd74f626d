/**
 * Expected failures of the storage layer. Each carries a stable `code` and a message that says what
 * happened and what to do. File-system calls fail with {@link FileSystemError}, whose `code` is the
 * POSIX name (`ENOENT`, `EEXIST`, ...) so that WASI and the CLI can pass it on unchanged.
 */

export class StorageError extends Error {
  readonly code: string
  constructor(code: string, message: string) {
    super(message)
    this.name = new.target.name
    this.code = code
  }
}

/** POSIX error names that file-system calls return. */
export type PosixErrorCode =
  | 'ENOENT'
  | 'EEXIST'
  | 'ENOTDIR'
  | 'EISDIR'
  | 'ENOTEMPTY'
  | 'EBADF'
  | 'EINVAL'
  | 'ENAMETOOLONG'
  | 'EBUSY'
  | 'EFBIG'
  | 'EMFILE'
  | 'EIO'
  | 'EAGAIN'

const posixDescriptions: Record<PosixErrorCode, string> = {
  ENOENT: 'no such file or directory',
  EEXIST: 'file already exists',
  ENOTDIR: 'not a directory',
  EISDIR: 'is a directory',
  ENOTEMPTY: 'directory not empty',
  EBADF: 'bad file descriptor',
  EINVAL: 'invalid argument',
  ENAMETOOLONG: 'name too long',
  EBUSY: 'resource busy',
  EFBIG: 'file too large',
  EMFILE: 'too many open files',
  EIO: 'input/output error',
  EAGAIN: 'resource temporarily unavailable, retry',
}

/** A file-system call failed the way POSIX says it can; `code` is the POSIX error name. */
export class FileSystemError extends StorageError {
  readonly syscall: string
  readonly path: string | undefined
  constructor(
    code: PosixErrorCode,
    syscall: string,
    path?: string,
    detail?: string,
    options?: { cause?: unknown },
  ) {
    const where = path === undefined ? '' : ` '${path}'`
    super(
      code,
      `${code}: ${posixDescriptions[code]}, ${syscall}${where}${detail === undefined ? '' : ` (${detail})`}`,
    )
    this.syscall = syscall
    this.path = path
    if (options?.cause !== undefined) this.cause = options.cause
  }
}

/**
 * A brick's bytes do not hash to its name. The copy that failed has been dropped; read again to get
 * another replica (the storage node does so itself and repairs the dropped copy).
 */
export class BrickCorruptError extends StorageError {
  readonly cid: string
  readonly where: string
  constructor(cid: string, where: string) {
    super('BRICK_CORRUPT', `brick ${cid} from ${where} does not match its hash; that copy was dropped`)
    this.cid = cid
    this.where = where
  }
}

/** No live node holds an intact copy of a brick. */
export class BrickUnavailableError extends StorageError {
  readonly cid: string
  constructor(cid: string, tried: readonly string[]) {
    super(
      'BRICK_UNAVAILABLE',
      `no live node holds an intact copy of brick ${cid} (tried: ${tried.length === 0 ? 'none' : tried.join(', ')}); ` +
        'bring back a node that held it, or restore the file from a backup',
    )
    this.cid = cid
  }
}

/** A brick could not be written to as many distinct live nodes as its replication requires. */
export class InsufficientReplicasError extends StorageError {
  constructor(cid: string, placed: number, required: number) {
    super(
      'INSUFFICIENT_REPLICAS',
      `brick ${cid} reached ${placed} of ${required} required replicas; check that enough storage nodes are up, then retry`,
    )
  }
}

/** Stored bytes (manifest, record, metadata value) are malformed or of a format version this code does not know. */
export class StorageFormatError extends StorageError {
  constructor(what: string, detail: string) {
    super(
      'STORAGE_FORMAT',
      `${what} cannot be read: ${detail}; it was written by an incompatible version or is damaged`,
    )
  }
}

/**
 * A metadata operation did not complete in time; it may or may not have taken effect.
 * Implementations of `MetadataStore` throw this for the coordination store's timeouts.
 */
export class MetadataTimeoutError extends StorageError {
  constructor(key: string, detail = 'no answer in time') {
    super(
      'METADATA_TIMEOUT',
      `metadata operation on "${key}" did not complete (${detail}); it may or may not have taken effect. ` +
        'Check that the coordination store has a majority up, then retry',
    )
  }
}

/** A public API was called with a bad argument. */
export class StorageArgumentError extends StorageError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', message)
  }
}

/** A block store's directory cannot be used (not writable, not a block store, ...). */
export class BlockStoreError extends StorageError {
  constructor(message: string) {
    super('BLOCK_STORE', message)
  }
}

/** A node could not be reached for a brick transfer. */
export class BrickPeerUnreachableError extends StorageError {
  readonly node: string
  constructor(node: string, detail: string) {
    super('BRICK_PEER_UNREACHABLE', `storage node ${node} is unreachable: ${detail}`)
    this.node = node
  }
}

/** A page's persistent brick cache failed: IndexedDB not available, over its quota, or blocked. Reads go on without it. */
export class PersistentCacheError extends StorageError {
  constructor(message: string) {
    super('PERSISTENT_CACHE', message)
  }
}
