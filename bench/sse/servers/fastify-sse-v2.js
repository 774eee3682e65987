// fastify-sse-v2: as its README's "Sending individual events": reply.sse(event) pushes onto the
// reply's own pushable (it-pushable), which is piped to the response through it-to-stream. The
// app keeps the connected replies; a broadcast calls reply.sse({ data }) on each, for each event.
// The route's first reply.sse() call opens the stream: it sends a comment (":connected"), which
// clients ignore. retryDelay: false (no initial retry field); the plugin has no heartbeat.
import Fastify from 'fastify'
import { FastifySSEPlugin } from 'fastify-sse-v2'
import { makePayloads, runFastify } from './common.js'

const clients = new Set()
const app = Fastify({ logger: false })
await app.register(FastifySSEPlugin, { retryDelay: false })

app.get('/events', (request, reply) => {
  reply.sse({ comment: 'connected' })
  clients.add(reply)
  reply.raw.on('close', () => clients.delete(reply))
})

await runFastify(app, {
  subscribers: () => clients.size,
  broadcast (m, b) {
    const payload = makePayloads(b)
    for (let i = 0; i < m; i++) {
      const data = payload(i)
      for (const reply of clients) reply.sse({ data })
    }
  }
})
