import Fastify from 'fastify'
import { connections, shutdown, timeouts } from 'fastify-long-lived'

const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(connections)
await app.register(shutdown)
await app.register(timeouts, {
  proxy: 'nginx',                  // keepAliveTimeout derived: 72 s, above nginx's 60 s
  handlerTimeout: 10e3,            // Fastify's handlerTimeout for every route that sets none
  minDataRate: { request: { bytesPerSecond: 1024, grace: 10e3 } }
})

app.get('/timeouts', async () => app.timeouts) // the effective values, read back from the server

await app.listen({ port: 3000 })
