/**
 * End-to-end: the demo app in its own process, driven by curl, the eventsource package and a
 * real browser (Debian's chromium through playwright-core), across a SIGTERM and a restart.
 */
import { test, type Test } from 'tap'
import { spawnSync, type ChildProcess } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { EventSource } from 'eventsource'
import { request } from 'undici'
import { browserSkip, openPage } from './browser.js'
import { deferred, waitUntil, withDeadline } from './helpers.js'
import { startProgram } from './program.js'

const root = fileURLToPath(new URL('..', import.meta.url))

interface Demo { child: ChildProcess, port: number, exited: Promise<unknown[]>, logs: () => string }

/**
 * What the page exposes to the test. Functions given to page.evaluate run in the browser, so
 * they reach it through globalThis (the cast is erased) and cannot call anything of ours.
 */
interface PageGlobals {
  demo: { ticks: number[], notes: string[], messages: string[] }
  document: { getElementById (id: string): { textContent: string | null } | null }
}

/** startDemo runs demo-app/server.ts (TypeScript, through the loader tap runs us with). */
async function startDemo (t: Test, env: Record<string, string>): Promise<Demo> {
  const p = await startProgram(t, 'demo-app/server.ts', { HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env })
  if (p.port === null) throw new Error(`the demo did not start:\n${p.out()}\n${p.err()}`)
  return { child: p.child, port: p.port, exited: p.exited, logs: p.out }
}

test('the demo over HTTP: curl -N and EventSource on /events, 406, messages intact, readiness flips while draining', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fll-demo-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const demo = await startDemo(t, { PORT: '0', TICK_MS: '100', DRAIN_DELAY_MS: '1500', STATE_FILE: join(dir, 'state.json') })
  const url = `http://127.0.0.1:${demo.port}`

  const curl = spawnSync('curl', ['-sN', '--max-time', '1', '-H', 'Accept: text/event-stream', `${url}/events`], { encoding: 'utf8' })
  if (curl.error !== undefined) {
    t.comment('curl is not installed: its check is skipped (.ci/run installs it)')
  } else {
    t.match(curl.stdout, /event: welcome\n/, 'curl -N sees the stream')
    t.match(curl.stdout, /event: tick\nid: [0-9a-z]+-\d+\ndata: \{"n":\d+,"at":"[^"]+"\}\n\n/)
  }

  const refused = await request(`${url}/events`, { headers: { accept: 'application/json' } })
  t.equal(refused.statusCode, 406)
  await refused.body.dump()

  const es = new EventSource(`${url}/events`)
  t.teardown(() => { es.close() })
  const got = deferred<string>()
  es.addEventListener('message', (e) => { got.resolve(JSON.parse(e.data).text) })
  await withDeadline(new Promise((resolve) => { es.addEventListener('open', resolve) }), 5000, 'EventSource to open')
  const text = 'line one\nline two\r\nline three\rand unicode: 日本 😀 "quotes" <b>tags</b>\n\n'
  const posted = await request(`${url}/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text }) })
  t.equal(posted.statusCode, 202)
  t.match(await posted.body.json(), { id: /^[0-9a-z]+-\d+$/ })
  t.equal(await withDeadline(got.promise, 5000, 'the message event'), text, 'arrives byte for byte')

  const bad = await request(`${url}/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: 'x'.repeat(1001) }) })
  t.equal(bad.statusCode, 400)
  t.match(await bad.body.json(), { message: /text must NOT have more than 1000 characters/ })
  const slow = await request(`${url}/slow?ms=60001`)
  t.equal(slow.statusCode, 400)
  await slow.body.dump()
  const upstream = await request(`${url}/upstream/slow?ms=20`)
  t.same(await upstream.body.json(), { sleptMs: 20 })

  t.equal((await request(`${url}/readyz`)).statusCode, 200)
  demo.child.kill('SIGTERM')
  await waitUntil(() => /"lifecycle":"draining"/.test(demo.logs()), 5000, 'draining')
  const ready = await request(`${url}/readyz`)
  t.equal(ready.statusCode, 503, 'readiness is 503 while draining')
  await ready.body.dump()
  const health = await request(`${url}/healthz`)
  t.equal(health.statusCode, 200, 'liveness stays 200')
  await health.body.dump()
  const [code] = await withDeadline(demo.exited, 15000, 'the demo to exit')
  t.equal(code, 0, 'exit code 0 after a clean shutdown')
})

test('the demo in a real browser: ticks, a message with a newline, SIGTERM and a restart with replay and no gap', {
  skip: browserSkip
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fll-demo-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const stateFile = join(dir, 'state.json')
  const first = await startDemo(t, { PORT: '0', TICK_MS: '200', STATE_FILE: stateFile })
  const url = `http://127.0.0.1:${first.port}/`

  const page = await openPage(t)
  await page.goto(url)
  const ticks = async (): Promise<number[]> => await page.evaluate(() => (globalThis as unknown as PageGlobals).demo.ticks)
  const notes = async (): Promise<string[]> => await page.evaluate(() => (globalThis as unknown as PageGlobals).demo.notes)
  await page.waitForFunction(() => (globalThis as unknown as PageGlobals).demo.ticks.length >= 3, undefined, { timeout: 10000 })
  t.ok((await page.textContent('#tick'))?.match(/^\d+$/), 'the tick number is on the page')
  await page.waitForFunction(() => (globalThis as unknown as PageGlobals).document.getElementById('s-lifecycle')?.textContent === 'running', undefined, { timeout: 10000 })

  const text = 'hello from the browser\nsecond line ✓'
  await page.fill('#text', text)
  await page.click('button[type=submit]')
  await page.waitForFunction((expected) => (globalThis as unknown as PageGlobals).demo.messages.includes(expected), text, { timeout: 10000 })
  t.equal(await page.textContent('#messages li'), text, 'the message is shown intact, newline included')

  first.child.kill('SIGTERM')
  const [code] = await withDeadline(first.exited, 15000, 'the first demo to exit')
  t.equal(code, 0)
  const lastBefore = (await ticks()).at(-1)!
  const second = await startDemo(t, { PORT: String(first.port), TICK_MS: '200', STATE_FILE: stateFile })
  await page.waitForFunction(() => (globalThis as unknown as PageGlobals).demo.notes.some((n) => n.startsWith('Reconnected')), undefined, { timeout: 20000 })
  await page.waitForFunction((n) => (globalThis as unknown as PageGlobals).demo.ticks.at(-1)! >= n + 3, lastBefore, { timeout: 10000 })
  const all = await ticks()
  const gaps = all.slice(1).filter((n, i) => n !== all[i]! + 1)
  t.same(gaps, [], `tick numbers have no gap and no duplicate across the restart (${all[0]}..${all.at(-1)})`)
  t.ok(all.at(-1)! > lastBefore, 'the second process goes on from the saved counter')
  const reconnected = (await notes()).find((n) => n.startsWith('Reconnected'))!
  t.match(reconnected, /Reconnected: \d+ events? replayed\./)
  t.comment(reconnected)

  mkdirSync(join(root, 'test/artifacts'), { recursive: true })
  await page.screenshot({ path: join(root, 'test/artifacts/demo.png'), fullPage: true })
  second.child.kill('SIGTERM')
  await withDeadline(second.exited, 15000, 'the second demo to exit')
})
