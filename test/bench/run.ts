/**
 * `npm run bench`: measures the figures the issues name, each next to its baseline in this same
 * run, prints a Markdown table and writes it into README.md between the bench markers.
 */

import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { repositoryRoot } from '../support/guests.ts'
import { coordBench } from './coord-bench.ts'
import { type BenchRow, hostBench } from './host-bench.ts'
import { primitivesBench } from './primitives-bench.ts'
import { runtimeBench } from './runtime-bench.ts'
import { storageNetBench } from './storage-net-bench.ts'

const suites: Array<{ name: string; run: () => Promise<BenchRow[]> }> = [
  { name: 'host', run: hostBench },
  { name: 'coord', run: coordBench },
  { name: 'runtime', run: runtimeBench },
  { name: 'storage', run: storageNetBench },
  { name: 'primitives', run: primitivesBench },
]

function table(rows: BenchRow[]): string {
  const lines = ['| figure | value | unit | note |', '| --- | --- | --- | --- |']
  for (const row of rows) lines.push(`| ${row.name} | ${row.value} | ${row.unit} | ${row.note} |`)
  return lines.join('\n')
}

const only = process.argv.slice(2).filter((word) => !word.startsWith('--'))
const rows: BenchRow[] = []
for (const suite of suites) {
  if (only.length > 0 && !only.includes(suite.name)) continue
  process.stderr.write(`bench: ${suite.name}...\n`)
  rows.push(...(await suite.run()))
}
const markdown = table(rows)
process.stdout.write(`${markdown}\n`)

if (only.length === 0 && !process.argv.includes('--no-readme')) {
  const readmePath = join(repositoryRoot, 'README.md')
  const readme = readFileSync(readmePath, 'utf8')
  const start = '<!-- bench:start -->'
  const end = '<!-- bench:end -->'
  const from = readme.indexOf(start)
  const to = readme.indexOf(end)
  if (from >= 0 && to > from) {
    const stamp = `Measured ${new Date().toISOString().slice(0, 10)} on this project's 2-core machine with \`npm run bench\`.`
    writeFileSync(
      readmePath,
      `${readme.slice(0, from + start.length)}\n${stamp}\n\n${markdown}\n${readme.slice(to)}`,
    )
    process.stderr.write('bench: README.md table updated\n')
  }
}
