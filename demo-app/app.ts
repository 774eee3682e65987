/**
 * The demo app: one server using every plugin of the kit, for people to watch and for tests and
 * evaluation to drive. `buildApp()` builds it; `server.ts` starts it from the environment.
 *
 * Routes (a fixed contract):
 *   GET  /                 the page: live ticks, a message box, live connection stats
 *   GET  /events           SSE: channels `ticks` (event tick, { n, at }) and `messages` (event message),
 *                          with ids and Last-Event-ID replay; plus ephemeral `stats` events
 *   POST /messages         { text } (1..1000 chars) -> 202 { id }, published as event `message`
 *   GET  /slow?ms=N        { sleptMs } after N ms (0..60000); stops early if the client leaves
 *   GET  /upstream/slow?ms=N  the same, fetched from this app's own /slow through the client pool
 *   GET  /healthz /readyz  liveness, readiness (503 once draining)
 *   GET  /stats            registry stats, lifecycle state, effective timeouts, client pool stats
 *   GET  /metrics          Prometheus text
 */
import Fastify, { type FastifyInstance } from 'fastify'
import { readFile, rename, writeFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { Registry, collectDefaultMetrics } from 'prom-client'
import { longLived, type StoredEvent } from '../plugins/index.js'
import { page } from './page.js'

export interface DemoConfig {
  host: string
  port: number
  /** ms between two ticks. */
  tickMs: number
  /** The shutdown plugin's drainDelay. */
  drainDelayMs: number
  /** Where ticks and messages are kept across restarts (null: not kept). */
  stateFile: string | null
  /** Pino log level. */
  logLevel: string
  /** Install signal handling (close-with-grace). Tests that embed the app turn it off. */
  signals: boolean
}

/** What the demo keeps across a restart: the tick counter and the replay buffers. */
interface SavedState {
  n: number
  channels: Record<string, Array<{ seq: number, id: string, at: number, text: string }>>
}

const historySize = 500

async function loadState (file: string | null): Promise<SavedState | null> {
  if (file === null) return null
  try {
    return JSON.parse(await readFile(file, 'utf8')) as SavedState
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
}

function restore (state: SavedState | null, channel: string): StoredEvent[] {
  return (state?.channels[channel] ?? []).map((e) => ({ seq: e.seq, id: e.id, at: e.at, buf: Buffer.from(e.text, 'utf8') }))
}

function save (events: StoredEvent[]): SavedState['channels'][string] {
  return events.map((e) => ({ seq: e.seq, id: e.id, at: e.at, text: e.buf.toString('utf8') }))
}

export async function buildApp (config: DemoConfig): Promise<FastifyInstance> {
  const app = Fastify({
    logger: { level: config.logLevel },
    // Requests that arrive on an open connection while closing are served, not answered 503.
    return503OnClosing: false
  })
  const metrics = new Registry()
  collectDefaultMetrics({ register: metrics })

  await app.register(longLived, {
    metrics: { registry: metrics },
    sse: { retry: 2000, reconnectDelay: 500, reconnectJitter: 1500, history: { historySize } },
    shutdown: { readinessPath: '/readyz', livenessPath: '/healthz', drainDelay: config.drainDelayMs, signals: config.signals }
  })

  const state = await loadState(config.stateFile)
  const ticks = app.sse.channel('ticks', { events: restore(state, 'ticks') })
  const messages = app.sse.channel('messages', { events: restore(state, 'messages') })
  const stats = app.sse.channel('stats', { ephemeral: true })
  let n = state?.n ?? 0

  const liveStats = (): Record<string, unknown> => ({ ...app.connections.stats(), lifecycle: app.lifecycle.state })
  const tickTimer = setInterval(() => {
    ticks.publish({ event: 'tick', data: { n: ++n, at: new Date().toISOString() } })
    stats.publish({ event: 'stats', data: liveStats() })
  }, config.tickMs)
  tickTimer.unref()
  // Stop producing once draining starts: what a client misses from here on, it gets from the
  // next process, which goes on from the saved counter.
  app.lifecycle.once('draining', () => { clearInterval(tickTimer) })
  app.addHook('onClose', async () => {
    clearInterval(tickTimer)
    if (config.stateFile === null) return
    const saved: SavedState = { n, channels: { ticks: save(ticks.events()), messages: save(messages.events()) } }
    // Written whole then renamed, so a crash mid-write never leaves half a file.
    await writeFile(`${config.stateFile}.tmp`, JSON.stringify(saved))
    await rename(`${config.stateFile}.tmp`, config.stateFile)
  })

  app.get('/', async (_req, reply) => reply.type('text/html; charset=utf-8').send(page))

  app.get('/events', { sse: true }, async (_req, reply) => {
    const { replayed, reset } = reply.sse.subscribe([ticks, messages, stats])
    // After the replayed events: tell the page how the stream (re)started.
    await reply.sse.send({ event: 'welcome', data: { replayed, reset, resumedFrom: reply.sse.lastEventId } })
    await reply.sse.send({ event: 'stats', data: liveStats() })
  })

  app.post('/messages', {
    schema: {
      body: {
        type: 'object',
        required: ['text'],
        additionalProperties: false,
        properties: { text: { type: 'string', minLength: 1, maxLength: 1000 } }
      }
    }
  }, async (req, reply) => {
    const { text } = req.body as { text: string }
    const id = messages.publish({ event: 'message', data: { text } })
    return reply.code(202).send({ id })
  })

  const slowSchema = {
    querystring: {
      type: 'object',
      required: ['ms'],
      properties: { ms: { type: 'integer', minimum: 0, maximum: 60000 } }
    }
  } as const

  app.get('/slow', { schema: slowSchema }, async (req) => {
    const { ms } = req.query as { ms: number }
    // request.signal aborts when the client leaves: the sleep stops with it.
    await sleep(ms, undefined, { signal: req.signal })
    return { sleptMs: ms }
  })

  app.get('/upstream/slow', { schema: slowSchema }, async (req, reply) => {
    const { ms } = req.query as { ms: number }
    const address = app.server.address()
    const port = typeof address === 'object' && address !== null ? address.port : config.port
    const res = await app.upstream.request(`http://127.0.0.1:${port}/slow?ms=${ms}`, { signal: req.signal })
    return reply.code(res.statusCode).type('application/json').send(await res.body.text())
  })

  app.get('/stats', async () => ({
    connections: app.connections.stats(),
    lifecycle: app.lifecycle.state,
    timeouts: app.timeouts,
    upstream: app.upstream.stats()
  }))

  app.get('/metrics', async (_req, reply) => reply.type(metrics.contentType).send(await metrics.metrics()))

  return app
}
