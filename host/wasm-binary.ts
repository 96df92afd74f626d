/**
 * Minimal reading and patching of the WebAssembly binary format: just what instrumentation needs
 * before Binaryen takes over (Binaryen's JS API cannot add a second memory without dropping the
 * first one's data segments).
 */

import { InvalidModuleError } from './errors.ts'

const sectionMemory = 5
const headerBytes = 8

function readUnsignedLeb(bytes: Uint8Array, start: number): { value: number; next: number } {
  let value = 0
  let shift = 0
  let position = start
  for (;;) {
    if (position >= bytes.length || shift > 28)
      throw new InvalidModuleError('malformed LEB128 number in module')
    const byte = bytes[position++]!
    value |= (byte & 0x7f) << shift
    shift += 7
    if ((byte & 0x80) === 0) return { value: value >>> 0, next: position }
  }
}

function writeUnsignedLeb(value: number): number[] {
  const out: number[] = []
  let rest = value >>> 0
  do {
    let byte = rest & 0x7f
    rest >>>= 7
    if (rest !== 0) byte |= 0x80
    out.push(byte)
  } while (rest !== 0)
  return out
}

export interface Section {
  id: number
  body: Uint8Array
}

export function readSections(bytes: Uint8Array): Section[] {
  const sections: Section[] = []
  let position = headerBytes
  while (position < bytes.length) {
    const id = bytes[position]!
    const { value: size, next } = readUnsignedLeb(bytes, position + 1)
    if (next + size > bytes.length) throw new InvalidModuleError('a section runs past the end of the module')
    sections.push({ id, body: bytes.subarray(next, next + size) })
    position = next + size
  }
  return sections
}

/** Appends a memory of `pages` pages (min = max) to the memory section; returns the patched module. */
export function appendMemory(bytes: Uint8Array, pages: number): Uint8Array {
  const parts: Uint8Array[] = [bytes.subarray(0, headerBytes)]
  let appended = false
  for (const section of readSections(bytes)) {
    let body = section.body
    if (section.id === sectionMemory) {
      const { value: count, next } = readUnsignedLeb(section.body, 0)
      const limits = [0x01, ...writeUnsignedLeb(pages), ...writeUnsignedLeb(pages)]
      body = concatenate([
        Uint8Array.from(writeUnsignedLeb(count + 1)),
        section.body.subarray(next),
        Uint8Array.from(limits),
      ])
      appended = true
    }
    parts.push(Uint8Array.of(section.id, ...writeUnsignedLeb(body.length)), body)
  }
  if (!appended)
    throw new InvalidModuleError('module defines no memory; a Fabric guest must define and export one')
  return concatenate(parts)
}

export function concatenate(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0))
  let offset = 0
  for (const part of parts) {
    out.set(part, offset)
    offset += part.length
  }
  return out
}

/** Appends a custom section `name` holding `content`. */
export function appendCustomSection(bytes: Uint8Array, name: string, content: Uint8Array): Uint8Array {
  const encodedName = new TextEncoder().encode(name)
  const body = concatenate([Uint8Array.from(writeUnsignedLeb(encodedName.length)), encodedName, content])
  return concatenate([bytes, Uint8Array.of(0, ...writeUnsignedLeb(body.length)), body])
}
