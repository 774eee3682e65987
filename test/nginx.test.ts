/**
 * Behind a real nginx.
 *
 * Upstream keep-alive (issue 11). A stream that the draining server
 * ends cleanly used to say `Connection: keep-alive`: nginx put its upstream connection back in
 * its pool, the server closed it, and the next request nginx sent on it failed — a 502 for a
 * POST, which nginx does not retry. Now the stream says `Connection: close` and nginx does not
 * pool that connection.
 *
 * Request buffering (issue 12): nginx reads a whole request body before it contacts the app,
 * so a slow upload never reaches the app (why the `nginx` proxy preset does not warn about
 * requestTimeout). The README's SSE snippet (test/snippets/nginx-sse.conf), run as is: events
 * arrive one by one with gzip on, and heartbeats keep a quiet stream past proxy_read_timeout.
 */
import { test, type Test } from 'tap'
import { createParser } from 'eventsource-parser'
import type { FastifyInstance } from 'fastify'
import { readFileSync } from 'node:fs'
import type net from 'node:net'
import zlib from 'node:zlib'
import { Client } from 'undici'
import connections from '../plugins/connections.js'
import shutdown from '../plugins/shutdown.js'
import sse, { type SseStream } from '../plugins/sse/index.js'
import timeouts from '../plugins/timeouts.js'
import { build, collect, connect, deferred, get, listen, logCapture, waitUntil, withDeadline } from './helpers.js'
import { nginxSkip, startNginx } from './nginx.js'

/** proxiedApp: the kit's connections + sse + shutdown (the host owns signals), with a stream route and a POST route. */
async function proxiedApp (t: Test): Promise<FastifyInstance> {
  const app = build(t, { logger: logCapture('warn').logger })
  await app.register(connections)
  await app.register(sse, { heartbeatInterval: null, reconnectDelay: 100, reconnectJitter: 0 })
  await app.register(shutdown, { signals: false })
  app.get('/events', { sse: true }, async (_req, reply) => {
    reply.sse.sendHeaders()
    reply.sse.keepAlive()
  })
  app.post('/orders', async (req) => ({ received: (req.body as { n: number }).n }))
  return app
}

/**
 * startPost sends a POST to nginx on a fresh connection, all but the last byte of its body:
 * nginx reads the whole body before it picks an upstream connection, so finish() makes it pick
 * one at a moment the test chooses. The answer resolves with the response's status.
 */
async function startPost (t: Test, port: number, n: number): Promise<{ finish: () => void, answer: Promise<number> }> {
  const socket = await connect(t, port)
  const received = collect(socket)
  const body = JSON.stringify({ n })
  socket.write(`POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body.slice(0, -1)}`)
  const answer = (async () => {
    await withDeadline(received.closed, 5000, `the answer to POST ${n}`)
    return Number(/^HTTP\/1\.1 (\d{3}) /.exec(received.text())?.[1] ?? 0)
  })()
  return { finish: () => { socket.write(body.slice(-1)) }, answer }
}

test('behind nginx with upstream keep-alive: streams the draining server ends leave no stale pooled connection, so the POSTs right after get no 502', { skip: nginxSkip }, async (t) => {
  // The race is the pool's: each round ends several streams at once with several POSTs on their
  // way, and the rounds repeat it. Before the fix nearly every stale pooled connection cost one
  // POST a 502 (17 to 20 of the 40 POSTs, runs on 2 cores).
  const rounds = 5
  const streamsPerRound = 4
  const postsPerRound = 8
  const statuses: number[] = []
  for (let round = 0; round < rounds; round++) {
    const app = await proxiedApp(t)
    const nginx = await startNginx(t, { upstreamPort: await listen(app) })

    // Streams through nginx, each on its own client connection and so its own upstream one.
    const clients: Array<{ socket: net.Socket, text: () => string }> = []
    for (let i = 0; i < streamsPerRound; i++) {
      const socket = await connect(t, nginx.port)
      const { text } = collect(socket)
      socket.write(get('/events', { accept: 'text/event-stream' }))
      clients.push({ socket, text })
    }
    await waitUntil(() => app.connections.stats().streams === streamsPerRound && clients.every((c) => c.text().includes('\r\n\r\n')),
      5000, 'the streams to open through nginx')
    t.ok(clients.every((c) => /^HTTP\/1\.1 200 /.test(c.text())), `round ${round}: the streams opened`)
    const streamSockets: net.Socket[] = []
    app.connections.forEach((info) => { if (info.streams > 0) streamSockets.push(info.socket) })

    // The server drains and ends its streams gracefully (a final event, a clean end), as the
    // shutdown plugin does before it closes. The POSTs, waiting in nginx for their last byte,
    // are completed as the streams end: nginx picks upstream connections for them while the
    // streams' connections are, or are not, back in its pool, before it has seen them close.
    const posts = await Promise.all(Array.from({ length: postsPerRound }, (_, i) => startPost(t, nginx.port, i)))
    app.lifecycle.drain()
    const closing = app.connections.closeStreams({ window: 0, reason: 'shutdown' })
    for (const p of posts) p.finish()
    await closing
    const answers = await Promise.all(posts.map((p) => p.answer))
    statuses.push(...answers)
    t.same(answers, answers.map(() => 200), `round ${round}: every POST through nginx got 200 (${answers.join(' ')})`,
      { nginxErrors: nginx.errorLog().split('\n').filter((line) => line.includes('[error]')) })

    await waitUntil(() => streamSockets.every((s) => s.destroyed), 5000, 'the connections that carried the streams to close')
    t.equal(streamSockets.length, streamsPerRound, `round ${round}: the upstream connections that carried the streams were closed by the app`)
    t.equal(app.connections.stats().streams, 0)
    await waitUntil(() => app.connections.stats().open === 0, 5000, 'every upstream connection to close (the app drains)')
    await waitUntil(() => clients.every((c) => /event: reconnect\n(retry: \d+\n)?data: shutdown\n\n\r\n0\r\n\r\n$/.test(c.text())), 5000,
      'each client to get the final event and the end through nginx')

    await nginx.stop()
    await app.close()
  }
  const bad = statuses.filter((s) => s !== 200)
  t.equal(bad.length, 0, `${statuses.length} POSTs, ${bad.length} not 200 (${bad.join(' ')})`)
})

/**
 * trickleThroughNginx POSTs a body through nginx in `pieces` pieces `every` ms apart, on a raw
 * socket, and reports when the app saw its connection and the request, against when the
 * client wrote the body's first and last bytes (performance.now(), ms).
 */
async function trickleThroughNginx (t: Test, locationConfig: string, pieces: number, every: number) {
  const capture = logCapture('warn')
  const app = build(t, { logger: capture.logger })
  await app.register(connections)
  await app.register(timeouts, { proxy: 'nginx' })
  const connectedAt: number[] = []
  const requestAt: number[] = []
  app.server.on('connection', () => { connectedAt.push(performance.now()) })
  app.addHook('onRequest', async () => { requestAt.push(performance.now()) })
  app.post('/upload', async (req) => ({ bytes: (req.body as string).length }))
  const nginx = await startNginx(t, { upstreamPort: await listen(app), locationConfig })

  const piece = 'x'.repeat(100)
  const socket = await connect(t, nginx.port)
  const received = collect(socket)
  socket.write('POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n' +
    `Content-Length: ${piece.length * pieces}\r\nConnection: close\r\n\r\n`)
  const firstByteAt = performance.now()
  socket.write(piece)
  // The pace of the upload is what is tested, so real time drives it: one piece per tick.
  const connectionsBeforeEachPiece: number[] = []
  const lastByteAt = await new Promise<number>((resolve) => {
    let sent = 1
    const timer = setInterval(() => {
      connectionsBeforeEachPiece.push(connectedAt.length)
      socket.write(piece)
      if (++sent === pieces) { clearInterval(timer); resolve(performance.now()) }
    }, every)
    t.teardown(() => { clearInterval(timer) })
  })
  await withDeadline(received.closed, 5000, 'the answer to the upload')
  return {
    warnings: capture.lines.filter((l) => l.level >= 40).map((l) => l.code),
    answer: received.text(),
    connectionsBeforeEachPiece,
    connectedAt,
    requestAt,
    firstByteAt,
    lastByteAt
  }
}

test('behind nginx with its default proxy_request_buffering on: the app sees no connection until a trickled body is complete, then gets it whole (issue 12)', { skip: nginxSkip }, async (t) => {
  // 12 pieces of 100 bytes, 100 ms apart: 1.1 s of upload (the report behind issue 12 trickled for 6 s).
  const r = await trickleThroughNginx(t, '', 12, 100)
  t.same(r.warnings, [], 'the timeouts plugin with the nginx preset logged no warning')
  t.match(r.answer, /^HTTP\/1\.1 200 [^]*\{"bytes":1200\}$/, 'the app got the whole body')
  t.ok(r.lastByteAt - r.firstByteAt >= 1000, `the client trickled the body for ${Math.round(r.lastByteAt - r.firstByteAt)} ms`)
  t.same(r.connectionsBeforeEachPiece, r.connectionsBeforeEachPiece.map(() => 0), 'no connection at the app while the body was on its way')
  t.equal(r.connectedAt.length, 1, 'then one connection')
  t.ok(r.connectedAt[0]! >= r.lastByteAt, `the app's connection came ${Math.round(r.connectedAt[0]! - r.lastByteAt)} ms after the last byte was sent`)
  t.ok(r.requestAt[0]! >= r.lastByteAt, 'and the request after it')
})

test('behind nginx with proxy_request_buffering off: the app sees the connection while the body is still on its way (what the test above would see if nginx streamed)', { skip: nginxSkip }, async (t) => {
  const r = await trickleThroughNginx(t, 'proxy_request_buffering off;', 12, 100)
  t.match(r.answer, /^HTTP\/1\.1 200 [^]*\{"bytes":1200\}$/, 'the app got the whole body')
  t.equal(r.connectedAt.length, 1)
  t.ok(r.connectedAt[0]! < r.lastByteAt - 500, `the app's connection came ${Math.round(r.lastByteAt - r.connectedAt[0]!)} ms before the last byte was sent`)
  t.ok(r.connectionsBeforeEachPiece.at(-1) === 1, 'it was open before the last piece')
})

// The README's nginx snippet for SSE, kept as a file so the README and this test cannot drift.
const snippet = readFileSync(new URL('./snippets/nginx-sse.conf', import.meta.url), 'utf8')

/**
 * fromSnippet is the snippet with its placeholders replaced, for startNginx's `servers`: each
 * placeholder must occur exactly once, so a changed snippet fails here rather than silently
 * running with its placeholder values.
 */
function fromSnippet (replacements: Array<[string, string]>): string {
  let text = snippet
  for (const [from, to] of replacements) {
    const count = text.split(from).length - 1
    if (count !== 1) throw new Error(`the snippet must contain '${from}' exactly once (found ${count} times)`)
    text = text.replace(from, to)
  }
  return text
}

test('the README shows test/snippets/nginx-sse.conf verbatim', async (t) => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8').replace(/\r\n/g, '\n')
  t.ok(readme.includes('```nginx\n' + snippet + '```\n'), 'the README has the snippet, character for character, as an nginx code block')
})

test('the README\'s nginx snippet: SSE events arrive one by one and at once, gzipped; plain requests reuse upstream connections', { skip: nginxSkip }, async (t) => {
  const app = build(t, { logger: logCapture('warn').logger })
  await app.register(connections)
  await app.register(sse, { heartbeatInterval: null })
  const opened = deferred<SseStream>()
  app.get('/events', { sse: true }, async (_req, reply) => {
    reply.sse.sendHeaders()
    reply.sse.keepAlive()
    opened.resolve(reply.sse)
  })
  app.get('/ping', async () => ({ pong: true }))
  const nginx = await startNginx(t, {
    upstreamPort: await listen(app),
    servers: ({ listen, upstream }) => fromSnippet([['server 127.0.0.1:3000;', `server ${upstream};`], ['listen 80;', `listen ${listen};`]])
  })
  const client = new Client(`http://127.0.0.1:${nginx.port}`)
  t.teardown(() => client.destroy())

  // proxy_http_version 1.1 and Connection "": nginx keeps its connection to the app for the next request.
  for (let i = 0; i < 3; i++) {
    const res = await client.request({ path: '/ping', method: 'GET' })
    t.equal(await res.body.text(), '{"pong":true}')
  }
  t.match(app.connections.stats(), { connectionsTotal: 1, requestsTotal: 3 }, 'three requests through nginx, one upstream connection')

  const res = await withDeadline(client.request({ path: '/events', method: 'GET', headers: { accept: 'text/event-stream', 'accept-encoding': 'gzip' } }),
    5000, 'the head of the stream through nginx')
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-encoding'], 'gzip', 'gzip on: nginx compresses the stream')
  t.equal(res.headers['x-accel-buffering'], undefined, 'nginx consumed X-Accel-Buffering')
  const stream = await withDeadline(opened.promise, 5000, 'the stream to open')

  // Our own gunzip, fed each chunk as it arrives: an event that waited in nginx's compressor
  // would not come out of it.
  const arrivals: Array<{ id: string, data: string, at: number }> = []
  let arrived: (() => void) | null = null
  const parser = createParser({
    onEvent: (e) => {
      arrivals.push({ id: e.id ?? '', data: e.data, at: performance.now() })
      arrived?.()
    }
  })
  const decoder = new TextDecoder()
  const gunzip = zlib.createGunzip({ flush: zlib.constants.Z_SYNC_FLUSH })
  gunzip.on('data', (chunk: Buffer) => { parser.feed(decoder.decode(chunk, { stream: true })) })
  gunzip.on('error', (err) => { t.fail(`gunzip: ${err.message}`) })
  res.body.on('data', (chunk: Buffer) => { gunzip.write(chunk) })
  res.body.on('error', () => {})

  // Lock step: each event is sent only once the previous one has come out of the client's
  // gunzip, so every event has to cross nginx and its compressor on its own. (Without the
  // stream's X-Accel-Buffering: no, nginx buffers it and this fails at the first event.)
  const latencies: number[] = []
  const count = 20
  for (let i = 0; i < count; i++) {
    const next = new Promise<void>((resolve) => { arrived = resolve })
    const sentAt = performance.now()
    await withDeadline(Promise.all([
      stream.send({ id: String(i), event: 'tick', data: { n: i, text: 'the same words again and again compress well' } }),
      next
    ]), 2000, `event ${i} through nginx and gzip`)
    latencies.push(arrivals[i]!.at - sentAt)
  }
  t.same(arrivals.map((a) => a.id), Array.from({ length: count }, (_, i) => String(i)), 'every event, in order, each before the next was sent')
  const max = Math.max(...latencies)
  t.ok(max < 500, `from send() to the client's gunzip: max ${max.toFixed(1)} ms, median ${latencies.sort((a, b) => a - b)[count >> 1]!.toFixed(1)} ms`)
  await stream.close()
  await withDeadline(new Promise((resolve) => { res.body.once('close', resolve) }), 5000, 'the stream to end through nginx')
})

test('the README\'s nginx snippet: heartbeats keep a quiet stream open past proxy_read_timeout; without them nginx cuts it', { skip: nginxSkip }, async (t) => {
  const heartbeatInterval = 250 // ms
  const readTimeout = 1000 // ms: the snippet's proxy_read_timeout, shortened for the test, above the heartbeat
  const app = build(t, { logger: logCapture('warn').logger })
  await app.register(connections)
  await app.register(sse, { heartbeatInterval })
  const streams: SseStream[] = []
  const quiet = async (_req: unknown, reply: { sse: SseStream }) => {
    reply.sse.sendHeaders()
    reply.sse.keepAlive()
    streams.push(reply.sse)
  }
  app.get('/events', { sse: true }, quiet)
  app.get('/silent', { sse: { heartbeatInterval: null } }, quiet)
  const nginx = await startNginx(t, {
    upstreamPort: await listen(app),
    servers: ({ listen, upstream }) => fromSnippet([
      ['server 127.0.0.1:3000;', `server ${upstream};`],
      ['listen 80;', `listen ${listen};`],
      ['proxy_read_timeout 60s;', `proxy_read_timeout ${readTimeout}ms;`]
    ])
  })

  const open = async (path: string) => {
    const socket = await connect(t, nginx.port)
    const received = collect(socket)
    socket.write(get(path, { accept: 'text/event-stream' }))
    let closedAt: number | null = null
    const closed = received.closed.then(() => { closedAt = performance.now(); return closedAt })
    return { received, closed, closedAt: () => closedAt }
  }
  const beating = await open('/events')
  const silent = await open('/silent')
  await waitUntil(() => streams.length === 2 && beating.received.text().includes('\r\n\r\n') && silent.received.text().includes('\r\n\r\n'),
    5000, 'both streams to open through nginx')
  const start = performance.now()
  const heartbeats = () => beating.received.text().split(':\n\n').length - 1
  // Heartbeats come between 3/4 of an interval and an interval apart (plugins/sse/heartbeat.ts):
  // this many more span over two read timeouts, whatever the timers' phase.
  const wanted = heartbeats() + 1 + Math.ceil(readTimeout * 2.2 / (heartbeatInterval * 0.75))
  t.match(silent.received.text(), /^HTTP\/1\.1 200 /)

  // The stream without heartbeats says nothing: nginx cuts it after proxy_read_timeout.
  const silentClosedAt = await withDeadline(silent.closed, readTimeout * 5, 'nginx to cut the silent stream')
  const silentFor = silentClosedAt - start
  t.ok(silentFor >= readTimeout * 0.9, `the silent stream was cut by nginx after ${Math.round(silentFor)} ms (proxy_read_timeout ${readTimeout} ms)`)
  t.match(nginx.errorLog(), /upstream timed out/, 'nginx logged its read timeout')

  // Meanwhile the stream with heartbeats outlives two read timeouts and more, then still delivers.
  await waitUntil(() => heartbeats() >= wanted || beating.closedAt() !== null, readTimeout * 6, `${wanted} heartbeats`)
  const beatingFor = performance.now() - start
  t.equal(beating.closedAt(), null, 'the stream with heartbeats was not cut')
  t.ok(beatingFor > readTimeout * 2, `${heartbeats()} heartbeats came through, the stream stayed open for ${Math.round(beatingFor)} ms (proxy_read_timeout ${readTimeout} ms)`)
  const beatingStream = streams.find((s) => s.isConnected)
  t.ok(beatingStream, 'the stream with heartbeats is still connected at the app')
  await beatingStream!.send({ event: 'after', data: 'the quiet' })
  await waitUntil(() => /event: after\ndata: "?the quiet"?\n\n/.test(beating.received.text()), 2000, 'an event after the quiet')
  t.pass('an event sent after the quiet period arrived')
})
