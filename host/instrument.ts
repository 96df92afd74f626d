/**
 * Instrumentation: turns a guest module into one whose running state can be saved and restored.
 *
 * - Asyncify on exactly the imports that may block (host/abi.ts), its data kept in a secondary
 *   memory so that the guest's own memory layout is untouched.
 * - A dirty-page map: every store, memory.fill, memory.copy and memory.init marks the 64 KiB pages
 *   it writes in a second secondary memory, so an incremental save reads only what changed.
 * - memory.grow goes through a check against `fabric_memory_pages_max`, a global the host sets.
 * - Every mutable global of the guest is exported, so memory + globals + Asyncify data is the whole
 *   state of a suspended thread.
 *
 * Results are cached by the SHA-256 of the input, in memory and optionally on disk.
 */

import binaryen from 'binaryen'
import { importModuleEnvironment, importModuleWasi, instrumentedNames, isBlockingImport } from './abi.ts'
import { InvalidModuleError } from './errors.ts'
import {
  type InstrumentCache,
  type InstrumentedModule,
  type InstrumentOptions,
  instrumentationVersion,
} from './instrumented-module.ts'
import {
  asyncifyMemoryPages,
  hostGlobalMemoryPagesMax,
  hostGlobalMemoryRefusedPages,
  wasmPagesMax,
} from './memory-layout.ts'
import { appendMemory } from './wasm-binary.ts'

export type { InstrumentCache, InstrumentedModule, InstrumentOptions }
export { instrumentationVersion }

const features =
  binaryen.Features.MVP |
  binaryen.Features.MutableGlobals |
  binaryen.Features.SignExt |
  binaryen.Features.NontrappingFPToInt |
  binaryen.Features.BulkMemory |
  binaryen.Features.BulkMemoryOpt |
  binaryen.Features.Multivalue |
  binaryen.Features.MultiMemory

/** Parts of binaryen.js that its type declarations leave out. */
interface ExpressionSetters {
  Store: { setPtr(expression: number, ptr: number): void; setValue(expression: number, value: number): void }
  MemoryGrow: { setDelta(expression: number, delta: number): void }
  MemoryFill: BulkSetters
  MemoryCopy: BulkSetters
  MemoryInit: BulkSetters
  _BinaryenFunctionAddVar(functionRef: number, type: number): number
}
interface BulkSetters {
  setDest(expression: number, dest: number): void
  setSize(expression: number, size: number): void
}
const setters = binaryen as unknown as ExpressionSetters

type ChildKey = string
const children: Partial<Record<number, readonly ChildKey[]>> = {
  [binaryen.BlockId]: ['children'],
  [binaryen.IfId]: ['condition', 'ifTrue', 'ifFalse'],
  [binaryen.LoopId]: ['body'],
  [binaryen.BreakId]: ['condition', 'value'],
  [binaryen.SwitchId]: ['condition', 'value'],
  [binaryen.CallId]: ['operands'],
  [binaryen.CallIndirectId]: ['target', 'operands'],
  [binaryen.LocalSetId]: ['value'],
  [binaryen.GlobalSetId]: ['value'],
  [binaryen.LoadId]: ['ptr'],
  [binaryen.StoreId]: ['ptr', 'value'],
  [binaryen.UnaryId]: ['value'],
  [binaryen.BinaryId]: ['left', 'right'],
  [binaryen.SelectId]: ['ifTrue', 'ifFalse', 'condition'],
  [binaryen.DropId]: ['value'],
  [binaryen.ReturnId]: ['value'],
  [binaryen.MemoryGrowId]: ['delta'],
  [binaryen.MemoryInitId]: ['dest', 'offset', 'size'],
  [binaryen.MemoryCopyId]: ['dest', 'source', 'size'],
  [binaryen.MemoryFillId]: ['dest', 'value', 'size'],
  [binaryen.TupleMakeId]: ['operands'],
  [binaryen.TupleExtractId]: ['tuple'],
  [binaryen.RefIsNullId]: ['value'],
  [binaryen.TableGetId]: ['index'],
  [binaryen.TableSetId]: ['index', 'value'],
  [binaryen.TableGrowId]: ['value', 'delta'],
  [binaryen.NopId]: [],
  [binaryen.LocalGetId]: [],
  [binaryen.GlobalGetId]: [],
  [binaryen.ConstId]: [],
  [binaryen.MemorySizeId]: [],
  [binaryen.UnreachableId]: [],
  [binaryen.RefNullId]: [],
  [binaryen.RefFuncId]: [],
  [binaryen.DataDropId]: [],
  [binaryen.TableSizeId]: [],
}

const markRangeFunction = 'fabric_mark_range'
const checkGrowFunction = 'fabric_check_grow'

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>)
  return Buffer.from(digest).toString('hex')
}

const memoryCache = new Map<string, Promise<InstrumentedModule>>()

/** Instruments `bytes` (validated by the caller) or returns the cached result. */
export async function instrument(
  bytes: Uint8Array,
  options: InstrumentOptions = {},
): Promise<InstrumentedModule> {
  const moduleDigest = await sha256Hex(bytes)
  let pending = memoryCache.get(moduleDigest)
  if (pending === undefined) {
    pending = instrumentUncached(bytes, moduleDigest, options)
    memoryCache.set(moduleDigest, pending)
    pending.catch(() => memoryCache.delete(moduleDigest))
  }
  return pending
}

async function instrumentUncached(
  bytes: Uint8Array,
  moduleDigest: string,
  options: InstrumentOptions,
): Promise<InstrumentedModule> {
  const cached = await options.cache?.read(moduleDigest)
  if (cached !== undefined) return cached
  const result = transform(bytes, moduleDigest)
  await options.cache?.write(result)
  return result
}

function transform(bytes: Uint8Array, moduleDigest: string): InstrumentedModule {
  const module = readModule(appendMemory(bytes, 1))
  try {
    const dirtyMemory = '1'
    module.getMemoryInfo(dirtyMemory)
    const guestMemory = findGuestMemory(module)
    const blockingImports = collectBlockingImports(module)
    const globals = collectMutableGlobals(module)
    addHostGlobalsAndHelpers(module, guestMemory, dirtyMemory)
    const instanceReusable = instrumentFunctions(module, dirtyMemory)

    binaryen.setOptimizeLevel(2)
    binaryen.setShrinkLevel(0)
    binaryen.setPassArgument('asyncify-imports', blockingImports.join(','))
    binaryen.setPassArgument('asyncify-in-secondary-memory', '1')
    binaryen.setPassArgument('asyncify-secondary-memory-size', String(asyncifyMemoryPages))
    module.runPasses(['asyncify'])
    binaryen.setPassArgument('asyncify-imports', null as unknown as string)

    globals.forEach((name, index) => {
      module.addGlobalExport(name, instrumentedNames.globalPrefix + index)
    })
    module.addMemoryExport(dirtyMemory, instrumentedNames.dirtyMemory)
    module.addMemoryExport('asyncify_memory', instrumentedNames.asyncifyMemory)
    if (!module.validate())
      throw new InvalidModuleError('instrumentation produced an invalid module (a bug in Fabric)')
    const mainEntry = hasExport(module, '_start') ? '_start' : 'main'
    return {
      bytes: module.emitBinary(),
      globalCount: globals.length,
      mainEntry,
      moduleDigest,
      instanceReusable,
    }
  } finally {
    module.dispose()
  }
}

function readModule(bytes: Uint8Array): binaryen.Module {
  let module: binaryen.Module
  try {
    module = binaryen.readBinary(bytes)
  } catch {
    throw new InvalidModuleError('module could not be read by the instrumenter')
  }
  module.setFeatures(features)
  if (!module.validate()) {
    module.dispose()
    throw new InvalidModuleError(
      'module uses WebAssembly features Fabric does not support yet (SIMD, threads, GC, exceptions, memory64)',
    )
  }
  return module
}

function hasExport(module: binaryen.Module, name: string): boolean {
  for (let index = 0; index < module.getNumExports(); index++) {
    if (binaryen.getExportInfo(module.getExportByIndex(index)).name === name) return true
  }
  return false
}

function findGuestMemory(module: binaryen.Module): string {
  for (let index = 0; index < module.getNumExports(); index++) {
    const info = binaryen.getExportInfo(module.getExportByIndex(index))
    if (info.kind === binaryen.ExternalMemory && info.name === 'memory') return info.value
  }
  throw new InvalidModuleError('module does not export its memory as "memory"')
}

function collectBlockingImports(module: binaryen.Module): string[] {
  const names: string[] = []
  for (let index = 0; index < module.getNumFunctions(); index++) {
    const info = binaryen.getFunctionInfo(module.getFunctionByIndex(index))
    if (info.module && info.base && isBlockingImport(info.module, info.base))
      names.push(`${info.module}.${info.base}`)
  }
  // Asyncify treats an empty list as "every import may block"; name one that cannot exist instead.
  return names.length > 0 ? names : [`${importModuleEnvironment}.fabric_none`]
}

function collectMutableGlobals(module: binaryen.Module): string[] {
  const names: string[] = []
  for (let index = 0; index < module.getNumGlobals(); index++) {
    const info = binaryen.getGlobalInfo(module.getGlobalByIndex(index))
    if (!info.mutable) continue
    if (info.module) throw new InvalidModuleError(`module imports mutable global ${info.module}.${info.base}`)
    names.push(info.name)
  }
  return names
}

function addHostGlobalsAndHelpers(module: binaryen.Module, guestMemory: string, dirtyMemory: string): void {
  const { i32 } = binaryen
  module.addGlobal(hostGlobalMemoryPagesMax, i32, true, module.i32.const(wasmPagesMax))
  module.addGlobal(hostGlobalMemoryRefusedPages, i32, true, module.i32.const(0))
  module.addGlobalExport(hostGlobalMemoryPagesMax, hostGlobalMemoryPagesMax)
  module.addGlobalExport(hostGlobalMemoryRefusedPages, hostGlobalMemoryRefusedPages)

  // fabric_mark_range(start, length) -> length: marks every page of [start, start + length).
  const start = () => module.local.get(0, i32)
  const length = () => module.local.get(1, i32)
  const page = () => module.local.get(2, i32)
  module.addFunction(
    markRangeFunction,
    binaryen.createType([i32, i32]),
    i32,
    [i32, i32],
    module.block(
      null,
      [
        module.if(
          length(),
          module.block(null, [
            module.local.set(2, module.i32.shr_u(start(), module.i32.const(16))),
            module.local.set(
              3,
              module.i32.shr_u(
                module.i32.add(start(), module.i32.sub(length(), module.i32.const(1))),
                module.i32.const(16),
              ),
            ),
            module.loop(
              'mark',
              module.block(null, [
                module.i32.store8(0, 1, page(), module.i32.const(1), dirtyMemory),
                module.local.set(2, module.i32.add(page(), module.i32.const(1))),
                module.br('mark', module.i32.le_u(page(), module.local.get(3, i32))),
              ]),
            ),
          ]),
        ),
        length(),
      ],
      i32,
    ),
  )

  // fabric_check_grow(delta) -> delta, or -1 (a grow that must fail) past the host's page limit.
  const delta = () => module.local.get(0, i32)
  const wanted = module.i64.add(
    module.i64.extend_u(module.memory.size(guestMemory)),
    module.i64.extend_u(delta()),
  )
  module.addFunction(
    checkGrowFunction,
    i32,
    i32,
    [binaryen.i64],
    module.block(
      null,
      [
        module.local.set(1, wanted),
        module.if(
          module.i64.gt_u(
            module.local.get(1, binaryen.i64),
            module.i64.extend_u(module.global.get(hostGlobalMemoryPagesMax, i32)),
          ),
          module.block(null, [
            module.global.set(
              hostGlobalMemoryRefusedPages,
              module.i32.wrap(module.local.get(1, binaryen.i64)),
            ),
            module.return(module.i32.const(-1)),
          ]),
        ),
        delta(),
      ],
      i32,
    ),
  )
}

/** Instructions that change state outside memories and globals: an instance that ran them is not reused. */
const instanceStateIds: ReadonlySet<number> = new Set([
  binaryen.TableSetId,
  binaryen.TableGrowId,
  binaryen.MemoryInitId,
  binaryen.DataDropId,
])

/** Instruments every function; returns whether the module's instances can be reused (no table or segment changes). */
function instrumentFunctions(module: binaryen.Module, dirtyMemory: string): boolean {
  const { i32 } = binaryen
  let instanceReusable = true
  for (let index = 0; index < module.getNumFunctions(); index++) {
    const functionRef = module.getFunctionByIndex(index)
    const info = binaryen.getFunctionInfo(functionRef)
    if (info.module || info.name === markRangeFunction || info.name === checkGrowFunction) continue
    const newLocal = (type: number) => setters._BinaryenFunctionAddVar(functionRef, type)
    // A store's address is held from its evaluation until the store: one local per depth of stores
    // nested in stores' operands, so an inner store does not overwrite an outer one's address.
    const pointerLocals: number[] = []
    const pointerLocal = (depth: number) => {
      while (pointerLocals.length <= depth) pointerLocals.push(newLocal(i32))
      return pointerLocals[depth]!
    }
    // A store's value is held only between its evaluation and the store (marks in between): one
    // local per type is enough.
    const valueLocals = new Map<number, number>()
    const valueLocal = (type: number) => {
      let local = valueLocals.get(type)
      if (local === undefined) {
        local = newLocal(type)
        valueLocals.set(type, local)
      }
      return local
    }

    const pending: Array<[expression: number, storeDepth: number]> = [[info.body, 0]]
    while (pending.length > 0) {
      const [expression, storeDepth] = pending.pop()!
      if (expression === 0) continue
      const id = binaryen.getExpressionId(expression)
      if (instanceStateIds.has(id)) instanceReusable = false
      const keys = children[id]
      if (keys === undefined) {
        throw new InvalidModuleError(
          `module uses an instruction Fabric cannot instrument yet (expression kind ${id})`,
        )
      }
      if (keys.length === 0) continue
      const expressionInfo = binaryen.getExpressionInfo(expression) as unknown as Record<
        string,
        number | number[]
      >
      const childDepth = id === binaryen.StoreId ? storeDepth + 1 : storeDepth
      for (const key of keys) {
        const child = expressionInfo[key]
        if (Array.isArray(child)) for (const each of child) pending.push([each, childDepth])
        else if (typeof child === 'number') pending.push([child, childDepth])
      }
      if (id === binaryen.StoreId) {
        // The pages are marked after the value is evaluated, right before the store: a value that
        // comes from a blocking call (`handles[i] = spawn(...)`) is stored after the thread was
        // suspended in that call, and a save taken there clears the map. Marks made with the address,
        // before the call, would be cleared and the stored page missing from the next incremental
        // save: a thread restored from it would read the old bytes.
        const store = expressionInfo as unknown as {
          ptr: number
          value: number
          offset: number
          bytes: number
          valueType: number
        }
        const address = pointerLocal(storeDepth)
        const value = valueLocal(store.valueType)
        const mark = (byteOffset: number) =>
          module.i32.store8(
            0,
            1,
            module.i32.shr_u(
              module.i32.add(module.local.get(address, i32), module.i32.const(byteOffset)),
              module.i32.const(16),
            ),
            module.i32.const(1),
            dirtyMemory,
          )
        setters.Store.setPtr(expression, module.local.tee(address, store.ptr, i32))
        setters.Store.setValue(
          expression,
          module.block(
            null,
            [
              module.local.set(value, store.value),
              mark(store.offset),
              mark(store.offset + store.bytes - 1),
              module.local.get(value, store.valueType),
            ],
            store.valueType,
          ),
        )
      } else if (
        id === binaryen.MemoryFillId ||
        id === binaryen.MemoryCopyId ||
        id === binaryen.MemoryInitId
      ) {
        const bulk = expressionInfo as unknown as { dest: number; size: number }
        const destLocal = newLocal(i32)
        const kind =
          id === binaryen.MemoryFillId
            ? setters.MemoryFill
            : id === binaryen.MemoryCopyId
              ? setters.MemoryCopy
              : setters.MemoryInit
        kind.setDest(expression, module.local.tee(destLocal, bulk.dest, i32))
        kind.setSize(
          expression,
          module.call(markRangeFunction, [module.local.get(destLocal, i32), bulk.size], i32),
        )
      } else if (id === binaryen.MemoryGrowId) {
        const grow = expressionInfo as unknown as { delta: number }
        setters.MemoryGrow.setDelta(expression, module.call(checkGrowFunction, [grow.delta], i32))
      }
    }
  }
  return instanceReusable
}

export const supportedImportModules = [importModuleWasi, importModuleEnvironment] as const
