import { test, type Test } from 'tap'
import { EventSource } from 'eventsource'
import { Client, request } from 'undici'
import shutdown, { resolveOptions, type ShutdownOptions, type ShutdownOutcome } from '../plugins/shutdown.js'
import { collect, connect, deferred, get, listen, waitUntil, withDeadline } from './helpers.js'
import { openStream, sseApp } from './sse-helpers.js'
import { fixture } from './shutdown-fixture.js'

async function shutdownApp (t: Test, opts: ShutdownOptions = {}, sseOpts = {}) {
  const built = await sseApp(t, sseOpts)
  await built.app.register(shutdown, { signals: false, ...opts })
  return built
}

test('options and budget are checked at register time', async (t) => {
  t.throws(() => resolveOptions({ drainDelay: 10e3, closeTimeout: 20e3, signalDelay: 25e3 }), {
    code: 'FLL_ERR_SHUTDOWN_BUDGET',
    message: /drainDelay 10000 \+ streamDrainWindow 2000 \+ streamCloseTimeout 1000 \+ closeTimeout 20000 \+ hooksTimeout 5000 = 38000 ms, more than signalDelay 25000 ms/
  })
  t.throws(() => resolveOptions({ signalDelay: 40e3, terminationGracePeriod: 30e3 }), {
    code: 'FLL_ERR_SHUTDOWN_BUDGET',
    message: /signalDelay 40000 ms, more than terminationGracePeriod 30000 ms/
  })
  t.throws(() => resolveOptions({ signals: false, closeTimeout: 40e3, terminationGracePeriod: 30e3 }), { code: 'FLL_ERR_SHUTDOWN_BUDGET', message: /= 48000 ms, more than terminationGracePeriod/ })
  t.ok(resolveOptions({ drainDelay: 5e3, terminationGracePeriod: 30e3 }), 'a Kubernetes setup fits: 5 + 2 + 1 + 10 + 5 <= 25 <= 30 s')
  for (const [opts, name] of [
    [{ drainDelay: -1 }, 'drainDelay'], [{ closeTimeout: 0 }, 'closeTimeout'], [{ signals: 'yes' }, 'signals'],
    [{ readinessPath: 'readyz' }, 'readinessPath'], [{ terminationGracePeriod: '30s' }, 'terminationGracePeriod'], [{ grace: 1 }, 'grace']
  ] as const) {
    t.throws(() => resolveOptions(opts), { code: 'FLL_ERR_INVALID_OPTION', message: new RegExp(`'${name}'`) })
  }
  t.ok(Object.isFrozen(resolveOptions({})))
})

test('fastify/fastify#7044: a keep-alive request in flight at close() is answered with Connection: close, and close() does not wait out the keep-alive timeout', async (t) => {
  const { app } = await shutdownApp(t)
  const entered = deferred()
  app.get('/slow', async () => { entered.resolve(); await new Promise((resolve) => { setTimeout(resolve, 300) }); return 'done' })
  const port = await listen(app)
  const client = new Client(`http://127.0.0.1:${port}`)
  t.teardown(() => client.destroy())
  const response = client.request({ path: '/slow', method: 'GET' })
  await withDeadline(entered.promise, 5000, 'the handler')
  const start = Date.now()
  const closing = app.close()
  const res = await response
  t.equal(res.headers.connection, 'close')
  t.equal(await res.body.text(), 'done')
  await withDeadline(closing, 3000, 'close()')
  const took = Date.now() - start
  t.ok(took < 1500, `close() took ${took} ms for a 300 ms request (not the 72 s keep-alive timeout)`)
  const outcome = await app.lifecycle.done
  t.match(outcome, { clean: true, cause: 'close', counts: { inFlightAtClose: 1, inFlightFinished: 1, destroyed: 0 } })
})

test('draining: readiness 503, ordinary routes keep working with Connection: close, a new SSE request gets 200 and the final event', async (t) => {
  const { app } = await shutdownApp(t, { readinessPath: '/readyz', livenessPath: '/healthz' })
  app.get('/', async () => 'ok')
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.keepAlive() })
  const port = await listen(app)
  const url = `http://127.0.0.1:${port}`
  t.equal((await request(`${url}/readyz`)).statusCode, 200)
  const states: string[] = []
  for (const s of ['draining', 'closing', 'closed']) app.lifecycle.on(s, () => { states.push(s) })

  app.lifecycle.drain()
  t.equal(app.lifecycle.state, 'draining')
  const ready = await request(`${url}/readyz`)
  t.equal(ready.statusCode, 503)
  t.same(await ready.body.json(), { status: 'draining' })
  const live = await request(`${url}/healthz`)
  t.equal(live.statusCode, 200, 'liveness stays 200')
  await live.body.dump()
  const plain = await request(url)
  t.equal(plain.statusCode, 200)
  t.equal(plain.headers.connection, 'close')
  t.equal(await plain.body.text(), 'ok')

  const s = await openStream(t, port, '/events')
  t.equal(s.status, 200, 'never 503: EventSource would give up for good')
  await withDeadline(s.ended, 5000, 'the stream to end')
  t.match(s.events, [{ event: 'reconnect', data: 'shutdown' }])
  t.equal(s.retries.length, 1)

  await app.close()
  t.same(states, ['draining', 'closing', 'closed'], 'one event per transition, in order')
})

test('shutdown(): every open stream gets a final event with a jittered retry, spread over the window, and the client reconnects to the next instance with Last-Event-ID', async (t) => {
  const { app } = await shutdownApp(t, { streamDrainWindow: 400 }, { reconnectDelay: 300, reconnectJitter: 200 })
  const ticks = app.sse.channel('ticks')
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ticks) })
  const port = await listen(app)
  const clients = await Promise.all([1, 2, 3, 4, 5].map(() => openStream(t, port, '/events')))
  await waitUntil(() => ticks.subscribers === 5)
  const lastId = ticks.publish({ event: 'tick', data: '1' })
  await Promise.all(clients.map((c) => c.waitEvents(1)))

  // An EventSource too, to see a spec client come back by itself with its Last-Event-ID.
  const es = new EventSource(`http://127.0.0.1:${port}/events`)
  t.teardown(() => { es.close() })
  await waitUntil(() => ticks.subscribers === 6, 5000, 'the EventSource')
  const esId = ticks.publish({ event: 'tick', data: '2' })
  const esGot = deferred()
  es.addEventListener('tick', (e) => { if (e.lastEventId === esId) esGot.resolve() })
  await withDeadline(esGot.promise, 5000, 'the EventSource to get a tick')

  const endedAt: number[] = []
  for (const c of clients) c.ended.then(() => { endedAt.push(Date.now()) }, () => {})
  const start = Date.now()
  const outcome = await withDeadline(app.lifecycle.shutdown(), 5000, 'shutdown()')
  t.match(outcome, { clean: true, cause: 'manual', counts: { streamsClosed: 6, streamsFailed: 0, destroyed: 0 } })
  t.ok(outcome.durations.total < 3000, `done in ${outcome.durations.total} ms`)
  for (const c of clients) {
    await withDeadline(c.ended, 1000, 'the stream to end')
    t.match(c.events.at(-1), { event: 'reconnect', data: 'shutdown' })
    t.ok(c.retries[0]! >= 300 && c.retries[0]! <= 500, `retry ${c.retries[0]} within 300..500`)
    t.equal(c.events[0]!.id, lastId)
  }
  endedAt.sort((a, b) => a - b)
  t.ok(endedAt[endedAt.length - 1]! - endedAt[0]! >= 200, `closes spread over the window (${endedAt[endedAt.length - 1]! - endedAt[0]!} ms apart)`)
  t.ok(endedAt[0]! - start < 300, 'the first close is at once')

  // The next instance on the same port: the EventSource comes back with its Last-Event-ID.
  const { app: next } = await sseApp(t)
  const seen = deferred<string | undefined>()
  next.get('/events', { sse: true }, async (req, reply) => { seen.resolve(req.headers['last-event-id'] as string | undefined); reply.sse.keepAlive() })
  await next.listen({ port, host: '127.0.0.1' })
  t.equal(await withDeadline(seen.promise, 10000, 'the EventSource to reconnect'), esId, 'reconnected with its Last-Event-ID')
})

test('fastify.close() called directly with streams and requests in flight: nothing hangs; stragglers past closeTimeout are destroyed and reported', async (t) => {
  const { app } = await shutdownApp(t, { closeTimeout: 300 })
  const ticks = app.sse.channel('t')
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ticks) })
  app.get('/forever', async (req) => { await new Promise((resolve) => { req.raw.once('close', resolve) }); return 'never' })
  const port = await listen(app)
  const s = await openStream(t, port, '/events')
  const socket = await connect(t, port)
  const stuck = collect(socket)
  socket.write(get('/forever'))
  const idle = await connect(t, port)
  const idleClosed = collect(idle)
  await waitUntil(() => app.connections.stats().inFlight === 2 && app.connections.stats().open === 3, 5000, 'the requests')

  const start = Date.now()
  await withDeadline(app.close(), 3000, 'close()')
  const took = Date.now() - start
  t.ok(took >= 250 && took < 2000, `close() waited for closeTimeout, then went on (${took} ms)`)
  await withDeadline(s.ended, 1000, 'the stream')
  t.match(s.events.at(-1), { event: 'reconnect' })
  await withDeadline(stuck.closed, 1000, 'the stuck request to be destroyed')
  await withDeadline(idleClosed.closed, 1000, 'the idle socket to be closed')
  const outcome: ShutdownOutcome = await app.lifecycle.done
  // Idle: the socket that never sent a request. The stream's socket closes by itself once its
  // response ended (an SSE response says Connection: close).
  t.match(outcome, { clean: false, cause: 'close', counts: { streamsClosed: 1, destroyed: 1, idleClosed: 1 } })
  t.match(outcome.failures.join(), /1 request\(s\) or stream\(s\) still busy after 300 ms were destroyed/)
  t.equal(app.lifecycle.state, 'closed')
})

test('SIGTERM: drains, closes, logs each phase once with counts, exits 0', async (t) => {
  const { child, port, logs, exited } = await fixture(t, { drainDelay: 300, streamDrainWindow: 200, closeTimeout: 2000, signalDelay: 9000 })
  const url = `http://127.0.0.1:${port}`
  const s = await openStream(t, port, '/events')
  const slow = request(`${url}/slow?ms=600`)
  await waitUntil(() => s.status === 200)
  child.kill('SIGTERM')
  // During drainDelay the listener is open: readiness says 503.
  await waitUntil(() => logs().some((l) => l.lifecycle === 'draining'), 5000, 'the draining log')
  const ready = await request(`${url}/readyz`)
  t.equal(ready.statusCode, 503)
  await ready.body.dump()
  const res = await slow
  t.equal(res.statusCode, 200, 'the request in flight got its answer')
  t.equal(res.headers.connection, 'close')
  t.same(await res.body.json(), { sleptMs: 600 })
  await withDeadline(s.ended, 5000, 'the stream')
  t.match(s.events.at(-1), { event: 'reconnect', data: 'shutdown' })
  const [code] = await withDeadline(exited, 10000, 'the process to exit')
  t.equal(code, 0, 'exit code 0 when everything closed cleanly')
  const phases = logs().filter((l) => typeof l.lifecycle === 'string').map((l) => l.lifecycle)
  t.same(phases, ['draining', 'draining', 'closing', 'closed'], 'draining (start, streams), closing, closed: each logged once')
  t.match(logs().find((l) => l.lifecycle === 'closed'), { clean: true, cause: 'signal', counts: { streamsClosed: 1, destroyed: 0 } })
})

test('SIGINT works the same way', async (t) => {
  const { child, exited, logs } = await fixture(t, { streamDrainWindow: 0 })
  child.kill('SIGINT')
  const [code] = await withDeadline(exited, 10000, 'the process to exit')
  t.equal(code, 0)
  t.match(logs().find((l) => l.lifecycle === 'closed'), { clean: true, cause: 'signal', signal: 'SIGINT' })
})

test('a second signal destroys everything at once, logs what was open, exits 1', async (t) => {
  const { child, port, logs, exited } = await fixture(t, { closeTimeout: 8000, signalDelay: 20000 })
  const slow = request(`http://127.0.0.1:${port}/slow?ms=15000`).catch((err: Error) => err)
  await waitUntil(() => logs().some((l) => l.msg === 'incoming request' && /\/slow/.test((l.req as { url: string }).url)), 5000, 'the server to have the request')
  child.kill('SIGTERM')
  await waitUntil(() => logs().some((l) => l.lifecycle === 'draining' && 'streamsClosed' in l), 10000, 'the end of draining')
  const start = Date.now()
  child.kill('SIGTERM')
  const [code] = await withDeadline(exited, 5000, 'the process to exit')
  t.ok(Date.now() - start < 3000, 'at once, not after closeTimeout')
  t.equal(code, 1)
  const forced = logs().find((l) => typeof l.msg === 'string' && /second SIGTERM: destroying every connection now/.test(l.msg))
  t.ok(forced, 'logged')
  t.match(forced, { inFlight: 1, open: 1, lifecycle: /^(draining|closing)$/ }, 'with what was still open')
  t.ok((await slow) instanceof Error, 'the stuck request was cut')
})

test('an uncaught exception goes through the graceful path with a short budget and exits non-zero', async (t) => {
  const { port, logs, exited } = await fixture(t, { drainDelay: 5000, errorCloseTimeout: 500 })
  const s = await openStream(t, port, '/events')
  await waitUntil(() => s.status === 200)
  const start = Date.now()
  const crash = await request(`http://127.0.0.1:${port}/crash`)
  await crash.body.dump()
  const [code] = await withDeadline(exited, 5000, 'the process to exit')
  t.equal(code, 1)
  t.ok(Date.now() - start < 3000, 'drainDelay skipped on a crash')
  await withDeadline(s.ended, 1000, 'the stream')
  t.match(s.events.at(-1), { event: 'reconnect' }, 'the stream still got its final event')
  t.match(logs().find((l) => l.lifecycle === 'closed'), { clean: false, cause: 'error' })
  t.ok(logs().some((l) => (l.err as { message?: string } | undefined)?.message === 'boom'), 'the error is logged')
})
