import Fastify from 'fastify'
import { client, connections, shutdown } from 'fastify-long-lived'

const orders = process.env.ORDERS_URL ?? 'http://orders.internal:8080'
const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(connections)
await app.register(shutdown)
await app.register(client, { connections: 64 })

app.get('/orders/:id', async (request, reply) => {
  const { id } = request.params as { id: string }
  const res = await app.upstream.request(`${orders}/orders/${encodeURIComponent(id)}`, {
    signal: request.signal // the client left, or the handler timed out: the upstream call is cancelled
  })
  if (res.statusCode !== 200) {
    await res.body.dump()
    return reply.code(502).send({ error: `orders upstream answered ${res.statusCode}` })
  }
  return await res.body.json()
})

await app.listen({ port: 3000 })
