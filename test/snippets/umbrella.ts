import Fastify from 'fastify'
import { Registry } from 'prom-client'
import { longLived } from 'fastify-long-lived'

const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(longLived, {
  timeouts: { proxy: 'aws-alb' },                  // keepAliveTimeout 72 s, checked against the ALB
  sse: { retry: 3000 },
  client: { connections: 64 },
  shutdown: { readinessPath: '/readyz', drainDelay: 5000, terminationGracePeriod: 30000 },
  metrics: { registry: new Registry() }
})

app.get('/events', { sse: true }, async (request, reply) => {
  await reply.sse.send({ event: 'hello', data: { at: new Date().toISOString() } })
}) // the stream ends when the handler returns

await app.listen({ port: 3000 })
