/**
 * sse: the plugin. Decorates `reply.sse` (the stream of the request, created on first use),
 * `fastify.sse` (the hub of channels), and reads the `sse` route option, which marks a route
 * as a stream: Accept negotiation (406 for a client that refuses text/event-stream), per-route
 * settings, and the end of the stream when the handler returns (unless it subscribed or
 * called keepAlive()), as in @fastify/sse.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { FLL_ERR_SSE_NOT_A_STREAM_ROUTE } from '../errors.js'
import { fastifyRegisterKeys, invalid, isPlainObject, nonNegativeInt, objectOption, positiveInt, positiveIntOrNull } from '../options.js'
import { jsonSerializer, type Serializer } from './encoder.js'
import { Flusher } from './flusher.js'
import { Heartbeats } from './heartbeat.js'
import { Hub, historySizeMeaning, type ChannelOptions, type HistoryDefaults } from './hub.js'
import { SseStream, type StreamSettings } from './stream.js'

export { encodeEvent, encodeEventText, jsonSerializer } from './encoder.js'
export type { Serializer, SseEvent } from './encoder.js'
export { Batch } from './batch.js'
export { Channel, Hub, MemoryHistory } from './hub.js'
export type { ChannelOptions, ChannelState, HistoryDefaults, HubState, SavedEvent, StoredEvent, TagRange } from './hub.js'
export { SseStream } from './stream.js'
export type { ReplayPoint, SseSource, StreamSink, Subscribable } from './stream.js'

/** Settings a route may override with `sse: { ... }`. */
export interface SseRouteSettings {
  /**
   * heartbeatInterval (ms) of silence after which a comment line is sent, so proxies do not close
   * a quiet stream: two writes on a stream are at most heartbeatInterval apart, plus timer
   * lateness, and about 3/4 of it at least. Keep it below the proxy's read/idle timeout. null disables.
   * @default 15000
   */
  heartbeatInterval?: number | null
  /**
   * maxBufferedBytes is how much may wait for one client (our queue plus Node's) while its socket
   * is backed up, before onSlowConsumer applies. A burst within one event-loop turn is queued
   * whole, so keep it above the largest burst (e.g. a replay). @default 1048576
   */
  maxBufferedBytes?: number
  /** onSlowConsumer: 'disconnect' cuts the client; 'drop' skips events for it and sends a `dropped` event with the count once it catches up. @default 'disconnect' */
  onSlowConsumer?: 'disconnect' | 'drop'
  /** retry (ms) is sent when the stream opens, telling the client how long to wait before reconnecting. null: not sent. @default null */
  retry?: number | null
  /** maxLifetime (ms, jittered down by up to 10 %) ends the stream with the close event and a retry hint. null: no limit. @default null */
  maxLifetime?: number | null
  /** serializer turns non-string data into text. @default JSON.stringify */
  serializer?: Serializer
}

/** Options of the sse plugin. */
export interface SseOptions extends SseRouteSettings {
  /** closeEvent names the final event sent when the server ends a stream (shutdown, maxLifetime). @default 'reconnect' */
  closeEvent?: string
  /** reconnectDelay (ms) is the base of the retry hint in the final event. @default 1000 */
  reconnectDelay?: number
  /** reconnectJitter (ms): a random 0..reconnectJitter is added to reconnectDelay, so clients do not reconnect together. @default 4000 */
  reconnectJitter?: number
  /** exposeErrors sends a failed source's error message in the `error` event; otherwise 'Internal Server Error'. @default false */
  exposeErrors?: boolean
  /** lastEventIdQuery names a query parameter read as Last-Event-ID when the header is absent (for polyfills). null: header only. @default null */
  lastEventIdQuery?: string | null
  /** history is the default replay buffer of channels. @default { historySize: 100, historyTtl: null } */
  history?: Pick<ChannelOptions, 'historySize' | 'historyTtl'>
}

/**
 * The `sse` route option: true, or per-route settings. `'only'`, `kind: 'only'` and
 * `heartbeat: false` are @fastify/sse's spellings, taken as they are.
 */
export type SseRouteOption = boolean | 'only' | (SseRouteSettings & {
  /** @fastify/sse's route kind: only 'only' (what every route here is). */
  kind?: 'only'
  /** @fastify/sse's switch: false is heartbeatInterval null. Not with heartbeatInterval. */
  heartbeat?: boolean
})

declare module 'fastify' {
  interface FastifyReply {
    /** The SSE stream of this request (fastify-long-lived), created on first use. */
    readonly sse: SseStream
  }
  interface FastifyInstance {
    /** The hub of SSE channels (fastify-long-lived). */
    sse: Hub
  }
  interface RouteShorthandOptions {
    /** Marks the route as an SSE stream (fastify-long-lived): Accept negotiation, per-route settings. */
    sse?: SseRouteOption
  }
}

const routeKeys = ['heartbeatInterval', 'maxBufferedBytes', 'onSlowConsumer', 'retry', 'maxLifetime', 'serializer'] as const
const pluginKeys = [...routeKeys, 'closeEvent', 'reconnectDelay', 'reconnectJitter', 'exposeErrors', 'lastEventIdQuery', 'history'] as const

function resolveRouteSettings (name: string, o: Record<string, unknown>, base: StreamSettings): StreamSettings {
  const onSlowConsumer = o.onSlowConsumer ?? base.onSlowConsumer
  if (onSlowConsumer !== 'disconnect' && onSlowConsumer !== 'drop') {
    throw invalid(`${name}onSlowConsumer`, "'disconnect' or 'drop'", onSlowConsumer)
  }
  const serializer = o.serializer ?? base.serializer
  if (typeof serializer !== 'function') throw invalid(`${name}serializer`, 'a function (data) => string', serializer)
  return Object.freeze({
    ...base,
    heartbeatInterval: positiveIntOrNull(`${name}heartbeatInterval`, o.heartbeatInterval, base.heartbeatInterval, 'ms'),
    maxBufferedBytes: positiveInt(`${name}maxBufferedBytes`, o.maxBufferedBytes, base.maxBufferedBytes, 'bytes'),
    onSlowConsumer,
    retry: o.retry === null ? null : (o.retry === undefined ? base.retry : nonNegativeInt(`${name}retry`, o.retry, 0)),
    maxLifetime: positiveIntOrNull(`${name}maxLifetime`, o.maxLifetime, base.maxLifetime, 'ms'),
    serializer: serializer as Serializer
  })
}

/**
 * resolveRouteOption validates a route's `sse` option into its stream settings. Besides `true`
 * and an object of settings, @fastify/sse's forms of a stream-only route are taken as they
 * are, so its routes move over unchanged: `'only'`, `{ kind: 'only' }` and `heartbeat: false`.
 */
export function resolveRouteOption (name: string, value: unknown, base: StreamSettings): StreamSettings {
  if (value === true || value === 'only') return base
  if (value === 'dual' || value === 'manual' || (isPlainObject(value) && (value.kind === 'dual' || value.kind === 'manual'))) {
    throw invalid(name, "true or 'only' (a stream route): @fastify/sse's 'dual' and 'manual' kinds do not exist here, " +
      'serve JSON from a route of its own', isPlainObject(value) ? value.kind : value)
  }
  if (!isPlainObject(value)) throw invalid(name, "true, 'only', or an object of stream settings", value)
  const { kind, heartbeat, ...rest } = objectOption('sse', value, [...routeKeys, 'kind', 'heartbeat'])
  if (kind !== undefined && kind !== 'only') throw invalid('sse.kind', "'only'", kind)
  if (heartbeat !== undefined) {
    if (typeof heartbeat !== 'boolean') throw invalid('sse.heartbeat', 'a boolean (false: no heartbeat)', heartbeat)
    if (rest.heartbeatInterval !== undefined) throw invalid('sse.heartbeat', 'left out when sse.heartbeatInterval is given', heartbeat)
    if (!heartbeat) rest.heartbeatInterval = null
  }
  return resolveRouteSettings('sse.', rest, base)
}

/** resolveOptions validates the plugin options into the default stream settings and channel defaults. */
export function resolveOptions (opts: unknown): { settings: StreamSettings, history: HistoryDefaults } {
  const o = objectOption('', opts, [...pluginKeys, ...fastifyRegisterKeys])
  const closeEvent = o.closeEvent ?? 'reconnect'
  if (typeof closeEvent !== 'string' || closeEvent === '' || /[\r\n]/.test(closeEvent)) {
    throw invalid('closeEvent', 'a non-empty event name without CR or LF', closeEvent)
  }
  const lastEventIdQuery = o.lastEventIdQuery ?? null
  if (lastEventIdQuery !== null && (typeof lastEventIdQuery !== 'string' || lastEventIdQuery === '')) {
    throw invalid('lastEventIdQuery', 'a query parameter name or null', lastEventIdQuery)
  }
  if (o.exposeErrors !== undefined && typeof o.exposeErrors !== 'boolean') throw invalid('exposeErrors', 'a boolean', o.exposeErrors)
  const h = objectOption('history', o.history, ['historySize', 'historyTtl'])
  const defaults: StreamSettings = {
    heartbeatInterval: 15e3, // ms: under the 60 s idle timeouts of common proxies, with room to spare
    maxBufferedBytes: 1024 * 1024,
    onSlowConsumer: 'disconnect',
    retry: null,
    maxLifetime: null,
    closeEvent,
    reconnectDelay: nonNegativeInt('reconnectDelay', o.reconnectDelay, 1e3),
    reconnectJitter: nonNegativeInt('reconnectJitter', o.reconnectJitter, 4e3),
    serializer: jsonSerializer,
    exposeErrors: o.exposeErrors === true,
    lastEventIdQuery
  }
  return {
    settings: resolveRouteSettings('', o, defaults),
    history: {
      historySize: nonNegativeInt('history.historySize', h.historySize, 100, historySizeMeaning),
      historyTtl: positiveIntOrNull('history.historyTtl', h.historyTtl, null, 'ms')
    }
  }
}

/**
 * acceptsEventStream tells whether an Accept header admits text/event-stream: absent, or its
 * most specific matching range (`text/event-stream`, `text/*`, `*\/*`) has q > 0.
 */
export function acceptsEventStream (accept: string | undefined): boolean {
  if (accept === undefined || accept === 'text/event-stream') return true // what EventSource sends
  if (accept.trim() === '') return true
  let best = 0
  let q = 0
  for (const part of accept.split(',')) {
    const [range = '', ...params] = part.split(';').map((x) => x.trim().toLowerCase())
    const specificity = range === 'text/event-stream' ? 3 : range === 'text/*' ? 2 : range === '*/*' ? 1 : 0
    if (specificity <= best) continue
    best = specificity
    q = 1
    for (const p of params) if (p.startsWith('q=')) q = Number(p.slice(2))
  }
  return best > 0 && q > 0
}

// ms one turn of the event loop may spend writing streams out before it yields to other work.
const flushBudget = 5

const kStream = Symbol('fastify-long-lived.sse.stream')
const kSettings = Symbol('fastify-long-lived.sse.settings')

type ReplyWithStream = FastifyReply & { [kStream]: SseStream | null, [kSettings]: StreamSettings | null }

async function ssePlugin (fastify: FastifyInstance, opts: SseOptions): Promise<void> {
  const { settings, history } = resolveOptions(opts)
  const registry = fastify.connections
  // One flusher for all the app's streams: a broadcast's writes are spread over turns of the
  // event loop (at most flushBudget ms each), so requests are served while it goes out.
  const shared = { registry, flusher: new Flusher(flushBudget), heartbeats: new Heartbeats() }
  fastify.addHook('onClose', async () => { shared.heartbeats.close() })
  fastify.decorate('sse', new Hub(settings.serializer, history))
  fastify.decorateReply(kStream, null)
  // The settings of an `sse` route, set on its replies by its first onRequest hook (reading
  // request.routeOptions builds a fresh object per request); read from the route's config when
  // the stream is made earlier (an app-level hook).
  fastify.decorateReply(kSettings, null)
  fastify.decorateReply('sse', {
    getter (this: FastifyReply) {
      const reply = this as ReplyWithStream
      if (reply[kStream] === null) {
        let routeSettings = reply[kSettings]
        let refusal: Error | null = null
        if (routeSettings === null) {
          const { config, method, url } = reply.request.routeOptions
          routeSettings = (config as { [kSettings]?: StreamSettings } | undefined)?.[kSettings] ?? null
          // A route the onRoute hook did not mark (no `sse` option, or declared before this
          // plugin loaded): nothing would end its stream when the handler returns, and the
          // client would wait forever. Reading reply.sse is fine (a hook may look at
          // lastEventId on every route); opening the stream fails, with the fix in the message.
          if (routeSettings === null) {
            routeSettings = settings
            refusal = new FLL_ERR_SSE_NOT_A_STREAM_ROUTE(String(method), String(url))
          }
        }
        reply[kStream] = new SseStream(reply.request, reply, routeSettings, shared, refusal)
      }
      return reply[kStream]
    }
  })

  // Heartbeats slower than the proxy's longest accepted silence: checked once every plugin and
  // route is in (the timeouts plugin, which knows the proxy, may come after this one).
  const heartbeats: Array<{ where: string, interval: number | null }> = [{ where: 'the sse plugin', interval: settings.heartbeatInterval }]
  fastify.addHook('onReady', async () => {
    const proxy = fastify.hasDecorator('timeouts') ? fastify.timeouts.proxy : null
    if (proxy === null) return
    const silence = Math.min(proxy.idleTimeout, proxy.responseTimeout)
    // A heartbeat can come later than its interval (a busy event loop runs timers late): keep a
    // quarter of the proxy's patience as a margin.
    const limit = Math.floor(silence * 3 / 4)
    for (const { where, interval } of heartbeats) {
      if (interval !== null && interval <= limit) continue
      fastify.log.warn({ code: 'FLL_WARN_HEARTBEAT_ABOVE_PROXY' }, `fastify-long-lived: heartbeatInterval of ${where} ` +
        `(${interval === null ? 'null: no heartbeat' : `${interval} ms`}) leaves no margin under the longest silence the proxy ` +
        `(${proxy.name}) accepts (${silence} ms): a quiet stream may be cut by the proxy; keep it at or below ${limit} ms, e.g. ${Math.floor(silence / 4)}`)
    }
  })

  fastify.addHook('onRoute', (route: RouteOptions & { sse?: unknown }) => {
    if (route.sse === undefined || route.sse === false) return
    const routeSettings = resolveRouteOption(`sse (route ${route.method} ${route.url})`, route.sse, settings)
    if (routeSettings.heartbeatInterval !== settings.heartbeatInterval && route.method !== 'HEAD') {
      heartbeats.push({ where: `route ${String(route.method)} ${route.url}`, interval: routeSettings.heartbeatInterval })
    }
    route.config = { ...route.config, [kSettings]: routeSettings }
    const onRequest = Array.isArray(route.onRequest) ? route.onRequest : (route.onRequest === undefined ? [] : [route.onRequest])
    route.onRequest = [async function sseRoute (request: FastifyRequest, reply: FastifyReply) {
      (reply as ReplyWithStream)[kSettings] = routeSettings
      await notAcceptable(request, reply)
    }, ...onRequest]

    const handler = route.handler
    route.handler = async function sseHandler (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) {
      // While the server drains, a new stream gets the final event at once: EventSource treats
      // a 503 (any non-200) as final and would never come back; this way it reconnects elsewhere.
      if (registry.draining) {
        await reply.sse.closeGracefully('shutdown')
        return reply
      }
      try {
        const result = await handler.call(this, request, reply)
        const stream = (reply as ReplyWithStream)[kStream]
        if (stream === null) return result // never streamed: an ordinary reply
        if (!reply.sent) {
          // Not streamed yet. keepAlive() (or a subscription) with nothing sent still means a
          // stream: open it now, or Fastify would answer an empty 200 that EventSource gives up on.
          if ((result !== undefined && result !== reply) || !stream.shouldKeepAlive || !stream.isConnected) return result
          stream.sendHeaders()
          return reply
        }
        if (!stream.shouldKeepAlive) await stream.close()
        return reply
      } catch (err) {
        // The client left while the handler was sending: expected, and not an error.
        if ((err as { code?: string }).code === 'FLL_ERR_SSE_CLOSED' && reply.sent) return reply
        throw err
      }
    }
  })
}

async function notAcceptable (request: FastifyRequest, reply: FastifyReply): Promise<void> {
  if (acceptsEventStream(request.headers.accept)) return
  await reply.code(406).send({
    statusCode: 406,
    code: 'FLL_ERR_SSE_NOT_ACCEPTABLE',
    error: 'Not Acceptable',
    message: 'This route only streams text/event-stream, which the Accept header refuses'
  })
}

export default fp(ssePlugin, {
  name: 'fastify-long-lived/sse',
  fastify: '5.x',
  dependencies: ['fastify-long-lived/connections']
})
export { ssePlugin }
