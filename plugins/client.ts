/**
 * client: a keep-alive upstream pool on undici (what Go's http.Transport gives a Go service),
 * with production limits, the stale-socket retry, per-origin stats and a clean close.
 *
 * undici does the HTTP work: the Agent (one Pool per origin), the connection limit, keep-alive,
 * timeouts, and RetryHandler, which replays a request through any dispatch function. What this
 * plugin adds:
 * - finite defaults (undici opens one connection per concurrent request by default);
 * - the stale-socket retry: undici cannot tell whether a request went out on a reused
 *   connection, so the plugin watches undici's diagnostics channels (`undici:client:sendHeaders`
 *   names the socket each request is written to) for its own sockets only;
 * - a warning when an upstream's `Keep-Alive: timeout` hint is too short for undici to ever
 *   reuse a connection;
 * - exact stats (requests, reused requests, connections) and Prometheus metrics;
 * - close in `onClose`: refuse new requests, let those in flight finish until closeTimeout,
 *   then destroy them.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { subscribe, unsubscribe } from 'node:diagnostics_channel'
import type { IncomingHttpHeaders } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { ConnectionOptions } from 'node:tls'
import { Agent, Client, Pool, RetryHandler, buildConnector, request as undiciRequest, type Dispatcher } from 'undici'
import { checkMetricsOption, registerMetrics, type MetricSpec, type MetricsOption } from './metrics.js'
import { FLL_ERR_UPSTREAM_CLOSED, FLL_ERR_UPSTREAM_CONNECTION_CLOSED } from './errors.js'
import {
  fastifyRegisterKeys, invalid, isPlainObject, nonNegativeInt, objectOption, positiveInt, positiveIntOrNull
} from './options.js'

/** Options of the client plugin. Durations are milliseconds; limits are per origin (scheme://host:port). */
export interface ClientOptions {
  /**
   * connections is the most connections kept open to one origin (Go's MaxConnsPerHost, undici's
   * `connections`). Requests beyond it wait in a queue for a free connection, so a burst of
   * 5000 calls does not open 5000 sockets (ephemeral ports, the upstream's accept queue and its
   * own connection limit all give out first). null: no limit, undici's default (0 is rejected).
   * @default 128
   */
  connections?: number | null
  /**
   * keepAliveTimeout is how long (ms) an idle connection is kept when the upstream's response
   * gives no `Keep-Alive: timeout` hint (Go's IdleConnTimeout, undici's `keepAliveTimeout`). Keep it
   * below the upstream's own idle timeout, or the upstream closes the connection first and a
   * request may meet the close. It must be positive: to turn keep-alive off set `pipelining: 0`.
   * @default 4000 (below the 5 s Node servers use by default)
   */
  keepAliveTimeout?: number
  /**
   * keepAliveMaxTimeout caps (ms) the idle time taken from an upstream's `Keep-Alive: timeout`
   * hint (undici's `keepAliveMaxTimeout`; Go has no hint and uses IdleConnTimeout alone). Below
   * the idle timeouts of NAT gateways and cloud load balancers (AWS NAT 350 s, Azure 240 s),
   * which drop idle connections silently. Must be positive. @default 60000
   */
  keepAliveMaxTimeout?: number
  /**
   * keepAliveTimeoutThreshold is subtracted (ms) from an upstream's `Keep-Alive: timeout` hint, to
   * close the connection before the upstream does (undici's option of the same name). An upstream
   * whose hint is not above it is never reused: the plugin logs FLL_WARN_UPSTREAM_KEEP_ALIVE_SHORT.
   * 0: no margin. @default 2000
   */
  keepAliveTimeoutThreshold?: number
  /** connectTimeout is how long (ms) opening a connection (TCP and TLS) may take (Go's Dialer.Timeout). 0 disables it. @default 10000 */
  connectTimeout?: number
  /**
   * headersTimeout is how long (ms) the upstream may take to send the response headers once the
   * request is written (Go's ResponseHeaderTimeout, undici's `headersTimeout`, default 300 s).
   * Time spent queued for a connection is not counted. 0 disables it. @default 30000
   */
  headersTimeout?: number
  /**
   * bodyTimeout is how long (ms) the upstream may stay silent between two chunks of the response
   * body (undici's `bodyTimeout`, default 300 s; Go has none). Raise it, or set 0, for streams
   * (SSE) that are quiet longer than that. 0 disables it. @default 30000
   */
  bodyTimeout?: number
  /** maxRequestsPerConnection closes a connection after it carried that many requests (undici's `maxRequestsPerClient`). null: no limit (0 is rejected). @default null */
  maxRequestsPerConnection?: number | null
  /**
   * maxConnectionAge retires a connection that is older (ms) than this when the next request
   * picks one, so an upstream behind DNS that moves (blue/green, scaling) is found again
   * (undici's `clientTtl`, gRPC's MaxConnectionAge). In-flight requests finish. null: connections
   * live as long as they are used (0 is rejected). @default null
   */
  maxConnectionAge?: number | null
  /**
   * pipelining is how many requests may be in flight on one connection at once (undici's
   * `pipelining`). 1 is plain keep-alive; above 1 is HTTP/1.1 pipelining, which a slow response
   * blocks for every request behind it. 0 turns keep-alive off: one connection per request.
   * @default 1
   */
  pipelining?: number
  /** tls holds TLS options for https origins (`ca`, `cert`, `key`, `servername`, `rejectUnauthorized`...): Go's TLSClientConfig. null: Node's defaults. @default null */
  tls?: ConnectionOptions | null
  /**
   * closeTimeout is how long (ms) requests in flight get to finish once the app closes; then they
   * are destroyed (and fail with FLL_ERR_UPSTREAM_CLOSED). It runs in `onClose`, after the server
   * has drained, so it must fit in the shutdown plugin's hooksTimeout (5000 by default). 0: destroy at
   * once. @default 3000
   */
  closeTimeout?: number
  /**
   * metrics exposes the per-origin stats as Prometheus metrics `fastify_long_lived_upstream_*`
   * with an `origin` label, on the given prom-client registry (read at scrape time). Needs the
   * optional peer `prom-client`. null or absent: no metrics.
   */
  metrics?: MetricsOption | null
}

/** The resolved options, frozen, exposed as `fastify.upstream.options`. */
export interface ResolvedClientOptions {
  readonly connections: number | null
  readonly keepAliveTimeout: number
  readonly keepAliveMaxTimeout: number
  readonly keepAliveTimeoutThreshold: number
  readonly connectTimeout: number
  readonly headersTimeout: number
  readonly bodyTimeout: number
  readonly maxRequestsPerConnection: number | null
  readonly maxConnectionAge: number | null
  readonly pipelining: number
  readonly tls: Readonly<ConnectionOptions> | null
  readonly closeTimeout: number
}

/** UpstreamOriginStats are the numbers of one origin. */
export interface UpstreamOriginStats {
  /** Open connections (undici's PoolStats.connected). */
  connected: number
  /** Open connections that can take a request now. */
  free: number
  /** Requests not written yet: queued for a connection, or waiting on one. */
  pending: number
  /** Of `pending`, those queued because every connection is busy (the `connections` limit). */
  queued: number
  /** Requests written whose response has not completed. */
  running: number
  /** pending + running. */
  size: number
  /** Connections opened since the plugin was registered. */
  connectionsTotal: number
  /** Requests written to a connection (a retried request counts twice). */
  requestsTotal: number
  /** Of those, requests written on a connection that had carried an earlier request. */
  reusedRequestsTotal: number
  /** reusedRequestsTotal / requestsTotal, 0 before the first request. */
  reusedRatio: number
  /** Requests that met a reused connection closed by the upstream before any response byte. */
  staleClosesTotal: number
  /** Of those, requests retried on a fresh connection (idempotent, body replayable). */
  retriesTotal: number
}

/** What `close()` reports. */
export interface UpstreamCloseResult {
  /** Requests in flight (running or pending) when the close began. */
  inFlight: number
  /** Requests still in flight at closeTimeout, destroyed. */
  destroyed: number
  /** How long the close took (ms). */
  duration: number
}

/** Options of `upstream.request()`: undici's `request()` options, without `dispatcher`. */
export type UpstreamRequestOptions = Omit<Dispatcher.RequestOptions, 'origin' | 'path' | 'method'> & Partial<Pick<Dispatcher.RequestOptions, 'method'>>

/** The upstream pool, decorated as `fastify.upstream`. */
export interface Upstream {
  /**
   * request sends one request through the pool (undici's `request()`), with the stale-connection
   * retry. Pass the incoming request's signal, `{ signal: request.signal }`, so that a client
   * going away or a handler timeout cancels the upstream call. Rejects with
   * FLL_ERR_UPSTREAM_CLOSED once closing began.
   */
  request (url: string | URL, options?: UpstreamRequestOptions): Promise<Dispatcher.ResponseData>
  /**
   * dispatcher is the pool with this plugin's interceptor (stale-socket retry, refusal after
   * close): pass it as `dispatcher` to undici's `request`, `stream`, `pipeline`, or `fetch`.
   */
  readonly dispatcher: Dispatcher
  /** agent is the undici Agent underneath, for its events. Requests sent on it directly skip the retry and the refusal after close. */
  readonly agent: Agent
  /** stats returns the numbers of every origin called so far, keyed by origin (`http://host:port`). */
  stats (): Record<string, UpstreamOriginStats>
  /** Whether close() was called (or the app is closing). */
  readonly closed: boolean
  /** close refuses new requests, waits up to closeTimeout for those in flight, then destroys them. Idempotent; the app calls it in `onClose`. */
  close (): Promise<UpstreamCloseResult>
  /** The resolved options, frozen. */
  readonly options: ResolvedClientOptions
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The keep-alive upstream pool of fastify-long-lived (added by its client plugin). */
    upstream: Upstream
  }
}

const defaults = {
  connections: 128, // per origin: finite, see the option's comment
  keepAliveTimeout: 4e3, // ms: below the 5 s keep-alive of Node servers
  keepAliveMaxTimeout: 60e3, // ms: below NAT gateway and cloud LB idle timeouts
  keepAliveTimeoutThreshold: 2e3, // ms: undici's own
  connectTimeout: 10e3, // ms: undici's own
  headersTimeout: 30e3, // ms: undici's 300 s is longer than any caller waits
  bodyTimeout: 30e3, // ms: between two body chunks
  pipelining: 1,
  closeTimeout: 3e3 // ms: fits the shutdown plugin's 5 s hooksTimeout
} as const

const knownOptions = [
  'connections', 'keepAliveTimeout', 'keepAliveMaxTimeout', 'keepAliveTimeoutThreshold', 'connectTimeout',
  'headersTimeout', 'bodyTimeout', 'maxRequestsPerConnection', 'maxConnectionAge', 'pipelining', 'tls',
  'closeTimeout', 'metrics'
] as const

/** Methods a retry cannot change the outcome of (RFC 9110 9.2.2), and so may be sent again. */
const idempotentMethods = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'])

/**
 * Errors of a connection the upstream closed (FIN: undici's "other side closed"; RST:
 * ECONNRESET; a write to a closed socket: EPIPE). Alone they do not mean "stale": the request
 * must also have gone out on a reused connection and no response byte may have come back.
 */
const staleErrorCodes = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE'])

/** resolveOptions validates the caller's options and returns a frozen resolved copy; it never mutates them. */
export function resolveOptions (opts: unknown): ResolvedClientOptions {
  const o = objectOption('', opts, [...knownOptions, ...fastifyRegisterKeys])
  const pipelining = o.pipelining === undefined ? defaults.pipelining : o.pipelining
  if (typeof pipelining !== 'number' || !Number.isSafeInteger(pipelining) || pipelining < 0) {
    throw invalid('pipelining', 'an integer >= 0 (requests in flight per connection; 0 turns keep-alive off)', o.pipelining)
  }
  let tls: Readonly<ConnectionOptions> | null = null
  if (o.tls !== undefined && o.tls !== null) {
    if (!isPlainObject(o.tls)) throw invalid('tls', 'an object of TLS options (ca, cert, key, servername...) or null', o.tls)
    tls = Object.freeze({ ...o.tls })
  }
  checkMetricsOption(o.metrics)
  return Object.freeze({
    connections: positiveIntOrNull('connections', o.connections, defaults.connections),
    keepAliveTimeout: positiveInt('keepAliveTimeout', o.keepAliveTimeout, defaults.keepAliveTimeout, 'ms; use pipelining: 0 to turn keep-alive off'),
    keepAliveMaxTimeout: positiveInt('keepAliveMaxTimeout', o.keepAliveMaxTimeout, defaults.keepAliveMaxTimeout, 'ms'),
    keepAliveTimeoutThreshold: nonNegativeInt('keepAliveTimeoutThreshold', o.keepAliveTimeoutThreshold, defaults.keepAliveTimeoutThreshold),
    connectTimeout: nonNegativeInt('connectTimeout', o.connectTimeout, defaults.connectTimeout),
    headersTimeout: nonNegativeInt('headersTimeout', o.headersTimeout, defaults.headersTimeout),
    bodyTimeout: nonNegativeInt('bodyTimeout', o.bodyTimeout, defaults.bodyTimeout),
    maxRequestsPerConnection: positiveIntOrNull('maxRequestsPerConnection', o.maxRequestsPerConnection, null),
    maxConnectionAge: positiveIntOrNull('maxConnectionAge', o.maxConnectionAge, null, 'ms'),
    pipelining,
    tls,
    closeTimeout: nonNegativeInt('closeTimeout', o.closeTimeout, defaults.closeTimeout)
  })
}

/** The plugin's own counters for one origin. */
interface OriginCounters {
  connectionsTotal: number
  requestsTotal: number
  reusedRequestsTotal: number
  staleClosesTotal: number
  retriesTotal: number
  /** Whether the short keep-alive warning was logged for this origin. */
  warned: boolean
}

/** What the plugin knows of one of its sockets. */
interface SocketState {
  counters: OriginCounters
  origin: string
  /** Requests written on it so far. */
  uses: number
}

/** What the plugin knows of one request written on one of its sockets. */
interface Written {
  state: SocketState
  socket: Socket
  /** Whether the socket had carried an earlier request. */
  reused: boolean
  /** socket.bytesRead when the request was written: more later means response bytes came back. */
  bytesRead: number
}

// The parts of undici's diagnostics messages read here (`request` is undici's internal object).
interface SendHeadersMessage { request: object, socket: Socket }
interface HeadersMessage { request: object, response: { headers: Array<Buffer | string> } }
interface RequestErrorMessage { request: object, error: Error & { code?: string } }

/** keepAliveHint reads the `timeout` of a raw `Keep-Alive` header (ms), or null. */
function keepAliveHint (raw: Array<Buffer | string>): number | null {
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!
    if (name.length !== 10 || name.toString().toLowerCase() !== 'keep-alive') continue
    const m = /timeout\s*=\s*(\d+)/i.exec(raw[i + 1]!.toString())
    return m === null ? null : Number(m[1]) * 1e3
  }
  return null
}

/**
 * notRetriedBecause applies Go's Transport rule to a request that met a stale connection: it
 * may be sent again when its method is idempotent (or the caller said so with `idempotent`)
 * and its body can be sent again (none, a string or bytes). Returns null when it may, else why not.
 */
function notRetriedBecause (method: string, idempotent: boolean | undefined, body: unknown): string | null {
  if (!(idempotent ?? idempotentMethods.has(method))) return `${method} is not idempotent`
  if (body === undefined || body === null || typeof body === 'string' || body instanceof Uint8Array) return null
  return 'its body (a stream, an iterable or FormData) cannot be sent again'
}

/** StaleErrorHandler passes everything through, turning a stale-connection error into FLL_ERR_UPSTREAM_CONNECTION_CLOSED. */
class StaleErrorHandler implements Dispatcher.DispatchHandler {
  readonly #handler: Dispatcher.DispatchHandler
  readonly #staleErrors: WeakMap<Error, unknown>
  readonly #method: string
  readonly #url: string
  readonly #why: string

  constructor (handler: Dispatcher.DispatchHandler, staleErrors: WeakMap<Error, unknown>, method: string, url: string, why: string) {
    this.#handler = handler
    this.#staleErrors = staleErrors
    this.#method = method
    this.#url = url
    this.#why = why
  }

  onRequestStart (controller: Dispatcher.DispatchController, context: unknown): void {
    this.#handler.onRequestStart?.(controller, context)
  }

  onRequestUpgrade (controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, socket: Duplex): void {
    this.#handler.onRequestUpgrade?.(controller, statusCode, headers, socket)
  }

  onResponseStart (controller: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders, statusMessage?: string): void {
    this.#handler.onResponseStart?.(controller, statusCode, headers, statusMessage)
  }

  onResponseData (controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.#handler.onResponseData?.(controller, chunk)
  }

  onResponseEnd (controller: Dispatcher.DispatchController, trailers: IncomingHttpHeaders): void {
    this.#handler.onResponseEnd?.(controller, trailers)
  }

  onResponseError (controller: Dispatcher.DispatchController, err: Error): void {
    const out = this.#staleErrors.has(err) ? new FLL_ERR_UPSTREAM_CONNECTION_CLOSED(this.#method, this.#url, this.#why, { cause: err }) : err
    this.#handler.onResponseError?.(controller, out)
  }
}

/** createUpstream builds the pool and its observers for one app. */
function createUpstream (fastify: FastifyInstance, options: ResolvedClientOptions): Upstream {
  const log = fastify.log
  const counters = new Map<string, OriginCounters>()
  const sockets = new WeakMap<Socket, SocketState>()
  const written = new WeakMap<object, Written>()
  /** Errors undici reported for a request that met a stale connection, with their origin. */
  const staleErrors = new WeakMap<Error, OriginCounters>()
  /** One-connection clients carrying retries, closed once their request is done. */
  const freshClients = new Set<Client>()
  let closing = false
  let closePromise: Promise<UpstreamCloseResult> | null = null

  function countersOf (origin: string): OriginCounters {
    let c = counters.get(origin)
    if (c === undefined) {
      c = { connectionsTotal: 0, requestsTotal: 0, reusedRequestsTotal: 0, staleClosesTotal: 0, retriesTotal: 0, warned: false }
      counters.set(origin, c)
    }
    return c
  }

  // Every connection of this pool is opened here, so the observers below can tell its sockets
  // from those of any other undici in the process (the channels are process-wide).
  const baseConnector = buildConnector({ ...options.tls, timeout: options.connectTimeout })
  const connector: buildConnector.connector = (connectOpts, callback) => {
    baseConnector(connectOpts, (...args) => {
      // On a failed connect (refused, timed out, aborted) undici passes the error alone.
      const [err, socket] = args
      if (err === null && socket != null) {
        // The same string as the URL origin undici keys its pools by.
        const origin = `${connectOpts.protocol}//${connectOpts.host ?? connectOpts.hostname}`
        const c = countersOf(origin)
        c.connectionsTotal++
        sockets.set(socket, { counters: c, origin, uses: 0 })
      }
      callback(...args)
    })
  }

  // Published right before a request's first byte is written, with the socket it goes on.
  function onSendHeaders (message: unknown): void {
    const { request, socket } = message as SendHeadersMessage
    const state = sockets.get(socket)
    if (state === undefined) return
    const reused = state.uses++ > 0
    state.counters.requestsTotal++
    if (reused) state.counters.reusedRequestsTotal++
    written.set(request, { state, socket, reused, bytesRead: socket.bytesRead })
  }

  function onHeaders (message: unknown): void {
    const { request, response } = message as HeadersMessage
    const w = written.get(request)
    // The hint is the same on every response of an upstream: read it on the first of each
    // connection only, until it has been warned about.
    if (w === undefined || w.reused || w.state.counters.warned || options.pipelining === 0) return
    const hint = keepAliveHint(response.headers)
    if (hint === null || hint > options.keepAliveTimeoutThreshold) return
    w.state.counters.warned = true
    log.warn({ code: 'FLL_WARN_UPSTREAM_KEEP_ALIVE_SHORT', origin: w.state.origin, keepAliveHint: hint, keepAliveTimeoutThreshold: options.keepAliveTimeoutThreshold },
      `fastify-long-lived: upstream ${w.state.origin} keeps idle connections for ${hint / 1e3} s (Keep-Alive: timeout=${hint / 1e3}); ` +
      `undici closes a connection keepAliveTimeoutThreshold (${options.keepAliveTimeoutThreshold} ms) before that, so no connection ` +
      'to it is ever reused and every request pays a new connection. Raise the upstream\'s keep-alive timeout ' +
      `well above ${options.keepAliveTimeoutThreshold / 1e3} s (e.g. 60 s), or lower keepAliveTimeoutThreshold`)
  }

  // Published before undici hands the error to the request's handler: mark the errors of
  // requests that met a stale keep-alive connection, for the retry policy below.
  function onRequestError (message: unknown): void {
    const { request, error } = message as RequestErrorMessage
    const w = written.get(request)
    if (w === undefined || !w.reused || error === null || typeof error !== 'object') return
    if (!staleErrorCodes.has(error.code ?? '') || w.socket.bytesRead !== w.bytesRead) return
    w.state.counters.staleClosesTotal++
    staleErrors.set(error, w.state.counters)
  }

  subscribe('undici:client:sendHeaders', onSendHeaders)
  subscribe('undici:request:headers', onHeaders)
  subscribe('undici:request:error', onRequestError)

  const undiciOptions = {
    connections: options.connections,
    keepAliveTimeout: options.keepAliveTimeout,
    keepAliveMaxTimeout: options.keepAliveMaxTimeout,
    keepAliveTimeoutThreshold: options.keepAliveTimeoutThreshold,
    headersTimeout: options.headersTimeout,
    bodyTimeout: options.bodyTimeout,
    maxRequestsPerClient: options.maxRequestsPerConnection ?? undefined,
    clientTtl: options.maxConnectionAge,
    pipelining: options.pipelining,
    connect: connector
  }
  // The pool of each origin, kept here too: the Agent forgets its pools once close() began, so
  // it could not destroy them at closeTimeout. Always a Pool, even for `connections: 1` (undici
  // would make a Client), for one stats shape. An origin's pool is replaced when undici makes a
  // new one (it closes a pool whose connections all went away), so this holds one per origin.
  const pools = new Map<string, Pool>()
  const agent = new Agent({
    ...undiciOptions,
    factory: (origin, opts) => {
      const pool = new Pool(origin, opts)
      pools.set(new URL(String(origin)).origin, pool)
      return pool
    }
  })

  /**
   * freshClient opens a connection of its own for a retry, closed once its one request is done:
   * the pool's other idle connections to the same upstream may be closing too (same idle timer,
   * or an upstream restart), so a retry through the pool could meet the same race again.
   */
  function freshClient (origin: string | URL): Client {
    if (closing) throw new FLL_ERR_UPSTREAM_CLOSED('closing before the retry of a request on a stale connection')
    const client = new Client(origin, { ...undiciOptions, pipelining: 1 })
    freshClients.add(client)
    return client
  }

  /** closeWhenDone closes a retry's client once its request completed (call it right after dispatching). */
  function closeWhenDone (client: Client): void {
    client.close().catch(() => {}).finally(() => { freshClients.delete(client) })
  }

  function dispatchFresh (opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const client = freshClient(opts.origin!)
    const dispatched = client.dispatch({ ...opts, reset: true }, handler)
    closeWhenDone(client)
    return dispatched
  }

  /**
   * The interceptor behind `dispatcher` (for undici's stream, pipeline, fetch...): it refuses
   * requests once closing began, and applies the stale-connection rule through undici's
   * RetryHandler, with a policy of exactly one retry, on a fresh connection; a request that may
   * not be retried fails with the coded FLL_ERR_UPSTREAM_CONNECTION_CLOSED. Every other error,
   * and every response, passes through untouched (no status-code retries, no Range resumption).
   * `request()` applies the same rule without the interceptor, which costs a few µs per request
   * (undici converts the handler between its two handler APIs, and parses headers twice).
   */
  const interceptor: Dispatcher.DispatcherComposeInterceptor = (dispatch) => (opts, handler) => {
    if (closing) throw new FLL_ERR_UPSTREAM_CLOSED('closing: new requests are refused')
    const why = notRetriedBecause(opts.method, opts.idempotent, opts.body)
    if (why === null) {
      let retried = false
      const retry: RetryHandler.RetryCallback = (err, _context, callback) => {
        const c = staleErrors.get(err)
        if (c === undefined || retried) { callback(err); return }
        retried = true
        c.retriesTotal++
        callback(null)
      }
      return dispatch(opts, new RetryHandler({ ...opts, retryOptions: { retry, statusCodes: [] } }, { dispatch: dispatchFresh, handler }))
    }
    // RetryHandler would pass a consumed stream body's error through as is, and a request that
    // is never retried needs none of its machinery: only the error is made explicit.
    return dispatch(opts, new StaleErrorHandler(handler, staleErrors, opts.method, `${String(opts.origin)}${opts.path}`, why))
  }
  const dispatcher = agent.compose(interceptor)

  function stats (): Record<string, UpstreamOriginStats> {
    const out: Record<string, UpstreamOriginStats> = {}
    for (const origin of new Set([...counters.keys(), ...pools.keys()])) {
      const p = pools.get(origin)?.stats
      const c = counters.get(origin)
      const requests = c?.requestsTotal ?? 0
      const reused = c?.reusedRequestsTotal ?? 0
      out[origin] = {
        connected: p?.connected ?? 0,
        free: p?.free ?? 0,
        pending: p?.pending ?? 0,
        queued: p?.queued ?? 0,
        running: p?.running ?? 0,
        size: p?.size ?? 0,
        connectionsTotal: c?.connectionsTotal ?? 0,
        requestsTotal: requests,
        reusedRequestsTotal: reused,
        reusedRatio: requests === 0 ? 0 : reused / requests,
        staleClosesTotal: c?.staleClosesTotal ?? 0,
        retriesTotal: c?.retriesTotal ?? 0
      }
    }
    return out
  }

  function inFlight (): number {
    let n = freshClients.size
    for (const pool of pools.values()) n += pool.stats.size
    return n
  }

  async function closeAll (): Promise<UpstreamCloseResult> {
    const start = performance.now()
    const atStart = inFlight()
    let timer: NodeJS.Timeout | undefined
    // agent.close() resolves once every request in flight has completed (body read included).
    const graceful = Promise.all([agent.close(), ...[...freshClients].map((c) => c.close())]).then(() => true, () => true)
    const deadline = new Promise<false>((resolve) => { timer = setTimeout(resolve, options.closeTimeout, false).unref() })
    const done = await Promise.race([graceful, deadline])
    clearTimeout(timer)
    let destroyed = 0
    if (!done) {
      destroyed = inFlight()
      const err = new FLL_ERR_UPSTREAM_CLOSED(`closeTimeout (${options.closeTimeout} ms) reached: the request was aborted`)
      await Promise.all([...pools.values(), ...freshClients].map((d) => d.destroy(err))).catch(() => {})
    }
    unsubscribe('undici:client:sendHeaders', onSendHeaders)
    unsubscribe('undici:request:headers', onHeaders)
    unsubscribe('undici:request:error', onRequestError)
    const result = { inFlight: atStart, destroyed, duration: Math.round(performance.now() - start) }
    if (destroyed > 0) log.warn(result, `fastify-long-lived: upstream client closed; ${destroyed} request(s) still in flight at closeTimeout were destroyed`)
    else log.info(result, 'fastify-long-lived: upstream client closed')
    return result
  }

  const upstream: Upstream = {
    async request (url, requestOptions = {}) {
      if (closing) throw new FLL_ERR_UPSTREAM_CLOSED('closing: new requests are refused')
      try {
        return await undiciRequest(url, { ...requestOptions, dispatcher: agent })
      } catch (err) {
        // undici rejects with the very error object it published on `undici:request:error`.
        const c = staleErrors.get(err as Error)
        if (c === undefined) throw err
        const { method = requestOptions.body ? 'PUT' : 'GET', idempotent, body } = requestOptions // undici's default method
        const why = notRetriedBecause(method, idempotent, body)
        if (why !== null) throw new FLL_ERR_UPSTREAM_CONNECTION_CLOSED(method, String(url), why, { cause: err })
        c.retriesTotal++
        const client = freshClient(new URL(String(url)).origin)
        const retried = undiciRequest(url, { ...requestOptions, dispatcher: client, reset: true })
        closeWhenDone(client)
        return await retried
      }
    },
    dispatcher,
    agent,
    stats,
    get closed () { return closing },
    close () {
      closing = true
      closePromise ??= closeAll()
      return closePromise
    },
    options
  }
  return upstream
}

/** The pool's numbers per origin as Prometheus metrics (`fastify_long_lived_upstream_*`, label `origin`). */
const upstreamMetrics: Array<MetricSpec<UpstreamOriginStats>> = [
  { type: 'gauge', name: 'connections_open', help: 'Open connections to the upstream', read: (s) => s.connected },
  { type: 'gauge', name: 'connections_free', help: 'Open connections to the upstream that can take a request', read: (s) => s.free },
  { type: 'gauge', name: 'requests_running', help: 'Requests written to the upstream whose response has not completed', read: (s) => s.running },
  { type: 'gauge', name: 'requests_pending', help: 'Requests waiting for a connection to the upstream (or to be written on one)', read: (s) => s.pending },
  { type: 'counter', name: 'connections_total', help: 'Connections opened to the upstream', read: (s) => s.connectionsTotal },
  { type: 'counter', name: 'requests_total', help: 'Requests written to the upstream (a retried request counts twice)', read: (s) => s.requestsTotal },
  { type: 'counter', name: 'reused_requests_total', help: 'Requests written on a connection that had carried an earlier request', read: (s) => s.reusedRequestsTotal },
  { type: 'counter', name: 'stale_closes_total', help: 'Requests that met a reused connection the upstream closed before any response byte', read: (s) => s.staleClosesTotal },
  { type: 'counter', name: 'retries_total', help: 'Requests retried on a fresh connection after meeting a stale one', read: (s) => s.retriesTotal }
]

async function clientPlugin (fastify: FastifyInstance, opts: ClientOptions): Promise<void> {
  const options = resolveOptions(opts)
  const upstream = createUpstream(fastify, options)
  fastify.decorate('upstream', upstream)
  let unregister: (() => void) | null = null
  if (opts.metrics != null) {
    try {
      unregister = await registerMetrics(opts.metrics, 'upstream_', upstreamMetrics, () => Object.entries(upstream.stats()), 'origin')
    } catch (err) {
      await upstream.close()
      throw err
    }
  }
  // onClose runs after the server has closed (its in-flight requests done), so nothing of ours
  // still needs the pool: close it, then drop the metrics.
  fastify.addHook('onClose', async () => {
    await upstream.close()
    unregister?.()
  })
}

export default fp(clientPlugin, {
  name: 'fastify-long-lived/client',
  fastify: '5.x'
})
export { clientPlugin }
