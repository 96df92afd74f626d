/**
 * The browser-storage test page: a browser node in the page (`fabric/net/browser-node.ts`) with
 * the cluster file system and its brick cache (`storage/browser-storage.ts`). The test drives it
 * through `window.fabricBrowserStorage` with `page.evaluate`; bytes travel back as hex digests
 * and sizes, so that nothing large crosses the DevTools protocol.
 */

/// <reference lib="dom" />

import { type BrowserNode, startBrowserNode } from '../../fabric/net/browser-node.ts'
import {
  type BrowserStorage,
  type BrowserStorageCounters,
  startBrowserStorage,
} from '../../storage/browser-storage.ts'

export interface JoinReport {
  peerId: string
  /** Live members of kind server, as the page sees them. */
  liveServers: number
  storageServers: number
}

export interface ReadReport {
  size: number
  /** SHA-256 of the bytes read, hex. */
  sha256: string
  counters: BrowserStorageCounters
}

/** An error as the test sees it: its class name, code and message. */
export interface PageError {
  name: string
  code: string | undefined
  message: string
}

export interface BrowserStorageApi {
  join(options: {
    bootstrap: string[]
    clusterKey?: string
    joinTimeoutMs?: number
    cacheBytesMax?: number
    /** Replicas of the bricks the page writes (on servers); default 3. */
    replicaCount?: number
  }): Promise<JoinReport>
  /** Tries to join and returns the error it failed with (null when it joined, and leaves again). */
  joinError(options: {
    bootstrap: string[]
    clusterKey?: string
    joinTimeoutMs?: number
  }): Promise<PageError | null>
  read(path: string): Promise<ReadReport>
  write(path: string, text: string): Promise<BrowserStorageCounters>
  counters(): BrowserStorageCounters
  leave(): Promise<void>
}

declare global {
  interface Window {
    fabricBrowserStorage: BrowserStorageApi
  }
}

let node: BrowserNode | undefined
let storage: BrowserStorage | undefined

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>))
  return [...digest].map((byte) => byte.toString(16).padStart(2, '0')).join('')
}

function opened(): BrowserStorage {
  if (storage === undefined) throw new Error('join first')
  return storage
}

window.fabricBrowserStorage = {
  async join(options) {
    node = await startBrowserNode(options)
    storage = await startBrowserStorage(node, {
      cacheBytesMax: options.cacheBytesMax,
      replicaCount: options.replicaCount,
    })
    return {
      peerId: node.peerId,
      liveServers: node.membership.liveServers().length,
      storageServers: storage.storageServers().length,
    }
  },
  async joinError(options) {
    try {
      const joined = await startBrowserNode(options)
      await joined.stop()
      return null
    } catch (error) {
      const { name, message } = error as Error
      return { name: error?.constructor?.name ?? name, code: (error as { code?: string }).code, message }
    }
  },
  async read(path) {
    const bytes = await opened().fileSystem.readFile(path)
    return { size: bytes.length, sha256: await sha256Hex(bytes), counters: opened().counters() }
  },
  async write(path, text) {
    await opened().fileSystem.writeFile(path, new TextEncoder().encode(text))
    return opened().counters()
  },
  counters: () => opened().counters(),
  async leave() {
    await storage?.stop()
    await node?.stop()
    storage = undefined
    node = undefined
  },
}
