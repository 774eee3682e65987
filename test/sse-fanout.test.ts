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
import { openStream, sseApp } from './sse-helpers.js'

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
  const published = ask<{ publishMs: number }>({ cmd: 'burst', count: events, size: 100 })
  await new Promise((resolve) => { setTimeout(resolve, 20) }) // the probe is sent 20 ms into the broadcast, as in the benchmark
  const probeStart = performance.now()
  const probe = await request(`http://127.0.0.1:${port}/probe`)
  const { waiting } = await probe.body.json() as { waiting: number }
  const probeDone = performance.now()
  const { publishMs } = await published
  await waitUntil(() => counts.every((c, i) => c - before[i]! >= events), 30000, 'every client to get every event')
  const deliveredMs = performance.now() - start
  const probeMs = probeDone - probeStart
  // This process also reads 1000 sockets, so its clock says little about the server's: the
  // server itself tells how many streams were still waiting for their writes when it served the
  // probe (without yielding, all of them are written before it). Figures are printed for the record.
  t.ok(waiting > 0, `the probe was served while ${waiting} of ${clients} streams still had bytes to write`)
  t.ok(probeMs < 1000, `probe answered in ${probeMs.toFixed(1)} ms, ${(probeDone - start).toFixed(0)} ms into a broadcast that took ` +
    `${deliveredMs.toFixed(0)} ms to reach all ${clients} clients (the publish loop itself: ${publishMs.toFixed(1)} ms)`)
  t.ok(counts.every((c, i) => c - before[i]! === events), 'every client got exactly every event')
})
