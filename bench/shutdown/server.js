// One server for the shutdown load test, as a child process of bench/shutdown/run.js.
//   node bench/shutdown/server.js kit       Fastify + connections + sse + shutdown (signals on)
//   node bench/shutdown/server.js baseline  bare Fastify + close-with-grace, SSE by hand
// Both serve GET /hello and GET /events (a 'ticks' stream, one event every 200 ms), report
// { port } over IPC once listening, and write { accepted, ... } to $REPORT_FILE when closed
// (synchronously: close-with-grace exits the process right after).
import closeWithGrace from 'close-with-grace'
import { writeFileSync } from 'node:fs'
import Fastify from 'fastify'

const variant = process.argv[2]
// The kit variant follows the README's advice: requests arriving on an open connection while
// closing are served (with Connection: close) instead of answered 503.
const app = Fastify({ logger: false, keepAliveTimeout: 72e3, return503OnClosing: variant !== 'kit' })
let accepted = 0
app.addHook('onRequest', async () => { accepted++ })
app.get('/hello', async () => ({ hello: 'world' }))

const report = (extra) => { writeFileSync(process.env.REPORT_FILE, JSON.stringify({ type: 'closed', accepted, ...extra })) }

if (variant === 'kit') {
  const { connections, sse, shutdown } = await import('../../dist/plugins/index.js')
  await app.register(connections)
  await app.register(sse, { heartbeatInterval: null, reconnectDelay: 1000, reconnectJitter: 4000 })
  await app.register(shutdown, {
    drainDelay: Number(process.env.DRAIN_DELAY ?? 1000),
    streamDrainWindow: Number(process.env.STREAM_DRAIN_WINDOW ?? 2000),
    closeTimeout: 10e3,
    signalDelay: 25e3
  })
  const ticks = app.sse.channel('ticks', { historySize: 10 })
  setInterval(() => { ticks.publish({ event: 'tick', data: Date.now() }) }, 200).unref()
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ticks) })
  app.lifecycle.on('closed', (outcome) => { report({ outcome }) })
} else if (variant === 'baseline') {
  // What a Fastify user writes today: hijack for SSE, close-with-grace calling app.close().
  const streams = new Set()
  setInterval(() => {
    const buf = Buffer.from(`event: tick\ndata: ${Date.now()}\n\n`)
    for (const res of streams) res.write(buf)
  }, 200).unref()
  app.get('/events', (req, reply) => {
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    streams.add(reply.raw)
    reply.raw.on('close', () => { streams.delete(reply.raw) })
  })
  const started = { at: 0 }
  closeWithGrace({ delay: 25e3, logger: false, onTimeout: () => { report({ timedOut: true, ms: Date.now() - started.at }) } }, async () => {
    started.at = Date.now()
    await app.close()
    report({ ms: Date.now() - started.at })
  })
} else {
  throw new Error(`unknown variant ${variant}: kit or baseline`)
}

await app.listen({ port: 0, host: '127.0.0.1' })
process.send?.({ type: 'listening', port: app.server.address().port, pid: process.pid })
