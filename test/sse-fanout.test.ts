/**
 * Fan-out: coalesced writes keep every stream's events complete and in order, a lone event
 * still leaves at once, and a large broadcast does not stop the server from answering requests.
 */
import { test } from 'tap'
import { fork } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { connect, get, listen, prng, waitUntil, withDeadline } from './helpers.js'
import type { SseStream } from '../plugins/sse/index.js'
import { openStream, sseApp, type StreamClient } from './sse-helpers.js'

test('random bursts to fast and intermittently paused readers: every event, once, in order', async (t) => {
  const { app } = await sseApp(t, { maxBufferedBytes: 64 * 1024 * 1024, heartbeatInterval: null })
  const ch = app.sse.channel('c', { historySize: 0 })
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ch) })
  const port = await listen(app)
  const readers = await Promise.all(Array.from({ length: 12 }, () => openStream(t, port, '/events')))
  await waitUntil(() => ch.subscribers === readers.length, 5000, 'the subscribers')

  const seed = 7
  const rand = prng(seed)
  // Half the readers stop reading now and then, for a few turns, so their queues fill and drain.
  const pausers = setInterval(() => {
    for (const r of readers.slice(0, 6)) {
      if (rand() < 0.3) r.pause()
      else r.resume()
    }
  }, 3)
  t.teardown(() => { clearInterval(pausers) })

  const total = 20_000
  let n = 0
  while (n < total) {
    const burst = 1 + Math.floor(rand() * 300)
    for (let i = 0; i < burst && n < total; i++) ch.publish({ data: `${n++}${rand() < 0.1 ? ' ' + 'p'.repeat(Math.floor(rand() * 2000)) : ''}` })
    await new Promise((resolve) => { setImmediate(resolve) })
  }
  clearInterval(pausers)
  for (const r of readers) r.resume()
  await waitUntil(() => readers.every((r) => r.events.length >= total), 20000, 'every reader to get every event')
  for (const [i, r] of readers.entries()) {
    const numbers = r.events.map((e) => Number.parseInt(e.data, 10))
    const wrong = numbers.findIndex((v, k) => v !== k)
    t.equal(wrong, -1, `reader ${i}: ${numbers.length} events, in order, none missing or repeated (seed ${seed})`)
  }
  t.equal(app.connections.stats().slowConsumers, 0)
})

test('within one turn: another channel, a direct send or a new subscriber never reorders or loses a publish', async (t) => {
  const { app } = await sseApp(t, { heartbeatInterval: null })
  const A = app.sse.channel('A', { historySize: 0 })
  const B = app.sse.channel('B', { historySize: 0 })
  const streams = new Map<string, SseStream>()
  app.get('/events', { sse: true }, async (req, reply) => {
    const { id } = req.query as { id: string }
    streams.set(id, reply.sse)
    if (id !== 'late') reply.sse.subscribe(id === 'ab' ? [A, B] : [A])
    else {
      reply.sse.sendHeaders()
      reply.sse.keepAlive()
    }
  })
  const port = await listen(app)
  const ab = await openStream(t, port, '/events?id=ab')
  const a = await openStream(t, port, '/events?id=a')
  const late = await openStream(t, port, '/events?id=late')
  await waitUntil(() => streams.size === 3, 5000, 'the streams')
  // All in one synchronous run: one turn.
  A.publish({ data: 'A1' })
  B.publish({ data: 'B1' })
  A.publish({ data: 'A2' })
  streams.get('ab')!.send({ data: 'D1' }).catch(() => {})
  A.publish({ data: 'A3' })
  streams.get('late')!.subscribe(A)
  A.publish({ data: 'A4' })
  await Promise.all([ab.waitEvents(6), a.waitEvents(4), late.waitEvents(1)])
  t.same(ab.events.map((e) => e.data), ['A1', 'B1', 'A2', 'D1', 'A3', 'A4'], 'two channels and a direct send, in call order')
  t.same(a.events.map((e) => e.data), ['A1', 'A2', 'A3', 'A4'], 'a plain subscriber gets the whole turn')
  t.same(late.events.map((e) => e.data), ['A4'], 'a subscriber that joined mid-turn gets what came after it')
})

test('two channels, direct sends and subscribers joining mid-burst: each stream gets its events once, in call order', async (t) => {
  // Batches are shared per channel and turn; a direct send, another channel's batch or a new
  // subscriber in the middle of a turn must not let a later event overtake an earlier one.
  const { app } = await sseApp(t, { maxBufferedBytes: 64 * 1024 * 1024, heartbeatInterval: null })
  const channels = { A: app.sse.channel('A', { historySize: 0 }), B: app.sse.channel('B', { historySize: 0 }) }
  const streams = new Map<string, SseStream>()
  app.get('/events', { sse: true }, async (req, reply) => {
    const { id, ch } = req.query as { id: string, ch: string }
    streams.set(id, reply.sse)
    reply.sse.subscribe([...ch].map((c) => channels[c as 'A' | 'B']))
  })
  const port = await listen(app)
  const plan = [['a1', 'A'], ['a2', 'A'], ['b1', 'B'], ['b2', 'B'], ['ab1', 'AB'], ['ab2', 'AB']] as const
  const readers = new Map<string, StreamClient>()
  // What each stream must receive, in order, and the channels it is subscribed to (the model).
  const expected = new Map<string, string[]>()
  const subscribed = new Map<string, Set<string>>()
  for (const [id, ch] of plan) {
    readers.set(id, await openStream(t, port, `/events?id=${id}&ch=${ch}`))
    expected.set(id, [])
    subscribed.set(id, new Set(ch))
  }
  await waitUntil(() => streams.size === plan.length, 5000, 'the streams')
  const ids = plan.map(([id]) => id)
  const rand = prng(11)
  const pausers = setInterval(() => {
    for (const id of ['a1', 'b1', 'ab1']) rand() < 0.3 ? readers.get(id)!.pause() : readers.get(id)!.resume()
  }, 3)
  t.teardown(() => { clearInterval(pausers) })
  let n = 0
  for (let turn = 0; turn < 400; turn++) {
    const ops = 1 + Math.floor(rand() * 40)
    for (let k = 0; k < ops; k++) {
      const r = rand()
      const data = String(n++)
      if (r < 0.4 || r >= 0.98) {
        const name = r < 0.2 || r >= 0.98 ? 'A' : 'B'
        channels[name].publish({ data })
        for (const id of ids) if (subscribed.get(id)!.has(name)) expected.get(id)!.push(data)
      } else if (r < 0.8) {
        const id = ids[Math.floor(rand() * ids.length)]!
        streams.get(id)!.send({ data }).catch(() => {})
        expected.get(id)!.push(data)
      } else {
        // A stream joins the other channel mid-turn: it gets that channel's events from now on only.
        const id = ids[Math.floor(rand() * ids.length)]!
        const missing = ['A', 'B'].find((c) => !subscribed.get(id)!.has(c))
        if (missing === undefined) continue
        streams.get(id)!.subscribe(channels[missing as 'A' | 'B'])
        subscribed.get(id)!.add(missing)
      }
    }
    await new Promise((resolve) => { setImmediate(resolve) })
  }
  clearInterval(pausers)
  for (const r of readers.values()) r.resume()
  for (const id of ids) {
    const want = expected.get(id)!
    const reader = readers.get(id)!
    await reader.waitEvents(want.length, 20000)
    t.same(reader.events.map((e) => e.data), want, `${id}: ${want.length} events, each once, in call order`)
  }
})

test('a single event on an idle stream leaves at once', async (t) => {
  const { app } = await sseApp(t, { heartbeatInterval: null })
  const ch = app.sse.channel('c')
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ch) })
  const port = await listen(app)
  const s = await openStream(t, port, '/events')
  await waitUntil(() => ch.subscribers === 1)
  const latencies: number[] = []
  for (let i = 0; i < 20; i++) {
    const start = performance.now()
    ch.publish({ data: String(i) })
    await s.waitEvents(i + 1)
    latencies.push(performance.now() - start)
  }
  latencies.sort((a, b) => a - b)
  const median = latencies[10]!
  t.ok(median < 15, `median latency ${median.toFixed(2)} ms (max ${latencies.at(-1)!.toFixed(2)} ms) from publish to the client`)
})

test('a request sent during a 1000-client broadcast is answered while the broadcast goes out', async (t) => {
  const child = fork(fileURLToPath(new URL('./fixtures/firehose.ts', import.meta.url)), {
    execArgv: process.execArgv,
    env: { ...process.env, MAX_BUFFERED_BYTES: String(16 * 1024 * 1024) }
  })
  t.teardown(() => { child.kill('SIGKILL') })
  const [{ port }] = await withDeadline(once(child, 'message') as Promise<[{ port: number }]>, 30000, 'the fixture to listen')
  const clients = 1000
  const events = 200
  const counts = new Array<number>(clients).fill(0)
  for (let i = 0; i < clients; i += 100) {
    await Promise.all(Array.from({ length: 100 }, async (_v, j) => {
      const socket = await connect(t, port)
      socket.setEncoding('latin1')
      // Count the event terminators only: cheap enough for 200,000 events in this process.
      socket.on('data', (chunk: string) => { counts[i + j] = counts[i + j]! + chunk.split('\n\n').length - 1 })
      socket.write(get('/events', { accept: 'text/event-stream' }))
    }))
  }
  const ask = async <T>(msg: object): Promise<T> => {
    const reply = once(child, 'message') as Promise<[T]>
    child.send(msg)
    return (await withDeadline(reply, 30000, `the fixture's answer to ${JSON.stringify(msg)}`))[0]
  }
  for (let tries = 0; (await ask<{ subscribers: number }>({ cmd: 'stats' })).subscribers < clients; tries++) {
    if (tries > 1000) throw new Error('the subscribers never showed up')
  }
  const before = counts.map((c) => c) // the head's blank line counts as one

  const start = performance.now()
  const published = ask<{ publishMs: number, maxStallMs: number, writtenMs: number }>({ cmd: 'burst', count: events, size: 100 })
  await new Promise((resolve) => { setTimeout(resolve, 20) }) // the probe is sent 20 ms into the broadcast, as in the benchmark
  const probeStart = performance.now()
  const probe = await request(`http://127.0.0.1:${port}/probe`)
  const { waiting } = await probe.body.json() as { waiting: number }
  const probeDone = performance.now()
  const { publishMs, maxStallMs, writtenMs } = await published
  await waitUntil(() => counts.every((c, i) => c - before[i]! >= events), 30000, 'every client to get every event')
  const deliveredMs = performance.now() - start
  const probeMs = probeDone - probeStart
  // This process also reads 1000 sockets, so its clock says little about the server's: the
  // server itself tells the longest it held its event loop between the start of the publish loop
  // and the moment every stream had handed its bytes to its socket (one write per event per
  // client holds it for the whole broadcast: hundreds of ms). Figures are printed for the record.
  // (The benchmark's target is 50 ms on a quiet machine; here other tests share the 2 cores.)
  t.ok(maxStallMs < 100, `the server's event loop was never held more than ${maxStallMs.toFixed(1)} ms (publish loop ` +
    `${publishMs.toFixed(1)} ms; all ${clients} streams written out ${writtenMs.toFixed(0)} ms after it started)`)
  t.ok(probeMs < 1000, `probe answered in ${probeMs.toFixed(1)} ms (${waiting} streams still had bytes to write), ` +
    `${(probeDone - start).toFixed(0)} ms into a broadcast that took ${deliveredMs.toFixed(0)} ms to reach all ${clients} clients`)
  t.ok(counts.every((c, i) => c - before[i]! === events), 'every client got exactly every event')
})
