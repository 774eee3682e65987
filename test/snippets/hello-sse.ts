import Fastify from 'fastify'
import { Registry } from 'prom-client'
import { longLived } from 'fastify-long-lived'

const registry = new Registry()
const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(longLived, { metrics: { registry } })

// A channel keeps its last 100 events, so a client that reconnects gets what it missed.
const ticks = app.sse.channel('ticks', { historySize: 100 })
let n = 0
setInterval(() => { ticks.publish({ event: 'tick', data: { n: ++n } }) }, 1000).unref()

app.get('/events', { sse: true }, async (request, reply) => {
  reply.sse.subscribe(ticks) // replays what the client missed since its Last-Event-ID, then streams
})

app.get('/metrics', async (request, reply) => {
  reply.type(registry.contentType)
  return await registry.metrics()
})

const page = `<!doctype html>
<meta charset="utf-8"><title>hello SSE</title>
<ol id="log"></ol>
<script>
  const log = (text) => document.getElementById('log').append(Object.assign(document.createElement('li'), { textContent: text }))
  const events = new EventSource('/events') // reconnects by itself, and then sends Last-Event-ID
  events.addEventListener('tick', (e) => log('tick ' + JSON.parse(e.data).n + ' (id ' + e.lastEventId + ')'))
  // The events after our Last-Event-ID are no longer kept (or the server restarted): start over.
  events.addEventListener('reset', () => { document.getElementById('log').replaceChildren(); log('reset') })
  events.addEventListener('reconnect', (e) => log('server: ' + e.data + ', reconnecting')) // shutdown
  events.addEventListener('error', () => log(events.readyState === EventSource.CLOSED ? 'gave up' : 'retrying'))
</script>`
app.get('/', async (request, reply) => reply.type('text/html; charset=utf-8').send(page))

await app.listen({ port: 3000 })
