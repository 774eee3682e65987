// fastify-hijack: Fastify, the route hijacks the reply and the broadcast writes each event,
// encoded once, to every reply.raw: one write per event per client, as `raw` does. This is the
// most any Fastify SSE plugin that writes per event can reach.
import Fastify from 'fastify'
import { eventBuffer, makePayloads, runFastify, sseHeaders } from './common.js'

const clients = new Set()
const app = Fastify({ logger: false })

app.get('/events', (request, reply) => {
  reply.hijack()
  const res = reply.raw
  res.writeHead(200, sseHeaders)
  res.flushHeaders()
  clients.add(res)
  res.on('close', () => clients.delete(res))
})

await runFastify(app, {
  subscribers: () => clients.size,
  broadcast (m, b) {
    const payload = makePayloads(b)
    for (let i = 0; i < m; i++) {
      const buf = eventBuffer(payload(i))
      for (const res of clients) res.write(buf)
    }
  }
})
