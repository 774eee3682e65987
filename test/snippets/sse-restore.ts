import { readFile, writeFile } from 'node:fs/promises'
import Fastify from 'fastify'
import { longLived } from 'fastify-long-lived'

const stateFile = process.env.SSE_STATE_FILE ?? 'sse-state.json'
const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(longLived)

// Before any channel is created: go on from what the previous run saved (if anything).
const saved = await readFile(stateFile, 'utf8').catch(() => null)
if (saved !== null) app.sse.restore(JSON.parse(saved)) // throws FLL_ERR_SSE_INVALID_STATE if it is not a saved state
const ticks = app.sse.channel('ticks', { historySize: 500 })
app.addHook('onClose', async () => { await writeFile(stateFile, JSON.stringify(app.sse.save())) })

setInterval(() => { ticks.publish({ event: 'tick', data: { at: Date.now() } }) }, 1000).unref()
app.get('/events', { sse: true }, async (request, reply) => { reply.sse.subscribe(ticks) })

await app.listen({ port: 3000 })
