// @fastify/sse: as its README shows for out-of-band sends: the route calls keepAlive() and the
// app keeps the connected replies; a broadcast calls reply.sse.send({ data }) on each, for each
// event (each send serializes the event again, with the default JSON serializer, and writes it).
// Heartbeats are disabled (heartbeatInterval: 0).
//
// sendHeaders() only calls writeHead(), which Node keeps until the first write: without the
// flushHeaders() below, a client would not see the response (EventSource 'open') until the
// first event. The benchmark waits for every response head, so we flush it.
import Fastify from 'fastify'
import fastifySse from '@fastify/sse'
import { makePayloads, runFastify } from './common.js'

const clients = new Set()
const app = Fastify({ logger: false })
await app.register(fastifySse, { heartbeatInterval: 0 })

app.get('/events', { sse: 'only' }, async (request, reply) => {
  reply.sse.keepAlive()
  reply.sse.sendHeaders()
  reply.raw.flushHeaders()
  clients.add(reply)
  reply.sse.onClose(() => clients.delete(reply))
})

function ignore () {}

await runFastify(app, {
  subscribers: () => clients.size,
  broadcast (m, b) {
    const payload = makePayloads(b)
    for (let i = 0; i < m; i++) {
      const data = payload(i)
      for (const reply of clients) reply.sse.send({ data }).catch(ignore)
    }
  }
})
