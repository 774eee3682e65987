import Fastify from 'fastify'
import { longLived } from 'fastify-long-lived'

const allowedOrigins = new Set(['https://app.example.com']) // the pages that may open streams here

const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(longLived)

// Headers set before the stream starts (here, in onRequest) are kept by the sse plugin.
app.addHook('onRequest', async (request, reply) => {
  const origin = request.headers.origin
  if (origin !== undefined && allowedOrigins.has(origin)) {
    reply.header('access-control-allow-origin', origin)
    reply.header('access-control-allow-credentials', 'true') // new EventSource(url, { withCredentials: true })
  }
  reply.header('vary', 'Origin')
})

app.get('/events', { sse: true }, async (request, reply) => {
  await reply.sse.send({ event: 'hello', data: 'from another origin' })
})

await app.listen({ port: 3000 })
