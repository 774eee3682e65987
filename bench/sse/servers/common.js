// The harness every SSE benchmark server runs in (bench/sse/run.js forks one server per run).
//
// A server module builds its HTTP server (GET /events streams, GET /probe answers "ok") and
// hands runServer() three functions: listen() -> port, subscribers() -> how many streams will
// receive a broadcast, broadcast(m, b) -> writes m events of b payload bytes to every stream.
// The driver talks to it over IPC only:
//   -> { type: 'stats', id, gc }         <- { type: 'stats', id, subscribers, rss, heapUsed, cpuMs, warnings }
//   -> { type: 'broadcast', id, m, b }   <- { type: 'broadcast-done', id, loopMs, cpuMs, rss }
//   -> { type: 'exit' }                  (the server also exits when the driver goes away)
// cpuMs in a stats reply is the CPU used since the last broadcast started (or since boot).
// Process warnings (run.js starts servers with --no-warnings) are counted, not printed: a
// library that adds a listener per pending write would otherwise print one per client.

import http from 'node:http'

/** makePayloads returns (i) => the data of event `i`: its zero-padded index, then 'x' up to `b` chars (no LF, no "data:"). */
export function makePayloads (b) {
  const filler = 'x'.repeat(Math.max(0, b - 8))
  return (i) => String(i).padStart(8, '0') + filler
}

/** eventBuffer is the wire form the hand-written servers send: one data line and the blank line. */
export function eventBuffer (payload) {
  return Buffer.from(`data: ${payload}\n\n`, 'latin1')
}

/** The response head of the hand-written servers. */
export const sseHeaders = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  connection: 'keep-alive'
}

function cpuMs (since) {
  const u = process.cpuUsage(since)
  return (u.user + u.system) / 1e3
}

export async function runServer ({ listen, subscribers, broadcast }) {
  if (typeof process.send !== 'function') {
    console.error('bench/sse server: start me through bench/sse/run.js (I need an IPC channel)')
    process.exit(2)
  }
  process.on('disconnect', () => process.exit(0))
  let cpuBase = process.cpuUsage()
  const warnings = {}
  process.on('warning', (w) => {
    const key = `${w.name}: ${w.message.replace(/\d+/g, 'N')}`
    warnings[key] = (warnings[key] ?? 0) + 1
  })
  process.on('message', (msg) => {
    if (msg === null || typeof msg !== 'object') return
    if (msg.type === 'exit') process.exit(0)
    if (msg.type === 'stats') {
      if (msg.gc === true && typeof globalThis.gc === 'function') globalThis.gc()
      const mem = process.memoryUsage()
      process.send({ type: 'stats', id: msg.id, subscribers: subscribers(), rss: mem.rss, heapUsed: mem.heapUsed, cpuMs: cpuMs(cpuBase), warnings })
      return
    }
    if (msg.type === 'broadcast') {
      cpuBase = process.cpuUsage()
      const t0 = performance.now()
      let error = null
      try {
        broadcast(msg.m, msg.b)
      } catch (err) {
        error = String(err?.stack ?? err)
      }
      const loopMs = performance.now() - t0
      process.send({ type: 'broadcast-done', id: msg.id, loopMs, cpuMs: cpuMs(cpuBase), rss: process.memoryUsage().rss, error })
    }
  })
  const port = await listen()
  process.send({ type: 'ready', port, pid: process.pid, node: process.version })
}

/** runFastify runs a Fastify `app` (with its GET /events) in the harness: it adds GET /probe and listens on 127.0.0.1. */
export async function runFastify (app, { subscribers, broadcast }) {
  app.get('/probe', async () => 'ok')
  await runServer({
    async listen () {
      await app.listen({ port: 0, host: '127.0.0.1' })
      return app.server.address().port
    },
    subscribers,
    broadcast
  })
}

/**
 * runRaw runs a node:http server in the harness: GET /events sends the SSE head at once and keeps
 * the response in a set until it closes; GET /probe answers "ok". A broadcast calls
 * `broadcast(responses, m, b)`.
 */
export async function runRaw (broadcast) {
  const clients = new Set()
  const server = http.createServer((req, res) => {
    if (req.url === '/events') {
      res.writeHead(200, sseHeaders)
      res.flushHeaders()
      clients.add(res)
      res.on('close', () => clients.delete(res))
      return
    }
    if (req.url === '/probe') {
      res.end('ok')
      return
    }
    res.statusCode = 404
    res.end()
  })
  await runServer({
    listen: () => new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port))),
    subscribers: () => clients.size,
    broadcast: (m, b) => broadcast(clients, m, b)
  })
}
