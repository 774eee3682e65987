import { test, type Test } from 'tap'
import type { FastifyInstance, FastifyServerOptions } from 'fastify'
import http from 'node:http'
import net from 'node:net'
import { Readable } from 'node:stream'
import { Registry } from 'prom-client'
import connections from '../plugins/connections.js'
import timeouts from '../plugins/timeouts.js'
import client, { resolveOptions, type ClientOptions, type UpstreamRequestOptions } from '../plugins/client.js'
import { Client, request as undiciRequest } from 'undici'
import { build, connect, deferred, get, listen, logCapture, waitUntil, withDeadline } from './helpers.js'

const WARN = 40

/** The two ways to send through the pool: the helper, or the dispatcher with undici's own API. */
type Via = 'request' | 'dispatcher'

/** appWith builds an app with connections and client (and the routes `setup` adds), ready, and its captured log lines. */
async function appWith (t: Test, opts: ClientOptions = {}, setup?: (app: FastifyInstance) => void) {
  const capture = logCapture('info')
  const app = build(t, { logger: capture.logger })
  await app.register(connections)
  await app.register(client, opts)
  setup?.(app)
  await app.ready()
  return { app, lines: capture.lines }
}

/**
 * nextTurn waits one turn of the event loop. undici reuses a keep-alive connection only one turn
 * after its response completed (it schedules `setImmediate(resume)` then, undici
 * lib/dispatcher/client-h1.js), so a call made in the same turn goes to another connection.
 * setImmediate callbacks run in order, so after this one the connection is free again: what
 * happens anyway when each call serves its own incoming request.
 */
function nextTurn (): Promise<void> {
  return new Promise((resolve) => { setImmediate(resolve) })
}

/**
 * call makes one upstream request, reads the body, and waits for the connection to be free
 * again; through `upstream.request()`, or through undici's request() on `upstream.dispatcher`.
 */
async function call (app: FastifyInstance, url: string, opts?: UpstreamRequestOptions, via: Via = 'request'): Promise<{ status: number, body: string, headers: Record<string, unknown> }> {
  const sent = via === 'request' ? app.upstream.request(url, opts) : undiciRequest(url, { ...opts, dispatcher: app.upstream.dispatcher })
  const res = await withDeadline(sent, 5e3, url)
  const body = await res.body.text()
  await nextTurn()
  return { status: res.statusCode, body, headers: res.headers }
}

/** upstreamApp is a Fastify upstream with the connections registry, to count what it sees. */
async function upstreamApp (t: Test, fastifyOpts: FastifyServerOptions = {}, setup?: (app: FastifyInstance) => Promise<void>) {
  const app = build(t, fastifyOpts)
  await app.register(connections)
  if (setup !== undefined) await setup(app)
  app.get('/', async () => ({ hello: 'world' }))
  const port = await listen(app)
  return { app, origin: `http://127.0.0.1:${port}` }
}

/** listenPlain starts a node:http server on 127.0.0.1 port 0, closed (with its sockets) at the end of the test. */
async function listenPlain (t: Test, handler: http.RequestListener): Promise<string> {
  const server = http.createServer(handler)
  t.teardown(() => {
    server.closeAllConnections()
    return new Promise<void>((resolve) => { server.close(() => { resolve() }) })
  })
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`
}

/**
 * staleUpstream is a raw upstream that makes the stale-socket race deterministic: it answers the
 * first request on each connection with keep-alive (a long `Keep-Alive: timeout`), then, as soon
 * as the bytes of a second request arrive on that connection, closes it without answering:
 * with a FIN (undici: "other side closed"), or with a RST (ECONNRESET); or, with 'partial',
 * after the first bytes of a response (so not a stale connection: the upstream did answer).
 */
async function staleUpstream (t: Test, close: 'fin' | 'rst' | 'partial') {
  const seen = { connections: 0, served: [] as string[], dropped: [] as string[] }
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    seen.connections++
    sockets.add(socket)
    socket.on('close', () => { sockets.delete(socket) })
    socket.on('error', () => {})
    let buffered = Buffer.alloc(0)
    let answered = false
    socket.on('data', (chunk: Buffer) => {
      if (answered) {
        seen.dropped.push(chunk.toString('latin1').split('\r\n')[0]!)
        if (close === 'rst') socket.resetAndDestroy()
        else if (close === 'partial') socket.end('HTTP/1.1 200 OK\r\nContent-Le')
        else socket.destroy()
        return
      }
      buffered = Buffer.concat([buffered, chunk])
      const end = buffered.indexOf('\r\n\r\n')
      if (end === -1) return
      const head = buffered.subarray(0, end).toString('latin1')
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0)
      if (buffered.length < end + 4 + length) return // wait for the whole body
      answered = true
      const line = head.split('\r\n')[0]!
      seen.served.push(line)
      const body = line.split(' ').slice(0, 2).join(' ')
      socket.write(`HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n` +
        `Connection: keep-alive\r\nKeep-Alive: timeout=60\r\n\r\n${body}`)
    })
  })
  t.teardown(() => {
    for (const s of sockets) s.destroy()
    return new Promise<void>((resolve) => { server.close(() => { resolve() }) })
  })
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
  return { seen, origin: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}` }
}

test('100 sequential requests ride one keep-alive connection', async (t) => {
  const up = await upstreamApp(t)
  // A service calling its upstream once per incoming request, 100 requests in a row.
  const { app } = await appWith(t, {}, (app) => {
    app.get('/proxy', async () => {
      const res = await app.upstream.request(`${up.origin}/`)
      return res.body.json()
    })
  })
  const port = await listen(app)
  const caller = new Client(`http://127.0.0.1:${port}`)
  t.teardown(() => caller.close())
  const statuses = new Set<number>()
  for (let i = 0; i < 100; i++) {
    const res = await caller.request({ method: 'GET', path: '/proxy' })
    statuses.add(res.statusCode)
    await res.body.json()
  }
  t.same([...statuses], [200])
  t.match(up.app.connections.stats(), { connectionsTotal: 1, requestsTotal: 100 }, 'the upstream saw one connection')
  t.same(app.upstream.stats()[up.origin], {
    connected: 1,
    free: 1,
    pending: 0,
    queued: 0,
    running: 0,
    size: 0,
    connectionsTotal: 1,
    requestsTotal: 100,
    reusedRequestsTotal: 99,
    reusedRatio: 0.99,
    staleClosesTotal: 0,
    retriesTotal: 0
  })
})

test('100 calls in a tight loop use at most two connections (undici reuses a connection one turn later)', async (t) => {
  const up = await upstreamApp(t)
  const { app } = await appWith(t)
  for (let i = 0; i < 100; i++) await (await app.upstream.request(`${up.origin}/`)).body.json()
  const seen = up.app.connections.stats().connectionsTotal
  t.ok(seen >= 1 && seen <= 2, `the upstream saw ${seen} connection(s)`)
  t.match(app.upstream.stats()[up.origin], { connectionsTotal: seen, requestsTotal: 100, reusedRequestsTotal: 100 - seen })
})

test('the connections limit holds under 200 concurrent requests', async (t) => {
  const limit = 8
  const release = deferred()
  let maxOpen = 0
  let clientAtLimit: Record<string, unknown> | undefined
  const caller: { app?: FastifyInstance } = {}
  const up = await upstreamApp(t, {}, async (upstream) => {
    upstream.get('/hold', async () => {
      const s = upstream.connections.stats()
      maxOpen = Math.max(maxOpen, s.open)
      // Hold every request until the pool has all its connections busy at once, to show that
      // it does reach the limit, and look at the queue on the client side at that moment.
      if (s.inFlight >= limit && clientAtLimit === undefined) {
        clientAtLimit = { ...caller.app!.upstream.stats()[up.origin] }
        release.resolve()
      }
      await release.promise
      return { ok: true }
    })
  })
  const { app } = await appWith(t, { connections: limit })
  caller.app = app
  const results = await withDeadline(Promise.all(Array.from({ length: 200 }, async () => {
    const res = await app.upstream.request(`${up.origin}/hold`)
    await res.body.json()
    return res.statusCode
  })), 10e3, '200 requests')
  t.equal(results.filter((s) => s === 200).length, 200)
  t.equal(maxOpen, limit, `the upstream saw at most ${limit} connections open at once`)
  t.equal(up.app.connections.stats().connectionsTotal, limit, 'and no more than that in total')
  t.match(clientAtLimit, { running: limit, pending: 200 - limit, connected: limit }, 'the rest waited in the client\'s queue')
  t.match(app.upstream.stats()[up.origin], { connectionsTotal: limit, requestsTotal: 200, reusedRequestsTotal: 200 - limit })
})

test('an upstream keep-alive of 2 s is never reused: warned once per origin; a preset keep-alive is reused', async (t) => {
  const short1 = await upstreamApp(t, { keepAliveTimeout: 2000 })
  const short2 = await upstreamApp(t, { keepAliveTimeout: 2000 })
  const alb = await upstreamApp(t, {}, async (upstream) => { await upstream.register(timeouts, { proxy: 'aws-alb' }) })
  const { app, lines } = await appWith(t)

  const run = async (origin: string, n: number): Promise<string[]> => {
    const hints: string[] = []
    for (let i = 0; i < n; i++) hints.push(String((await call(app, `${origin}/`)).headers['keep-alive']))
    return hints
  }
  t.same(await run(short1.origin, 3), ['timeout=2', 'timeout=2', 'timeout=2'])
  await run(short2.origin, 3)
  t.same(await run(alb.origin, 3), ['timeout=72', 'timeout=72', 'timeout=72'])

  // undici subtracts keepAliveTimeoutThreshold (2 s) from the hint: 2 - 2 <= 0, so it closes
  // each connection after its response instead of keeping it.
  t.equal(short1.app.connections.stats().connectionsTotal, 3, 'timeout=2: one connection per request')
  t.equal(short2.app.connections.stats().connectionsTotal, 3)
  t.match(app.upstream.stats()[short1.origin], { requestsTotal: 3, reusedRequestsTotal: 0 })
  t.equal(alb.app.connections.stats().connectionsTotal, 1, 'aws-alb preset (72 s): one connection reused')
  t.match(app.upstream.stats()[alb.origin], { requestsTotal: 3, reusedRequestsTotal: 2 })

  const warnings = lines.filter((l) => l.level === WARN)
  t.same(warnings.map((w) => [w.code, w.origin]), [
    ['FLL_WARN_UPSTREAM_KEEP_ALIVE_SHORT', short1.origin],
    ['FLL_WARN_UPSTREAM_KEEP_ALIVE_SHORT', short2.origin]
  ], 'once per origin, none for the reused upstream')
  t.match(warnings[0], { keepAliveHint: 2000, keepAliveTimeoutThreshold: 2000 })
  t.match(warnings[0]!.msg, /keeps idle connections for 2 s.*no connection to it is ever reused.*Raise the upstream's keep-alive timeout/)
})

test('a lower keepAliveTimeoutThreshold makes a 2 s upstream reusable, without a warning', async (t) => {
  const up = await upstreamApp(t, { keepAliveTimeout: 2000 })
  const { app, lines } = await appWith(t, { keepAliveTimeoutThreshold: 500 })
  for (let i = 0; i < 3; i++) await call(app, `${up.origin}/`)
  t.equal(up.app.connections.stats().connectionsTotal, 1)
  t.equal(lines.filter((l) => l.level === WARN).length, 0)
})

for (const [close, via] of [['fin', 'request'], ['rst', 'request'], ['fin', 'dispatcher'], ['rst', 'dispatcher']] as const) {
  test(`stale keep-alive connection (${close === 'fin' ? 'FIN' : 'RST'}, ${via === 'request' ? 'upstream.request()' : 'undici.request() on upstream.dispatcher'}): ` +
    'GET is retried on a fresh connection, POST fails with a coded error', async (t) => {
    const up = await staleUpstream(t, close)
    const { app } = await appWith(t)
    const send = async (path: string, opts?: UpstreamRequestOptions): Promise<string> => {
      const res = await call(app, `${up.origin}${path}`, opts, via)
      return `${res.status} ${res.body}`
    }

    t.equal(await send('/first'), '200 GET /first')
    t.equal(await send('/second'), '200 GET /second', 'the GET met the closed connection and was retried')
    t.equal(up.seen.connections, 2, 'the retry used a fresh connection')
    t.same(up.seen.dropped, ['GET /second HTTP/1.1'])

    t.equal(await send('/third'), '200 GET /third')
    const err = await withDeadline(send('/fourth', { method: 'POST', body: 'x' }).then(() => null, (e: unknown) => e), 5e3, 'the POST')
    t.match(err, {
      code: 'FLL_ERR_UPSTREAM_CONNECTION_CLOSED',
      statusCode: 502,
      message: /closed a reused connection before answering POST http:\/\/127\.0\.0\.1:\d+\/fourth: the request may or may not have been processed, and it was not retried because POST is not idempotent/
    })
    t.match((err as { cause: { code: string } }).cause, { code: close === 'fin' ? 'UND_ERR_SOCKET' : 'ECONNRESET' }, 'undici\'s error is the cause')
    t.equal(up.seen.connections, 3, 'the POST was not retried')

    t.equal(await send('/fifth'), '200 GET /fifth')
    t.equal(await send('/sixth', { method: 'POST', body: 'y', idempotent: true }), '200 POST /sixth', 'a POST marked idempotent is retried')

    t.equal(await send('/seventh'), '200 GET /seventh')
    await t.rejects(send('/eighth', { method: 'PUT', body: Readable.from(['a stream']) }), {
      code: 'FLL_ERR_UPSTREAM_CONNECTION_CLOSED',
      message: /PUT .*\/eighth.*because its body \(a stream, an iterable or FormData\) cannot be sent again/
    }, 'an idempotent request with a stream body is not retried')

    t.match(app.upstream.stats()[up.origin], { staleClosesTotal: 4, retriesTotal: 2 })
    t.equal(up.seen.connections, 6)
  })
}

test('a reused connection closed after response bytes came back is not a stale one: no retry, undici\'s error', async (t) => {
  const up = await staleUpstream(t, 'partial')
  const { app } = await appWith(t)
  t.equal((await call(app, `${up.origin}/first`)).body, 'GET /first')
  await t.rejects(withDeadline(app.upstream.request(`${up.origin}/second`), 5e3, 'the GET'), { code: 'UND_ERR_SOCKET' })
  t.equal(up.seen.connections, 1, 'not retried: the upstream had started to answer')
  t.match(app.upstream.stats()[up.origin], { staleClosesTotal: 0, retriesTotal: 0, requestsTotal: 2, reusedRequestsTotal: 1 })
})

test('an aborted incoming request aborts its upstream call', async (t) => {
  const got = deferred()
  const upstreamSocketClosed = deferred()
  const slow = await listenPlain(t, (req) => {
    // Never answers: only the caller going away can end this request.
    req.socket.once('close', () => { upstreamSocketClosed.resolve() })
    got.resolve()
  })
  const handlerOutcome = deferred<string>()
  const { app } = await appWith(t, {}, (app) => {
    app.get('/proxy', async (request) => {
      try {
        const res = await app.upstream.request(`${slow}/slow`, { signal: request.signal })
        return await res.body.text()
      } catch (err) {
        handlerOutcome.resolve((err as Error).name)
        throw err
      }
    })
  })
  const port = await listen(app)
  const socket = await connect(t, port)
  socket.write(get('/proxy'))
  await withDeadline(got.promise, 5e3, 'the upstream to receive the call')
  socket.destroy()
  await withDeadline(upstreamSocketClosed.promise, 5e3, 'the upstream to see its request closed')
  t.equal(await withDeadline(handlerOutcome.promise, 5e3, 'the handler'), 'AbortError', 'the upstream call rejected with an AbortError')
  await waitUntil(() => app.upstream.stats()[slow]!.size === 0, 5e3, 'the pool to be empty')
})

test('close waits for an upstream call in flight, and refuses new ones', async (t) => {
  const got = deferred()
  const release = deferred()
  const up = await listenPlain(t, async (req, res) => {
    if (req.url === '/hold') {
      got.resolve()
      await release.promise
    }
    res.end('late')
  })
  const { app, lines } = await appWith(t, { closeTimeout: 5e3 })
  const pending = app.upstream.request(`${up}/hold`)
  await withDeadline(got.promise, 5e3, 'the upstream to receive the call')
  const start = performance.now()
  const closed = app.close()
  await waitUntil(() => app.upstream.closed, 5e3, 'the client to start closing')
  await t.rejects(app.upstream.request(`${up}/`), { code: 'FLL_ERR_UPSTREAM_CLOSED', statusCode: 503, message: /closing: new requests are refused/ })
  await t.rejects(undiciRequest(`${up}/`, { dispatcher: app.upstream.dispatcher }), { code: 'FLL_ERR_UPSTREAM_CLOSED' }, 'through the dispatcher too')
  release.resolve()
  const res = await withDeadline(pending, 5e3, 'the call in flight')
  t.equal(await res.body.text(), 'late', 'the call in flight finished')
  await withDeadline(closed, 5e3, 'app.close()')
  const elapsed = performance.now() - start
  t.ok(elapsed < 4e3, `closed once the call finished, ${Math.round(elapsed)} ms, well before closeTimeout`)
  t.match(lines.find((l) => l.msg === 'fastify-long-lived: upstream client closed'), { inFlight: 1, destroyed: 0 })
  t.equal(app.upstream.close(), app.upstream.close(), 'close() is idempotent')
})

test('close destroys an upstream call still in flight at closeTimeout', async (t) => {
  const got = deferred()
  const upstreamSocketClosed = deferred()
  const up = await listenPlain(t, (req) => {
    req.socket.once('close', () => { upstreamSocketClosed.resolve() })
    got.resolve() // never answers
  })
  const closeTimeout = 300
  const { app, lines } = await appWith(t, { closeTimeout })
  const outcome = app.upstream.request(`${up}/never`).then(() => null, (err: unknown) => err)
  await withDeadline(got.promise, 5e3, 'the upstream to receive the call')
  const start = performance.now()
  await withDeadline(app.close(), 5e3, 'app.close()')
  const elapsed = performance.now() - start
  t.ok(elapsed >= closeTimeout - 50 && elapsed < closeTimeout + 1500, `closed after ${Math.round(elapsed)} ms (closeTimeout ${closeTimeout})`)
  t.match(await withDeadline(outcome, 5e3, 'the call'), { code: 'FLL_ERR_UPSTREAM_CLOSED', message: /closeTimeout \(300 ms\) reached/ })
  await withDeadline(upstreamSocketClosed.promise, 5e3, 'the upstream socket to close')
  const line = lines.find((l) => l.code === undefined && /upstream client closed/.test(l.msg))
  t.match(line, { level: WARN, inFlight: 1, destroyed: 1 })
})

test('timeouts and limits are passed to undici', async (t) => {
  const hold = deferred()
  t.teardown(() => { hold.resolve() })
  const up = await upstreamApp(t, {}, async (upstream) => {
    upstream.get('/slow-headers', async () => { await hold.promise; return 'late' })
  })
  const { app } = await appWith(t, { maxRequestsPerConnection: 2, headersTimeout: 100 })
  for (let i = 0; i < 4; i++) await call(app, `${up.origin}/`)
  t.equal(up.app.connections.stats().connectionsTotal, 2, 'maxRequestsPerConnection: 2 -> 4 requests on 2 connections')
  await t.rejects(app.upstream.request(`${up.origin}/slow-headers`), { code: 'UND_ERR_HEADERS_TIMEOUT' }, 'headersTimeout')

  const up2 = await upstreamApp(t)
  const { app: noKeepAlive } = await appWith(t, { pipelining: 0 })
  for (let i = 0; i < 3; i++) await call(noKeepAlive, `${up2.origin}/`)
  t.equal(up2.app.connections.stats().connectionsTotal, 3, 'pipelining: 0 -> a connection per request')
})

test('defaults are production-safe, resolved and frozen; the caller\'s options are not mutated', async (t) => {
  t.same(resolveOptions({}), {
    connections: 128,
    keepAliveTimeout: 4e3,
    keepAliveMaxTimeout: 60e3,
    keepAliveTimeoutThreshold: 2e3,
    connectTimeout: 10e3,
    headersTimeout: 30e3,
    bodyTimeout: 30e3,
    maxRequestsPerConnection: null,
    maxConnectionAge: null,
    pipelining: 1,
    tls: null,
    closeTimeout: 3e3
  })
  const opts = Object.freeze({ connections: null, bodyTimeout: 0, maxConnectionAge: 300e3, tls: Object.freeze({ rejectUnauthorized: true }) })
  const { app } = await appWith(t, opts)
  t.match(app.upstream.options, { connections: null, bodyTimeout: 0, maxConnectionAge: 300e3, tls: { rejectUnauthorized: true } })
  t.ok(Object.isFrozen(app.upstream.options))
  t.ok(Object.isFrozen(app.upstream.options.tls))
  t.not(app.upstream.options.tls, opts.tls, 'a copy')
})

test('bad options fail at register time with coded errors that name the option', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{ connection: 10 }, /'connection' must be one of the known options/],
    [{ connections: 0 }, /'connections' must be a positive integer or null, received 0/],
    [{ connections: -1 }, /'connections'.*received -1/],
    [{ connections: 1.5 }, /'connections'.*received 1\.5/],
    [{ connections: '10' }, /'connections'.*received '10'/],
    [{ keepAliveTimeout: 0 }, /'keepAliveTimeout' must be a positive integer \(ms; use pipelining: 0 to turn keep-alive off\), received 0/],
    [{ keepAliveMaxTimeout: null }, /'keepAliveMaxTimeout' must be a positive integer \(ms\), received null/],
    [{ keepAliveTimeoutThreshold: -1 }, /'keepAliveTimeoutThreshold' must be an integer >= 0/],
    [{ connectTimeout: '10s' }, /'connectTimeout'.*received '10s'/],
    [{ headersTimeout: 1.5 }, /'headersTimeout'.*received 1\.5/],
    [{ bodyTimeout: -5 }, /'bodyTimeout'/],
    [{ maxRequestsPerConnection: 0 }, /'maxRequestsPerConnection' must be a positive integer or null/],
    [{ maxConnectionAge: -1 }, /'maxConnectionAge' must be a positive integer \(ms\) or null/],
    [{ pipelining: -1 }, /'pipelining' must be an integer >= 0 \(requests in flight per connection; 0 turns keep-alive off\), received -1/],
    [{ pipelining: null }, /'pipelining'.*received null/],
    [{ tls: 'yes' }, /'tls' must be an object of TLS options/],
    [{ closeTimeout: -1 }, /'closeTimeout'/],
    [{ metrics: { registry: {} } }, /'metrics\.registry' must be a prom-client Registry/],
    [{ metrics: { registry: new Registry(), prefix: '1x' } }, /'metrics\.prefix'/],
    [{ metrics: { registry: new Registry(), label: 'x' } }, /'metrics\.label' must be one of the known options/],
    [[], /'' must be an object/]
  ]
  for (const [opts, message] of cases) {
    const app = build(t)
    await app.register(connections)
    await t.rejects(async () => { await app.register(client, opts as ClientOptions).ready() }, { code: 'FLL_ERR_INVALID_OPTION', message }, JSON.stringify(opts))
  }
})

test('Prometheus metrics per origin, removed on close', async (t) => {
  const registry = new Registry()
  const up = await upstreamApp(t)
  const { app } = await appWith(t, { metrics: { registry } })
  for (let i = 0; i < 3; i++) await call(app, `${up.origin}/`)
  const text = await registry.metrics()
  const label = `{origin="${up.origin}"}`
  t.match(text, `fastify_long_lived_upstream_requests_total${label} 3`)
  t.match(text, `fastify_long_lived_upstream_reused_requests_total${label} 2`)
  t.match(text, `fastify_long_lived_upstream_connections_total${label} 1`)
  t.match(text, `fastify_long_lived_upstream_connections_open${label} 1`)
  t.match(text, `fastify_long_lived_upstream_connections_free${label} 1`)
  t.match(text, `fastify_long_lived_upstream_requests_running${label} 0`)
  t.match(text, `fastify_long_lived_upstream_requests_pending${label} 0`)
  t.match(text, `fastify_long_lived_upstream_retries_total${label} 0`)
  t.match(text, `fastify_long_lived_upstream_stale_closes_total${label} 0`)
  await app.close()
  t.equal(registry.getSingleMetric('fastify_long_lived_upstream_requests_total'), undefined)
  t.equal((await registry.metrics()).trim(), '')
})

test('an upstream that refuses the connection: the request rejects with the connect error, nothing else breaks', async (t) => {
  // A port that was just listening, now closed: connect() is refused.
  const closed = net.createServer()
  await new Promise<void>((resolve) => { closed.listen(0, '127.0.0.1', resolve) })
  const port = (closed.address() as net.AddressInfo).port
  await new Promise((resolve) => { closed.close(resolve) })
  const { app } = await appWith(t)
  await app.ready()
  await t.rejects(app.upstream.request(`http://127.0.0.1:${port}/`), { code: 'ECONNREFUSED' })
  t.match(app.upstream.stats()[`http://127.0.0.1:${port}`], { connectionsTotal: 0 }, 'a refused connect is not counted as a connection')
})

test('the client plugin stands alone: no other plugin of the kit is needed', async (t) => {
  const up = await upstreamApp(t)
  const app = build(t)
  await app.register(client)
  await app.ready()
  const res = await app.upstream.request(`${up.origin}/`)
  t.equal(res.statusCode, 200)
  await res.body.dump()
})
