import { setTimeout } from 'node:timers/promises'
import Fastify from 'fastify'
import { connections, shutdown, sse } from 'fastify-long-lived'

const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(connections)
await app.register(shutdown)
await app.register(sse, { retry: 3000 })

const ticks = app.sse.channel('ticks', { historySize: 500 })
setInterval(() => { ticks.publish({ event: 'tick', data: { at: Date.now() } }) }, 1000).unref()

// A channel: replays what the client missed (Last-Event-ID), then streams until it leaves.
app.get('/events', { sse: true }, async (request, reply) => {
  reply.sse.subscribe(ticks)
})

// An async iterable: pulled one event at a time with backpressure; stopped when the client leaves.
app.get('/progress', { sse: true }, async (request, reply) => {
  await reply.sse.send((async function * () {
    for (let i = 0; i <= 100; i += 10) {
      yield { event: 'progress', data: { i } }
      await setTimeout(100, undefined, { signal: reply.sse.signal })
    }
  })())
}) // the stream ends when the handler returns (no subscription, no keepAlive())

await app.listen({ port: 3000 })
