/**
 * timeouts: every server timeout in one place (Go's http.Server fields, Node's names), checked
 * against each other and against the proxy in front, with production-safe defaults, and the
 * one guard Node lacks: a minimum data rate for request bodies and responses (Kestrel's
 * MinRequestBodyDataRate / MinResponseDataRate).
 */
import type { FastifyInstance, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import http from 'node:http'
import type { Socket } from 'node:net'
import type { ConnectionInfo } from './connections.js'
import { FLL_ERR_MAX_HEADER_SIZE, FLL_ERR_TIMEOUT_ORDER } from './errors.js'
import { fastifyRegisterKeys, invalid, nonNegativeInt, objectOption, positiveInt, positiveIntOrNull } from './options.js'

/** A proxy in front of the server, described by its two timeouts (ms) and how it forwards request bodies. */
export interface ProxyTimeouts {
  /**
   * idleTimeout is how long (ms) the proxy keeps an idle keep-alive connection to this server
   * before reusing it or dropping it. Our keepAliveTimeout must stay above it, or the proxy may
   * send a request on a socket we are closing and answer 502.
   */
  idleTimeout: number
  /** responseTimeout is how long (ms) the proxy waits for this server's response before answering 504. */
  responseTimeout: number
  /**
   * requestBuffering is true when the proxy reads a request's whole body before it contacts
   * this server (nginx's `proxy_request_buffering on`, its default): a slow upload then never
   * reaches us, so requestTimeout is not checked against responseTimeout. False: the proxy
   * streams bodies to us as they arrive. @default false
   */
  requestBuffering?: boolean
}

/** The proxies with a preset. Where each number comes from is in the README. */
export type ProxyPresetName = 'aws-alb' | 'gcp-lb' | 'nginx' | 'cloudflare'

/**
 * proxyPresets holds the documented defaults of common proxies (ms). Where each number comes
 * from is also in the README's "Proxy presets" table.
 * - aws-alb: the ALB idle timeout (default 60 s) applies to backend connections and also cuts
 *   a response that sends nothing for that long (504). Request bodies are streamed to the
 *   target: AWS documents no request buffering, and asks that an upload send at least a byte
 *   per idle timeout ("Connection idle timeout", Application Load Balancer attributes).
 * - gcp-lb: Google's external Application Load Balancer keeps backend connections for 600 s
 *   (fixed); the backend service timeout (response) defaults to 30 s. Google documents no
 *   request buffering for it: treated as streaming, so the request-timeout check stays.
 * - nginx: `keepalive_timeout` in an `upstream` block and `proxy_read_timeout` both default to
 *   60 s. `proxy_request_buffering on` (the default) reads the whole request body before nginx
 *   contacts the app (https://nginx.org/r/proxy_request_buffering); test/nginx.test.ts shows it.
 * - cloudflare: Proxy Idle Timeout 900 s, Proxy Read Timeout 100 s (HTTP 524). Request body
 *   buffering "Standard", the default, inspects only a prefix of the body and streams the rest
 *   ("Full" buffers it whole: pass `{ ..., requestBuffering: true }`); Configuration Rules docs.
 */
export const proxyPresets: Readonly<Record<ProxyPresetName, Readonly<Required<ProxyTimeouts>>>> = Object.freeze({
  'aws-alb': Object.freeze({ idleTimeout: 60e3, responseTimeout: 60e3, requestBuffering: false }),
  'gcp-lb': Object.freeze({ idleTimeout: 600e3, responseTimeout: 30e3, requestBuffering: false }),
  nginx: Object.freeze({ idleTimeout: 60e3, responseTimeout: 60e3, requestBuffering: true }),
  cloudflare: Object.freeze({ idleTimeout: 900e3, responseTimeout: 100e3, requestBuffering: false })
})

/** A minimum data rate: below `bytesPerSecond`, averaged once `grace` ms have been measured, the connection is closed. */
export interface DataRate {
  /** bytesPerSecond is the slowest acceptable average rate. @default 240 */
  bytesPerSecond?: number
  /** grace is how long (ms) a transfer is measured before the rate is enforced. @default 5000 */
  grace?: number
}

/** Options of the timeouts plugin. All durations are milliseconds. */
export interface TimeoutsOptions {
  /**
   * headersTimeout is how long (ms) a client may take to send a request's headers (Go's
   * ReadHeaderTimeout). 0 disables it. Must not exceed requestTimeout.
   * @default 20000, or requestTimeout when that is smaller
   */
  headersTimeout?: number
  /**
   * requestTimeout is how long (ms) a client may take to send a whole request, body included
   * (Go's ReadTimeout). Fastify's default 0 turns Node's slow-body guard off.
   * @default 120000, or the response timeout of a proxy that streams request bodies when that is smaller
   */
  requestTimeout?: number
  /**
   * keepAliveTimeout is how long (ms) an idle keep-alive connection is kept open between
   * requests (Go's IdleTimeout). Keep it above your load balancer's idle timeout, or the
   * balancer may reuse a socket we are closing and answer 502. 0 disables the timeout.
   * @default 72000, or the proxy preset's idle timeout plus a margin
   */
  keepAliveTimeout?: number
  /**
   * socketTimeout is how long (ms) a socket may see no activity at all before it is destroyed
   * (Node's `server.timeout`). It also cuts quiet long-lived streams, so it is off by default:
   * handlerTimeout and minDataRate cover stuck requests. 0 disables it. @default 0
   */
  socketTimeout?: number
  /** maxRequestsPerSocket closes a keep-alive connection after that many requests. 0: no limit. @default 0 */
  maxRequestsPerSocket?: number
  /**
   * maxConnections makes the server refuse connections beyond that many. null: no limit.
   * 0 is rejected: on Node 22+ it drops every connection. @default null
   */
  maxConnections?: number | null
  /**
   * connectionsCheckingInterval is how often (ms) Node checks headersTimeout and
   * requestTimeout, so deadlines fire up to this late. Node reads it when the server starts
   * listening: setting it on a listening server has no effect until the next listen.
   * @default 1000
   */
  connectionsCheckingInterval?: number
  /**
   * maxHeaderSize (bytes) is only checked: it can be set only when the server is created
   * (`Fastify({ http: { maxHeaderSize } })`). A mismatch is a boot error. null: not checked.
   * @default null
   */
  maxHeaderSize?: number | null
  /**
   * proxy names the proxy in front of this server (or gives its timeouts): it derives a safe
   * keepAliveTimeout and checks handlerTimeout against it, and requestTimeout too when the
   * proxy streams request bodies (`requestBuffering: false`). @default null
   */
  proxy?: ProxyPresetName | ProxyTimeouts | null
  /**
   * handlerTimeout is the deadline (ms) given to every route that sets none of its own, through
   * Fastify's own `handlerTimeout` (the request gets 503 and `request.signal` aborts). Routes
   * marked long-lived (`sse: true`, `websocket: true` or `config: { longLived: true }`) are
   * exempt. Applies to routes added after this plugin. null: no default deadline. @default null
   */
  handlerTimeout?: number | null
  /**
   * minDataRate closes connections whose request body arrives, or whose response is read,
   * slower than a rate (HTTP/1.x). Checked by one sweep every `interval` ms over the registry.
   * null disables both; `request: null` or `response: null` disables one.
   * @default { request: { bytesPerSecond: 240, grace: 5000 }, response: { bytesPerSecond: 240, grace: 5000 }, interval: 1000 }
   */
  minDataRate?: {
    request?: DataRate | null
    response?: DataRate | null
    /** interval (ms) between two sweeps. @default 1000 */
    interval?: number
  } | null
}

/** The effective values, after Fastify's and Node's own rules, exposed as `fastify.timeouts`. */
export interface EffectiveTimeouts {
  /** Null where the server has no such setting (HTTP/2 servers have no headers/request/keep-alive timeouts). */
  readonly headersTimeout: number | null
  readonly requestTimeout: number | null
  readonly keepAliveTimeout: number | null
  readonly socketTimeout: number
  readonly maxRequestsPerSocket: number | null
  readonly maxConnections: number | null
  readonly connectionsCheckingInterval: number | null
  /** The header size limit the server really enforces (bytes), null where not applicable. */
  readonly maxHeaderSize: number | null
  readonly handlerTimeout: number | null
  readonly proxy: Readonly<Required<ProxyTimeouts> & { name: ProxyPresetName | 'custom' }> | null
  readonly minDataRate: Readonly<{
    request: Readonly<Required<DataRate>> | null
    response: Readonly<Required<DataRate>> | null
    interval: number
  }> | null
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The effective server timeouts, frozen (added by fastify-long-lived's timeouts plugin). */
    timeouts: EffectiveTimeouts
  }
}

const defaults = {
  headersTimeout: 20e3, // ms: generous for real clients, short enough to shed slowloris headers
  requestTimeout: 120e3, // ms: Fastify's 0 would switch Node's slow-body guard off
  keepAliveTimeout: 72e3, // ms: above the 60 s idle timeout of ALB and nginx
  socketTimeout: 0, // ms: off, it would cut quiet long-lived streams
  maxRequestsPerSocket: 0,
  connectionsCheckingInterval: 1e3, // ms: Node's 30 s would let deadlines fire 30 s late
  dataRate: { bytesPerSecond: 240, grace: 5e3 }, // Kestrel's defaults
  sweepInterval: 1e3 // ms
} as const

const knownOptions = [
  'headersTimeout', 'requestTimeout', 'keepAliveTimeout', 'socketTimeout', 'maxRequestsPerSocket',
  'maxConnections', 'connectionsCheckingInterval', 'maxHeaderSize', 'proxy', 'handlerTimeout', 'minDataRate'
] as const

/** keepAliveAbove returns a keep-alive timeout safely above a proxy's idle timeout: 20 % more, at least 5 s more. */
export function keepAliveAbove (idleTimeout: number): number {
  return idleTimeout + Math.max(5e3, Math.round(idleTimeout * 0.2))
}

interface Resolved {
  headersTimeout: number
  requestTimeout: number
  keepAliveTimeout: number
  socketTimeout: number
  maxRequestsPerSocket: number
  maxConnections: number | null
  connectionsCheckingInterval: number
  maxHeaderSize: number | null
  proxy: (Required<ProxyTimeouts> & { name: ProxyPresetName | 'custom' }) | null
  handlerTimeout: number | null
  minDataRate: EffectiveTimeouts['minDataRate']
}

function resolveProxy (value: unknown): Resolved['proxy'] {
  if (value === undefined || value === null) return null
  if (typeof value === 'string') {
    if (Object.hasOwn(proxyPresets, value)) return { name: value as ProxyPresetName, ...proxyPresets[value as ProxyPresetName] }
    throw invalid('proxy', `one of ${Object.keys(proxyPresets).map((k) => `'${k}'`).join(', ')} or { idleTimeout, responseTimeout, requestBuffering? }`, value)
  }
  const o = objectOption('proxy', value, ['idleTimeout', 'responseTimeout', 'requestBuffering'])
  if (o.idleTimeout === undefined || o.responseTimeout === undefined) {
    throw invalid('proxy', "a preset name or an object with both 'idleTimeout' and 'responseTimeout' (ms)", value)
  }
  if (o.requestBuffering !== undefined && typeof o.requestBuffering !== 'boolean') {
    throw invalid('proxy.requestBuffering', 'true (the proxy reads whole request bodies first) or false (it streams them)', o.requestBuffering)
  }
  return {
    name: 'custom',
    idleTimeout: positiveInt('proxy.idleTimeout', o.idleTimeout, 0, 'ms'),
    responseTimeout: positiveInt('proxy.responseTimeout', o.responseTimeout, 0, 'ms'),
    // Unknown: assume the proxy streams bodies, so a risky requestTimeout is still warned about.
    requestBuffering: o.requestBuffering ?? false
  }
}

function resolveRate (name: string, value: unknown): Required<DataRate> | null {
  if (value === null) return null
  const o = objectOption(name, value, ['bytesPerSecond', 'grace'])
  return Object.freeze({
    bytesPerSecond: positiveInt(`${name}.bytesPerSecond`, o.bytesPerSecond, defaults.dataRate.bytesPerSecond, 'bytes/s'),
    grace: positiveInt(`${name}.grace`, o.grace, defaults.dataRate.grace, 'ms')
  })
}

function resolveMinDataRate (value: unknown): Resolved['minDataRate'] {
  if (value === null) return null
  const o = objectOption('minDataRate', value, ['request', 'response', 'interval'])
  const request = resolveRate('minDataRate.request', o.request)
  const response = resolveRate('minDataRate.response', o.response)
  const interval = positiveInt('minDataRate.interval', o.interval, defaults.sweepInterval, 'ms')
  if (request === null && response === null) return null
  return Object.freeze({ request, response, interval })
}

/** resolveOptions validates the caller's options and returns a resolved copy; it never mutates them. */
export function resolveOptions (opts: unknown): Resolved {
  const o = objectOption('', opts, [...knownOptions, ...fastifyRegisterKeys])
  const proxy = resolveProxy(o.proxy)
  // Behind a proxy that streams request bodies, an upload slower than the proxy's response
  // timeout gets the proxy's 504 anyway: by default this server gives up at the same moment
  // (and answers 408 to a proxy still listening), so a default configuration does not warn.
  const requestDefault = proxy === null || proxy.requestBuffering ? defaults.requestTimeout : Math.min(defaults.requestTimeout, proxy.responseTimeout)
  const requestTimeout = nonNegativeInt('requestTimeout', o.requestTimeout, requestDefault)
  const headersDefault = requestTimeout > 0 ? Math.min(defaults.headersTimeout, requestTimeout) : defaults.headersTimeout
  const headersTimeout = nonNegativeInt('headersTimeout', o.headersTimeout, headersDefault)
  if (headersTimeout > 0 && requestTimeout > 0 && headersTimeout > requestTimeout) {
    if (o.requestTimeout === undefined && proxy !== null) {
      // The requestTimeout was not given: say where it came from.
      throw invalid('headersTimeout', `at most requestTimeout, ${requestTimeout} ms here: the response timeout of the proxy ` +
        `(${proxy.name}), which streams request bodies; set requestTimeout too, or lower headersTimeout`, headersTimeout)
    }
    throw new FLL_ERR_TIMEOUT_ORDER(headersTimeout, requestTimeout)
  }
  const keepAliveDefault = proxy === null ? defaults.keepAliveTimeout : keepAliveAbove(proxy.idleTimeout)
  if (o.maxConnections === 0) {
    throw invalid('maxConnections', 'a positive integer or null (no limit); 0 would drop every connection on Node 22+', 0)
  }
  return {
    headersTimeout,
    requestTimeout,
    keepAliveTimeout: nonNegativeInt('keepAliveTimeout', o.keepAliveTimeout, keepAliveDefault),
    socketTimeout: nonNegativeInt('socketTimeout', o.socketTimeout, defaults.socketTimeout),
    maxRequestsPerSocket: nonNegativeInt('maxRequestsPerSocket', o.maxRequestsPerSocket, defaults.maxRequestsPerSocket),
    maxConnections: positiveIntOrNull('maxConnections', o.maxConnections, null),
    connectionsCheckingInterval: positiveInt('connectionsCheckingInterval', o.connectionsCheckingInterval, defaults.connectionsCheckingInterval, 'ms'),
    maxHeaderSize: positiveIntOrNull('maxHeaderSize', o.maxHeaderSize, null, 'bytes'),
    proxy,
    handlerTimeout: positiveIntOrNull('handlerTimeout', o.handlerTimeout, null, 'ms'),
    minDataRate: resolveMinDataRate(o.minDataRate)
  }
}

/** A warning: legal settings that go wrong in production, each with a stable code. */
export interface TimeoutWarning { code: string, message: string }

/** warningsFor lists what is risky about a resolved configuration (pure: tested directly). */
export function warningsFor (r: Resolved, serverHandlerTimeout: number): TimeoutWarning[] {
  const out: TimeoutWarning[] = []
  if (r.requestTimeout === 0) {
    out.push({
      code: 'FLL_WARN_REQUEST_TIMEOUT_OFF',
      message: 'requestTimeout is 0: a client may trickle a request body forever and hold its connection (slowloris); set a deadline such as 120000 ms'
    })
  }
  if (r.headersTimeout === 0) {
    out.push({
      code: 'FLL_WARN_HEADERS_TIMEOUT_OFF',
      message: 'headersTimeout is 0: a client may send headers byte by byte forever; set a deadline such as 20000 ms'
    })
  }
  if (r.keepAliveTimeout === 0) {
    out.push({
      code: 'FLL_WARN_KEEP_ALIVE_OFF',
      message: 'keepAliveTimeout is 0: idle keep-alive connections are never timed out and pile up; set it above your proxy\'s idle timeout'
    })
  }
  if (r.proxy !== null && r.keepAliveTimeout > 0 && r.keepAliveTimeout <= r.proxy.idleTimeout) {
    out.push({
      code: 'FLL_WARN_KEEP_ALIVE_BELOW_PROXY',
      message: `keepAliveTimeout (${r.keepAliveTimeout} ms) is not above the proxy's idle timeout (${r.proxy.idleTimeout} ms): ` +
        `the proxy may reuse a connection this server is closing and answer 502; use at least ${keepAliveAbove(r.proxy.idleTimeout)} ms`
    })
  }
  // Only a proxy that streams request bodies lets a slow upload run into its response timeout:
  // one that buffers them (nginx by default) sends us the body at once, or not at all.
  if (r.proxy !== null && !r.proxy.requestBuffering && r.requestTimeout > r.proxy.responseTimeout) {
    out.push({
      code: 'FLL_WARN_REQUEST_TIMEOUT_ABOVE_PROXY',
      message: `requestTimeout (${r.requestTimeout} ms) is above the proxy's response timeout (${r.proxy.responseTimeout} ms): ` +
        'a slow upload is cut by the proxy with a 504 before this server can answer 408'
    })
  }
  const handlerTimeout = r.handlerTimeout ?? (serverHandlerTimeout > 0 ? serverHandlerTimeout : null)
  if (r.proxy !== null && handlerTimeout !== null && handlerTimeout >= r.proxy.responseTimeout) {
    out.push({
      code: 'FLL_WARN_HANDLER_TIMEOUT_ABOVE_PROXY',
      message: `handlerTimeout (${handlerTimeout} ms) is not below the proxy's response timeout (${r.proxy.responseTimeout} ms): ` +
        'the proxy answers 504 before the handler deadline fires'
    })
  }
  const deadlines = [r.headersTimeout, r.requestTimeout].filter((t) => t > 0)
  if (deadlines.length > 0 && r.connectionsCheckingInterval > Math.min(...deadlines) / 4) {
    out.push({
      code: 'FLL_WARN_CHECK_INTERVAL_COARSE',
      message: `connectionsCheckingInterval (${r.connectionsCheckingInterval} ms) is more than a quarter of the smallest deadline ` +
        `(${Math.min(...deadlines)} ms): headers and request deadlines may fire up to ${r.connectionsCheckingInterval} ms late`
    })
  }
  if (r.handlerTimeout !== null && serverHandlerTimeout > 0) {
    out.push({
      code: 'FLL_WARN_HANDLER_TIMEOUT_TWICE',
      message: `both Fastify's handlerTimeout (${serverHandlerTimeout} ms) and this plugin's (${r.handlerTimeout} ms) are set: ` +
        'routes without their own get this plugin\'s; set only one'
    })
  }
  return out
}

/** isLongLivedRoute tells whether a route streams for a long time and so gets no default handler deadline. */
export function isLongLivedRoute (route: RouteOptions & { sse?: unknown, websocket?: unknown }): boolean {
  const config = route.config as { longLived?: unknown } | undefined
  return Boolean(route.sse) || Boolean(route.websocket) || config?.longLived === true
}

// What Fastify's own client error handler writes for a request timeout, so a slow upload
// looks to clients exactly like Node's requestTimeout.
const slowUploadResponse = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n' +
  'Content-Length: 76\r\n\r\n{"error":"Request Timeout","message":"Request body too slow","statusCode":408}'

/** Meter is the sweep's memory of one connection's current response. */
class Meter {
  flushed = 0
  uploading = false
  backedUp = false
  uploadMs = 0
  uploadBytes = 0
  downloadMs = 0
  downloadBytes = 0
  closing = false

  constructor (readonly response: object | null, public at: number, public read: number) {}
}

/**
 * createSweep returns the minimum-data-rate check. A stretch between two sweeps counts only
 * when the transfer was pending at both ends: an upload still incomplete and being read, or a
 * response with bytes queued that the client has not taken. A fast client never stays queued,
 * and a server with nothing to send is never blamed on the client.
 */
function createSweep (fastify: FastifyInstance, rates: NonNullable<EffectiveTimeouts['minDataRate']>): () => void {
  const meters = new WeakMap<Socket, Meter>()
  const log = fastify.log

  function closeSlow (info: ConnectionInfo, m: Meter, kind: 'upload' | 'download', rate: number, min: number): void {
    const socket = info.socket
    if (m.closing) { socket.destroy(); return } // it did not go away after the last sweep
    m.closing = true
    fastify.connections.recordSlowClient(kind)
    log.info({ remoteAddress: socket.remoteAddress, url: info.request?.url, bytesPerSecond: Math.floor(rate), minimum: min },
      `fastify-long-lived: closed a connection whose ${kind} was below the minimum data rate`)
    const response = info.response
    if (kind === 'upload' && response !== null && !response.headersSent && socket.writable) {
      socket.end(slowUploadResponse, () => { socket.destroy() })
    } else {
      socket.destroy()
    }
  }

  function measure (info: ConnectionInfo, now: number): void {
    if (info.inFlight === 0 || info.session !== null || info.streams > 0) return // streams have their own policy
    const socket = info.socket
    let m = meters.get(socket)
    if (m === undefined || m.response !== info.response) {
      m = new Meter(info.response, now, socket.bytesRead)
      meters.set(socket, m)
    }
    const req = info.request
    const uploading = req !== null && !req.complete && req.readableFlowing === true
    const queued = socket.writableLength
    const flushed = socket.bytesWritten - queued
    const backedUp = queued > 0
    const elapsed = now - m.at
    if (uploading && m.uploading) {
      m.uploadMs += elapsed
      m.uploadBytes += socket.bytesRead - m.read
    }
    if (backedUp && m.backedUp) {
      m.downloadMs += elapsed
      m.downloadBytes += flushed - m.flushed
    }
    m.at = now
    m.read = socket.bytesRead
    m.flushed = flushed
    m.uploading = uploading
    m.backedUp = backedUp
    const up = rates.request
    if (up !== null && m.uploadMs >= up.grace) {
      const rate = m.uploadBytes * 1e3 / m.uploadMs
      if (rate < up.bytesPerSecond) { closeSlow(info, m, 'upload', rate, up.bytesPerSecond); return }
    }
    const down = rates.response
    if (down !== null && m.downloadMs >= down.grace) {
      const rate = m.downloadBytes * 1e3 / m.downloadMs
      if (rate < down.bytesPerSecond) closeSlow(info, m, 'download', rate, down.bytesPerSecond)
    }
  }

  return () => {
    const now = performance.now()
    fastify.connections.forEach((info) => { measure(info, now) })
  }
}

// Fastify's server options that this plugin replaces, with Fastify's defaults and our names.
const fastifyTimeoutOptions = [
  ['connectionTimeout', 0, 'socketTimeout'],
  ['keepAliveTimeout', 72e3, 'keepAliveTimeout'],
  ['requestTimeout', 0, 'requestTimeout'],
  ['maxRequestsPerSocket', 0, 'maxRequestsPerSocket']
] as const

/** overriddenFastifyOptions lists the Fastify options the user changed from their defaults that our values replace. */
function overriddenFastifyOptions (config: Record<string, unknown>, effective: EffectiveTimeouts): Array<[string, string]> {
  const out: Array<[string, string]> = []
  for (const [name, fastifyDefault, ours] of fastifyTimeoutOptions) {
    const given = config[name] ?? fastifyDefault
    if (given !== fastifyDefault && given !== effective[ours]) out.push([name, `${ours} (${effective[ours]})`])
  }
  return out
}

// Runtime properties of http.Server that @types/node does not declare.
type NodeHttpServer = http.Server & { connectionsCheckingInterval: number, maxHeaderSize?: number }

function applyToServer (fastify: FastifyInstance, r: Resolved): EffectiveTimeouts {
  const server = fastify.server as NodeHttpServer
  const isHttp1 = server instanceof http.Server // https.Server extends http.Server; http2 servers do not
  if (isHttp1) {
    server.headersTimeout = r.headersTimeout
    server.requestTimeout = r.requestTimeout
    server.keepAliveTimeout = r.keepAliveTimeout
    server.maxRequestsPerSocket = r.maxRequestsPerSocket
    server.connectionsCheckingInterval = r.connectionsCheckingInterval
  }
  server.setTimeout(r.socketTimeout)
  if (r.maxConnections !== null) server.maxConnections = r.maxConnections

  const maxHeaderSize = isHttp1 ? (server.maxHeaderSize ?? http.maxHeaderSize) : null
  if (r.maxHeaderSize !== null && maxHeaderSize !== null && r.maxHeaderSize !== maxHeaderSize) {
    throw new FLL_ERR_MAX_HEADER_SIZE(r.maxHeaderSize, maxHeaderSize)
  }
  return Object.freeze({
    headersTimeout: isHttp1 ? server.headersTimeout : null,
    requestTimeout: isHttp1 ? server.requestTimeout : null,
    keepAliveTimeout: isHttp1 ? server.keepAliveTimeout : null,
    socketTimeout: server.timeout,
    maxRequestsPerSocket: isHttp1 ? server.maxRequestsPerSocket : null,
    maxConnections: Number.isFinite(server.maxConnections) && server.maxConnections > 0 ? server.maxConnections : null,
    connectionsCheckingInterval: isHttp1 ? server.connectionsCheckingInterval : null,
    maxHeaderSize,
    handlerTimeout: r.handlerTimeout,
    proxy: r.proxy === null ? null : Object.freeze({ ...r.proxy }),
    minDataRate: r.minDataRate
  })
}

async function timeoutsPlugin (fastify: FastifyInstance, opts: TimeoutsOptions): Promise<void> {
  const r = resolveOptions(opts)
  // handlerTimeout is in initialConfig since Fastify 5.8, not yet in its types.
  const serverHandlerTimeout = (fastify.initialConfig as { handlerTimeout?: number }).handlerTimeout ?? 0
  const effective = applyToServer(fastify, r)
  fastify.decorate('timeouts', effective)

  for (const w of warningsFor(r, serverHandlerTimeout)) fastify.log.warn({ code: w.code }, `fastify-long-lived: ${w.message}`)
  for (const [fastifyName, ours] of overriddenFastifyOptions(fastify.initialConfig, effective)) {
    fastify.log.warn({ code: 'FLL_WARN_FASTIFY_OPTION_OVERRIDDEN' },
      `fastify-long-lived: Fastify's ${fastifyName} option is replaced by the timeouts plugin's ${ours}: set it in the plugin's options instead`)
  }

  if (r.handlerTimeout !== null) {
    const deadline = r.handlerTimeout
    fastify.addHook('onRoute', (route) => {
      if (route.handlerTimeout === undefined && !isLongLivedRoute(route)) route.handlerTimeout = deadline
    })
  }

  if (r.minDataRate !== null) {
    const sweep = createSweep(fastify, r.minDataRate)
    let timer: NodeJS.Timeout | null = null
    fastify.addHook('onListen', async () => {
      if (timer !== null) return
      // One unref'd timer for the whole server, re-armed only after a sweep finished.
      timer = setTimeout(function tick () {
        sweep()
        timer?.refresh()
      }, r.minDataRate!.interval)
      timer.unref()
    })
    fastify.addHook('onClose', async () => {
      if (timer !== null) clearTimeout(timer)
      timer = null
    })
  }

  fastify.addHook('onReady', async () => {
    fastify.log.info({ timeouts: effective }, 'fastify-long-lived: effective server timeouts')
  })
}

export default fp(timeoutsPlugin, {
  name: 'fastify-long-lived/timeouts',
  fastify: '5.x',
  dependencies: ['fastify-long-lived/connections']
})
export { timeoutsPlugin }
