import Fastify from 'fastify'
import { connections, shutdown, sse } from 'fastify-long-lived'

const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(connections)
await app.register(shutdown, {
  readinessPath: '/readyz',        // 503 from the first moment of draining
  livenessPath: '/healthz',        // 200 until closed
  drainDelay: 5000,                // Kubernetes: let endpoints update before we stop accepting
  terminationGracePeriod: 30000    // checked at boot: the budget must fit inside it
})
await app.register(sse)            // and the rest of the app: its onClose hooks run before the outcome

app.get('/events', { sse: true }, async (request, reply) => {
  reply.sse.keepAlive()            // open until the client leaves or the server shuts down
})

await app.listen({ port: 3000 })
// SIGTERM / SIGINT: draining -> closing -> closed, then close-with-grace exits (0 when clean)
