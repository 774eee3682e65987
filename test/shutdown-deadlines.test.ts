/**
 * Shutdown deadlines against clients that do not cooperate: a reader that stopped reading with
 * the kernel's buffers full, a paused HTTP/2 stream, a request that outlives Fastify's
 * pluginTimeout. No client behaviour may stretch a shutdown past its checked budget.
 */
import { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { fork } from 'node:child_process'
import { once } from 'node:events'
import http2 from 'node:http2'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import shutdown, { resolveOptions, type ShutdownOptions } from '../plugins/shutdown.js'
import { collect, connect, deferred, get, listen, waitUntil, withDeadline } from './helpers.js'
import { openStream, publishUntil, sseApp, type StreamClient } from './sse-helpers.js'
import { fixture } from './shutdown-fixture.js'

// The deadlines used here: small, so a test that would hang fails fast.
const streamDrainWindow = 200
const streamCloseTimeout = 500
// What a loaded 2-core CI machine may add on top of a deadline.
const margin = 1500

const payload = 'x'.repeat(64 * 1024)

/**
 * stalledReader opens /events on a raw socket, reads the head, then stops reading; the server
 * publishes 64 KB events on `channel` until the socket is backed up (the kernel's buffers on
 * both sides are full and Node holds the rest), staying under maxBufferedBytes so the
 * slow-consumer cut never fires. That is a phone that lost its network mid-stream.
 */
async function stalledReader (t: Test, app: StreamingApp, port: number): Promise<{ readAgain: () => Promise<unknown> }> {
  const socket = await connect(t, port)
  const received = collect(socket)
  socket.write(get('/events'))
  await waitUntil(() => received.text().includes('\r\n\r\n'), 5000, 'the stream head')
  socket.pause()
  await fill(t, app)
  // The server's end only shows once the client reads what its kernel holds before it.
  return { readAgain: () => { socket.resume(); return withDeadline(received.closed, 2000, 'the stalled client to see its connection end') } }
}

/** fill publishes until a stream's response holds bytes its client has not taken. */
async function fill (t: Test, { publish, responses }: StreamingApp): Promise<void> {
  t.ok(await publishUntil(publish, () => responses.some((res) => res.writableLength > 0)), 'the client that does not read holds the server back')
}

interface StreamingApp {
  app: FastifyInstance
  publish: () => void
  /** The raw response of every stream opened. */
  responses: Array<{ writableLength: number }>
}

async function streamingApp (t: Test, opts: ShutdownOptions | null, fastifyOpts = {}): Promise<StreamingApp> {
  const { app } = await sseApp(t, { heartbeatInterval: null, reconnectDelay: 100, reconnectJitter: 0 }, fastifyOpts)
  if (opts !== null) await app.register(shutdown, { signals: false, ...opts })
  const ticks = app.sse.channel('ticks', { historySize: 0 })
  const responses: StreamingApp['responses'] = []
  app.get('/events', { sse: true }, async (_req, reply) => {
    responses.push(reply.raw)
    reply.sse.subscribe(ticks)
  })
  return { app, responses, publish: () => { ticks.publish({ event: 'tick', data: payload }) } }
}

async function readerGetsFinalEvent (t: Test, reader: StreamClient): Promise<void> {
  await withDeadline(reader.ended, margin, 'the reading client\'s stream to end')
  t.match(reader.events.at(-1), { event: 'reconnect' }, 'a reading client on the same server still gets its final event')
}

test('lifecycle.shutdown(): a stalled SSE reader is destroyed at the write deadline, and the outcome stays clean', async (t) => {
  const streaming = await streamingApp(t, { streamDrainWindow, streamCloseTimeout, closeTimeout: 3000 })
  const { app } = streaming
  const port = await listen(app)
  const reader = await openStream(t, port, '/events')
  const stalled = await stalledReader(t, streaming, port)

  const start = Date.now()
  const outcome = await withDeadline(app.lifecycle.shutdown(), streamDrainWindow + streamCloseTimeout + margin, 'shutdown()')
  const took = Date.now() - start
  t.ok(took >= streamCloseTimeout, `the stalled stream got its write deadline first (${took} ms)`)
  t.match(outcome, { clean: true, failures: [], counts: { streamsClosed: 1, streamsCut: 1, streamsFailed: 0, destroyed: 0 } })
  await stalled.readAgain()
  await readerGetsFinalEvent(t, reader)
  t.equal(app.connections.stats().slowConsumers, 1, 'counted as a cut slow consumer')
})

test('fastify.close() without the shutdown plugin: a stalled SSE reader does not hold close()', async (t) => {
  const streaming = await streamingApp(t, null, { pluginTimeout: 0 })
  const { app } = streaming
  const port = await listen(app)
  const reader = await openStream(t, port, '/events')
  const stalled = await stalledReader(t, streaming, port)
  const start = Date.now()
  // The registry's own deadline for a final event (closeStreams' default timeout).
  await withDeadline(app.close(), 1000 + margin, 'close()')
  t.ok(Date.now() - start >= 900, 'the stalled stream had its write deadline')
  await stalled.readAgain()
  await readerGetsFinalEvent(t, reader)
})

test('fastify.close() with the shutdown plugin: a stalled SSE reader is cut, the outcome is clean', async (t) => {
  const streaming = await streamingApp(t, { streamCloseTimeout, closeTimeout: 3000 })
  const { app } = streaming
  const port = await listen(app)
  const stalled = await stalledReader(t, streaming, port)
  await withDeadline(app.close(), streamCloseTimeout + margin, 'close()')
  await stalled.readAgain()
  t.match(await app.lifecycle.done, { clean: true, cause: 'close', counts: { streamsCut: 1, destroyed: 0 } })
})

test('SIGTERM with a stalled SSE reader: exit 0 within drainDelay + streamDrainWindow + streamCloseTimeout + a margin', async (t) => {
  const drainDelay = 100
  const { child, port, logs, exited } = await fixture(t, { drainDelay, streamDrainWindow, streamCloseTimeout, closeTimeout: 3000, signalDelay: 20000 })
  const reader = await openStream(t, port, '/events')
  const socket = await connect(t, port)
  const received = collect(socket)
  socket.write(get('/events'))
  await waitUntil(() => received.text().includes('\r\n\r\n'), 5000, 'the stream head')
  socket.pause()
  // The fixture publishes 64 KB events until the paused socket is backed up.
  const filled = await request(`http://127.0.0.1:${port}/fill`)
  t.same(await filled.body.json(), { backedUp: true })
  const start = Date.now()
  child.kill('SIGTERM')
  const [code] = await withDeadline(exited, drainDelay + streamDrainWindow + streamCloseTimeout + margin, 'the process to exit')
  t.equal(code, 0, 'exit 0: a client that stopped reading is not a failure of the shutdown')
  t.ok(Date.now() - start >= streamCloseTimeout, 'after the write deadline')
  await readerGetsFinalEvent(t, reader)
  const closed = logs().find((l) => l.lifecycle === 'closed')
  t.match(closed, { clean: true, counts: { streamsCut: 1 } })
  t.ok(logs().some((l) => /did not take its final event/.test(String(l.msg))), 'the cut is logged')
})

/** h2Events opens /events over HTTP/2 with a browser's flow-control windows (Chrome: 6 MB per stream, 15 MB per connection). */
async function h2Events (t: Test, port: number): Promise<{ socket: net.Socket, stream: http2.ClientHttp2Stream }> {
  const socket = net.connect({ port, host: '127.0.0.1' })
  t.teardown(() => { socket.destroy() })
  const session = http2.connect(`http://127.0.0.1:${port}`, { createConnection: () => socket, settings: { initialWindowSize: 6 * 1024 * 1024 } })
  t.teardown(() => { session.destroy() })
  session.on('error', () => {})
  await withDeadline(new Promise((resolve) => session.once('connect', resolve)), 5000, 'the session')
  session.setLocalWindowSize(15 * 1024 * 1024)
  const stream = session.request({ ':path': '/events', accept: 'text/event-stream' })
  stream.on('error', () => {})
  await withDeadline(new Promise((resolve) => stream.once('response', resolve)), 5000, 'the response')
  return { socket, stream }
}

test('HTTP/2: a paused stream (browser-like windows) is destroyed at the write deadline; the session does not hold the shutdown', async (t) => {
  const streaming = await streamingApp(t, { streamDrainWindow: 0, streamCloseTimeout, closeTimeout: 1000 }, { http2: true } as never)
  const { app } = streaming
  const port = await listen(app)
  const { stream } = await h2Events(t, port)
  stream.pause()
  const streamClosed = new Promise((resolve) => { stream.once('close', resolve) })
  await fill(t, streaming)

  const outcome = await withDeadline(app.lifecycle.shutdown(), streamCloseTimeout + 1000 + margin, 'shutdown()')
  t.match(outcome, { clean: true, counts: { streamsCut: 1, streamsFailed: 0 } })
  await withDeadline(streamClosed, 1000, 'the client stream to be reset')
  t.equal(app.connections.stats().open, 0, 'the session is gone')
})

test('HTTP/2: a client that reads nothing at all: its session, which cannot even send GOAWAY, is destroyed with its socket', async (t) => {
  const streaming = await streamingApp(t, { streamDrainWindow: 0, streamCloseTimeout, closeTimeout: 500 }, { http2: true } as never)
  const { app } = streaming
  const port = await listen(app)
  const { socket } = await h2Events(t, port)
  socket.pause() // the whole connection stops reading, as a phone that lost its network
  await fill(t, streaming)
  const outcome = await withDeadline(app.lifecycle.shutdown(), streamCloseTimeout + 500 + margin, 'shutdown()')
  t.match(outcome, { counts: { streamsCut: 1 } })
  await waitUntil(() => app.connections.stats().open === 0, 1000, 'the session to be destroyed')
})

test('HTTP/2: fastify.close() sends every session a GOAWAY; one with a request stuck in flight is still destroyed at closeTimeout', async (t) => {
  const { app } = await sseApp(t, {}, { http2: true } as never)
  await app.register(shutdown, { signals: false, closeTimeout: 500 })
  app.get('/forever', async (req) => { await new Promise((resolve) => { req.raw.once('close', resolve) }); return 'never' })
  const port = await listen(app)
  const session = http2.connect(`http://127.0.0.1:${port}`)
  t.teardown(() => { session.destroy() })
  session.on('error', () => {})
  const sessionClosed = new Promise((resolve) => { session.once('close', resolve) })
  const stream = session.request({ ':path': '/forever' })
  stream.on('error', () => {})
  await waitUntil(() => app.connections.stats().inFlight === 1, 5000, 'the request')
  // fastify.close() calls server.closeHttp2Sessions() right after the preClose hooks, where
  // Node has it (24 does, 20 does not): the session is closing (GOAWAY sent), not closed,
  // while its request is in flight.
  await withDeadline(app.close(), 500 + margin, 'close()')
  t.match(await app.lifecycle.done, { clean: false, counts: { destroyed: 1 } })
  await withDeadline(sessionClosed, 1000, 'the client session to close')
  t.equal(app.connections.stats().open, 0)
})

test('a request that outlives Fastify\'s pluginTimeout but fits closeTimeout: the outcome is clean', async (t) => {
  // Scaled down from the report (pluginTimeout 10 s, closeTimeout 15 s, a 12 s request).
  const { app } = await sseApp(t, {}, { pluginTimeout: 500 })
  await app.register(shutdown, { signals: false, closeTimeout: 2000, streamCloseTimeout: 200 })
  const entered = deferred()
  app.get('/slow', async () => {
    entered.resolve()
    await new Promise((resolve) => { setTimeout(resolve, 900) })
    return 'done'
  })
  const port = await listen(app)
  const res = request(`http://127.0.0.1:${port}/slow`)
  await withDeadline(entered.promise, 5000, 'the handler')
  const outcome = await withDeadline(app.lifecycle.shutdown(), 2000 + margin, 'shutdown()')
  const answer = await res
  t.equal(await answer.body.text(), 'done')
  t.match(outcome, { clean: true, failures: [], counts: { inFlightAtClose: 1, inFlightFinished: 1, destroyed: 0 } })
})

test('a request destroyed at closeTimeout, past pluginTimeout: unclean for that reason only, not a bogus hook failure', async (t) => {
  const { app } = await sseApp(t, {}, { pluginTimeout: 300 })
  await app.register(shutdown, { signals: false, closeTimeout: 600, streamCloseTimeout: 100 })
  app.get('/forever', async (req) => { await new Promise((resolve) => { req.raw.once('close', resolve) }); return 'never' })
  const port = await listen(app)
  const socket = await connect(t, port)
  const stuck = collect(socket)
  socket.write(get('/forever'))
  await waitUntil(() => app.connections.stats().inFlight === 1, 5000, 'the request')
  const outcome = await withDeadline(app.lifecycle.shutdown(), 600 + margin, 'shutdown()')
  await withDeadline(stuck.closed, 1000, 'the stuck request to be destroyed')
  t.equal(outcome.clean, false)
  t.same(outcome.failures, ['1 request(s) or stream(s) still busy after 600 ms were destroyed'])
})

test('fastify.close() called directly, past pluginTimeout: no hook timeout', async (t) => {
  const { app } = await sseApp(t, {}, { pluginTimeout: 300 })
  await app.register(shutdown, { signals: false, closeTimeout: 1000, streamCloseTimeout: 100 })
  app.get('/slow', async () => { await new Promise((resolve) => { setTimeout(resolve, 600) }); return 'done' })
  const port = await listen(app)
  const res = request(`http://127.0.0.1:${port}/slow`)
  await waitUntil(() => app.connections.stats().inFlight === 1, 5000, 'the request')
  await withDeadline(app.close(), 1000 + margin, 'close()')
  t.equal(await (await res).body.text(), 'done')
  t.match(await app.lifecycle.done, { clean: true, failures: [] })
})

test('the boot check refuses a streamCloseTimeout that Fastify\'s pluginTimeout would cut, with the numbers', async (t) => {
  const { app } = await sseApp(t, {}, { pluginTimeout: 800 })
  await t.rejects(async () => { await app.register(shutdown, { signals: false }).ready() }, {
    code: 'FLL_ERR_SHUTDOWN_BUDGET',
    message: /streamCloseTimeout 1000 ms, not less than Fastify's pluginTimeout 800 ms/
  })
  const { app: off } = await sseApp(t, {}, { pluginTimeout: 0 })
  await off.register(shutdown, { signals: false, streamCloseTimeout: 60e3, signalDelay: 90e3 })
  t.equal(off.lifecycle.options.streamCloseTimeout, 60e3, 'pluginTimeout 0 times nothing: any streamCloseTimeout fits')
})

test('signals: SIGTERM and SIGINT by default (not nodemon\'s SIGUSR2, nor SIGHUP), a list when asked', async (t) => {
  t.same(resolveOptions({}).signals, ['SIGTERM', 'SIGINT'])
  t.same(resolveOptions({ signals: false }).signals, [])
  t.same(resolveOptions({ signals: ['SIGTERM', 'SIGHUP', 'SIGTERM'] }).signals, ['SIGTERM', 'SIGHUP'])
  for (const bad of ['yes', [], ['SIGKILL'], [1]]) {
    t.throws(() => resolveOptions({ signals: bad as never }), { code: 'FLL_ERR_INVALID_OPTION', message: /'signals' must be a boolean, or a non-empty array of SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR2/ })
  }
  const byDefault = await fixture(t, {})
  byDefault.child.kill('SIGUSR2')
  t.same(await withDeadline(byDefault.exited, 5000, 'the process to exit'), [null, 'SIGUSR2'], 'SIGUSR2 is left to its default: no shutdown')
  const hup = await fixture(t, { signals: ['SIGTERM', 'SIGHUP'], streamDrainWindow: 0 })
  hup.child.kill('SIGHUP')
  t.same(await withDeadline(hup.exited, 5000, 'the process to exit'), [0, null], 'SIGHUP, when listed, shuts down gracefully')
  t.match(hup.logs().find((l) => l.lifecycle === 'closed'), { clean: true, signal: 'SIGHUP' })
})

test('a program that simply ends exits at once: its natural exit is not turned into a shutdown', async (t) => {
  const child = fork(fileURLToPath(new URL('./fixtures/natural-exit.ts', import.meta.url)), { execArgv: process.execArgv, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  t.teardown(() => { child.kill('SIGKILL') })
  const exited = once(child, 'exit')
  await withDeadline(once(child, 'message'), 30000, 'the program to end')
  const start = Date.now()
  t.same(await withDeadline(exited, 3000, 'the process to exit'), [0, null])
  t.ok(Date.now() - start < 2500, `exited ${Date.now() - start} ms after its last line (was: a whole shutdown, 5 s with the umbrella's defaults)`)
})
