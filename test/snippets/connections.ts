import Fastify from 'fastify'
import promClient from 'prom-client'
import { connections, shutdown } from 'fastify-long-lived'

const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(connections, { metrics: { registry: promClient.register } })
await app.register(shutdown) // graceful exit on SIGTERM and SIGINT

app.get('/stats', async () => app.connections.stats())
// { open: 12, idle: 9, active: 3, streams: 2, inFlight: 3, connectionsTotal: 40,
//   requestsTotal: 512, reusedRequestsTotal: 472, reusedRatio: 0.92,
//   slowUploadsClosed: 0, slowDownloadsClosed: 1, slowConsumers: 0, draining: false }

app.get('/metrics', async (request, reply) => {
  reply.type(promClient.register.contentType)
  return await promClient.register.metrics()
})

await app.listen({ port: 3000 })
