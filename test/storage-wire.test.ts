/**
 * The storage protocols' checks of what arrives from the network (`/fabric/bricks/1`,
 * `/fabric/fs/1`): every malformed request is named, well-formed ones pass. The real-process
 * test (`storage-processes.test.ts`) sends such requests to a running node.
 */

import { describe, expect, it } from 'vitest'
import { brickBytesMax, brickCid } from '../storage/brick.ts'
import { brickRequestProblem } from '../storage/brick-peers-libp2p.ts'
import { fileRequestProblem, fileTransferBytesMax } from '../storage/file-protocol.ts'
import { encodeStorageFrame, StorageWireError } from '../storage/stream-frames.ts'

describe('/fabric/bricks/1 requests', () => {
  it('well-formed requests pass', async () => {
    const cid = (await brickCid(new Uint8Array([1, 2, 3]))).bytes
    expect(brickRequestProblem({ t: 'stats' })).toBeUndefined()
    for (const t of ['fetch', 'has', 'drop']) expect(brickRequestProblem({ t, cid })).toBeUndefined()
    expect(
      brickRequestProblem({ t: 'store', cid, bytes: new Uint8Array([1, 2, 3]), replicaCount: 5 }),
    ).toBeUndefined()
  })

  it('a request of the wrong shape is named: no type, unknown type, bad CID, oversized brick, bad replica count', async () => {
    const cid = (await brickCid(new Uint8Array([1]))).bytes
    expect(brickRequestProblem(null)).toMatch(/not a map/)
    expect(brickRequestProblem([1, 2])).toMatch(/not a map/)
    expect(brickRequestProblem({ t: 'format' })).toMatch(/unknown request type/)
    expect(brickRequestProblem({ t: 'fetch', cid: 'bafy' })).toMatch(/cid must be/)
    expect(brickRequestProblem({ t: 'fetch', cid: new Uint8Array(65) })).toMatch(/cid must be/)
    expect(brickRequestProblem({ t: 'fetch', cid: new Uint8Array([1, 85, 18, 3, 1, 2, 3]) })).toBeDefined()
    expect(brickRequestProblem({ t: 'store', cid, bytes: 'abc' })).toMatch(/bytes/)
    expect(brickRequestProblem({ t: 'store', cid, bytes: new Uint8Array(brickBytesMax + 1) })).toMatch(
      /bytes/,
    )
    for (const replicaCount of [0, 17, 1.5, '3'])
      expect(brickRequestProblem({ t: 'store', cid, bytes: new Uint8Array(1), replicaCount })).toMatch(
        /replicaCount/,
      )
  })
})

describe('/fabric/fs/1 requests', () => {
  it('well-formed requests pass', () => {
    expect(fileRequestProblem({ t: 'stat', path: '/a' })).toBeUndefined()
    expect(fileRequestProblem({ t: 'rename', from: '/a', to: '/b' })).toBeUndefined()
    expect(
      fileRequestProblem({ t: 'open', path: '/a', flags: 'wx', temporary: true, replicaCount: 2 }),
    ).toBeUndefined()
    expect(fileRequestProblem({ t: 'read', fd: 3, length: 10, position: 0 })).toBeUndefined()
    expect(fileRequestProblem({ t: 'write', fd: 3, bytes: new Uint8Array(4), position: 8 })).toBeUndefined()
    expect(fileRequestProblem({ t: 'close', fd: 3 })).toBeUndefined()
  })

  it('a request of the wrong shape is named: bad path, flags, descriptor, length or bytes', () => {
    expect(fileRequestProblem({ t: 'stat', path: '' })).toMatch(/path/)
    expect(fileRequestProblem({ t: 'stat', path: 'x'.repeat(5000) })).toMatch(/path/)
    expect(fileRequestProblem({ t: 'open', path: '/a', flags: 'rw' })).toMatch(/flags/)
    expect(fileRequestProblem({ t: 'open', path: '/a', flags: 'r', replicaCount: 0 })).toMatch(/replicaCount/)
    expect(fileRequestProblem({ t: 'read', fd: -1, length: 1, position: 0 })).toMatch(/read takes/)
    expect(fileRequestProblem({ t: 'read', fd: 3, length: fileTransferBytesMax + 1, position: 0 })).toMatch(
      /read takes/,
    )
    expect(fileRequestProblem({ t: 'write', fd: 3, bytes: [1, 2], position: 0 })).toMatch(/write takes/)
    expect(fileRequestProblem({ t: 'close' })).toMatch(/close takes/)
    expect(fileRequestProblem({ t: 'chmod', path: '/a' })).toMatch(/unknown request type/)
  })
})

describe('storage frames', () => {
  it('refuse to send a body over the limit', () => {
    expect(() => encodeStorageFrame({ bytes: new Uint8Array(2048) }, 1024)).toThrow(StorageWireError)
    const frame = encodeStorageFrame({ t: 'stats' }, 1024)
    expect(new DataView(frame.buffer).getUint32(0)).toBe(frame.length - 4)
  })
})
