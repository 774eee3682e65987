/**
 * The README's code runs as written.
 *
 * (a) Every TypeScript or JavaScript block of the README is either a snippet, marked with
 * `<!-- snippet: test/snippets/<name>.ts -->` on the line before its fence and equal to that file
 * character for character, or a fragment listed in `fragments` below with the reason it is not a
 * program of its own.
 *
 * (b) Each snippet runs in its own process, through the loader tap runs us with, with one change:
 * `port: 3000` becomes `port: 0`, in a copy under test/snippets/.run/ (removed afterwards; the
 * package's self-reference resolves 'fastify-long-lived' to dist/, which `npm test` builds first).
 * The test finds the port in Fastify's "Server listening at" log line (every snippet has
 * `logger: true`), makes the requests that show the snippet does what the README says, sends
 * SIGTERM and expects exit code 0 (every snippet registers the shutdown plugin, whose signals are
 * on by default). The snippets run four at a time; every wait has a deadline.
 */
import { test, type Test } from 'tap'
import { once } from 'node:events'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { resolveOptions as resolveShutdown } from '../plugins/shutdown.js'
import { browserSkip, openPage } from './browser.js'
import { startProgram } from './program.js'
import { waitUntil, withDeadline } from './helpers.js'
import { openStream } from './sse-helpers.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const snippetsDir = join(root, 'test/snippets')
const runDir = join(snippetsDir, '.run')
const readme = readFileSync(join(root, 'README.md'), 'utf8').replace(/\r\n/g, '\n')
const startDeadline = 30000 // a snippet's process to listen: its TypeScript is compiled on start
const promptly = 5000

/** A fenced code block of the README. */
interface Block { lang: string, code: string, line: number, snippet: string | null }

/**
 * blocks returns the README's fenced code blocks (indented ones in lists too, unindented), with
 * the snippet file named by a `<!-- snippet: ... -->` comment on the line before the fence.
 */
function blocks (): Block[] {
  const lines = readme.split('\n')
  const out: Block[] = []
  for (let i = 0; i < lines.length; i++) {
    const open = /^( *)```(\w*)\s*$/.exec(lines[i]!)
    if (open === null) continue
    const [, indent, lang] = open
    const end = lines.findIndex((l, j) => j > i && l === `${indent}\`\`\``)
    if (end === -1) throw new Error(`README.md:${i + 1}: a code fence that is never closed`)
    const code = lines.slice(i + 1, end).map((l) => l.slice(indent!.length)).join('\n') + '\n'
    const marker = /^\s*<!-- snippet: (\S+) -->\s*$/.exec(lines[i - 1] ?? '')
    out.push({ lang: lang!, code, line: i + 1, snippet: marker?.[1] ?? null })
    i = end
  }
  return out
}

const programLanguages = new Set(['ts', 'typescript', 'js', 'javascript', 'mjs', 'cjs', 'tsx', 'jsx'])

/**
 * The README's TypeScript and JavaScript blocks that are not snippets: a piece of text only they
 * hold, and why each is not a program of its own (and what checks it instead).
 */
const fragments: Array<{ holds: string, reason: string }> = [
  {
    holds: "const { longLived } = require('fastify-long-lived')",
    reason: 'CommonJS: test/sse-usage.test.ts checks it is test/fixtures/commonjs-app.cjs (but for its listen) and runs that file'
  },
  {
    holds: 'async function * guarded<T>',
    reason: 'a helper inside the migration list, shown with the one line that uses it; test/migration.test.ts runs the same function'
  }
]

test('every TypeScript or JavaScript block of the README is a snippet, equal to its file, or a listed fragment', async (t) => {
  const all = blocks()
  const programs = all.filter((b) => programLanguages.has(b.lang))
  t.ok(programs.length >= 10, `${programs.length} TypeScript or JavaScript blocks`)
  const used = new Set<string>()
  for (const block of programs) {
    if (block.snippet !== null) {
      t.match(block.snippet, /^test\/snippets\/[\w-]+\.ts$/, `README.md:${block.line}: the marker names a file in test/snippets/`)
      const file = join(root, block.snippet)
      t.ok(existsSync(file), `README.md:${block.line}: ${block.snippet} exists`)
      if (!existsSync(file)) continue
      t.equal(block.code, readFileSync(file, 'utf8'), `README.md:${block.line} is ${block.snippet}, character for character`)
      t.notOk(used.has(block.snippet), `${block.snippet} is shown once`)
      used.add(block.snippet)
      continue
    }
    const fragment = fragments.filter((f) => block.code.includes(f.holds))
    t.equal(fragment.length, 1, `README.md:${block.line} (${block.lang}): not a snippet, so a listed fragment (${fragment[0]?.reason ?? 'none matches: mark it or list it'})`)
  }
  for (const f of fragments) {
    t.equal(programs.filter((b) => b.snippet === null && b.code.includes(f.holds)).length, 1, `the fragment holding "${f.holds}" is in the README once`)
  }
  // Any other block marked as a snippet would escape the checks above.
  t.same(all.filter((b) => b.snippet !== null && !programLanguages.has(b.lang)).map((b) => b.line), [], 'snippet markers stand only before ts blocks')
  const files = readdirSync(snippetsDir).filter((f) => f.endsWith('.ts')).map((f) => `test/snippets/${f}`)
  t.same(files.filter((f) => !used.has(f)), [], 'every file in test/snippets/ is shown in the README')
  for (const f of files) {
    const text = readFileSync(join(root, f), 'utf8')
    t.equal(text.split('port: 3000').length - 1, 1, `${f}: one \`port: 3000\`, the one thing the test changes`)
    t.match(text, /Fastify\(\{ logger: true/, `${f}: logs, so the test can read its port`)
  }
})

/** A snippet running in its own process. */
interface Running {
  /** port is where it listens, on 127.0.0.1. */
  port: number
  url: string
  /** logs returns what it printed so far (Fastify's JSON lines). */
  logs: () => string
  /** stop sends SIGTERM and resolves with the exit code and signal. */
  stop: () => Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

/** run starts test/snippets/<name>.ts with `port: 3000` replaced by `port: 0`. */
async function run (t: Test, name: string, env: Record<string, string> = {}): Promise<Running> {
  const text = readFileSync(join(snippetsDir, `${name}.ts`), 'utf8')
  mkdirSync(runDir, { recursive: true })
  const copy = join(runDir, `${name}.ts`)
  writeFileSync(copy, text.replace('port: 3000', 'port: 0'))
  t.teardown(() => { rmSync(copy, { force: true }) })
  const p = await startProgram(t, copy, env, startDeadline)
  const port = p.port
  if (port === null) throw new Error(`${name} did not start:\n${p.out()}\n${p.err()}`)
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    logs: p.out,
    stop: async () => {
      p.child.kill('SIGTERM')
      const [code, signal] = await withDeadline(p.exited, 20000, `${name} to exit after SIGTERM`)
      t.equal(p.err(), '', `${name}: nothing on stderr`)
      return { code, signal }
    }
  }
}

/** stopsCleanly sends SIGTERM and expects exit code 0. */
async function stopsCleanly (t: Test, s: Running): Promise<void> {
  t.same(await s.stop(), { code: 0, signal: null }, 'SIGTERM: it drains, closes and exits 0')
  t.match(s.logs(), /"lifecycle":"closed","clean":true/, 'the shutdown plugin logged a clean close')
}

/** get fetches a path, with a deadline. */
async function get (s: Running, path: string, init: RequestInit = {}): Promise<Response> {
  return await fetch(`${s.url}${path}`, { ...init, signal: AbortSignal.timeout(promptly) })
}

/** draining resolves once the shutdown plugin logged that draining began. */
async function draining (s: Running): Promise<void> {
  await waitUntil(() => s.logs().includes('"lifecycle":"draining"'), promptly, 'draining to begin')
}

const checks: Record<string, (t: Test) => Promise<void>> = {
  'hello-sse': async (t) => {
    const s = await run(t, 'hello-sse')
    const page = await get(s, '/')
    t.equal(page.headers.get('content-type'), 'text/html; charset=utf-8')
    t.match(await page.text(), "new EventSource('/events')", 'the page opens the stream')

    const live = await openStream(t, s.port, '/events')
    await live.waitEvents(2, promptly)
    const [first, second] = live.events
    t.match(first, { event: 'tick', id: /^[0-9a-z]+-\d+$/ }, 'ticks carry ids')
    const resumed = await openStream(t, s.port, '/events', { 'last-event-id': first!.id! })
    await resumed.waitEvents(1, promptly)
    t.same(resumed.events[0], second, 'Last-Event-ID: the next event is the one missed, replayed from the channel')
    const lost = await openStream(t, s.port, '/events', { 'last-event-id': 'zzzzzzzz-1' })
    await lost.waitEvents(1, promptly)
    t.same({ event: lost.events[0]!.event, data: JSON.parse(lost.events[0]!.data) }, {
      event: 'reset', data: { channel: 'ticks', lastEventId: 'zzzzzzzz-1' }
    }, 'an id the channel cannot place: reset, not a partial replay')

    const metrics = await get(s, '/metrics')
    t.match(metrics.headers.get('content-type'), /^text\/plain/)
    const text = await metrics.text()
    t.match(text, /^fastify_long_lived_streams_open 3$/m, '/metrics: the three open streams')
    t.match(text, /^fastify_long_lived_connections_open \d+$/m)

    let browser: { reconnecting: () => Promise<boolean> } | null = null
    if (browserSkip !== false) {
      t.comment(`${browserSkip} (.ci/run installs chromium): the page is not run in a browser`)
    } else {
      const tab = await openPage(t)
      await tab.goto(`${s.url}/`)
      const items = async (): Promise<string[]> => await tab.locator('#log li').allTextContents()
      // Page functions run in the browser: given as text, as this program has no DOM types.
      await tab.waitForFunction("document.querySelectorAll('#log li').length >= 2", undefined, { timeout: promptly })
      t.match((await items())[0], /^tick \d+ \(id [0-9a-z]+-\d+\)$/, 'in chromium, the page lists the ticks with their ids')
      browser = {
        reconnecting: async () => {
          await tab.waitForFunction("[...document.querySelectorAll('#log li')].some((li) => li.textContent === 'server: shutdown, reconnecting')", undefined, { timeout: promptly })
          return true
        }
      }
    }

    const stopped = stopsCleanly(t, s)
    await withDeadline(live.ended, promptly, 'the stream to end on SIGTERM')
    t.equal(live.events.at(-1)?.event, 'reconnect', 'SIGTERM: the open stream gets the final event')
    if (browser !== null) t.ok(await browser.reconnecting(), 'and the page says it reconnects')
    await stopped
  },

  shutdown: async (t) => {
    const s = await run(t, 'shutdown')
    t.equal((await get(s, '/readyz')).status, 200)
    t.equal((await get(s, '/healthz')).status, 200)
    const stream = await openStream(t, s.port, '/events')
    t.equal(stream.status, 200)
    const stopped = stopsCleanly(t, s)
    await draining(s)
    t.equal((await get(s, '/readyz')).status, 503, 'draining: readiness 503')
    t.equal((await get(s, '/healthz')).status, 200, 'liveness stays 200')
    await withDeadline(stream.ended, 15000, 'the stream to end (drainDelay 5 s, then the stream window)')
    t.same(stream.events.map((e) => [e.event, e.data]), [['reconnect', 'shutdown']], 'the stream got its final event')
    await stopped
  },

  umbrella: async (t) => {
    const s = await run(t, 'umbrella')
    const stream = await openStream(t, s.port, '/events')
    await withDeadline(stream.ended, promptly, 'the stream to end when the handler returns')
    t.same(stream.retries, [3000], 'sse: { retry: 3000 }')
    t.same(stream.events.map((e) => e.event), ['hello'])
    const ready = await get(s, '/readyz')
    t.equal(ready.status, 200)
    t.equal(ready.headers.get('keep-alive'), 'timeout=72', "timeouts: { proxy: 'aws-alb' }: keep-alive 72 s")
    const stopped = stopsCleanly(t, s)
    await draining(s)
    t.equal((await get(s, '/readyz')).status, 503, 'SIGTERM: readiness 503 during the 5 s drainDelay')
    await stopped
  },

  'sse-restore': async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'fll-snippet-'))
    t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
    const env = { SSE_STATE_FILE: join(dir, 'sse-state.json') }
    const first = await run(t, 'sse-restore', env)
    const before = await openStream(t, first.port, '/events')
    await before.waitEvents(2, promptly)
    await before.close()
    await stopsCleanly(t, first)
    t.ok(existsSync(env.SSE_STATE_FILE), 'the state was saved on close')
    const second = await run(t, 'sse-restore', env)
    const after = await openStream(t, second.port, '/events', { 'last-event-id': before.events[0]!.id! })
    await after.waitEvents(1, promptly)
    t.same(after.events[0], before.events[1], 'after the restart, the event missed before it is replayed, not a reset')
    await stopsCleanly(t, second)
  },

  auth: async (t) => {
    const ttl = 1500
    const s = await run(t, 'auth', { SESSION_TTL_MS: String(ttl) })
    const anonymous = await get(s, '/events', { headers: { accept: 'text/event-stream' } })
    t.equal(anonymous.status, 401, 'no session: 401 from the preHandler')
    t.same(await anonymous.json(), { error: 'log in again' })
    const loggingIn = Date.now() // the session expires ttl ms after the server got the login
    const login = await get(s, '/login', { method: 'POST' })
    const cookie = /^session=[\w-]+/.exec(login.headers.get('set-cookie') ?? '')?.[0]
    t.ok(cookie, 'the login sets the session cookie')
    const stream = await openStream(t, s.port, '/events', { cookie: cookie! })
    t.equal(stream.status, 200)
    await withDeadline(stream.ended, ttl + promptly, 'the stream to end when the session expires')
    // A margin for timer rounding only: a timer may fire a millisecond early.
    t.ok(Date.now() - loggingIn >= ttl - 5, 'it ended when the session expired, not before')
    t.same(stream.events.map((e) => [e.event, e.data]), [['hello', '{"user":"ada"}'], ['reconnect', 'session expired']], 'the final event tells the client to reconnect')
    const again = await get(s, '/events', { headers: { accept: 'text/event-stream', cookie: cookie! } })
    t.equal(again.status, 401, 'the reconnect meets the preHandler: the expired session gets 401')
    await again.body?.cancel()
    await stopsCleanly(t, s)
  },

  kubernetes: async (t) => {
    const section = readme.slice(readme.indexOf('\n### Kubernetes\n'), readme.indexOf('\n## ', readme.indexOf('\n### Kubernetes\n')))
    const yaml = blocks().find((b) => b.lang === 'yaml' && section.includes(b.code))?.code ?? ''
    t.match(yaml, /kind: Deployment/, 'the recipe shows a Deployment')
    const grace = Number(/terminationGracePeriodSeconds: (\d+)/.exec(yaml)?.[1])
    const preStop = Number(/preStop:\s+sleep:\s+\{ seconds: (\d+) \}/.exec(yaml)?.[1])
    t.ok(grace > 0 && preStop > 0, `terminationGracePeriodSeconds ${grace}, a preStop sleep of ${preStop} s`)
    t.match(yaml, /readinessProbe:\s+httpGet: \{ path: \/readyz, port: 3000 \}/)
    t.match(yaml, /livenessProbe:\s+httpGet: \{ path: \/healthz, port: 3000 \}/)
    t.match(yaml, /containerPort: 3000/)

    // The shutdown options of the recipe's app, as written there (an object literal).
    const source = readFileSync(join(snippetsDir, 'kubernetes.ts'), 'utf8')
    const literal = /shutdown: (\{[^}]*\})/.exec(source)?.[1] ?? 'null'
    const json = literal.replace(/\/\/.*$/gm, '').replace(/(\w+):/g, '"$1":').replace(/'/g, '"')
    const options = JSON.parse(json) as { terminationGracePeriod: number, readinessPath: string, livenessPath: string }
    t.equal(options.terminationGracePeriod, (grace - preStop) * 1000, 'terminationGracePeriod is what the preStop sleep leaves of the grace period')
    t.match(options, { readinessPath: '/readyz', livenessPath: '/healthz' }, 'the probes ask the paths the plugin serves')
    t.doesNotThrow(() => resolveShutdown(options), 'the budget check accepts the recipe')
    const short = { ...options, terminationGracePeriod: (grace - preStop - 10) * 1000 }
    t.throws(() => resolveShutdown(short), { code: 'FLL_ERR_SHUTDOWN_BUDGET' }, 'and refuses a grace period 10 s shorter')
    t.doesNotThrow(() => resolveShutdown({ terminationGracePeriod: 30000 }), "the Docker recipe's 30 s stop timeout holds the default budget")
    t.throws(() => resolveShutdown({ terminationGracePeriod: 10000 }), { code: 'FLL_ERR_SHUTDOWN_BUDGET' }, "docker stop's default 10 s does not")

    const s = await run(t, 'kubernetes')
    t.same(await (await get(s, '/')).json(), { hello: 'world' })
    t.equal((await get(s, '/readyz')).status, 200)
    t.equal((await get(s, '/healthz')).status, 200)
    await stopsCleanly(t, s)
  },

  client: async (t) => {
    let connections = 0
    const upstream: Server = createServer((req, res) => {
      const id = /^\/orders\/(\w+)$/.exec(req.url ?? '')?.[1]
      res.writeHead(id === '42' ? 200 : 404, { 'content-type': 'application/json' })
      res.end(JSON.stringify(id === '42' ? { id, total: 12.5 } : { error: 'not found' }))
    })
    upstream.on('connection', () => { connections++ })
    upstream.keepAliveTimeout = 72e3
    upstream.listen(0, '127.0.0.1')
    await once(upstream, 'listening')
    t.teardown(() => { upstream.closeAllConnections(); upstream.close() })
    const s = await run(t, 'client', { ORDERS_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` })
    for (let i = 0; i < 3; i++) t.same(await (await get(s, '/orders/42')).json(), { id: '42', total: 12.5 })
    t.equal(connections, 1, 'three calls, one upstream connection (kept alive)')
    const missing = await get(s, '/orders/7')
    t.equal(missing.status, 502)
    t.same(await missing.json(), { error: 'orders upstream answered 404' })
    await stopsCleanly(t, s)
  },

  sse: async (t) => {
    const s = await run(t, 'sse')
    const progress = await openStream(t, s.port, '/progress')
    await withDeadline(progress.ended, promptly, 'the progress stream to end')
    t.same(progress.retries, [3000])
    t.same(progress.events.map((e) => JSON.parse(e.data).i), [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 'every progress event, then the end')
    const ticks = await openStream(t, s.port, '/events')
    await ticks.waitEvents(1, promptly)
    t.equal(ticks.events[0]!.event, 'tick')
    await stopsCleanly(t, s)
  },

  cors: async (t) => {
    const s = await run(t, 'cors')
    const allowed = await openStream(t, s.port, '/events', { origin: 'https://app.example.com' })
    await withDeadline(allowed.ended, promptly, 'the stream to end')
    t.match(allowed.headers, {
      'content-type': 'text/event-stream; charset=utf-8',
      'access-control-allow-origin': 'https://app.example.com',
      'access-control-allow-credentials': 'true',
      vary: /Origin/
    }, 'the headers set in onRequest come with the stream')
    t.same(allowed.events.map((e) => e.data), ['from another origin'])
    const other = await openStream(t, s.port, '/events', { origin: 'https://elsewhere.example' })
    await withDeadline(other.ended, promptly, 'the stream to end')
    t.notOk('access-control-allow-origin' in other.headers, 'another origin: no allow-origin, so its page cannot read the stream')
    await stopsCleanly(t, s)
  },

  connections: async (t) => {
    const s = await run(t, 'connections')
    const stats = await (await get(s, '/stats')).json() as Record<string, unknown>
    t.match(stats, { open: 1, active: 1, streams: 0, inFlight: 1, draining: false }, '/stats: this request, in flight on the one connection')
    t.match(await (await get(s, '/metrics')).text(), /^fastify_long_lived_requests_total \d+$/m, '/metrics: the registry on prom-client')
    await stopsCleanly(t, s)
  },

  timeouts: async (t) => {
    const s = await run(t, 'timeouts')
    const res = await get(s, '/timeouts')
    t.equal(res.headers.get('keep-alive'), 'timeout=72', "proxy: 'nginx': keep-alive 72 s, above nginx's 60 s")
    const effective = { keepAliveTimeout: 72000, headersTimeout: 20000, requestTimeout: 120000, handlerTimeout: 10000 }
    t.match(await res.json(), { ...effective, minDataRate: { request: { bytesPerSecond: 1024, grace: 10000 } } }, 'the effective values')
    await stopsCleanly(t, s)
  }
}

// Four at a time: each process compiles its TypeScript on start, and a 2-core machine runs all of
// them no faster than four at a time; the slow ones (drain delays, two runs, a browser) go first.
test('every snippet runs as written and does what the README says', { jobs: 4 }, async (t) => {
  t.teardown(() => { rmSync(runDir, { recursive: true, force: true }) })
  const snippets = readdirSync(snippetsDir).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -3))
  t.same(snippets.filter((name) => checks[name] === undefined), [], 'every snippet has its check')
  for (const [name, check] of Object.entries(checks)) t.test(name, check)
})
