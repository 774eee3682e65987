import { test } from 'tap'
import { once } from 'node:events'
import http2 from 'node:http2'
import { Registry } from 'prom-client'
import { Client } from 'undici'
import connections from '../plugins/connections.js'
import { build, collect, connect, deferred, get, listen, waitFor, waitUntil, withDeadline } from './helpers.js'

test('counts keep-alive reuse exactly', async (t) => {
  const app = build(t)
  await app.register(connections)
  app.get('/', async () => 'ok')
  const port = await listen(app)

  const client = new Client(`http://127.0.0.1:${port}`)
  t.teardown(() => client.destroy())
  for (let i = 0; i < 3; i++) {
    const res = await client.request({ path: '/', method: 'GET' })
    t.equal(await res.body.text(), 'ok')
  }
  await waitUntil(() => app.connections.stats().inFlight === 0)
  t.match(app.connections.stats(), {
    open: 1, idle: 1, active: 0, streams: 0, connectionsTotal: 1, requestsTotal: 3, reusedRequestsTotal: 2
  })
  t.equal(app.connections.stats().reusedRatio, 2 / 3)

  let seen = 0
  app.connections.forEach((info) => {
    seen++
    t.equal(info.requests, 3)
    t.equal(info.inFlight, 0)
    t.ok(info.bytesRead > 0 && info.bytesWritten > 0, 'bytes are counted')
    t.ok(info.openedAt <= Date.now())
  })
  t.equal(seen, 1)

  await client.close()
  await waitUntil(() => app.connections.stats().open === 0, 5000, 'the socket to close')
  t.match(app.connections.stats(), { open: 0, idle: 0, active: 0, connectionsTotal: 1 })
})

test('a request in flight makes its connection active until the response ends', async (t) => {
  const app = build(t)
  await app.register(connections)
  const hold = deferred()
  const entered = deferred()
  app.get('/slow', async () => { entered.resolve(); await hold.promise; return 'done' })
  const port = await listen(app)

  const socket = await connect(t, port)
  const received = collect(socket)
  socket.write(get('/slow'))
  await withDeadline(entered.promise, 5000, 'the handler')
  t.match(app.connections.stats(), { open: 1, active: 1, idle: 0, inFlight: 1 })
  hold.resolve()
  await waitUntil(() => received.text().endsWith('done'), 5000, 'the response')
  await waitUntil(() => app.connections.stats().inFlight === 0)
  t.match(app.connections.stats(), { open: 1, active: 0, idle: 1, inFlight: 0 })
})

test('pipelined requests are each counted and the connection is reused', async (t) => {
  const app = build(t)
  await app.register(connections)
  app.get('/:n', async (req) => (req.params as { n: string }).n)
  const port = await listen(app)

  const socket = await connect(t, port)
  const received = collect(socket)
  socket.write(get('/a') + get('/b') + get('/c'))
  await waitUntil(() => (received.text().match(/HTTP\/1\.1 200/g) ?? []).length === 3, 5000, 'three responses')
  t.ok(/a[\s\S]*b[\s\S]*c/.test(received.text()), 'responses in order')
  await waitUntil(() => app.connections.stats().inFlight === 0)
  t.match(app.connections.stats(), { open: 1, connectionsTotal: 1, requestsTotal: 3, reusedRequestsTotal: 2, idle: 1 })
})

test('a client aborting mid-request leaves no entry and no in-flight count', async (t) => {
  const app = build(t)
  await app.register(connections)
  const entered = deferred()
  const aborted = deferred()
  app.get('/hang', async (req) => {
    entered.resolve()
    await new Promise((resolve) => { req.raw.once('close', resolve) })
    aborted.resolve()
    return 'never read'
  })
  const port = await listen(app)

  const socket = await connect(t, port)
  socket.write(get('/hang'))
  await withDeadline(entered.promise, 5000, 'the handler')
  t.equal(app.connections.stats().inFlight, 1)
  socket.destroy()
  await withDeadline(aborted.promise, 5000, 'the server to see the abort')
  await waitUntil(() => app.connections.stats().open === 0, 5000, 'the entry to go')
  t.match(app.connections.stats(), { open: 0, active: 0, inFlight: 0, streams: 0, requestsTotal: 1 })
})

test('1000 connect/close cycles leave no entries and no listeners behind', async (t) => {
  const app = build(t)
  await app.register(connections)
  app.get('/', async () => 'ok')
  const port = await listen(app)
  const listenersBefore = ['connection', 'request'].map((e) => app.server.listenerCount(e))

  const cycles = 1000
  const batch = 50
  for (let i = 0; i < cycles; i += batch) {
    await Promise.all(Array.from({ length: batch }, async (_v, j) => {
      const socket = await connect(t, port)
      const received = collect(socket)
      // Half send a request and close, half close without a word.
      if ((i + j) % 2 === 0) {
        socket.write(get('/', { connection: 'close' }))
      } else {
        socket.end()
      }
      await withDeadline(received.closed, 5000, 'the socket to close')
    }))
  }
  await waitUntil(() => app.connections.stats().open === 0, 5000, 'every entry to go')
  const stats = app.connections.stats()
  t.match(stats, { open: 0, active: 0, idle: 0, inFlight: 0, streams: 0, connectionsTotal: cycles, requestsTotal: cycles / 2 })
  t.same(['connection', 'request'].map((e) => app.server.listenerCount(e)), listenersBefore, 'no listener added per connection')
})

test('trackStream: a streaming response is counted, closed gracefully, and dropped when it ends', async (t) => {
  const app = build(t)
  await app.register(connections)
  app.get('/stream', (_req, reply) => {
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'text/plain' })
    reply.raw.write('hello\n')
    app.connections.trackStream(reply, {
      close (reason) {
        reply.raw.end(`bye: ${reason}\n`)
      }
    })
  })
  const port = await listen(app)

  const socket = await connect(t, port)
  const received = collect(socket)
  socket.write(get('/stream'))
  await waitUntil(() => received.text().includes('hello'), 5000, 'the first chunk')
  t.match(app.connections.stats(), { streams: 1, active: 1, inFlight: 1 })

  const result = await app.connections.closeStreams({ reason: 'test' })
  t.same(result, { closed: 1, failed: 0, cut: 0 })
  await waitUntil(() => received.text().includes('bye: test'), 5000, 'the final chunk')
  await waitUntil(() => app.connections.stats().streams === 0)
  t.match(app.connections.stats(), { streams: 0, inFlight: 0 })
})

test('trackStream: the stream is dropped when its client leaves, and untrack() removes it early', async (t) => {
  const app = build(t)
  await app.register(connections)
  const registrations: Array<{ untrack: () => void }> = []
  app.get('/stream', (_req, reply) => {
    reply.hijack()
    reply.raw.writeHead(200)
    reply.raw.write('open\n')
    // Tracked again: the new handle replaces the first, whose untrack() then does nothing.
    const first = app.connections.trackStream(reply, { close () {} })
    registrations.push(app.connections.trackStream(reply.raw, { close () { reply.raw.end() } }))
    first.untrack()
  })
  const port = await listen(app)

  const a = await connect(t, port)
  const b = await connect(t, port)
  const ra = collect(a)
  const rb = collect(b)
  a.write(get('/stream'))
  b.write(get('/stream'))
  await waitUntil(() => ra.text().includes('open') && rb.text().includes('open'), 5000, 'both streams')
  t.equal(app.connections.stats().streams, 2)
  a.destroy()
  await waitUntil(() => app.connections.stats().streams === 1, 5000, 'the left stream to drop')
  registrations[1]!.untrack()
  t.equal(app.connections.stats().streams, 0)
  registrations[1]!.untrack() // idempotent
  t.equal(app.connections.stats().streams, 0)
  t.throws(() => app.connections.trackStream(null as never, { close () {} }), { code: 'FLL_ERR_INVALID_OPTION' })
  t.throws(() => app.connections.trackStream({} as never, {} as never), { code: 'FLL_ERR_INVALID_OPTION' })
})

test('trackStream: a pipelined stream queued behind another is dropped with its connection, so close() does not wait for it', async (t) => {
  const app = build(t)
  await app.register(connections)
  app.get('/stream', (_req, reply) => {
    reply.hijack()
    reply.raw.writeHead(200)
    reply.raw.write('open\n')
    app.connections.trackStream(reply, { close () { reply.raw.end() } })
  })
  const port = await listen(app)
  const socket = await connect(t, port)
  const received = collect(socket)
  // Node hands both requests to the app at once; the second response waits behind the first
  // (which never ends) and never gets the socket, so it never emits 'close'.
  socket.write(get('/stream') + get('/stream'))
  await waitUntil(() => app.connections.stats().streams === 2 && received.text().includes('open'), 5000, 'both streams')
  socket.destroy()
  await waitUntil(() => app.connections.stats().streams === 0, 5000, 'both streams to drop')
  t.same(app.connections.stats().open, 0)
  await withDeadline(app.close(), 2000, 'close()')
})

test('closeStreams spreads the closes over the window', async (t) => {
  const app = build(t)
  await app.register(connections)
  const closedAt: number[] = []
  app.get('/stream', (_req, reply) => {
    reply.hijack()
    reply.raw.writeHead(200)
    reply.raw.write('open\n')
    app.connections.trackStream(reply, { close () { closedAt.push(Date.now()); reply.raw.end() } })
  })
  const port = await listen(app)
  const clients = await Promise.all([0, 1, 2, 3].map(async () => {
    const s = await connect(t, port)
    const r = collect(s)
    s.write(get('/stream'))
    await waitUntil(() => r.text().includes('open'), 5000, 'a stream')
    return r
  }))
  t.equal(app.connections.stats().streams, 4)
  const start = Date.now()
  const result = await app.connections.closeStreams({ window: 300 })
  t.same(result, { closed: 4, failed: 0, cut: 0 })
  closedAt.sort((x, y) => x - y)
  t.ok(closedAt[0]! - start < 100, 'the first close is immediate')
  t.ok(closedAt[3]! - start >= 250, `the last close waits for the window (${closedAt[3]! - start} ms)`)
  t.ok(closedAt[1]! - start >= 50 && closedAt[2]! - start >= 150, 'closes in between are spread')
  // Each response ended (the last chunk of a chunked body); the keep-alive sockets stay open.
  await waitUntil(() => clients.every((c) => c.text().endsWith('0\r\n\r\n')), 5000, 'every stream to end')
  t.equal(app.connections.stats().streams, 0)
  await t.rejects(app.connections.closeStreams({ window: -1 }), { code: 'FLL_ERR_INVALID_OPTION' })
})

test('setDraining: responses carry Connection: close and busy sockets close when their response ends', async (t) => {
  const app = build(t)
  await app.register(connections)
  const hold = deferred()
  const entered = deferred()
  app.get('/slow', async () => { entered.resolve(); await hold.promise; return 'slow' })
  app.get('/streamed', (_req, reply) => {
    // Headers leave before draining starts: they still say keep-alive.
    reply.raw.writeHead(200, { 'content-type': 'text/plain' })
    reply.raw.write('part1 ')
    entered.promise.then(() => hold.promise).then(() => { reply.raw.end('part2') }, () => {})
    reply.hijack()
  })
  app.get('/', async () => 'ok')
  const port = await listen(app)

  const busy = await connect(t, port)
  const busyData = collect(busy)
  busy.write(get('/slow'))
  const started = await connect(t, port)
  const startedData = collect(started)
  started.write(get('/streamed'))
  await withDeadline(entered.promise, 5000, 'the handler')
  await waitUntil(() => startedData.text().includes('part1'), 5000, 'the streamed headers')
  const idle = await connect(t, port)

  t.same(app.connections.setDraining(), { marked: 1 }, 'the response whose headers are not sent is marked')
  t.same(app.connections.setDraining(), { marked: 0 }, 'idempotent')
  t.equal(app.connections.draining, true)
  t.equal(app.connections.stats().draining, true)

  // A new request on a new connection while draining is served, with Connection: close.
  const late = await connect(t, port)
  const lateData = collect(late)
  late.write(get('/'))
  await withDeadline(lateData.closed, 5000, 'the late connection to close')
  t.match(lateData.text(), /^HTTP\/1\.1 200[\s\S]*connection: close/i)

  hold.resolve()
  await withDeadline(busyData.closed, 5000, 'the busy connection to close')
  t.match(busyData.text(), /connection: close[\s\S]*slow$/i)
  await withDeadline(startedData.closed, 5000, 'the keep-alive response\'s connection to close')
  t.match(startedData.text(), /connection: keep-alive[\s\S]*part2/i, 'it said keep-alive, and was closed right after')

  await waitUntil(() => app.connections.stats().open === 1, 5000, 'only the idle socket to remain')
  t.equal(app.connections.closeIdle().closed, 1, 'the idle socket is closed by closeIdle')
  await withDeadline(once(idle, 'close'), 5000, 'the idle socket to close')
})

test('closeIdle closes idle connections only; waitForIdle and destroyAll', async (t) => {
  const app = build(t)
  await app.register(connections)
  const hold = deferred()
  const entered = deferred()
  app.get('/slow', async () => { entered.resolve(); await hold.promise; return 'slow' })
  const port = await listen(app)

  const idle1 = await connect(t, port)
  const idle2 = await connect(t, port)
  const busy = await connect(t, port)
  const busyData = collect(busy)
  busy.write(get('/slow'))
  await withDeadline(entered.promise, 5000, 'the handler')
  await waitUntil(() => app.connections.stats().open === 3)

  t.same(app.connections.closeIdle(), { closed: 2 })
  await Promise.all([waitFor(idle1, 'close'), waitFor(idle2, 'close')])
  t.match(app.connections.stats(), { active: 1 })

  t.same(await app.connections.waitForIdle(50), { idle: false, active: 1, streams: 0 }, 'deadline passes')
  const waiting = app.connections.waitForIdle(5000)
  hold.resolve()
  t.same(await waiting, { idle: true, active: 0, streams: 0 })
  await waitUntil(() => busyData.text().endsWith('slow'))
  t.same(await app.connections.waitForIdle(0), { idle: true, active: 0, streams: 0 }, 'already idle')
  t.throws(() => app.connections.waitForIdle(-5), { code: 'FLL_ERR_INVALID_OPTION' })

  t.same(app.connections.destroyAll(), { destroyed: 1 })
  await withDeadline(busyData.closed, 5000, 'the destroyed socket')
  await waitUntil(() => app.connections.stats().open === 0)
})

test('server close: every entry goes', async (t) => {
  const app = build(t)
  await app.register(connections)
  app.get('/', async () => 'ok')
  const port = await listen(app)
  const client = new Client(`http://127.0.0.1:${port}`, { pipelining: 1 })
  t.teardown(() => client.destroy())
  await (await client.request({ path: '/', method: 'GET' })).body.text()
  t.equal(app.connections.stats().open, 1)
  await withDeadline(app.close(), 5000, 'app.close()')
  await waitUntil(() => app.connections.stats().open === 0, 5000, 'the socket to close')
  t.equal(app.connections.stats().open, 0)
})

test('metrics: the same numbers as Prometheus gauges and counters, removed on close', async (t) => {
  const registry = new Registry()
  for (let round = 0; round < 2; round++) {
    const app = build(t)
    await app.register(connections, { metrics: { registry } })
    app.get('/', async () => 'ok')
    const port = await listen(app)
    const client = new Client(`http://127.0.0.1:${port}`)
    for (let i = 0; i < 2; i++) await (await client.request({ path: '/', method: 'GET' })).body.text()
    await waitUntil(() => app.connections.stats().inFlight === 0)
    const text = await registry.metrics()
    t.match(text, /^fastify_long_lived_connections_open 1$/m)
    t.match(text, /^fastify_long_lived_connections_idle 1$/m)
    t.match(text, /^fastify_long_lived_requests_total 2$/m)
    t.match(text, /^fastify_long_lived_reused_requests_total 1$/m)
    t.match(text, /^# TYPE fastify_long_lived_requests_total counter$/m)
    t.match(text, /^fastify_long_lived_draining 0$/m)
    await client.close()
    await app.close()
    t.notMatch(await registry.metrics(), /fastify_long_lived/, 'metrics removed on close, so a new app can register them again')
  }
})

test('options are validated at register time', async (t) => {
  for (const [opts, name] of [
    [{ metrics: { registry: {} } }, 'metrics.registry'],
    [{ metrics: { registry: new Registry(), prefix: '1bad' } }, 'metrics.prefix'],
    [{ metrics: 'yes' }, 'metrics'],
    [{ metric: null }, 'metric'],
    [{ maxConcurrentStreams: 0 }, 'maxConcurrentStreams'],
    [{ maxConcurrentStreams: 1.5 }, 'maxConcurrentStreams']
  ] as const) {
    const app = build(t)
    await t.rejects(async () => { await app.register(connections, opts as never).ready() }, { code: 'FLL_ERR_INVALID_OPTION', message: new RegExp(`'${name.replace('.', '\\.')}'`) })
  }
})

test('HTTP/2: sessions are tracked, streams counted as requests, idle sessions closed', async (t) => {
  const app = build(t, { http2: true } as never)
  await app.register(connections)
  app.get('/', async () => 'ok')
  const port = await listen(app)

  const session = http2.connect(`http://127.0.0.1:${port}`)
  t.teardown(() => session.destroy())
  for (let i = 0; i < 2; i++) {
    const stream = session.request({ ':path': '/' })
    let body = ''
    stream.setEncoding('utf8')
    stream.on('data', (chunk: string) => { body += chunk })
    await waitFor(stream, 'end')
    t.equal(body, 'ok')
  }
  await waitUntil(() => app.connections.stats().inFlight === 0)
  t.match(app.connections.stats(), { open: 1, idle: 1, connectionsTotal: 1, requestsTotal: 2, reusedRequestsTotal: 1 })
  t.same(app.connections.closeIdle(), { closed: 1 })
  await waitFor(session, 'close')
  await waitUntil(() => app.connections.stats().open === 0, 5000, 'the session entry to go')
})

test('HTTP/2: each session is capped at maxConcurrentStreams (100 by default), so maxBufferedBytes per stream bounds a connection', async (t) => {
  for (const [opts, expected] of [[{}, 100], [{ maxConcurrentStreams: 3 }, 3], [{ maxConcurrentStreams: null }, 2 ** 32 - 1]] as const) {
    const app = build(t, { http2: true } as never)
    await app.register(connections, opts)
    const port = await listen(app)
    const session = http2.connect(`http://127.0.0.1:${port}`)
    t.teardown(() => session.destroy())
    // The server's first SETTINGS has Node's default; ours follows it.
    await waitUntil(() => session.remoteSettings?.maxConcurrentStreams === expected, 5000, `maxConcurrentStreams ${expected}`)
    t.pass(`${JSON.stringify(opts)}: the client is told ${expected}`)
    session.destroy()
    await app.close()
  }
})

test('closeStreams: a stream still open at its deadline is destroyed and counted as cut; one whose close() throws is destroyed and counted as failed', async (t) => {
  const app = build(t)
  await app.register(connections)
  let n = 0
  app.get('/stream', (_req, reply) => {
    reply.hijack()
    reply.raw.writeHead(200)
    reply.raw.write('open\n')
    // The first stream ignores close() (as one whose client never takes its final event); the second throws.
    const which = n++
    app.connections.trackStream(reply, { close () { if (which === 1) throw new Error('no') } })
  })
  const port = await listen(app)
  const clients = []
  for (let i = 0; i < 2; i++) {
    const socket = await connect(t, port)
    const received = collect(socket)
    socket.write(get('/stream'))
    await waitUntil(() => received.text().includes('open'), 5000, 'a stream')
    clients.push(received)
  }
  const start = Date.now()
  const result = await withDeadline(app.connections.closeStreams({ timeout: 200 }), 2000, 'closeStreams()')
  const took = Date.now() - start
  t.same(result, { closed: 0, failed: 1, cut: 1 })
  t.ok(took >= 190 && took < 1500, `resolved at the deadline (${took} ms)`)
  await withDeadline(Promise.all(clients.map((c) => c.closed)), 1000, 'both connections to be destroyed')
  t.match(app.connections.stats(), { streams: 0, slowConsumers: 1 })
  for (const timeout of [0, -1, 1.5, '1s']) {
    await t.rejects(app.connections.closeStreams({ timeout: timeout as number }), { code: 'FLL_ERR_INVALID_OPTION', message: /closeStreams\(\{ timeout \}\)/ })
  }
})
