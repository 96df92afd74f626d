#!/usr/bin/env node
// `fabric` command. npm scripts and `npx fabric` run it on the Node 24 pinned in devDependencies.
import('./main.ts').catch((error) => {
  process.stderr.write(`fabric: ${error?.message ?? error}\n`)
  process.exit(1)
})
