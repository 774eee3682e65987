// better-sse: its Channel. The Fastify route hijacks the reply and hands the raw request and
// response to createSession() (the Node HTTP/1 adapter), then registers the session on one
// channel; a broadcast calls channel.broadcast(data) once per event, which pushes it to every
// session (each push serializes, sanitizes and writes the event for that session).
// keepAlive: null and retry: null disable the heartbeat and the initial retry field.
import Fastify from 'fastify'
import { createChannel, createSession } from 'better-sse'
import { makePayloads, runFastify } from './common.js'

const channel = createChannel()
const app = Fastify({ logger: false })

app.get('/events', async (request, reply) => {
  reply.hijack()
  const session = await createSession(request.raw, reply.raw, { keepAlive: null, retry: null })
  channel.register(session)
})

await runFastify(app, {
  subscribers: () => channel.sessionCount,
  broadcast (m, b) {
    const payload = makePayloads(b)
    for (let i = 0; i < m; i++) channel.broadcast(payload(i))
  }
})
