/** Where the browser tests find headless Chromium, and the flags they start it with. */

export const chromiumPath = process.env.FABRIC_CHROMIUM ?? '/usr/bin/chromium'

export const chromiumArgs = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
]
