import { existsSync } from 'node:fs'
import { describe, expect, test } from 'vitest'
import { nodeEnvironment, tcmallocPaths } from '../fabric/cli/local-cluster.ts'

const tcmalloc = tcmallocPaths.find((path) => existsSync(path))

describe("the embedded cluster's node environment", () => {
  test('keeps glibc malloc when asked to, and the rest of the environment as it is', () => {
    const environment = { FABRIC_NODE_MALLOC: 'system', PATH: '/bin' }
    expect(nodeEnvironment(environment)).toEqual(environment)
  })

  test.runIf(tcmalloc !== undefined)('preloads tcmalloc, before what was preloaded already, once', () => {
    expect(nodeEnvironment({ PATH: '/bin' })).toEqual({ PATH: '/bin', LD_PRELOAD: tcmalloc })
    const withOther = nodeEnvironment({ LD_PRELOAD: '/opt/other.so' })
    expect(withOther.LD_PRELOAD).toBe(`${tcmalloc}:/opt/other.so`)
    expect(nodeEnvironment(withOther)).toEqual(withOther)
  })

  test.runIf(tcmalloc === undefined)('without tcmalloc installed, changes nothing', () => {
    expect(nodeEnvironment({ PATH: '/bin' })).toEqual({ PATH: '/bin' })
  })
})
