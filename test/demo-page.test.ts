/**
 * The demo page behind a flaky proxy, in a real browser (Debian's chromium through
 * playwright-core): a 502 on /events makes EventSource give up for good (readyState CLOSED), and
 * the page must build a new one by itself, with a backoff, resuming from the last event id it saw;
 * and its last-minute sparklines fill in.
 */
import { test } from 'tap'
import http, { type ClientRequest, type IncomingHttpHeaders, type ServerResponse } from 'node:http'
import { buildApp } from '../demo-app/app.js'
import { browserSkip, openPage } from './browser.js'
import { listen, waitUntil } from './helpers.js'

/** The query parameter the page passes its last event id in (the sse plugin's `lastEventIdQuery`). */
const lastEventIdQuery = 'lastEventId'

/**
 * What the page exposes to the test. Functions given to page.evaluate run in the browser, so
 * they reach it through globalThis (the cast is erased) and cannot call anything of ours.
 */
interface PageGlobals {
  demo: {
    ticks: number[]
    notes: string[]
    /** The delay (ms) of each retry the page scheduled after EventSource gave up, in order. */
    retries: number[]
    welcomes: Array<{ replayed: number, reset: boolean, resumedFrom: string | null }>
    chart: { samples: Array<{ at: number, events: number, connections: number | null }> }
  }
  document: {
    getElementById (id: string): { textContent: string | null } | null
    querySelector (selector: string): { getAttribute (name: string): string | null } | null
  }
}

/** One /events request as the proxy saw it. */
interface EventsRequest { url: string, lastEventId: string | undefined, status: number }

interface FlakyProxy {
  port: number
  /** Every /events request, in arrival order. */
  requests: EventsRequest[]
  /** The most /events streams ever open through the proxy at once. */
  maxOpen: number
  /** failNext answers the next `n` /events requests 502, as a proxy whose upstream is down. */
  failNext (n: number): void
  /** cut destroys the /events streams open now, as a proxy that loses its upstream. */
  cut (): void
  close (): Promise<void>
}

const hopByHop = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer'])
function endToEnd (headers: IncomingHttpHeaders): IncomingHttpHeaders {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !hopByHop.has(name)))
}

/** startFlakyProxy forwards everything to the upstream port, except the /events requests it is told to fail. */
async function startFlakyProxy (upstreamPort: number): Promise<FlakyProxy> {
  const agent = new http.Agent({ keepAlive: false })
  const open = new Set<{ res: ServerResponse, upstream: ClientRequest }>()
  let failures = 0
  const server = http.createServer((req, res) => {
    const isEvents = new URL(req.url ?? '/', 'http://proxy').pathname === '/events'
    if (isEvents && failures > 0) {
      failures--
      proxy.requests.push({ url: req.url!, lastEventId: req.headers['last-event-id'] as string | undefined, status: 502 })
      res.writeHead(502, { 'content-type': 'text/html' }).end('<h1>502 Bad Gateway</h1>')
      return
    }
    const upstream = http.request({ host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: endToEnd(req.headers), agent }, (up) => {
      if (isEvents) proxy.requests.push({ url: req.url!, lastEventId: req.headers['last-event-id'] as string | undefined, status: up.statusCode! })
      res.writeHead(up.statusCode!, endToEnd(up.headers))
      up.pipe(res)
    })
    // A cut stream, or the app closing at the end of the test: the other side goes too.
    upstream.on('error', () => { res.destroy() })
    res.on('close', () => { upstream.destroy() })
    req.pipe(upstream)
    if (isEvents) {
      const entry = { res, upstream }
      open.add(entry)
      proxy.maxOpen = Math.max(proxy.maxOpen, open.size)
      res.on('close', () => { open.delete(entry) })
    }
  })
  const proxy: FlakyProxy = {
    port: 0,
    requests: [],
    maxOpen: 0,
    failNext (n) { failures = n },
    cut () { for (const { res } of open) res.destroy() },
    async close () {
      server.closeAllConnections()
      await new Promise<void>((resolve) => { server.close(() => { resolve() }) })
      agent.destroy()
    }
  }
  server.listen(0, '127.0.0.1')
  await new Promise<void>((resolve, reject) => { server.once('listening', resolve).once('error', reject) })
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  proxy.port = address.port
  return proxy
}

const retryNote = /^Connection lost, retrying in \d+\.\d s\.$/

test('the demo page behind a proxy answering 502: it comes back by itself, with a backoff, from the last event id; the sparklines fill in', {
  skip: browserSkip
}, async (t) => {
  const app = await buildApp({ host: '127.0.0.1', port: 0, tickMs: 100, drainDelayMs: 0, stateFile: null, logLevel: 'warn', signals: false })
  t.teardown(() => app.close())
  const proxy = await startFlakyProxy(await listen(app))
  t.teardown(() => proxy.close())

  const page = await openPage(t)
  const demo = async (): Promise<PageGlobals['demo']> => await page.evaluate(() => (globalThis as unknown as PageGlobals).demo)

  // 1. The very first /events answers 502: EventSource is CLOSED before it ever opened.
  proxy.failNext(1)
  await page.goto(`http://127.0.0.1:${proxy.port}/`)
  await page.waitForFunction(() => (globalThis as unknown as PageGlobals).demo.ticks.length >= 3, undefined, { timeout: 10000 })
  let state = await demo()
  t.match(state.notes[0], retryNote, 'the page says it lost the stream and when it retries')
  t.match(await page.textContent('#notes'), /Connection lost, retrying in \d+\.\d s\./, 'and shows it in its notes')
  t.equal(state.retries.length, 1, 'one retry scheduled')
  t.ok(state.retries[0]! >= 500 && state.retries[0]! <= 1000, `the first retry waits 0.5..1 s (${state.retries[0]} ms)`)
  t.same(proxy.requests.map((r) => r.status), [502, 200], 'one 502, then one new EventSource')

  // 2. The sparklines: one sample a second; events per second never has a gap, so one line.
  await page.waitForFunction(() => {
    const d = (globalThis as unknown as PageGlobals).document.querySelector('#spark-events path')?.getAttribute('d') ?? ''
    return /^M[\d.]+ [\d.]+( L[\d.]+ [\d.]+){2,}$/.test(d)
  }, undefined, { timeout: 10000 })
  state = await demo()
  const samples = state.chart.samples
  t.ok(samples.some((s) => s.events > 0), `events per second are counted (${samples.map((s) => s.events).join(', ')})`)
  t.ok(samples.some((s) => s.connections !== null && s.connections >= 1), `connections come from the stats events (${samples.map((s) => s.connections ?? '–').join(', ')})`)
  t.match(await page.getAttribute('#spark-connections path', 'd'), /^M[\d.]+ [\d.]+( L[\d.]+ [\d.]+)+/, 'the connections sparkline is drawn')

  // 3. The proxy loses the stream and answers 502 twice: the browser retries once by itself
  // (CONNECTING, no second EventSource from the page), gives up on the 502, and the page
  // takes over with a backoff that starts again from 1 s after the open in between.
  const before = proxy.requests.length
  const lastTickBefore = state.ticks.at(-1)!
  proxy.failNext(3)
  proxy.cut()
  await page.waitForFunction((n) => (globalThis as unknown as PageGlobals).demo.ticks.at(-1)! >= n + 5, lastTickBefore, { timeout: 20000 })
  await waitUntil(() => proxy.requests.length >= before + 4, 5000, 'the proxy to log the reconnection')
  state = await demo()
  const after = proxy.requests.slice(before)
  t.same(after.map((r) => r.status), [502, 502, 502, 200], 'the browser\'s own retry and two of the page\'s fail, the third gets through')
  const lastSeen = after[0]!.lastEventId
  t.match(lastSeen, /^[0-9a-z]+-\d+$/, 'the browser\'s own retry carries Last-Event-ID (a hub id)')
  for (const r of after.slice(1)) {
    t.equal(new URL(r.url, 'http://proxy').searchParams.get(lastEventIdQuery), lastSeen, `a new EventSource resumes from ?${lastEventIdQuery}= (${r.url})`)
  }
  t.equal(proxy.maxOpen, 1, 'never two streams at once')
  t.equal(state.retries.length, 4, 'three more retries scheduled, none while the browser retried by itself')
  const [first, second, third] = state.retries.slice(1)
  t.ok(first! >= 500 && first! <= 1000, `after an open, the backoff starts again at 0.5..1 s (${first} ms)`)
  t.ok(second! >= 1000 && second! <= 2000, `then doubles: 1..2 s (${second} ms)`)
  t.ok(third! >= 2000 && third! <= 4000, `and doubles again: 2..4 s (${third} ms)`)
  t.equal(state.notes.filter((n) => retryNote.test(n)).length, 4, 'one note per retry')

  // The server reads the query parameter (sse option lastEventIdQuery); the welcome event echoes what it read.
  t.equal(state.welcomes.at(-1)!.resumedFrom, lastSeen, 'the server resumed from the id in the query')
  const gaps = state.ticks.slice(1).filter((n, i) => n !== state.ticks[i]! + 1)
  t.same(gaps, [], `tick numbers have no gap and no duplicate across the outage (${state.ticks[0]}..${state.ticks.at(-1)})`)
})
