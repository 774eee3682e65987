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
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { readFile, rename, rm, writeFile } from 'node:fs/promises'
import type { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { Registry, collectDefaultMetrics } from 'prom-client'
import { longLived, type HubState } from '../plugins/index.js'
import { page } from './page.js'

export interface DemoConfig {
  host: string
  port: number
  /** ms between two ticks. */
  tickMs: number
  /** The shutdown plugin's drainDelay. */
  drainDelayMs: number
  /**
   * Where the tick counter and the SSE hub's state (ids, replay history, watermarks) are kept
   * across restarts (null: not kept). A file that cannot be used is ignored with one warning; a
   * failed save is logged as one error.
   */
  stateFile: string | null
  /** Pino log level. */
  logLevel: string
  /** Where log lines go (default: stdout). Tests capture them here. */
  logStream?: Writable
  /** Install signal handling (close-with-grace). Tests that embed the app turn it off. */
  signals: boolean
}

/** What the demo keeps across a restart: the tick counter and the hub's state (`app.sse.save()`). */
interface SavedState {
  n: number
  sse: HubState
}

const historySize = 500

/**
 * loadState restores what the previous run saved into `app.sse` (before any channel is made) and
 * returns the tick counter to go on from. No file is a first start. A file that cannot be used
 * (unreadable, a directory, empty, not JSON, not a saved state) is ignored with one warning naming
 * it: the demo starts afresh rather than not at all.
 */
async function loadState (app: FastifyInstance, file: string | null): Promise<number> {
  if (file === null) return 0
  let problem: string
  try {
    const text = await readFile(file, 'utf8')
    if (text.trim() === '') {
      problem = 'it is empty'
    } else {
      const state = JSON.parse(text) as Partial<SavedState> | null
      if (typeof state !== 'object' || state === null || Array.isArray(state)) {
        problem = 'it is not an object { n, sse }'
      } else if (typeof state.n !== 'number' || !Number.isSafeInteger(state.n) || state.n < 0) {
        problem = `its tick counter 'n' is not an integer >= 0 (${JSON.stringify(state.n) ?? 'missing'})`
      } else if (state.sse === undefined) {
        problem = "it has no SSE state 'sse' (written by an older demo?)"
      } else {
        app.sse.restore(state.sse) // checks it whole; throws FLL_ERR_SSE_INVALID_STATE and changes nothing if it is malformed
        return state.n
      }
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException
    if (e.code === 'ENOENT') return 0
    problem = e instanceof SyntaxError ? `it is not JSON (${e.message})` : e.message
  }
  app.log.warn({ stateFile: file }, `demo: STATE_FILE ${file} ignored: ${problem}. Starting without the saved ticks, messages and replay history`)
  return 0
}

/** saveState writes the state whole then renames it, so a crash mid-write never leaves half a file. A failure is logged, once. */
async function saveState (app: FastifyInstance, file: string, n: number): Promise<void> {
  const saved: SavedState = { n, sse: app.sse.save() }
  const tmp = `${file}.tmp`
  try {
    await writeFile(tmp, JSON.stringify(saved))
    await rename(tmp, file)
  } catch (err) {
    await rm(tmp, { force: true }).catch(() => {})
    app.log.error({ stateFile: file }, `demo: STATE_FILE ${file} could not be written: ${(err as Error).message}. ` +
      'The ticks, messages and replay history of this run are not kept')
  }
}

/**
 * clientLeft answers a request whose client left while it was being served (its signal aborted):
 * not an error of the server, so it is logged at info and answered 499 (nginx's "client closed
 * request"), which nobody receives. Any other error is rethrown: Fastify answers and logs it.
 */
function clientLeft (req: FastifyRequest, reply: FastifyReply, err: unknown): FastifyReply {
  if (!req.signal.aborted) throw err
  req.log.info('demo: the client left before the answer')
  return reply.code(499).send()
}

export async function buildApp (config: DemoConfig): Promise<FastifyInstance> {
  const app = Fastify({
    logger: config.logStream === undefined ? { level: config.logLevel } : { level: config.logLevel, stream: config.logStream },
    // Requests that arrive on an open connection while closing are served, not answered 503.
    return503OnClosing: false,
    // Validate what clients send as it is: `text: 123` is not a string, an unknown key is refused.
    // (Fastify's defaults coerce types, turning 123 into '123' and ['a'] into 'a', and drop
    // unknown keys silently.)
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false } }
  })
  const metrics = new Registry()
  collectDefaultMetrics({ register: metrics })

  await app.register(longLived, {
    metrics: { registry: metrics },
    // lastEventIdQuery: a new EventSource cannot send Last-Event-ID; the page passes it as ?lastEventId=.
    sse: { retry: 2000, reconnectDelay: 500, reconnectJitter: 1500, history: { historySize }, lastEventIdQuery: 'lastEventId' },
    shutdown: { readinessPath: '/readyz', livenessPath: '/healthz', drainDelay: config.drainDelayMs, signals: config.signals }
  })

  // Restored before the channels are made: they start from their saved history and watermark,
  // under the same hub tag, so a client resumes across the restart exactly.
  let n = await loadState(app, config.stateFile)
  const ticks = app.sse.channel('ticks')
  const messages = app.sse.channel('messages')
  const stats = app.sse.channel('stats', { ephemeral: true })

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
    if (config.stateFile !== null) await saveState(app, config.stateFile, n)
  })

  app.get('/', async (_req, reply) => reply.type('text/html; charset=utf-8').send(page))

  app.get('/events', { sse: true }, async (_req, reply) => {
    const { replayed, reset } = reply.sse.subscribe([ticks, messages, stats])
    // After the replayed events: tell the page how the stream (re)started.
    await reply.sse.send({ event: 'welcome', data: { replayed, reset, resumedFrom: reply.sse.lastEventId } })
    await reply.sse.send({ event: 'stats', data: liveStats() })
  })

  app.post<{ Body: { text: string } }>('/messages', {
    schema: {
      body: {
        type: 'object',
        required: ['text'],
        additionalProperties: false,
        properties: { text: { type: 'string', minLength: 1, maxLength: 1000 } }
      }
    }
  }, async (req, reply) => {
    const id = messages.publish({ event: 'message', data: { text: req.body.text } })
    return reply.code(202).send({ id })
  })

  // ms: a plain decimal integer from 0 to 60000, nothing else (no exponent, sign, blank, hex or
  // binary literal, which Number() would all take), checked by the schema before the handler runs.
  const slowSchema = {
    querystring: {
      type: 'object',
      required: ['ms'],
      additionalProperties: false,
      properties: { ms: { type: 'string', pattern: '^(?:0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|60000)$' } }
    }
  }
  type SlowRoute = { Querystring: { ms: string } }

  app.get<SlowRoute>('/slow', { schema: slowSchema }, async (req, reply) => {
    const ms = Number(req.query.ms)
    try {
      // request.signal aborts when the client leaves: the sleep stops with it.
      await sleep(ms, undefined, { signal: req.signal })
    } catch (err) {
      return clientLeft(req, reply, err)
    }
    return { sleptMs: ms }
  })

  app.get<SlowRoute>('/upstream/slow', { schema: slowSchema }, async (req, reply) => {
    const address = app.server.address()
    const port = typeof address === 'object' && address !== null ? address.port : config.port
    try {
      const res = await app.upstream.request(`http://127.0.0.1:${port}/slow?ms=${req.query.ms}`, { signal: req.signal })
      return reply.code(res.statusCode).type('application/json').send(await res.body.text())
    } catch (err) {
      return clientLeft(req, reply, err)
    }
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
