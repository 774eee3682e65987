/**
 * The tests' one way to a browser: Debian's chromium, driven by playwright-core (no browser
 * download). Without chromium a browser test is skipped and says why, unless
 * FLL_REQUIRE_BROWSER=1 (CI), where a missing browser fails it.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Page } from 'playwright-core'
import type { Test } from 'tap'

export const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

/** browserSkip is the reason to skip a browser test, or false when it must run. */
export const browserSkip: string | false = !existsSync(chromiumPath) && process.env.FLL_REQUIRE_BROWSER !== '1'
  ? `no browser at ${chromiumPath}: install Debian's chromium (apt-get install chromium) to run this test`
  : false

/** openPage starts a headless chromium with a fresh profile, closed (and removed) at the end of `t`, and returns its page. */
export async function openPage (t: Test): Promise<Page> {
  if (!existsSync(chromiumPath)) throw new Error(`no browser at ${chromiumPath} (FLL_REQUIRE_BROWSER=1): install Debian's chromium`)
  const { chromium } = await import('playwright-core')
  const dir = mkdtempSync(join(tmpdir(), 'fll-browser-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const context = await chromium.launchPersistentContext(join(dir, 'profile'), {
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.teardown(() => context.close())
  return context.pages()[0] ?? await context.newPage()
}
