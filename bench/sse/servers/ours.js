// ours: Fastify with fastify-long-lived's connections and sse plugins (built to dist/ by
// `npm run build`). The route subscribes each stream to one hub channel; a broadcast publishes
// the M events on it: each is encoded once and queued on every subscribed stream, and each
// stream writes its queue as one write after the turn (see plugins/sse/stream.ts for how).
// SSE_BENCH_DIST is the copy of dist/ the driver took when it started (so that a rebuild
// during a session cannot mix two builds); without it, ../../../dist/ itself.
// SSE_BENCH_MAX_BUFFERED (bytes), set by the driver when M x event size would not fit the
// default 1 MiB, raises maxBufferedBytes so that no client is cut as a slow consumer.
import Fastify from 'fastify'
import { pathToFileURL } from 'node:url'
import { makePayloads, runFastify } from './common.js'

const dist = process.env.SSE_BENCH_DIST === undefined
  ? new URL('../../../dist/', import.meta.url)
  : pathToFileURL(process.env.SSE_BENCH_DIST + '/')
const { default: connections } = await import(new URL('plugins/connections.js', dist).href)
const { default: sse } = await import(new URL('plugins/sse/index.js', dist).href)

const app = Fastify({ logger: false })
const options = { heartbeatInterval: null, history: { historySize: 0 } }
if (process.env.SSE_BENCH_MAX_BUFFERED !== undefined) options.maxBufferedBytes = Number(process.env.SSE_BENCH_MAX_BUFFERED)
await app.register(connections)
await app.register(sse, options)
const channel = app.sse.channel('bench')

app.get('/events', { sse: true }, async (request, reply) => {
  reply.sse.subscribe(channel)
})

await runFastify(app, {
  subscribers: () => channel.subscribers,
  broadcast (m, b) {
    const payload = makePayloads(b)
    for (let i = 0; i < m; i++) channel.publish({ data: payload(i) })
  }
})
