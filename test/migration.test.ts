/**
 * Migrating from @fastify/sse: one small app, written the way @fastify/sse's README writes one,
 * runs on @fastify/sse itself (to record what a client sees), then on this package with only
 * the changes the README's "Migrating from @fastify/sse" section lists; the client must see the
 * same. Each change is applied with `per(quote, change)`, and the last test checks that every
 * quote is still in that README section, so the section and this file cannot drift apart.
 *
 * @fastify/sse is loaded with createRequire, untyped: its declarations of `reply.sse` and of the
 * `sse` route option clash with ours (TS2717), so importing it would break this program's
 * typecheck (the README's "Types" item). The routes are typed with our `reply.sse`; the two
 * members only @fastify/sse has, `stream()` and `replay()`, are reached through `LegacySse`.
 */
import { test, type Test } from 'tap'
import { createReadStream, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { pipeline as pipelineCallback, Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { FastifyBaseLogger, FastifyInstance, FastifyPluginAsync, FastifyReply } from 'fastify'
import { request } from 'undici'
import connections from '../plugins/connections.js'
import sse, { type SseEvent, type SseStream } from '../plugins/sse/index.js'
import { build, listen, logCapture, waitUntil, withDeadline, type LogLine } from './helpers.js'
import { openStream, type StreamClient } from './sse-helpers.js'

const require = createRequire(import.meta.url)
const fastifySse = require('@fastify/sse') as FastifyPluginAsync<{ heartbeatInterval?: number | null }>

const promptly = 5000 // ms: anything slower is a hang
const quietHeartbeat = 60e3 // ms: no heartbeat within a test
const prices = new URL('./fixtures/migration/prices.jsonl', import.meta.url)

/** @fastify/sse's members that this package does not have (its own types cannot be imported, see above). */
interface LegacySse {
  stream: () => NodeJS.ReadWriteStream
  replay: (callback: (lastEventId: string) => Promise<void>) => Promise<void>
}
const legacy = (reply: FastifyReply): LegacySse => reply.sse as unknown as LegacySse

type Message = SseEvent | string

/** What differs between the two packages, as a route or a client writes it. */
interface Flavor {
  name: string
  /** register puts the SSE plugin (and what it needs) on a new app. */
  register: (app: FastifyInstance, heartbeatInterval: number | null) => Promise<void>
  /** heartbeatOff is the plugin-level heartbeatInterval that switches the heartbeat off. */
  heartbeatOff: number | null
  /** text is how a string goes into `data`, for a client that JSON.parse()s every event. */
  text: (s: string) => string
  /** guard is what a source that may fail is wrapped in before send(). */
  guard: (source: AsyncIterable<Message>, log: FastifyBaseLogger) => AsyncIterable<Message>
  /** pipeJsonl streams a JSON-lines file, parsed by a Transform, as events. */
  pipeJsonl: (reply: FastifyReply, file: URL) => Promise<void>
  /** readBytes opens a file as the Readable to send() as it is. */
  readBytes: (file: URL) => Readable
  /** replay runs `callback` with the client's Last-Event-ID, if it sent one. */
  replay: (reply: FastifyReply, callback: (lastEventId: string) => Promise<void>) => Promise<void>
  /** isEventStream is the client's check of the Content-Type. */
  isEventStream: (contentType: string) => boolean
  /** closedCode is the code of the error a send on a closed stream throws. */
  closedCode: string
}

const quotes: string[] = []
/** per applies a change the README's migration section documents; `quote` is its words there. */
function per<T> (quote: string, change: T): T {
  quotes.push(quote)
  return change
}

/** guarded is the README's: it catches a failure inside the source and sends an error event. */
async function * guarded<T> (source: AsyncIterable<T>, log: FastifyBaseLogger) {
  try {
    yield * source
  } catch (err) {
    log.error({ err }, 'stream failed')
    yield { event: 'error', data: { message: 'Stream error occurred' } }
  }
}

/** parseJsonl is @fastify/sse's README Transform (plus readableObjectMode, without which it cannot push objects). */
function parseJsonl (): Transform {
  return new Transform({
    readableObjectMode: true,
    transform (chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        try {
          const data = JSON.parse(line) as { id: string }
          this.push({ id: data.id, data })
        } catch {
          // Skip invalid JSON lines (as in @fastify/sse's README)
        }
      }
      callback()
    }
  })
}

/** The app as written for @fastify/sse, following its README. */
const original: Flavor = {
  name: '@fastify/sse',
  register: async (app, heartbeatInterval) => { await app.register(fastifySse, { heartbeatInterval }) },
  heartbeatOff: 0,
  text: (s) => s,
  guard: (source) => source,
  pipeJsonl: async (reply, file) => {
    await pipeline(createReadStream(file), parseJsonl(), legacy(reply).stream(), reply.raw, { end: false })
  },
  readBytes: (file) => createReadStream(file),
  replay: (reply, callback) => legacy(reply).replay(callback),
  isEventStream: (type) => type === 'text/event-stream', // as @fastify/sse's README tests it
  closedCode: 'FST_ERR_SSE_CONNECTION_CLOSED'
}

/** The same app on this package, with the README's changes applied. */
const migrated: Flavor = {
  name: 'fastify-long-lived',
  register: per('Register `connections` then `sse` instead of `@fastify/sse`.', async (app, heartbeatInterval) => {
    await app.register(connections)
    await app.register(sse, { heartbeatInterval })
  }),
  heartbeatOff: per('`heartbeatInterval: null` switches it off (`0` did there, and is refused at boot here)', null),
  text: per('if the client does `JSON.parse(e.data)`, send `{ data: JSON.stringify(s) }`', (s: string) => JSON.stringify(s)),
  guard: per('To send your own error event, catch inside the source:', guarded),
  pipeJsonl: per('`await pipeline(file, parse, reply.sse.stream(), reply.raw, { end: false })` becomes ' +
    '`await reply.sse.send(pipeline(file, parse, () => {}))`', async (reply: FastifyReply, file: URL) => {
    await reply.sse.send(pipelineCallback(createReadStream(file), parseJsonl(), () => {}))
  }),
  readBytes: per("the same here: `fs.createReadStream(path, { encoding: 'utf8' })`", (file: URL) => createReadStream(file, { encoding: 'utf8' })),
  replay: per('`const id = reply.sse.lastEventId; if (id) await cb(id)` does the same',
    async (reply: FastifyReply, cb: (lastEventId: string) => Promise<void>) => {
      const id = reply.sse.lastEventId
      if (id) await cb(id)
    }),
  isEventStream: per("compares the media type instead: `type.split(';')[0] === 'text/event-stream'`",
    (type: string) => type.split(';')[0] === 'text/event-stream'),
  closedCode: per('A send on a closed stream throws `FLL_ERR_SSE_CLOSED` (was `FST_ERR_SSE_CONNECTION_CLOSED`).', 'FLL_ERR_SSE_CLOSED')
}

/** The @fastify/sse app moved over with no change but the registration: what the README's changes are for. */
const unchanged: Flavor = { ...original, name: 'fastify-long-lived, unchanged', register: migrated.register }

/** What the handlers saw, and the streams the kept-open routes hand to the test. */
interface AppState { held: Map<string, SseStream>, closes: Map<string, number>, caught: number }

async function * generateEvents (f: Flavor) {
  for (let i = 1; i <= 3; i++) yield { id: String(i), data: f.text(`Event ${i}`) }
}

async function * riskyGenerator (f: Flavor) {
  yield { data: f.text('before error') }
  throw new Error('Something went wrong')
}

const history: SseEvent[] = [{ id: '1', data: { n: 1 } }, { id: '2', data: { n: 2 } }, { id: '3', data: { n: 3 } }]

/** routes declares the app's routes: the same definitions for every flavor. */
function routes (app: FastifyInstance, f: Flavor, state: AppState): void {
  const hold = (path: string, reply: FastifyReply): void => {
    state.held.set(path, reply.sse)
    reply.sse.onClose(() => { state.closes.set(path, (state.closes.get(path) ?? 0) + 1) })
  }

  // Quick Start and the sources of reply.sse.send(source) in @fastify/sse's README.
  app.get('/events', { sse: true }, async (_request, reply) => {
    await reply.sse.send({ data: f.text('Hello SSE!') })
    await reply.sse.send({ id: '123', event: 'update', data: { message: 'Hello World' }, retry: 1000 })
    await reply.sse.send('plain text message')
    await reply.sse.send('line one\nline two')
    await reply.sse.send(generateEvents(f))
    await reply.sse.send(Readable.from([{ id: '10', event: 'row', data: { n: 1 } }, 'a string chunk']))
  })

  app.get('/only', { sse: 'only' }, async (_request, reply) => {
    await reply.sse.send({ data: { kind: 'only' } })
  })

  // Connection Management: kept open after the handler returns, until close() or the client leaves.
  app.get('/live', { sse: true }, async (_request, reply) => {
    reply.sse.keepAlive()
    await reply.sse.send({ data: f.text('Connected') })
    hold('/live', reply)
  })

  app.get('/quiet', { sse: { kind: 'only', heartbeat: false } }, async (_request, reply) => {
    reply.sse.keepAlive()
    await reply.sse.send({ data: { quiet: true } })
    hold('/quiet', reply)
  })

  // Message Replay.
  app.get('/replay', { sse: true }, async (_request, reply) => {
    await f.replay(reply, async (lastEventId) => {
      const start = history.findIndex((m) => m.id === lastEventId)
      for (const message of history.slice(start + 1)) await reply.sse.send(message)
    })
    await reply.sse.send({ event: 'hello', data: { lastEventId: reply.sse.lastEventId } })
  })

  // Error Handling.
  app.get('/risky', { sse: true }, async (request, reply) => {
    try {
      await reply.sse.send(f.guard(riskyGenerator(f), request.log))
    } catch {
      state.caught++
      await reply.sse.send({ event: 'error', data: { message: 'Stream error occurred' } })
    }
  })

  // reply.sse.stream() in a pipeline, and a file's Readable as it is.
  app.get('/file-stream', { sse: true }, async (_request, reply) => { await f.pipeJsonl(reply, prices) })
  app.get('/file-bytes', { sse: true }, async (_request, reply) => { await reply.sse.send(f.readBytes(prices)) })
}

async function start (t: Test, f: Flavor, heartbeatInterval = quietHeartbeat): Promise<{ port: number, state: AppState, lines: LogLine[] }> {
  const capture = logCapture('info')
  // forceCloseConnections: @fastify/sse does not end its streams on close(); the tests end them.
  const app = build(t, { logger: capture.logger, forceCloseConnections: true })
  await f.register(app, heartbeatInterval)
  const state: AppState = { held: new Map(), closes: new Map(), caught: 0 }
  routes(app, f, state)
  return { port: await listen(app), state, lines: capture.lines }
}

/** seen is what a client saw: status, whether it took the Content-Type as an event stream, the events. */
function seen (f: Flavor, s: StreamClient): { status: number, eventStream: boolean, events: Array<{ event: string, id: string | null, data: string }>, retries: number[] } {
  return {
    status: s.status,
    eventStream: f.isEventStream(String(s.headers['content-type'])),
    events: s.events.map((e) => ({ event: e.event ?? 'message', id: e.id ?? null, data: e.data })),
    retries: s.retries
  }
}

async function ended (s: StreamClient, what: string): Promise<void> {
  await withDeadline(s.ended, promptly, what)
}

async function held (state: AppState, path: string): Promise<SseStream> {
  await waitUntil(() => state.held.has(path), promptly, `the handler of ${path}`)
  return state.held.get(path)!
}

/** statusFor answers a request with the given Accept (none when undefined): its status and error code. */
async function statusFor (port: number, path: string, accept: string | undefined): Promise<string> {
  const res = await request(`http://127.0.0.1:${port}${path}`, { headers: accept === undefined ? {} : { accept } })
  const body = await res.body.text()
  return res.statusCode === 200 ? '200' : `${res.statusCode} ${(JSON.parse(body) as { code?: string }).code}`
}

const ev = (data: string, event = 'message', id: string | null = null): { event: string, id: string | null, data: string } => ({ event, id, data })

/** whole is a scenario's run for a stream that ends by itself: what its client saw, start to end. */
function whole (path: string): (t: Test, f: Flavor) => Promise<ReturnType<typeof seen>> {
  return async (t, f) => {
    const { port } = await start(t, f)
    const s = await openStream(t, port, path)
    await ended(s, `the end of ${path}`)
    return seen(f, s)
  }
}

/** Scenarios run on each flavor; `before` is what a client of @fastify/sse sees (recorded, asserted). */
const scenarios: Array<{ name: string, run: (t: Test, f: Flavor) => Promise<unknown>, before: unknown }> = [
  {
    name: 'sends: objects, strings, an async generator, an object-mode Readable',
    run: whole('/events'),
    before: {
      status: 200,
      eventStream: true,
      events: [
        ev('"Hello SSE!"'), // @fastify/sse JSON-quotes a string `data`...
        ev('{"message":"Hello World"}', 'update', '123'),
        ev('plain text message'), // ...but not a plain string
        ev('line one\nline two'),
        ev('"Event 1"', 'message', '1'), ev('"Event 2"', 'message', '2'), ev('"Event 3"', 'message', '3'),
        ev('{"n":1}', 'row', '10'),
        ev('a string chunk')
      ],
      retries: [1000]
    }
  },
  {
    name: "sse: 'only'",
    run: whole('/only'),
    before: { status: 200, eventStream: true, events: [ev('{"kind":"only"}')], retries: [] }
  },
  {
    name: 'keepAlive(), then close() from outside the handler: isConnected and onClose',
    run: async (t, f) => {
      const { port, state } = await start(t, f)
      const s = await openStream(t, port, '/live')
      const stream = await held(state, '/live')
      const connected = stream.isConnected
      await stream.send({ data: { tick: 1 } })
      await stream.close()
      await ended(s, 'the end of the stream after close()')
      await waitUntil(() => state.closes.has('/live'), promptly, 'onClose')
      return { ...seen(f, s), connected, afterClose: stream.isConnected, onClose: state.closes.get('/live') }
    },
    before: { status: 200, eventStream: true, events: [ev('"Connected"'), ev('{"tick":1}')], retries: [], connected: true, afterClose: false, onClose: 1 }
  },
  {
    name: 'keepAlive(), then the client leaves: onClose runs, isConnected turns false, a send throws',
    run: async (t, f) => {
      const { port, state } = await start(t, f)
      const s = await openStream(t, port, '/live')
      const stream = await held(state, '/live')
      await s.close()
      await waitUntil(() => state.closes.has('/live'), promptly, 'onClose after the client left')
      const late = await stream.send({ data: 'late' }).then(() => 'resolved', (err: { code?: string }) => err.code === f.closedCode ? 'closed' : err.code)
      return { isConnected: stream.isConnected, onClose: state.closes.get('/live'), late }
    },
    before: { isConnected: false, onClose: 1, late: 'closed' }
  },
  {
    name: "heartbeat: comments on a route by default, none with { kind: 'only', heartbeat: false }",
    run: async (t, f) => {
      const { port, state } = await start(t, f, 20)
      // The quiet stream opens first, so by the time the other has had three heartbeats, it
      // would have had at least two of its own.
      const quiet = await openStream(t, port, '/quiet')
      await quiet.waitEvents(1)
      const live = await openStream(t, port, '/live')
      await waitUntil(() => live.comments.length >= 3, promptly, 'three heartbeats')
      await (await held(state, '/quiet')).close()
      await (await held(state, '/live')).close()
      await ended(quiet, 'the end of /quiet')
      await ended(live, 'the end of /live')
      return { quietComments: quiet.comments.length, quietEvents: quiet.events.length }
    },
    before: { quietComments: 0, quietEvents: 1 }
  },
  {
    name: 'Last-Event-ID and replay(): the missed messages, then the new one',
    run: async (t, f) => {
      const { port } = await start(t, f)
      const resumed = await openStream(t, port, '/replay', { 'last-event-id': '1' })
      const fresh = await openStream(t, port, '/replay')
      await ended(resumed, 'the end of the resumed stream')
      await ended(fresh, 'the end of the fresh stream')
      return { resumed: seen(f, resumed).events, fresh: seen(f, fresh).events }
    },
    before: {
      resumed: [ev('{"n":2}', 'message', '2'), ev('{"n":3}', 'message', '3'), ev('{"lastEventId":"1"}', 'hello')],
      fresh: [ev('{"lastEventId":null}', 'hello')]
    }
  },
  {
    name: 'a source that fails after its first event: the error event the handler sends',
    run: whole('/risky'),
    before: { status: 200, eventStream: true, events: [ev('"before error"'), ev('{"message":"Stream error occurred"}', 'error')], retries: [] }
  },
  {
    name: 'reply.sse.stream() in a pipeline: a JSON-lines file as events',
    run: whole('/file-stream'),
    before: {
      status: 200,
      eventStream: true,
      events: [ev('{"id":"1","price":10}', 'message', '1'), ev('{"id":"2","price":11}', 'message', '2'), ev('{"id":"3","price":12}', 'message', '3')],
      retries: []
    }
  },
  {
    name: "a byte-mode Readable (a file's): each chunk is one event",
    run: whole('/file-bytes'),
    // The file is one chunk; its text, up to its final line break, is the data.
    before: { status: 200, eventStream: true, events: [ev(readFileSync(prices, 'utf8'))], retries: [] }
  }
]

for (const { name, run, before } of scenarios) {
  test(`as @fastify/sse, after the documented changes: ${name}`, async (t) => {
    const seenBefore = await run(t, original)
    t.same(seenBefore, before, `${original.name}: what its client sees`)
    const seenAfter = await run(t, migrated)
    t.same(seenAfter, seenBefore, `${migrated.name}: the client sees the same`)
  })
}

test('without the documented changes: what a moved app gets wrong', async (t) => {
  const { port, state, lines } = await start(t, unchanged)

  const events = await openStream(t, port, '/events')
  await ended(events, 'the end of /events')
  t.equal(events.headers['content-type'], 'text/event-stream; charset=utf-8', 'the Content-Type has a charset')
  t.notOk(unchanged.isEventStream(String(events.headers['content-type'])), "so @fastify/sse's exact comparison fails")
  t.equal(events.events[0]?.data, 'Hello SSE!', 'a string data is not JSON-quoted')
  t.throws(() => JSON.parse(events.events[0]?.data ?? ''), 'so a client that JSON.parse()s every event fails')

  const risky = await openStream(t, port, '/risky')
  await ended(risky, 'the end of /risky')
  t.same(risky.events.map((e) => [e.event ?? 'message', e.data]), [['message', 'before error'], ['error', '{"message":"Internal Server Error"}']],
    'a failing source: the stream ends with our error event')
  t.equal(state.caught, 0, "send() resolved: the handler's catch did not run")
  t.ok(lines.some((l) => l.level === 50 && l.msg === 'fastify-long-lived: SSE source failed'), 'the error is logged')

  t.equal(await statusFor(port, '/file-bytes', 'text/event-stream'), '500 FLL_ERR_SSE_INVALID_EVENT',
    'a byte-mode Readable: a Buffer chunk is not an event (first event: the request fails)')
  t.equal(await statusFor(port, '/file-stream', 'text/event-stream'), '500 undefined', 'reply.sse.stream() does not exist (a TypeError)')
  t.equal(await statusFor(port, '/replay', 'text/event-stream'), '500 undefined', 'nor does reply.sse.replay()')

  // On @fastify/sse, the same handler's catch runs.
  const before = await start(t, original)
  const s = await openStream(t, before.port, '/risky')
  await ended(s, 'the end of /risky on @fastify/sse')
  t.equal(before.state.caught, 1, "@fastify/sse: send() rejected and the handler's catch ran")
})

test('Accept: @fastify/sse streams sse: true only for an explicit text/event-stream; here every sse route acts as only', async (t) => {
  const accepts = [undefined, '*/*', 'text/*', 'text/event-stream', 'application/json', 'text/event-stream;q=0']
  const statuses = async (f: Flavor): Promise<Record<string, string[]>> => {
    const { port } = await start(t, f)
    const out: Record<string, string[]> = {}
    for (const path of ['/events', '/only']) {
      out[path] = []
      for (const accept of accepts) out[path].push(await statusFor(port, path, accept))
    }
    return out
  }
  const misuse = '500 FST_ERR_SSE_LEGACY_MISUSE'
  t.same(await statuses(original), {
    '/events': [misuse, misuse, misuse, '200', misuse, misuse],
    '/only': ['200', '200', '200', '200', '406 undefined', '406 undefined']
  }, "@fastify/sse: sse: true is its 'dual' gate, 'only' is lenient")
  const refused = '406 FLL_ERR_SSE_NOT_ACCEPTABLE'
  t.same(await statuses(migrated), {
    '/events': ['200', '200', '200', '200', refused, refused],
    '/only': ['200', '200', '200', '200', refused, refused]
  }, 'here: both as only')
})

test('boot: the route forms and heartbeat switches each package takes', async (t) => {
  const forms: unknown[] = [true, 'only', { kind: 'only', heartbeat: false }, 'dual', 'manual', { kind: 'manual' }]
  const boot = async (f: Flavor, form: unknown, heartbeatInterval: number | null): Promise<string> => {
    const app = build(t)
    try {
      await f.register(app, heartbeatInterval)
      app.get('/x', { sse: form as true }, async () => {})
      await app.ready()
      return 'ok'
    } catch (err) {
      return String((err as { code?: string }).code)
    }
  }
  const kinds = async (f: Flavor): Promise<string[]> => {
    const out: string[] = []
    for (const form of forms) out.push(await boot(f, form, quietHeartbeat))
    return out
  }
  t.same(await kinds(original), ['ok', 'ok', 'ok', 'ok', 'ok', 'ok'], '@fastify/sse: every form')
  t.same(await kinds(migrated), ['ok', 'ok', 'ok', 'FLL_ERR_INVALID_OPTION', 'FLL_ERR_INVALID_OPTION', 'FLL_ERR_INVALID_OPTION'],
    "here: 'dual' and 'manual' are refused at boot")
  t.equal(await boot(original, true, 0), 'ok', '@fastify/sse: heartbeatInterval 0 switches the heartbeat off')
  t.equal(await boot(migrated, true, 0), 'FLL_ERR_INVALID_OPTION', 'here: 0 is refused at boot')
  t.equal(await boot(migrated, true, migrated.heartbeatOff), 'ok', 'and null switches it off')
})

test('both packages in one app: not in one scope; each in its own scope, both serve', async (t) => {
  const one = build(t, { logger: logCapture('fatal').logger })
  await one.register(fastifySse)
  await migrated.register(one, quietHeartbeat)
  one.get('/x', { sse: true }, async (_request, reply) => { await reply.sse.send('x') })
  const res = await one.inject({ url: '/x', headers: { accept: 'text/event-stream' } })
  t.equal(res.statusCode, 500, 'one scope: a 500')
  t.match(res.json().message, /Cannot set property sse/, 'one scope: every request fails')

  const two = build(t, { forceCloseConnections: true })
  await two.register(connections)
  await two.register(async (old) => {
    await old.register(fastifySse)
    old.get('/old', { sse: true }, async (_request, reply) => { await reply.sse.send({ data: 'old' }) })
  })
  await two.register(async (moved) => {
    await moved.register(sse)
    moved.get('/new', { sse: true }, async (_request, reply) => { await reply.sse.send({ data: 'new' }) })
  })
  const port = await listen(two)
  for (const [path, data] of [['/old', '"old"'], ['/new', 'new']] as const) {
    const s = await openStream(t, port, path)
    await ended(s, `the end of ${path}`)
    t.same(s.events.map((e) => e.data), [data], `${path} streams`)
  }
})

test("every change applied above is in the README's migration section, in these words", async (t) => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const start = readme.indexOf('### Migrating from @fastify/sse')
  t.ok(start >= 0, 'the README has the section')
  const end = readme.indexOf('\n#', start + 4)
  const flat = (s: string): string => s.replace(/\s+/g, ' ')
  const section = flat(readme.slice(start, end === -1 ? undefined : end))
  t.ok(quotes.length >= 9, `the changes are recorded (${quotes.length})`)
  for (const quote of quotes) t.ok(section.includes(flat(quote)), `the README says: ${quote}`)
})
