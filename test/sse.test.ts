import { test } from 'tap'
import { createHook } from 'node:async_hooks'
import { fork } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import http2 from 'node:http2'
import { setTimeout as delay } from 'node:timers/promises'
import { EventSource } from 'eventsource'
import { request } from 'undici'
import { acceptsEventStream, resolveOptions } from '../plugins/sse/index.js'
import { collect, connect, deferred, get, listen, waitUntil, withDeadline } from './helpers.js'
import { openStream, sseApp } from './sse-helpers.js'

/** seqOf reads the hub sequence number of a hub-assigned id (`<tag>-<seq>`). */
const seqOf = (id: string): number => Number(id.slice(id.lastIndexOf('-') + 1))

test('a stream: headers, status, kept headers, events in order, ended when the handler returns', async (t) => {
  const { app } = await sseApp(t)
  app.get('/events', { sse: true }, async (_req, reply) => {
    reply.header('access-control-allow-origin', '*')
    reply.code(201)
    await reply.sse.send({ event: 'a', id: 1, data: 'one' })
    await reply.sse.send('two')
    await reply.sse.send((async function * () { yield { data: { n: 3 } }; yield 'four' })())
    await reply.sse.send([{ data: 'five' }, 'six'])
  })
  const port = await listen(app)
  const s = await openStream(t, port, '/events')
  t.equal(s.status, 201, 'status set before the first write is used')
  t.match(s.headers, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-transform',
    'x-accel-buffering': 'no',
    connection: 'close',
    'access-control-allow-origin': '*'
  })
  await withDeadline(s.ended, 5000, 'the end of the stream')
  t.same(s.events.map((e) => e.data), ['one', 'two', '{"n":3}', 'four', 'five', 'six'])
  t.same(s.events[0], { event: 'a', id: '1', data: 'one' })
  await waitUntil(() => app.connections.stats().streams === 0)
})

test('inject() gets a finite stream whole; HEAD gets the head and an end; an early hook keeps the route settings', async (t) => {
  const { app, lines } = await sseApp(t, { retry: 1000 })
  const ch = app.sse.channel('c')
  let early: { bufferedBytes: number } | null = null
  // An app-level hook runs before the route's own: the stream it makes still has the route's settings.
  app.addHook('onRequest', async (req, reply) => { if (req.url === '/early') early = reply.sse })
  app.get('/finite', { sse: true }, async (_req, reply) => {
    await reply.sse.send('one')
    await reply.sse.send({ event: 'two', data: 'zwei' })
  })
  app.get('/subscribed', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ch) })
  app.get('/early', { sse: { retry: 42 } }, async (_req, reply) => { await reply.sse.send('x') })

  const injected = await withDeadline(app.inject({ url: '/finite', headers: { accept: 'text/event-stream' } }), 5000, 'inject()')
  t.equal(injected.statusCode, 200)
  t.equal(injected.headers['content-type'], 'text/event-stream; charset=utf-8')
  t.equal(injected.body, 'retry: 1000\n\ndata: one\n\nevent: two\ndata: zwei\n\n')

  const port = await listen(app)
  const head = await withDeadline(request(`http://127.0.0.1:${port}/subscribed`, { method: 'HEAD' }), 5000, 'the HEAD answer')
  t.equal(head.statusCode, 200)
  t.equal(head.headers['content-type'], 'text/event-stream; charset=utf-8')
  await head.body.dump()
  await waitUntil(() => app.connections.stats().inFlight === 0, 5000, 'the HEAD response to end')
  t.equal(app.connections.stats().streams, 0, 'no stream left by HEAD')
  t.equal(ch.subscribers, 0, 'no subscription left by HEAD')
  // A HEAD to a route that sends: its sends succeed with nothing to send, and nothing is logged as an error.
  const headFinite = await withDeadline(request(`http://127.0.0.1:${port}/finite`, { method: 'HEAD' }), 5000, 'the HEAD answer')
  t.equal(headFinite.statusCode, 200)
  await headFinite.body.dump()
  await waitUntil(() => app.connections.stats().inFlight === 0, 5000, 'the HEAD response to end')
  t.equal(lines.filter((l) => l.level >= 50).length, 0, 'no error logged for HEAD')

  const s = await openStream(t, port, '/early')
  await withDeadline(s.ended, 5000, 'the end')
  t.not(early, null)
  t.same(s.retries, [42], "the route's retry, though an app-level hook made the stream")
})

test('Accept negotiation: a stream-only route answers 406 to a client that refuses event streams', async (t) => {
  t.ok(acceptsEventStream(undefined))
  t.ok(acceptsEventStream('text/event-stream'))
  t.ok(acceptsEventStream('*/*'))
  t.ok(acceptsEventStream('text/*;q=0.5, application/json'))
  t.notOk(acceptsEventStream('application/json'))
  t.notOk(acceptsEventStream('text/event-stream;q=0, */*'), 'an explicit refusal beats a wildcard')
  t.notOk(acceptsEventStream('text/html, application/xhtml+xml'))

  const { app } = await sseApp(t)
  app.get('/events', { sse: true }, async (_req, reply) => { await reply.sse.send('x') })
  await app.ready()
  const refused = await app.inject({ url: '/events', headers: { accept: 'application/json' } })
  t.equal(refused.statusCode, 406)
  t.equal(refused.json().code, 'FLL_ERR_SSE_NOT_ACCEPTABLE')
  const port = await listen(app)
  const ok = await request(`http://127.0.0.1:${port}/events`, { headers: { accept: '*/*' } })
  t.equal(ok.statusCode, 200)
  t.equal(await ok.body.text(), 'data: x\n\n')
})

test('channels: publish once to every subscriber; eventsource reconnects with Last-Event-ID and gets exactly the missed events', async (t) => {
  const { app } = await sseApp(t, { reconnectDelay: 10, reconnectJitter: 0 })
  const news = app.sse.channel('news')
  let replayed = -1
  app.get('/events', { sse: true }, async (_req, reply) => {
    replayed = reply.sse.subscribe(news).replayed
  })
  const port = await listen(app)

  const es = new EventSource(`http://127.0.0.1:${port}/events`)
  t.teardown(() => { es.close() })
  const got: Array<{ id: string, data: string }> = []
  es.addEventListener('news', (e) => { got.push({ id: e.lastEventId, data: e.data }) })
  let opens = 0
  es.addEventListener('open', () => { opens++ })
  await waitUntil(() => news.subscribers === 1, 5000, 'the subscription')
  const id1 = news.publish({ event: 'news', data: 'first' })
  await waitUntil(() => got.length === 1)
  t.same(got[0], { id: id1, data: 'first' })

  // The server ends the stream (as shutdown would); events published while the client is away
  // must arrive, exactly once and in order, when it comes back.
  await app.connections.closeStreams({ reason: 'test' })
  await waitUntil(() => news.subscribers === 0, 5000, 'the stream to end')
  const missed = [news.publish({ event: 'news', data: 'second' }), news.publish({ event: 'news', data: 'third\nline' })]
  await waitUntil(() => got.length === 3, 5000, 'the replay')
  t.equal(opens, 2, 'reconnected once')
  t.equal(replayed, 2, 'the stream replayed two events')
  t.same(got.slice(1), [{ id: missed[0], data: 'second' }, { id: missed[1], data: 'third\nline' }])
  news.publish({ event: 'news', data: 'live' })
  await waitUntil(() => got.length === 4)
  t.equal(got[3]!.data, 'live')
  t.ok(seqOf(missed[0]!) < seqOf(missed[1]!), 'channel ids grow')
})

test('replay: an id no longer in the buffer (or from another process) gets a reset event', async (t) => {
  const { app } = await sseApp(t, { history: { historySize: 2 } })
  const ch = app.sse.channel('c')
  const ticks = app.sse.channel('ticks', { historySize: 10 })
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe([ch, ticks]) })
  const port = await listen(app)
  const ids = [1, 2, 3, 4].map((n) => ch.publish({ data: String(n) }))
  const t1 = ticks.publish({ data: 't1' })

  const lost = await openStream(t, port, '/events', { 'last-event-id': ids[0]! })
  await lost.waitEvents(1)
  t.equal(lost.events[0]!.event, 'reset', 'id 1 was pushed out of a buffer of 2')
  t.match(JSON.parse(lost.events[0]!.data), { channel: 'c' })
  await lost.close()

  const kept = await openStream(t, port, '/events', { 'last-event-id': ids[2]! })
  await kept.waitEvents(2)
  t.same(kept.events.map((e) => e.data), ['4', 't1'], 'a hub-wide id resumes every channel of the stream, in order')
  t.equal(kept.events[1]!.id, t1)
  await kept.close()

  for (const stale of ['1', 'not-an-id', `${app.sse.tag}-${seqOf(t1) + 1000}`, `zzzzzzzz-${seqOf(t1)}`]) {
    const s = await openStream(t, port, '/events', { 'last-event-id': stale })
    await s.waitEvents(1)
    t.equal(s.events[0]!.event, 'reset', `Last-Event-ID ${stale}`)
    await s.close()
  }
})

test('ephemeral channels: no ids, no replay, never a reset; a restored hub resumes clients across a restart', async (t) => {
  const { app: first } = await sseApp(t)
  const oldTicks = first.sse.channel('ticks', { historySize: 3 })
  const oldIds = [1, 2, 3, 4].map((n) => oldTicks.publish({ event: 'tick', data: { n } }))
  const saved = JSON.parse(JSON.stringify(first.sse.save()))
  t.equal(saved.channels.ticks.events.length, 3)
  await first.close()

  // The next process starts with what the first one saved.
  const { app } = await sseApp(t)
  app.sse.restore(saved)
  const ticks = app.sse.channel('ticks', { historySize: 3 })
  const stats = app.sse.channel('stats', { ephemeral: true })
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe([ticks, stats]) })
  const port = await listen(app)
  const newId = ticks.publish({ event: 'tick', data: { n: 5 } })
  t.equal(newId, `${app.sse.tag}-${seqOf(oldIds[3]!) + 1}`, 'the restored hub goes on with the sequence, under its own tag')
  t.equal(stats.publish({ event: 'stats', data: { open: 1 } }), '', 'an ephemeral event has no id')

  const resumed = await openStream(t, port, '/events', { 'last-event-id': oldIds[1]! })
  await resumed.waitEvents(3)
  t.same(resumed.events.map((e) => JSON.parse(e.data).n), [3, 4, 5], 'exactly the missed ticks, from both processes')
  stats.publish({ event: 'stats', data: { open: 2 } })
  await resumed.waitEvents(4)
  t.same(resumed.events[3], { event: 'stats', id: undefined, data: '{"open":2}' }, 'live ephemeral events arrive, without an id')

  const tooOld = await openStream(t, port, '/events', { 'last-event-id': oldIds[0]! })
  await tooOld.waitEvents(1)
  t.equal(tooOld.events[0]!.event, 'reset', 'an id pushed out of the saved window resets')
  t.equal(tooOld.events.filter((e) => e.event === 'reset').length, 1, 'the ephemeral channel adds no reset')
})

test('a replay across several channels comes in publish order', async (t) => {
  const { app } = await sseApp(t)
  const a = app.sse.channel('a')
  const b = app.sse.channel('b')
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe([a, b]) })
  const port = await listen(app)
  const first = a.publish({ data: 'a1' })
  b.publish({ data: 'b1' })
  a.publish({ data: 'a2' })
  b.publish({ data: 'b2' })
  const s = await openStream(t, port, '/events', { 'last-event-id': first })
  await s.waitEvents(3)
  t.same(s.events.map((e) => e.data), ['b1', 'a2', 'b2'])
  t.ok(s.events.every((e, i) => i === 0 || seqOf(e.id!) > seqOf(s.events[i - 1]!.id!)), 'ids only grow')
})

test('Last-Event-ID from a query parameter only when enabled', async (t) => {
  const { app } = await sseApp(t, { lastEventIdQuery: 'lastEventId' })
  app.get('/events', { sse: true }, async (_req, reply) => { await reply.sse.send({ data: String(reply.sse.lastEventId) }) })
  const port = await listen(app)
  t.equal(await (await request(`http://127.0.0.1:${port}/events?lastEventId=42`)).body.text(), 'data: 42\n\n')
  t.equal(await (await request(`http://127.0.0.1:${port}/events?lastEventId=42`, { headers: { 'last-event-id': '7' } })).body.text(), 'data: 7\n\n', 'the header wins')

  const { app: strict } = await sseApp(t)
  strict.get('/events', { sse: true }, async (_req, reply) => { await reply.sse.send({ data: String(reply.sse.lastEventId) }) })
  const port2 = await listen(strict)
  t.equal(await (await request(`http://127.0.0.1:${port2}/events?lastEventId=42`)).body.text(), 'data: null\n\n')
})

test('1000 connect/disconnect cycles with a parked async generator: every finally ran, nothing is left', async (t) => {
  const { app } = await sseApp(t, { heartbeatInterval: 60e3, maxLifetime: 600e3 })
  const listenersBefore = ['connection', 'request'].map((e) => app.server.listenerCount(e))
  let started = 0
  let finished = 0
  app.get('/events', { sse: true }, async (_req, reply) => {
    const { signal } = reply.sse
    await reply.sse.send((async function * () {
      started++
      try {
        yield { data: 'hello' }
        // Parked: waits for something that never comes, except the stream's own signal.
        await new Promise((resolve, reject) => {
          signal.addEventListener('abort', () => { reject(signal.reason) }, { once: true })
        })
        yield { data: 'never' }
      } finally {
        finished++
      }
    })())
  })
  const port = await listen(app)

  // Count the live timers made by the kit's code (they are unref'd, so getActiveResourcesInfo
  // does not see them); Node's own (e.g. its Date header cache) are not ours to judge.
  const live = new Map<number, string>() // timer id -> the kit's frame that made it
  let made = 0
  const hook = createHook({
    init (id, type) {
      // Only timers the kit's code asked for: the frame calling setTimeout is in plugins/ (Node's
      // own socket timers, set inside res.end() and the like, are not the kit's to judge).
      if (type !== 'Timeout') return
      const stack = new Error().stack?.split('\n') ?? []
      const i = stack.findIndex((line) => /at setTimeout \(node:timers/.test(line))
      if (i !== -1 && /[/\\]plugins[/\\]/.test(stack[i + 1] ?? '')) { live.set(id, (stack[i + 1] ?? '').trim()); made++ }
    },
    destroy (id) { live.delete(id) }
  }).enable()
  t.teardown(() => { hook.disable() })

  const cycles = 1000
  const batch = 50
  for (let i = 0; i < cycles; i += batch) {
    await Promise.all(Array.from({ length: batch }, async () => {
      const socket = await connect(t, port)
      const received = collect(socket)
      socket.write(get('/events', { accept: 'text/event-stream' }))
      await waitUntil(() => received.text().includes('data: hello'), 5000, 'the first event')
      socket.destroy()
    }))
  }
  await waitUntil(() => finished === cycles, 10000, 'every generator to finish')
  await waitUntil(() => app.connections.stats().open === 0, 5000, 'every connection to go')
  t.equal(started, cycles)
  t.equal(finished, cycles, 'every generator\'s finally ran')
  t.match(app.connections.stats(), { open: 0, streams: 0, inFlight: 0 })
  // One lifetime timer per stream; heartbeats share one timer per interval (made again when a
  // group empties between batches), so far fewer than one per stream.
  t.ok(made >= cycles && made < 1.5 * cycles, `the streams made their lifetime timers and a few shared heartbeat timers (${made})`)
  // async_hooks reports a cleared timer's destroy a little later, in a batch: give it a moment.
  await waitUntil(() => live.size === 0, 2000, 'the destroy hooks of the cleared timers').catch(() => {})
  t.same([...live.values()], [], 'no heartbeat or lifetime timer left behind')
  t.same(['connection', 'request'].map((e) => app.server.listenerCount(e)), listenersBefore, 'no server listener added per stream')
})

test('a pending send() rejects with a coded error when the client leaves during backpressure', async (t) => {
  const { app } = await sseApp(t, { maxBufferedBytes: 64 * 1024 * 1024 })
  const outcome = deferred<string>()
  let stream: { bufferedBytes: number } | null = null
  app.get('/events', { sse: true }, async (_req, reply) => {
    stream = reply.sse
    const big = 'x'.repeat(256 * 1024)
    try {
      for (let i = 0; i < 1000; i++) await reply.sse.send({ data: big })
      outcome.resolve('all sent')
    } catch (err) {
      outcome.resolve((err as { code: string }).code)
    }
    return reply
  })
  const port = await listen(app)
  const socket = await connect(t, port)
  socket.pause()
  socket.write(get('/events'))
  await waitUntil(() => app.connections.stats().streams === 1, 5000, 'the stream')
  // Let the socket back up, then leave.
  await waitUntil(() => stream !== null && stream.bufferedBytes > 0, 5000, 'the socket to back up')
  socket.destroy()
  t.equal(await withDeadline(outcome.promise, 5000, 'send() to settle'), 'FLL_ERR_SSE_CLOSED')
})

test('a stalled reader: memory stays bounded, it is cut and logged; a reading client gets every event', async (t) => {
  // The server runs in its own process, so its RSS is not mixed with this test's clients.
  const maxBufferedBytes = 1024 * 1024
  const child = fork(fileURLToPath(new URL('./fixtures/firehose.ts', import.meta.url)), {
    execArgv: [...process.execArgv, '--expose-gc'],
    env: { ...process.env, MAX_BUFFERED_BYTES: String(maxBufferedBytes) }
  })
  t.teardown(() => { child.kill('SIGKILL') }) // a throwaway process: no graceful close to wait for
  const ask = async <T>(msg: object): Promise<T> => {
    const reply = once(child, 'message') as Promise<[T]>
    child.send(msg)
    return (await withDeadline(reply, 30000, `the fixture's answer to ${JSON.stringify(msg)}`))[0]
  }
  const [{ port }] = await withDeadline(once(child, 'message') as Promise<[{ port: number }]>, 30000, 'the fixture to listen')

  const size = 10 * 1024
  const total = 5000 // 50 MB
  type Mem = { live: number, rss: number }
  type Published = { before: Mem, peak: Mem, subscribers: number, stats: { slowConsumers: number } }
  const waitSubscribers = async (n: number): Promise<void> => {
    for (let tries = 0; (await ask<{ subscribers: number }>({ cmd: 'stats' })).subscribers < n; tries++) {
      if (tries > 1000) throw new Error('the subscribers never showed up')
    }
  }

  // First a warm-up with the reading client alone, then the same with a client that never reads.
  const reader = await openStream(t, port, '/events', {}, { keepData: false })
  await waitSubscribers(1)
  const warm = await ask<Published>({ cmd: 'publish', count: total, size })
  await reader.waitEvents(total, 30000)

  const stalled = await connect(t, port)
  stalled.pause()
  stalled.on('error', () => {})
  stalled.write(get('/events'))
  await waitSubscribers(2)
  const result = await ask<Published>({ cmd: 'publish', count: total, size })
  await reader.waitEvents(2 * total, 30000)
  t.equal(reader.events.length, 2 * total, 'the reading client got every event')
  t.ok(reader.events.every((e) => e.data === String(size)), 'each one whole')
  t.equal(result.subscribers, 1, 'the stalled client was cut')
  t.equal(result.stats.slowConsumers, 1, 'and counted')
  const mb = (n: number): string => (n / 1024 / 1024).toFixed(1)
  const growth = result.peak.live - result.before.live
  t.ok(growth < maxBufferedBytes + 4 * 1024 * 1024,
    `the server's live memory (heap + Buffers, after GC) grew by ${mb(growth)} MB at most while 50 MB were published ` +
    `to a client that never reads (reader alone: ${mb(warm.peak.live - warm.before.live)} MB; ` +
    `RSS: +${mb(result.peak.rss - result.before.rss)} MB, reader alone +${mb(warm.peak.rss - warm.before.rss)} MB)`)
})

test('the slow-consumer limit counts what waits in our queue and in Node\'s, and logs once', async (t) => {
  const maxBufferedBytes = 256 * 1024
  const { app, lines } = await sseApp(t, { maxBufferedBytes, heartbeatInterval: null })
  const ch = app.sse.channel('c', { historySize: 0 })
  const streams: Array<{ bufferedBytes: number, isConnected: boolean }> = []
  app.get('/events', { sse: true }, async (_req, reply) => { streams.push(reply.sse); reply.sse.subscribe(ch) })
  const port = await listen(app)
  const stalled = await connect(t, port)
  stalled.pause()
  stalled.on('error', () => {})
  stalled.write(get('/events'))
  await waitUntil(() => ch.subscribers === 1, 5000, 'the subscriber')
  let peak = 0
  for (let i = 0; i < 2000 && streams[0]!.isConnected; i++) {
    ch.publish({ data: 'q'.repeat(4096) })
    peak = Math.max(peak, streams[0]!.bufferedBytes)
    if (i % 20 === 19) await new Promise((resolve) => { setImmediate(resolve) })
  }
  t.notOk(streams[0]!.isConnected, 'cut')
  t.ok(peak <= maxBufferedBytes, `peaked at ${peak} bytes (limit ${maxBufferedBytes})`)
  t.equal(lines.filter((l) => /reads too slowly/.test(l.msg)).length, 1, 'logged once')
})

test('a burst larger than maxBufferedBytes within one turn does not cut a client that reads', async (t) => {
  const { app } = await sseApp(t, { maxBufferedBytes: 64 * 1024, heartbeatInterval: null })
  const ch = app.sse.channel('c', { historySize: 1000 })
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ch) })
  const port = await listen(app)
  let before = ''
  for (let i = 0; i < 300; i++) before = ch.publish({ data: 'h'.repeat(1024) }) // 300 KB of history
  ch.publish({ data: 'first' })
  const s = await openStream(t, port, '/events', { 'last-event-id': before }, { keepData: false })
  await s.waitEvents(1)
  for (let i = 0; i < 500; i++) ch.publish({ data: 'b'.repeat(1024) }) // 500 KB in one turn
  await s.waitEvents(501)
  t.equal(s.events.length, 501)
  t.equal(app.connections.stats().slowConsumers, 0, 'not treated as a slow consumer')
})

/** tallyDrops counts, in a raw stream, the events whose data starts with `letter` and the sum of the `dropped` notices' counts. */
function tallyDrops (text: string, letter: string): { delivered: number, dropped: number } {
  return {
    delivered: text.split(`data: ${letter}`).length - 1,
    dropped: [...text.matchAll(/event: dropped\ndata: \{"count":(\d+)\}/g)].reduce((sum, m) => sum + Number(m[1]), 0)
  }
}

test('onSlowConsumer drop: events are skipped for that client, then a dropped event tells how many', async (t) => {
  const { app } = await sseApp(t, { maxBufferedBytes: 64 * 1024, onSlowConsumer: 'drop', heartbeatInterval: null })
  const ch = app.sse.channel('c', { historySize: 0 })
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ch) })
  const port = await listen(app)
  const socket = await connect(t, port)
  socket.pause()
  const received = collect(socket)
  socket.write(get('/events'))
  await waitUntil(() => ch.subscribers === 1)
  for (let i = 0; i < 2000; i++) {
    ch.publish({ data: 'z'.repeat(4096) })
    if (i % 20 === 19) await new Promise((resolve) => { setImmediate(resolve) })
  }
  t.equal(ch.subscribers, 1, 'still subscribed')
  t.equal(app.connections.stats().slowConsumers, 1)
  socket.resume()
  const tally = (): { delivered: number, dropped: number } => tallyDrops(received.text(), 'z')
  await waitUntil(() => tally().delivered + tally().dropped === 2000, 10000, 'every event delivered or counted')
  const { delivered, dropped } = tally()
  t.ok(dropped > 0 && delivered > 0, `every event was either delivered (${delivered}) or counted as dropped (${dropped})`)
})

test('direct sends to a client that stops reading: drop skips and counts them, disconnect cuts and rejects', async (t) => {
  for (const policy of ['drop', 'disconnect'] as const) {
    const { app } = await sseApp(t, { maxBufferedBytes: 64 * 1024, onSlowConsumer: policy, heartbeatInterval: null })
    const results = { resolved: 0, rejected: 0 }
    let stream: { send: (e: { data: string }) => Promise<void> } | null = null
    app.get('/events', { sse: true }, async (_req, reply) => { stream = reply.sse; reply.sse.keepAlive(); reply.sse.sendHeaders() })
    const port = await listen(app)
    const socket = await connect(t, port)
    socket.pause()
    const received = collect(socket)
    socket.write(get('/events'))
    await waitUntil(() => stream !== null, 5000, 'the stream')
    // Not awaited, 20 per turn: the sender ignores backpressure, so the limit must hold.
    for (let i = 0; i < 2000; i++) {
      stream!.send({ data: 'd'.repeat(4096) }).then(() => { results.resolved++ }, () => { results.rejected++ })
      if (i % 20 === 19) await new Promise((resolve) => { setImmediate(resolve) })
    }
    t.equal(app.connections.stats().slowConsumers, 1, `${policy}: counted once`)
    if (policy === 'disconnect') {
      await waitUntil(() => results.resolved + results.rejected === 2000, 10000, 'every send to settle')
      t.ok(results.rejected > 0, `disconnect: the sends after the cut rejected (${results.rejected})`)
      continue
    }
    // The accepted sends settle as the client takes their bytes.
    socket.resume()
    await waitUntil(() => results.resolved + results.rejected === 2000, 10000, 'every send to settle')
    t.equal(results.rejected, 0, 'drop: no send rejected')
    const tally = (): { delivered: number, dropped: number } => tallyDrops(received.text(), 'd')
    await waitUntil(() => tally().delivered + tally().dropped === 2000, 10000, 'every event delivered or counted')
    t.ok(tally().dropped > 0, `drop: ${tally().delivered} delivered, ${tally().dropped} counted as dropped`)
  }
})

test('a write that throws ends the stream and is logged; a throwing onClose callback does not stop the others', async (t) => {
  const { app, lines } = await sseApp(t, { heartbeatInterval: null })
  const closed: string[] = []
  let sent: Promise<void> | null = null
  app.get('/events', { sse: true }, async (_req, reply) => {
    reply.sse.onClose(() => { throw new Error('callback on fire') })
    reply.sse.onClose(() => { closed.push('second') })
    reply.sse.sendHeaders()
    reply.sse.keepAlive()
    reply.raw.write = () => { throw new Error('write on fire') }
    sent = reply.sse.send('never')
    sent.catch(() => {}) // awaited by the test below
  })
  const port = await listen(app)
  const socket = await connect(t, port)
  collect(socket)
  socket.write(get('/events'))
  await waitUntil(() => sent !== null, 5000, 'the send')
  await t.rejects(sent!, { code: 'FLL_ERR_SSE_CLOSED' }, 'the pending send rejects')
  await waitUntil(() => closed.length === 1 && app.connections.stats().streams === 0, 5000, 'the stream to close')
  t.ok(lines.some((l) => l.level === 50 && /SSE write failed/.test(l.msg)), 'the failed write is logged as an error')
  t.ok(lines.some((l) => l.level === 50 && /onClose callback threw/.test(l.msg)), 'the throwing callback is logged')
})

test('two pipelined streams on one connection: when it closes, both leave their channel and close() does not wait', async (t) => {
  const { app } = await sseApp(t, { heartbeatInterval: null })
  const ch = app.sse.channel('c')
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ch) })
  const port = await listen(app)
  const socket = await connect(t, port)
  const received = collect(socket)
  // The second response waits behind the first (which never ends): it never gets the socket,
  // and Node never emits 'close' for it.
  socket.write(get('/events') + get('/events'))
  await waitUntil(() => ch.subscribers === 2 && received.text().includes('200'), 5000, 'both streams')
  socket.destroy()
  await waitUntil(() => ch.subscribers === 0 && app.connections.stats().streams === 0, 5000, 'both streams to go')
  await withDeadline(app.close(), 2000, 'close()')
})

test('a source still running when the server ends the stream is told to finish (its finally runs)', async (t) => {
  const { app } = await sseApp(t, { heartbeatInterval: null })
  let finalized = 0
  app.get('/gen', { sse: true }, async (_req, reply) => {
    setTimeout(() => { reply.sse.closeGracefully('bye').catch(() => {}) }, 100)
    await reply.sse.send((async function * () {
      try {
        for (let i = 0; ; i++) { yield String(i); await delay(5) }
      } finally {
        finalized++
      }
    })())
  })
  // A source that gives an event which cannot be sent (CR/LF in `event`): the stream ends with
  // an error event, and the source, which did not fail itself, is told to finish.
  app.get('/bad', { sse: true }, async (_req, reply) => {
    await reply.sse.send((async function * () {
      try {
        yield 'fine'
        yield { event: 'a\nb', data: 'forged' }
        yield 'never'
      } finally {
        finalized++
      }
    })())
  })
  const port = await listen(app)
  const s = await openStream(t, port, '/gen')
  await withDeadline(s.ended, 5000, 'the end')
  t.equal(s.events.at(-1)?.event, 'reconnect', 'ended by the server')
  await waitUntil(() => finalized === 1, 5000, "the generator's finally")
  const bad = await openStream(t, port, '/bad')
  await withDeadline(bad.ended, 5000, 'the end')
  t.same(bad.events.map((e) => e.event ?? 'message'), ['message', 'error'], 'the bad event ends the stream with an error event')
  await waitUntil(() => finalized === 2, 5000, "the second generator's finally")
  t.equal(finalized, 2)
})

test('a server-level handlerTimeout does not cut a stream; close() ends open streams with a final event', async (t) => {
  const { app } = await sseApp(t, { reconnectDelay: 1000, reconnectJitter: 500 }, { handlerTimeout: 300 } as never)
  const ch = app.sse.channel('c')
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ch) })
  const port = await listen(app)
  const clients = await Promise.all([1, 2, 3].map(() => openStream(t, port, '/events')))
  await waitUntil(() => ch.subscribers === 3)
  await delay(600) // twice the handler deadline: real time is the point of this test
  ch.publish({ data: 'still here' })
  await Promise.all(clients.map((c) => c.waitEvents(1)))
  t.ok(clients.every((c) => c.events[0]!.data === 'still here'), 'every stream outlived handlerTimeout')

  const start = Date.now()
  await withDeadline(app.close(), 3000, 'app.close() with open streams (the @fastify/sse #57 hang)')
  t.ok(Date.now() - start < 2000, 'close() resolved promptly')
  await Promise.all(clients.map((c) => withDeadline(c.ended, 3000, 'the stream to end')))
  for (const c of clients) {
    t.match(c.events.at(-1), { event: 'reconnect' }, 'a final event')
    t.equal(c.retries.length, 1)
    t.ok(c.retries[0]! >= 1000 && c.retries[0]! <= 1500, `retry ${c.retries[0]} within reconnectDelay + jitter`)
  }
})

test('maxLifetime ends a stream with the final event; heartbeats flow while idle', async (t) => {
  const { app } = await sseApp(t, { maxLifetime: 400, heartbeatInterval: 50, reconnectDelay: 5, reconnectJitter: 0, retry: 2000 })
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.keepAlive(); await reply.sse.send('hi') })
  const port = await listen(app)
  const start = Date.now()
  const s = await openStream(t, port, '/events')
  await withDeadline(s.ended, 3000, 'the lifetime to end the stream')
  const lived = Date.now() - start
  t.ok(lived >= 350 && lived < 1500, `lived ${lived} ms (maxLifetime 400, jittered down by at most 10 %)`)
  t.same(s.retries, [2000, 5], 'retry sent on connect, then in the final event')
  t.same(s.events.map((e) => e.event ?? 'message'), ['message', 'reconnect'])
  t.equal(s.events[1]!.data, 'max lifetime')
  t.ok(s.comments.length >= 3, `heartbeats while idle (${s.comments.length})`)
})

test('a source that throws after the headers ends the stream with an error event; the message stays hidden', async (t) => {
  for (const exposeErrors of [false, true]) {
    const { app, lines } = await sseApp(t, { exposeErrors })
    app.get('/events', { sse: true }, async (_req, reply) => {
      await reply.sse.send((async function * () { yield 'ok'; throw new Error('database on fire') })())
    })
    const port = await listen(app)
    const s = await openStream(t, port, '/events')
    await withDeadline(s.ended, 5000, 'the end')
    t.same(s.events.map((e) => e.event ?? 'message'), ['message', 'error'])
    t.same(JSON.parse(s.events[1]!.data), { message: exposeErrors ? 'database on fire' : 'Internal Server Error' })
    t.equal(lines.filter((l) => l.level === 50 && /SSE source failed/.test(l.msg)).length, 1, 'logged as an error once')
  }
})

test('a client leaving is logged at debug, never as an error', async (t) => {
  const { app, lines } = await sseApp(t)
  const settled = deferred<void>()
  app.get('/events', { sse: true }, async (_req, reply) => {
    try {
      await reply.sse.send((async function * () {
        for (let i = 0; ; i++) { yield String(i); await delay(5) }
      })())
    } finally {
      settled.resolve()
    }
  })
  const port = await listen(app)
  const s = await openStream(t, port, '/events')
  await s.waitEvents(3)
  await s.close()
  await waitUntil(() => lines.some((l) => /SSE client disconnected/.test(l.msg)), 5000, 'the debug line')
  await waitUntil(() => app.connections.stats().streams === 0)
  // The handler's send() settles once the parked generator wakes up: wait for it, then give a
  // log line Fastify would write about a rejected handler a window to appear (checking absence).
  await withDeadline(settled.promise, 5000, 'the handler to settle')
  await delay(50)
  t.equal(lines.filter((l) => l.level >= 50).length, 0, 'no error logged')
})

test('HTTP/2: events arrive, no Connection header, no warning', async (t) => {
  const warnings: Error[] = []
  const onWarning = (w: Error): void => { warnings.push(w) }
  process.on('warning', onWarning)
  t.teardown(() => { process.removeListener('warning', onWarning) })
  const { app } = await sseApp(t, {}, { http2: true } as never)
  app.get('/events', { sse: true }, async (_req, reply) => {
    await reply.sse.send({ event: 'x', data: 'one' })
    await reply.sse.send('two')
  })
  const port = await listen(app)
  const session = http2.connect(`http://127.0.0.1:${port}`)
  t.teardown(() => session.destroy())
  const stream = session.request({ ':path': '/events', accept: 'text/event-stream' })
  const [headers] = await withDeadline(new Promise<[http2.IncomingHttpHeaders]>((resolve) => { stream.once('response', (h) => { resolve([h]) }) }), 5000, 'the response')
  let body = ''
  stream.setEncoding('utf8')
  stream.on('data', (c: string) => { body += c })
  await withDeadline(new Promise((resolve) => { stream.once('end', resolve) }), 5000, 'the end')
  t.equal(headers[':status'], 200)
  t.equal(headers['content-type'], 'text/event-stream; charset=utf-8')
  t.notOk('connection' in headers, 'no Connection header on HTTP/2')
  t.equal(body, 'event: x\ndata: one\n\ndata: two\n\n')
  t.same(warnings, [], 'no Node warning')
})

test('options are validated at register time, route options at route time', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{ heartbeatInterval: 0 }, /'heartbeatInterval' must be a positive integer \(ms\) or null, received 0/],
    [{ heartbeatInterval: '15s' }, /'heartbeatInterval'.*received '15s'/],
    [{ maxBufferedBytes: -1 }, /'maxBufferedBytes'/],
    [{ onSlowConsumer: 'block' }, /'onSlowConsumer' must be 'disconnect' or 'drop', received 'block'/],
    [{ retry: 1.5 }, /'retry'/],
    [{ closeEvent: 'a\nb' }, /'closeEvent'/],
    [{ serializer: 'json' }, /'serializer'/],
    [{ lastEventIdQuery: '' }, /'lastEventIdQuery'/],
    [{ history: { historySize: -1 } }, /'history\.historySize'/],
    [{ exposeErrors: 'yes' }, /'exposeErrors'/],
    [{ heartbeat: 1000 }, /'heartbeat' must be one of the known options/]
  ]
  for (const [opts, message] of cases) t.throws(() => resolveOptions(opts), { code: 'FLL_ERR_INVALID_OPTION', message })
  const { app } = await sseApp(t)
  t.throws(() => app.get('/bad', { sse: { maxBufferedBytes: 0 } }, async () => 'x'), { code: 'FLL_ERR_INVALID_OPTION', message: /'sse\.maxBufferedBytes'/ })
  t.throws(() => app.get('/bad2', { sse: 'yes' as never }, async () => 'x'), { code: 'FLL_ERR_INVALID_OPTION' })
})
