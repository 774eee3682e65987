/**
 * The SSE decorator in ordinary Fastify code: plugins registered without `await`, `reply.sse`
 * on a route not declared as a stream, `keepAlive()` with nothing sent, and a CommonJS app.
 * Whatever the order, a client gets a stream or an error at once, never a request left hanging.
 */
import { test, type Test } from 'tap'
import { fork } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { connections, longLived, sse } from '../plugins/index.js'
import { build, listen, logCapture, waitUntil, withDeadline } from './helpers.js'
import { openStream } from './sse-helpers.js'

const promptly = 5000

/** fetchWithin answers a GET, or fails the test when no answer arrives in time (a hanging request). */
async function fetchWithin (port: number, path: string): Promise<{ status: number, type: string | null, body: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(promptly) })
  return { status: res.status, type: res.headers.get('content-type'), body: await res.text() }
}

const registrations: Array<[string, (app: FastifyInstance) => void]> = [
  ['longLived', (app) => { app.register(longLived, { shutdown: false }) }],
  ['connections + sse', (app) => { app.register(connections); app.register(sse) }]
]

for (const [name, register] of registrations) {
  test(`${name} registered without await, the route declared at once: a coded error naming the fix, not a hang`, async (t) => {
    const { logger, lines } = logCapture('error')
    const app = build(t, { logger })
    register(app)
    app.get('/events', { sse: true }, async (_req, reply) => { await reply.sse.send('hi') })
    const port = await listen(app)
    const res = await fetchWithin(port, '/events')
    t.equal(res.status, 500)
    const body = JSON.parse(res.body) as { code: string, message: string }
    t.equal(body.code, 'FLL_ERR_SSE_NOT_A_STREAM_ROUTE')
    t.match(body.message, /GET \/events/, 'the message names the route')
    t.match(body.message, /await app\.register/, 'and the fix')
    t.ok(lines.some((l) => (l.err as { code?: string } | undefined)?.code === 'FLL_ERR_SSE_NOT_A_STREAM_ROUTE'), 'the error is logged')
    t.equal(app.connections.stats().streams, 0, 'no stream left open')
  })

  test(`${name} registered without await, routes declared in app.after(): the stream works`, async (t) => {
    const app = build(t)
    register(app)
    app.after(() => {
      app.get('/events', { sse: true }, async (_req, reply) => { await reply.sse.send('hi') })
    })
    const port = await listen(app)
    const s = await openStream(t, port, '/events')
    await withDeadline(s.ended, promptly, 'the end of the stream when the handler returns')
    t.same(s.events.map((e) => e.data), ['hi'])
  })
}

test('reply.sse on a route without the sse option: a coded error at once; an ordinary reply on it still works', async (t) => {
  const app = build(t)
  await app.register(longLived, { shutdown: false })
  app.get('/plain', async (_req, reply) => { await reply.sse.send('hi') })
  app.get('/json', async () => ({ ok: true }))
  const port = await listen(app)
  const res = await fetchWithin(port, '/plain')
  t.equal(res.status, 500)
  t.equal((JSON.parse(res.body) as { code: string }).code, 'FLL_ERR_SSE_NOT_A_STREAM_ROUTE')
  t.same(JSON.parse((await fetchWithin(port, '/json')).body), { ok: true })
})

test('keepAlive() alone opens the stream and keeps it open until the server closes it', async (t) => {
  const app = build(t)
  await app.register(longLived, { shutdown: false, sse: { heartbeatInterval: null, reconnectJitter: 0 } })
  app.get('/events', { sse: true }, async (_req, reply) => {
    reply.sse.keepAlive()
    reply.header('x-set-after-keep-alive', 'kept') // the head goes out when the handler returns
  })
  const port = await listen(app)
  const s = await openStream(t, port, '/events')
  t.equal(s.status, 200)
  t.equal(s.headers['content-type'], 'text/event-stream; charset=utf-8')
  t.equal(s.headers['x-set-after-keep-alive'], 'kept')
  await waitUntil(() => app.connections.stats().streams === 1, promptly, 'the stream to be open')
  app.sse.channel('c').publish({ data: 'not subscribed' })
  const closing = app.close()
  await withDeadline(s.ended, promptly, 'the stream to end on close')
  await closing
  t.same(s.events.map((e) => e.event), ['reconnect'], 'nothing but the final event: it stayed open until close')
})

test('a CommonJS app: require() of the package, plugins registered without await, routes in app.after()', async (t) => {
  const fixture = fileURLToPath(new URL('./fixtures/commonjs-app.cjs', import.meta.url))
  // The README's CommonJS example is this app, but for its listen().
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const example = /### From CommonJS\n[^]*?```js\n([^]*?)app\.listen\(/.exec(readme)?.[1]
  t.ok(example !== undefined && readFileSync(fixture, 'utf8').includes(example), 'the README example is the fixture')
  // The fixture requires the package by name (its exports map points at dist/): built by `npm test`'s pretest.
  const child = fork(fixture, { execArgv: [], stdio: ['ignore', 'inherit', 'pipe', 'ipc'] })
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  t.teardown(() => { child.kill('SIGKILL') })
  const [{ address }] = await withDeadline(once(child, 'message') as Promise<[{ address: string }]>, 30000, 'the CommonJS app to listen')
  const res = await fetch(`${address}/events`, { signal: AbortSignal.timeout(promptly) })
  t.equal(res.headers.get('content-type'), 'text/event-stream; charset=utf-8')
  t.equal(await res.text(), 'event: hello\ndata: {"from":"commonjs"}\n\n')
  const exited = once(child, 'exit')
  child.send('close')
  t.same((await withDeadline(exited, promptly, 'the app to exit'))[0], 0, 'it closes and exits 0')
  t.equal(stderr, '', `no warning on Node ${process.version} (require of an ES module)`)
})

test('an app-level hook touching reply.sse of a stream route keeps the route settings', async (t: Test) => {
  const app = build(t)
  await app.register(longLived, { shutdown: false, sse: { retry: 1000 } })
  app.addHook('onRequest', async (_req, reply) => { reply.header('x-resumed', String(reply.sse.lastEventId !== null)) })
  app.get('/events', { sse: { retry: 42 } }, async (_req, reply) => { await reply.sse.send('x') })
  const port = await listen(app)
  const res = await fetchWithin(port, '/events')
  t.equal(res.body, 'retry: 42\n\ndata: x\n\n')
})

test("@fastify/sse's route forms: 'only', kind 'only' and heartbeat: false are taken; 'dual' and 'manual' are refused at boot", async (t) => {
  const app = build(t)
  await app.register(longLived, { shutdown: false, sse: { heartbeatInterval: 40 } })
  app.get('/only', { sse: 'only' }, async (_req, reply) => { await reply.sse.send('a') })
  for (const [path, option] of [['/kind', { kind: 'only', heartbeat: false }], ['/beating', true]] as const) {
    app.get(path, { sse: option }, async (_req, reply) => { reply.sse.keepAlive() })
  }
  const port = await listen(app)
  t.equal((await fetchWithin(port, '/only')).body, 'data: a\n\n')
  const refused = await fetch(`http://127.0.0.1:${port}/only`, { headers: { accept: 'application/json' }, signal: AbortSignal.timeout(promptly) })
  t.equal(refused.status, 406, "'only' negotiates Accept like true")
  // heartbeat: false: while a stream with the plugin's heartbeat (40 ms) gets three, it gets none.
  const [quiet, beating] = await Promise.all([openStream(t, port, '/kind'), openStream(t, port, '/beating')])
  await waitUntil(() => beating.comments.length >= 3, promptly, 'three heartbeats on the other stream')
  t.equal(quiet.comments.length, 0, 'no heartbeat was sent')

  for (const [bad, message] of [
    ['dual', /@fastify\/sse's 'dual' and 'manual' kinds do not exist here/],
    [{ kind: 'manual' }, /'dual' and 'manual'/],
    [{ heartbeat: 'no' }, /'sse.heartbeat' must be a boolean/],
    [{ heartbeat: false, heartbeatInterval: 5 }, /left out when sse.heartbeatInterval is given/],
    [{ kind: 'other' }, /'sse.kind' must be 'only'/]
  ] as const) {
    const other = build(t)
    await other.register(longLived, { shutdown: false })
    const err = await other.register(async (scope) => { scope.get('/x', { sse: bad as never }, async () => 'x') }).ready().then(() => null, (e: Error) => e)
    t.match(err, { code: 'FLL_ERR_INVALID_OPTION', message }, `sse: ${JSON.stringify(bad)} is refused`)
  }
})

test('bytes are not events: send(Buffer) and a byte-mode Readable fail with a coded error that says to decode them', async (t) => {
  const { logger, lines } = logCapture('error')
  const app = build(t, { logger })
  await app.register(longLived, { shutdown: false })
  app.get('/buffer', { sse: true }, async (_req, reply) => { await reply.sse.send(Buffer.from('hello') as never) })
  app.get('/bytes', { sse: true }, async (_req, reply) => {
    await reply.sse.send('first')
    await reply.sse.send(Readable.from([Buffer.from('a chunk')], { objectMode: false }) as never)
  })
  const port = await listen(app)
  const buffer = await fetchWithin(port, '/buffer')
  t.equal(buffer.status, 500, 'before any event: an error answer')
  t.match(JSON.parse(buffer.body), { code: 'FLL_ERR_SSE_INVALID_EVENT', message: /not bytes .*decode them first/ })
  const bytes = await fetchWithin(port, '/bytes')
  t.match(bytes.body, /^data: first\n\nevent: error\ndata: \{"message":"Internal Server Error"\}\n\n$/, 'after an event: the stream ends with an error event')
  t.ok(lines.some((l) => /not bytes .*setEncoding/.test((l.err as { message?: string } | undefined)?.message ?? '')), 'the log says what to do')
})

test('reading reply.sse on any route is fine (an app-wide hook); only opening a stream on a plain route fails', async (t) => {
  const app = build(t)
  await app.register(longLived, { shutdown: false })
  app.addHook('onRequest', async (_req, reply) => { reply.header('x-resuming', String(reply.sse.lastEventId !== null)) })
  app.get('/json', async () => ({ ok: true }))
  app.get('/kept', async (_req, reply) => { reply.sse.keepAlive() })
  app.get('/events', { sse: true }, async (_req, reply) => { await reply.sse.send('x') })
  const port = await listen(app)
  const json = await fetchWithin(port, '/json')
  t.same([json.status, JSON.parse(json.body)], [200, { ok: true }], 'a plain route answers')
  t.equal((await fetchWithin(port, '/missing')).status, 404, 'a 404 stays a 404')
  t.equal((await fetchWithin(port, '/events')).body, 'data: x\n\n', 'a stream route streams')
  const kept = await fetchWithin(port, '/kept')
  t.same([kept.status, JSON.parse(kept.body).code], [500, 'FLL_ERR_SSE_NOT_A_STREAM_ROUTE'], 'keepAlive() on a plain route is refused')
})

test('keepAlive() then `return reply` opens the stream too', async (t) => {
  const app = build(t)
  await app.register(longLived, { shutdown: false, sse: { heartbeatInterval: null } })
  app.get('/events', { sse: true }, async (_req, reply) => {
    reply.sse.keepAlive()
    return reply
  })
  const port = await listen(app)
  const s = await openStream(t, port, '/events')
  t.equal(s.headers['content-type'], 'text/event-stream; charset=utf-8')
  await waitUntil(() => app.connections.stats().streams === 1, promptly, 'the stream to be open')
})
