import { test, type Test } from 'tap'
import http from 'node:http'
import { Readable } from 'node:stream'
import { Client } from 'undici'
import connections from '../plugins/connections.js'
import timeouts, { keepAliveAbove, proxyPresets, resolveOptions, warningsFor, type TimeoutsOptions } from '../plugins/timeouts.js'
import { build, collect, connect, get, listen, logCapture, waitUntil, withDeadline } from './helpers.js'

async function appWith (t: Test, opts: TimeoutsOptions, fastifyOpts = {}) {
  const capture = logCapture()
  const app = build(t, { logger: capture.logger, ...fastifyOpts })
  await app.register(connections)
  await app.register(timeouts, opts)
  return { app, lines: capture.lines }
}

/** A plain client making requests alongside the slow ones, to show it is served normally. */
async function normalRequest (port: number): Promise<string> {
  const client = new Client(`http://127.0.0.1:${port}`)
  try {
    const res = await client.request({ path: '/', method: 'GET' })
    return `${res.statusCode} ${await res.body.text()}`
  } finally {
    await client.close()
  }
}

test('defaults are applied to the server and exposed frozen', async (t) => {
  const { app, lines } = await appWith(t, {})
  await app.ready()
  const server = app.server as http.Server & { connectionsCheckingInterval: number }
  t.equal(server.headersTimeout, 20e3)
  t.equal(server.requestTimeout, 120e3)
  t.equal(server.keepAliveTimeout, 72e3)
  t.equal(server.timeout, 0)
  t.equal(server.connectionsCheckingInterval, 1e3)
  t.match(app.timeouts, {
    headersTimeout: 20e3,
    requestTimeout: 120e3,
    keepAliveTimeout: 72e3,
    socketTimeout: 0,
    maxRequestsPerSocket: 0,
    maxConnections: null,
    connectionsCheckingInterval: 1e3,
    maxHeaderSize: http.maxHeaderSize,
    handlerTimeout: null,
    proxy: null,
    minDataRate: { request: { bytesPerSecond: 240, grace: 5e3 }, response: { bytesPerSecond: 240, grace: 5e3 }, interval: 1e3 }
  })
  t.ok(Object.isFrozen(app.timeouts))
  t.equal(lines.filter((l) => l.level === 40).length, 0, 'no warning for the defaults')
  t.equal(lines.filter((l) => l.msg === 'fastify-long-lived: effective server timeouts').length, 1, 'effective values logged once on ready')
})

test('explicit values win and the caller\'s object is not mutated', async (t) => {
  const opts = Object.freeze({
    headersTimeout: 5e3,
    requestTimeout: 30e3,
    keepAliveTimeout: 65e3,
    socketTimeout: 300e3,
    maxRequestsPerSocket: 100,
    maxConnections: 10_000,
    connectionsCheckingInterval: 500,
    minDataRate: Object.freeze({ request: null, response: Object.freeze({ bytesPerSecond: 1000 }) })
  })
  const { app } = await appWith(t, opts)
  await app.ready()
  t.match(app.timeouts, {
    headersTimeout: 5e3,
    requestTimeout: 30e3,
    keepAliveTimeout: 65e3,
    socketTimeout: 300e3,
    maxRequestsPerSocket: 100,
    maxConnections: 10_000,
    connectionsCheckingInterval: 500,
    minDataRate: { request: null, response: { bytesPerSecond: 1000, grace: 5e3 }, interval: 1e3 }
  })
  t.equal(app.server.maxConnections, 10_000)
})

test('HTTP/2: settings the server does not have read null', async (t) => {
  const { app } = await appWith(t, { socketTimeout: 60e3 }, { http2: true })
  await app.ready()
  t.match(app.timeouts, { headersTimeout: null, requestTimeout: null, keepAliveTimeout: null, maxHeaderSize: null, socketTimeout: 60e3 })
})

test('proxy presets derive keepAliveTimeout above the proxy idle timeout', async (t) => {
  t.equal(keepAliveAbove(60e3), 72e3)
  t.equal(keepAliveAbove(10e3), 15e3, 'at least 5 s above')
  for (const [name, preset] of Object.entries(proxyPresets)) {
    const r = resolveOptions({ proxy: name })
    t.equal(r.keepAliveTimeout, keepAliveAbove(preset.idleTimeout), name)
    t.ok(r.keepAliveTimeout > preset.idleTimeout)
  }
  t.equal(resolveOptions({ proxy: 'aws-alb' }).keepAliveTimeout, 72e3)
  t.equal(resolveOptions({ proxy: 'gcp-lb' }).keepAliveTimeout, 720e3)
  t.same(resolveOptions({ proxy: { idleTimeout: 100e3, responseTimeout: 50e3 } }).proxy, { name: 'custom', idleTimeout: 100e3, responseTimeout: 50e3, requestBuffering: false })

  const { app } = await appWith(t, { proxy: 'cloudflare' })
  await app.ready()
  t.equal(app.server.keepAliveTimeout, keepAliveAbove(900e3))
  t.match(app.timeouts.proxy, { name: 'cloudflare', idleTimeout: 900e3, responseTimeout: 100e3 })
})

test('bad options fail at register time with coded errors that name the option', async (t) => {
  const cases: Array<[unknown, string, RegExp]> = [
    [{ headersTimeout: 60e3, requestTimeout: 30e3 }, 'FLL_ERR_TIMEOUT_ORDER', /headersTimeout \(60000 ms\) must not exceed requestTimeout \(30000 ms\)/],
    [{ maxConnections: 0 }, 'FLL_ERR_INVALID_OPTION', /'maxConnections'.*Node 22/],
    [{ headersTimeout: -1 }, 'FLL_ERR_INVALID_OPTION', /'headersTimeout' must be an integer >= 0.*received -1/],
    [{ requestTimeout: 1.5 }, 'FLL_ERR_INVALID_OPTION', /'requestTimeout'.*received 1\.5/],
    [{ keepAliveTimeout: '15s' }, 'FLL_ERR_INVALID_OPTION', /'keepAliveTimeout'.*received '15s'/],
    [{ proxy: 'haproxy' }, 'FLL_ERR_INVALID_OPTION', /'proxy' must be one of 'aws-alb', 'gcp-lb', 'nginx', 'cloudflare'/],
    [{ proxy: { idleTimeout: 60e3 } }, 'FLL_ERR_INVALID_OPTION', /'proxy'.*both 'idleTimeout' and 'responseTimeout'/],
    [{ proxy: { idleTimeout: 0, responseTimeout: 1 } }, 'FLL_ERR_INVALID_OPTION', /'proxy\.idleTimeout'/],
    [{ proxy: { idleTimeout: 1, responseTimeout: 1, requestBuffering: 'on' } }, 'FLL_ERR_INVALID_OPTION', /'proxy\.requestBuffering' must be true .* or false .*received 'on'/],
    [{ handlerTimeout: 0 }, 'FLL_ERR_INVALID_OPTION', /'handlerTimeout' must be a positive integer \(ms\) or null/],
    [{ minDataRate: { request: { bytesPerSecond: 0 } } }, 'FLL_ERR_INVALID_OPTION', /'minDataRate\.request\.bytesPerSecond'/],
    [{ minDataRate: { interval: 'often' } }, 'FLL_ERR_INVALID_OPTION', /'minDataRate\.interval'/],
    [{ minDataRate: { requests: {} } }, 'FLL_ERR_INVALID_OPTION', /'minDataRate\.requests'/],
    [{ keepAlive: 5000 }, 'FLL_ERR_INVALID_OPTION', /'keepAlive' must be one of the known options/],
    [{ connectionsCheckingInterval: 0 }, 'FLL_ERR_INVALID_OPTION', /'connectionsCheckingInterval'/],
    [{ maxHeaderSize: 32768 }, 'FLL_ERR_MAX_HEADER_SIZE', /maxHeaderSize 32768 was asked for, but the server was created with 16384.*Fastify\(\{ http: \{ maxHeaderSize \} \}\)/]
  ]
  for (const [opts, code, message] of cases) {
    const app = build(t)
    await app.register(connections)
    await t.rejects(async () => { await app.register(timeouts, opts as TimeoutsOptions).ready() }, { code, message }, JSON.stringify(opts))
  }
})

test('maxHeaderSize passed through Fastify\'s http option is verified', async (t) => {
  const { app } = await appWith(t, { maxHeaderSize: 32768 }, { http: { maxHeaderSize: 32768 } })
  await app.ready()
  t.equal(app.timeouts.maxHeaderSize, 32768)
})

test('risky but legal settings log a warning that says what goes wrong', async (t) => {
  const base = resolveOptions({})
  t.same(warningsFor(base, 0), [])
  const codes = (opts: TimeoutsOptions, serverHandlerTimeout = 0): string[] => warningsFor(resolveOptions(opts), serverHandlerTimeout).map((w) => w.code)
  t.same(codes({ requestTimeout: 0 }), ['FLL_WARN_REQUEST_TIMEOUT_OFF'])
  t.same(codes({ headersTimeout: 0 }), ['FLL_WARN_HEADERS_TIMEOUT_OFF'])
  t.same(codes({ keepAliveTimeout: 0 }), ['FLL_WARN_KEEP_ALIVE_OFF'])
  t.same(codes({ proxy: 'aws-alb', keepAliveTimeout: 60e3, requestTimeout: 60e3 }), ['FLL_WARN_KEEP_ALIVE_BELOW_PROXY'])
  t.same(codes({ proxy: 'gcp-lb', requestTimeout: 60e3 }), ['FLL_WARN_REQUEST_TIMEOUT_ABOVE_PROXY'])
  t.same(codes({ proxy: 'nginx', requestTimeout: 60e3, handlerTimeout: 60e3 }), ['FLL_WARN_HANDLER_TIMEOUT_ABOVE_PROXY'])
  t.same(codes({ proxy: 'nginx', requestTimeout: 60e3 }, 90e3), ['FLL_WARN_HANDLER_TIMEOUT_ABOVE_PROXY'], 'Fastify\'s own handlerTimeout is checked too')
  t.same(codes({ headersTimeout: 2e3, connectionsCheckingInterval: 1e3 }), ['FLL_WARN_CHECK_INTERVAL_COARSE'])
  t.same(codes({ handlerTimeout: 5e3 }, 10e3), ['FLL_WARN_HANDLER_TIMEOUT_TWICE'])

  const { app, lines } = await appWith(t, { requestTimeout: 0, proxy: 'aws-alb', keepAliveTimeout: 30e3 })
  await app.ready()
  const warnings = lines.filter((l) => l.level === 40)
  t.same(warnings.map((w) => w.code), ['FLL_WARN_REQUEST_TIMEOUT_OFF', 'FLL_WARN_KEEP_ALIVE_BELOW_PROXY'])
  t.match(warnings[1]!.msg, /answer 502; use at least 72000 ms/)
})

test('the nginx preset with default options logs no warning: nginx buffers request bodies, so a slow upload never reaches the app (issue 12)', async (t) => {
  // nginx reads the whole body before it contacts the app (proxy_request_buffering on, its
  // default; test/nginx.test.ts shows it with a real nginx): requestTimeout (120 s) above
  // proxy_read_timeout (60 s) cannot make nginx answer 504 to a slow upload.
  const { app, lines } = await appWith(t, { proxy: 'nginx' })
  await app.ready()
  t.same(lines.filter((l) => l.level >= 40).map((l) => l.code), [], 'no warning')
  t.match(app.timeouts.proxy, { name: 'nginx', requestBuffering: true })
})

test('every preset with default options boots without a warning; an explicit requestTimeout above a streaming proxy is warned (issue 13)', async (t) => {
  for (const name of ['aws-alb', 'gcp-lb', 'cloudflare', 'nginx'] as const) {
    const { app, lines } = await appWith(t, { proxy: name })
    await app.ready()
    t.same(lines.filter((l) => l.level >= 40).map((l) => l.code), [], `${name}: no warning`)
    // A proxy that streams bodies cuts a slow upload at its response timeout: the default stops there.
    const expected = proxyPresets[name].requestBuffering ? 120e3 : Math.min(120e3, proxyPresets[name].responseTimeout)
    t.equal(app.timeouts.requestTimeout, expected, `${name}: requestTimeout ${expected} ms`)
    t.ok(app.timeouts.headersTimeout! <= app.timeouts.requestTimeout!, `${name}: headersTimeout fits inside requestTimeout`)
    await app.close()
  }
  for (const name of ['aws-alb', 'gcp-lb', 'cloudflare'] as const) {
    t.equal(proxyPresets[name].requestBuffering, false, `${name} streams request bodies`)
    const { app, lines } = await appWith(t, { proxy: name, requestTimeout: 120e3 + 1 })
    await app.ready()
    const warnings = lines.filter((l) => l.level >= 40)
    t.same(warnings.map((l) => l.code), ['FLL_WARN_REQUEST_TIMEOUT_ABOVE_PROXY'], `${name}: an explicit requestTimeout above its response timeout`)
    t.match(warnings[0]?.msg, /a slow upload is cut by the proxy with a 504 before this server can answer 408/)
    await app.close()
  }
  // A proxy given by its timeouts streams unless it says it buffers; a short one shortens both deadlines.
  t.match(resolveOptions({ proxy: { idleTimeout: 60e3, responseTimeout: 10e3 } }), { requestTimeout: 10e3, headersTimeout: 10e3 })
  const codes = (proxy: TimeoutsOptions['proxy']): string[] => warningsFor(resolveOptions({ proxy, requestTimeout: 60e3 }), 0).map((w) => w.code)
  t.same(codes({ idleTimeout: 60e3, responseTimeout: 30e3 }), ['FLL_WARN_REQUEST_TIMEOUT_ABOVE_PROXY'])
  t.same(codes({ idleTimeout: 60e3, responseTimeout: 30e3, requestBuffering: false }), ['FLL_WARN_REQUEST_TIMEOUT_ABOVE_PROXY'])
  t.same(codes({ idleTimeout: 60e3, responseTimeout: 30e3, requestBuffering: true }), [])
  t.same(codes('nginx'), [])
})

test('Fastify\'s own timeout options that the plugin replaces are warned about', async (t) => {
  const { app, lines } = await appWith(t, { keepAliveTimeout: 90e3 }, { requestTimeout: 30e3, keepAliveTimeout: 90e3 })
  await app.ready()
  const warnings = lines.filter((l) => l.code === 'FLL_WARN_FASTIFY_OPTION_OVERRIDDEN')
  t.equal(warnings.length, 1, 'only the option whose value changed')
  t.match(warnings[0]!.msg, /Fastify's requestTimeout option is replaced by the timeouts plugin's requestTimeout \(120000\)/)
  t.equal(app.server.requestTimeout, 120e3)
})

test('handlerTimeout: a default deadline for routes without one; long-lived routes exempt', async (t) => {
  const { app } = await appWith(t, { handlerTimeout: 100 })
  const slow = async (req: { signal: AbortSignal }) => {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, 400)
      req.signal.addEventListener('abort', () => { clearTimeout(timer); resolve(null) })
    })
    return 'finished'
  }
  app.get('/default', slow)
  app.get('/own', { handlerTimeout: 1000 }, slow)
  app.get('/stream', { config: { longLived: true } }, slow)
  await app.ready()
  t.equal((await app.inject('/default')).statusCode, 503, 'cut at the default deadline')
  t.equal((await app.inject('/own')).body, 'finished', 'a route\'s own deadline wins')
  t.equal((await app.inject('/stream')).body, 'finished', 'a long-lived route gets no default deadline')
})

/**
 * trickleUntilCut opens a connection, sends `head`, then `piece` every `every` ms, and resolves
 * once the server has cut it: how long that took (ms) and what the client received.
 */
async function trickleUntilCut (t: Test, port: number, head: string, piece: string, every: number, deadline: number): Promise<{ elapsed: number, text: string }> {
  const socket = await connect(t, port)
  const received = collect(socket)
  const start = Date.now()
  socket.write(head)
  const timer = setInterval(() => { if (socket.writable) socket.write(piece) }, every)
  t.teardown(() => { clearInterval(timer) })
  try {
    await withDeadline(received.closed, deadline, 'the slow client to be cut')
  } finally {
    clearInterval(timer)
  }
  return { elapsed: Date.now() - start, text: received.text() }
}

test('slow headers are cut at headersTimeout; a normal client is served', async (t) => {
  const { app } = await appWith(t, { headersTimeout: 500, requestTimeout: 2000, connectionsCheckingInterval: 50, minDataRate: null })
  app.get('/', async () => 'ok')
  const port = await listen(app)
  // Keep trickling header bytes: activity alone must not keep the request alive.
  const cut = trickleUntilCut(t, port, 'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n', 'X-A: b\r\n', 100, 3000)
  t.equal(await normalRequest(port), '200 ok')
  const { elapsed, text } = await cut
  t.ok(elapsed >= 450 && elapsed < 1500, `closed after ${elapsed} ms (headersTimeout 500)`)
  t.match(text, /^HTTP\/1\.1 408/)
})

test('a slow body is cut at requestTimeout', async (t) => {
  const { app } = await appWith(t, { headersTimeout: 500, requestTimeout: 800, connectionsCheckingInterval: 50, minDataRate: null })
  app.post('/', async () => 'ok')
  app.get('/', async () => 'ok')
  const port = await listen(app)
  const cut = trickleUntilCut(t, port, 'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n', 'x', 50, 3000)
  t.equal(await normalRequest(port), '200 ok')
  const { elapsed, text } = await cut
  t.ok(elapsed >= 750 && elapsed < 1800, `closed after ${elapsed} ms (requestTimeout 800)`)
  t.match(text, /^HTTP\/1\.1 408/)
})

test('a body trickled just fast enough to defeat the deadlines is cut by minDataRate', async (t) => {
  // One byte every 100 ms: headers arrive at once, and the request deadline is far away, so
  // only the data rate (10 B/s, below 100 B/s) catches it.
  const { app, lines } = await appWith(t, {
    headersTimeout: 1000,
    requestTimeout: 60e3,
    connectionsCheckingInterval: 100,
    socketTimeout: 5000,
    minDataRate: { request: { bytesPerSecond: 100, grace: 600 }, response: null, interval: 100 }
  })
  app.post('/', async (req) => `got ${(req.body as string).length}`)
  app.get('/', async () => 'ok')
  const port = await listen(app)

  const cut = trickleUntilCut(t, port, 'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n', 'x', 100, 5000)

  // A fast upload on another connection is not touched.
  const client = new Client(`http://127.0.0.1:${port}`)
  t.teardown(() => client.destroy())
  const fast = await client.request({ path: '/', method: 'POST', body: 'y'.repeat(100_000), headers: { 'content-type': 'text/plain' } })
  t.equal(await fast.body.text(), 'got 100000')

  const { elapsed, text } = await cut
  t.ok(elapsed >= 600 && elapsed < 2500, `closed after ${elapsed} ms (grace 600 ms)`)
  t.match(text, /^HTTP\/1\.1 408 Request Timeout/)
  t.equal(app.connections.stats().slowUploadsClosed, 1)
  t.equal(lines.filter((l) => /upload was below the minimum data rate/.test(l.msg)).length, 1, 'logged once')
  t.equal(await normalRequest(port), '200 ok')
})

test('a client that stops reading a large response is cut by minDataRate', async (t) => {
  const { app, lines } = await appWith(t, {
    minDataRate: { request: null, response: { bytesPerSecond: 10_000, grace: 500 }, interval: 100 }
  })
  const chunk = Buffer.alloc(64 * 1024, 'z')
  const sent = { bytes: 0 }
  app.get('/big', async (_req, reply) => {
    let left = 1024 // 64 MiB, far more than the socket buffers hold
    const body = new Readable({
      read () {
        if (left-- === 0) { this.push(null); return }
        sent.bytes += chunk.length
        this.push(chunk)
      }
    })
    return reply.type('application/octet-stream').send(body)
  })
  app.get('/', async () => 'ok')
  const port = await listen(app)

  const socket = await connect(t, port)
  socket.pause() // never reads
  const closed = new Promise((resolve) => { socket.once('close', resolve) })
  socket.on('error', () => {})
  socket.write(get('/big'))

  // A client that reads the same response at full speed is not touched.
  const client = new Client(`http://127.0.0.1:${port}`)
  t.teardown(() => client.destroy())
  const full = await client.request({ path: '/big', method: 'GET' })
  let got = 0
  for await (const part of full.body) got += (part as Buffer).length
  t.equal(got, 64 * 1024 * 1024, 'the reading client got everything')

  await waitUntil(() => app.connections.stats().slowDownloadsClosed === 1, 5000, 'the stalled reader to be cut')
  t.equal(lines.filter((l) => /download was below the minimum data rate/.test(l.msg)).length, 1, 'logged once')
  socket.resume()
  await withDeadline(closed, 5000, 'the client to see the close')
  t.ok(sent.bytes < 64 * 1024 * 1024 * 2, 'the stalled response stopped being produced')
  t.equal(await normalRequest(port), '200 ok')
})

test('keep-alive: an idle socket is closed after keepAliveTimeout', async (t) => {
  const { app } = await appWith(t, { keepAliveTimeout: 300 })
  app.get('/', async () => 'ok')
  const port = await listen(app)
  const socket = await connect(t, port)
  const received = collect(socket)
  socket.write(get('/'))
  await waitUntil(() => received.text().endsWith('ok'), 5000, 'the response')
  const idleSince = Date.now()
  await withDeadline(received.closed, 3000, 'the keep-alive timeout')
  const idle = Date.now() - idleSince
  // Node keeps the socket up to about a second past the value (its timer buffer), never less.
  t.ok(idle >= 250 && idle < 2500, `closed after ${idle} ms idle (keepAliveTimeout 300)`)
  t.match(received.text(), /Keep-Alive: timeout=0/i, 'the hint tells the client (rounded down to seconds)')
})

test('keep-alive: an undici client reuses one connection with the preset values', async (t) => {
  const { app } = await appWith(t, { proxy: 'aws-alb' })
  app.get('/', async () => 'ok')
  const port = await listen(app)
  const client = new Client(`http://127.0.0.1:${port}`)
  t.teardown(() => client.destroy())
  for (let i = 0; i < 20; i++) {
    const res = await client.request({ path: '/', method: 'GET' })
    t.equal(res.headers['keep-alive'], 'timeout=72')
    await res.body.text()
  }
  t.match(app.connections.stats(), { connectionsTotal: 1, requestsTotal: 20, reusedRequestsTotal: 19 })
})

test('a headersTimeout above the requestTimeout derived from a proxy says where that requestTimeout came from', async (t) => {
  t.throws(() => resolveOptions({ proxy: 'aws-alb', headersTimeout: 90e3 }), {
    code: 'FLL_ERR_INVALID_OPTION',
    message: /'headersTimeout' must be at most requestTimeout, 60000 ms here: the response timeout of the proxy \(aws-alb\)/
  })
  t.throws(() => resolveOptions({ headersTimeout: 90e3, requestTimeout: 60e3 }), { code: 'FLL_ERR_TIMEOUT_ORDER' }, 'both given: the order error')
  t.equal(resolveOptions({ proxy: 'aws-alb', headersTimeout: 90e3, requestTimeout: 120e3 }).requestTimeout, 120e3, 'an explicit requestTimeout wins')
})
