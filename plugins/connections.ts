/**
 * connections: the registry of every socket (and HTTP/2 session) the server holds, and of
 * every long-lived stream riding on one. The SSE, timeouts and shutdown plugins stand on it.
 *
 * Cost on the hot path is one Map lookup, two counters and one `close` listener per request:
 * no timers, no per-request objects of our own.
 */
import type { FastifyInstance, FastifyReply } from 'fastify'
import fp from 'fastify-plugin'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Http2ServerRequest, Http2ServerResponse, Http2Session, ServerHttp2Session } from 'node:http2'
import type { Socket } from 'node:net'
import { Server as TlsServer } from 'node:tls'
import { checkMetricsOption, registerMetrics, type MetricSpec, type MetricsOption } from './metrics.js'
import { fastifyRegisterKeys, invalid, isPlainObject, objectOption, positiveInt, positiveIntOrNull } from './options.js'

/** StreamHandle is what a long-lived response gives the registry so it can be ended gracefully. */
export interface StreamHandle {
  /**
   * close ends the stream gracefully (an SSE stream sends a final event with a `retry` hint,
   * then ends the response). It may return a promise that settles once the stream has ended.
   */
  close (reason: string): void | Promise<void>
  /**
   * abort, if present, is called when the stream's connection closed and its response never
   * will: an HTTP/1.1 response pipelined behind another one never gets the socket, nor a
   * 'close' event. Release whatever the stream holds (as if its client had left).
   */
  abort? (): void
}

/** StreamRegistration is returned by `trackStream`; `untrack()` removes the stream early. */
export interface StreamRegistration {
  untrack (): void
}

/** ConnectionInfo is a live, read-only view of one tracked connection. */
export interface ConnectionInfo {
  /** The TCP (or TLS) socket. For HTTP/2 it is the session's socket. */
  readonly socket: Socket
  /** The HTTP/2 session, or null for HTTP/1.x. */
  readonly session: ServerHttp2Session | null
  /** When the connection was accepted (ms since the epoch). */
  readonly openedAt: number
  /** Requests received on this connection so far. */
  readonly requests: number
  /** Requests received whose response has not finished yet (streams included). */
  readonly inFlight: number
  /** The most recent HTTP/1.x request in flight, or null. */
  readonly request: IncomingMessage | null
  /** The response of `request`, or null. */
  readonly response: ServerResponse | null
  /** Long-lived streams currently carried by this connection. */
  readonly streams: number
  /** Bytes read from / written to the socket so far (written includes what is still queued). */
  readonly bytesRead: number
  readonly bytesWritten: number
}

/** ConnectionStats are the registry's numbers, all plain integers except `reusedRatio`. */
export interface ConnectionStats {
  /** Open connections (HTTP/1.x sockets and HTTP/2 sessions). */
  open: number
  /** Open connections with no request in flight. */
  idle: number
  /** Open connections with at least one request in flight (long-lived streams included). */
  active: number
  /** Open long-lived streams (e.g. SSE). */
  streams: number
  /** Requests in flight across all connections. */
  inFlight: number
  /** Connections accepted since the plugin was registered. */
  connectionsTotal: number
  /** Requests received since the plugin was registered. */
  requestsTotal: number
  /** Requests that arrived on a connection that had already served one (keep-alive reuse). */
  reusedRequestsTotal: number
  /** reusedRequestsTotal / requestsTotal, 0 when no request was served yet. */
  reusedRatio: number
  /** Connections closed because the client sent a request body too slowly (timeouts' minDataRate). */
  slowUploadsClosed: number
  /** Connections closed because the client read a response too slowly (timeouts' minDataRate). */
  slowDownloadsClosed: number
  /** Streams that met their slow-consumer policy (SSE maxBufferedBytes). */
  slowConsumers: number
  /** Whether setDraining() was called. */
  draining: boolean
}

/** SlowClientKind names the counters of `recordSlowClient`. */
export type SlowClientKind = 'upload' | 'download' | 'consumer'

/** Counts returned by the drain primitives. */
export interface DrainCounts {
  setDraining: { marked: number }
  closeIdle: { closed: number }
  closeStreams: { closed: number, failed: number, cut: number }
  waitForIdle: { idle: boolean, active: number, streams: number }
  destroyAll: { destroyed: number }
}

/** The registry, decorated as `fastify.connections`. */
export interface ConnectionRegistry {
  /** stats returns the registry's numbers as a fresh plain object. */
  stats (): ConnectionStats
  /** forEach calls `fn` with a live view of each open connection. Do not keep the views. */
  forEach (fn: (info: ConnectionInfo) => void): void
  /**
   * trackStream marks the connection carrying `target` as holding a long-lived stream, with a
   * `handle` that can end it gracefully. The stream is dropped when its response or its
   * connection closes, or when `untrack()` is called. Tracking a response again replaces its
   * handle (the earlier registration's `untrack()` then does nothing). It costs a Map entry and
   * a small record, no listener of its own.
   */
  trackStream (target: FastifyReply | ServerResponse | Http2ServerResponse, handle: StreamHandle): StreamRegistration
  /** recordSlowClient counts a connection or stream closed by a slow-client policy. */
  recordSlowClient (kind: SlowClientKind): void
  /** Whether setDraining() was called. */
  readonly draining: boolean
  /**
   * setDraining switches the registry to draining: from now on every HTTP/1.x response carries
   * `Connection: close` (responses whose headers are not sent yet included), and each
   * connection is closed as soon as its last in-flight response finishes. Idempotent.
   */
  setDraining (): DrainCounts['setDraining']
  /**
   * closeIdle closes every connection with no request in flight and no stream: keep-alive
   * HTTP/1.x sockets through Node's `server.closeIdleConnections()`, HTTP/2 sessions with a
   * GOAWAY, and (unless `includeNew` is false) sockets that have not sent a byte yet.
   */
  closeIdle (opts?: { includeNew?: boolean }): DrainCounts['closeIdle']
  /**
   * closeStreams calls each stream's `close(reason)`, spread evenly over `window` ms so that
   * clients do not all reconnect in the same instant. Each stream then has `timeout` ms to end
   * (its client to take the final event and what was queued before it); a stream still open
   * then is destroyed, counted in `cut` and as a slow consumer: a client that stopped reading
   * cannot hold a shutdown. Resolves when every stream has ended or been destroyed, so within
   * `window + timeout` ms (+ the time one `close()` call itself takes).
   * @default window 0, timeout 1000 (closeStreamsTimeout)
   */
  closeStreams (opts?: { window?: number, reason?: string, timeout?: number }): Promise<DrainCounts['closeStreams']>
  /**
   * waitForIdle resolves once no request is in flight and no stream is open, or once
   * `timeout` ms have passed, whichever comes first; `idle` tells which.
   */
  waitForIdle (timeout: number): Promise<DrainCounts['waitForIdle']>
  /** destroyAll destroys every open connection at once. */
  destroyAll (): DrainCounts['destroyAll']
  /**
   * closeStreamsOnClose makes the registry end every open stream in `preClose`, so that
   * `fastify.close()` never waits on one. A plugin that ends them itself during close (the
   * shutdown plugin) sets it to false. @default true
   */
  closeStreamsOnClose: boolean
}

/** Options of the connections plugin. */
export interface ConnectionsOptions {
  /**
   * metrics exposes the registry's numbers as Prometheus metrics named `fastify_long_lived_*`
   * on the given prom-client registry (read at scrape time: no cost per request). Needs the
   * optional peer `prom-client`. null or absent: no metrics.
   */
  metrics?: MetricsOption | null
  /**
   * maxConcurrentStreams caps the streams one HTTP/2 session may have open at once, where the
   * server kept Node's default (2^32 - 1: no limit); a value set in Fastify's `http2` settings is
   * kept. What one HTTP/2 connection can hold for a client that does not read is then at most
   * maxConcurrentStreams × the sse plugin's maxBufferedBytes (its per-stream limit); without a
   * cap, a client could open streams without end. null: Node's default. @default 100
   */
  maxConcurrentStreams?: number | null
}

export type { PromRegistryLike } from './metrics.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The connection registry of fastify-long-lived (added by its connections plugin). */
    connections: ConnectionRegistry
  }
}

/** Connection is the registry's record of one socket or HTTP/2 session. */
class Connection implements ConnectionInfo {
  readonly socket: Socket
  readonly session: ServerHttp2Session | null
  readonly openedAt = Date.now()
  requests = 0
  inFlight = 0
  request: IncomingMessage | null = null
  response: ServerResponse | null = null
  streams = 0

  constructor (socket: Socket, session: ServerHttp2Session | null) {
    this.socket = socket
    this.session = session
  }

  get bytesRead (): number { return this.socket.bytesRead }
  get bytesWritten (): number { return this.socket.bytesWritten }

  /** closed: the socket (or the session) is destroyed. */
  get closed (): boolean {
    return this.session === null ? this.socket.destroyed : this.session.destroyed
  }

  /**
   * ending: a polite close was asked for and is under way (an HTTP/2 session that sent its
   * GOAWAY and waits for its streams). Not closed: a stuck stream can hold it forever.
   */
  get ending (): boolean {
    return this.session === null ? this.socket.writableEnded : this.session.closed
  }

  /** end closes the connection politely: FIN after what is queued, or GOAWAY for HTTP/2. */
  end (): void {
    if (this.session !== null) this.session.close()
    else this.socket.end()
  }

  /**
   * destroy closes the connection at once. For HTTP/2 the socket goes too: a session whose
   * client reads nothing cannot even send its GOAWAY, and session.destroy() alone waits for
   * that write forever.
   */
  destroy (): void {
    if (this.session === null) {
      this.socket.destroy()
      return
    }
    // session.socket is a proxy that refuses destroy(); the socket itself was marked when it
    // connected (see markRawSocket), and the proxy hands out its non-function properties
    // (until the session lets go of its socket: read it first).
    const raw = this.session.destroyed ? undefined : (this.socket as Socket & { [kRawSocket]?: Socket })[kRawSocket]
    this.session.destroy()
    if (raw !== undefined && !raw.destroyed) raw.destroy()
  }
}

// On an HTTP/2 server, the socket under a session, set on itself when it connects.
const kRawSocket = Symbol('fastify-long-lived.connections.rawSocket')

/** markRawSocket lets a session's Connection reach the socket its proxy hides. */
function markRawSocket (socket: Socket & { [kRawSocket]?: Socket }): void {
  socket[kRawSocket] = socket
}

/** What the registry keeps of a tracked stream. */
interface TrackedStream {
  handle: StreamHandle
  /** Its connection, when the registry knows it. */
  readonly conn: Connection | undefined
  /** Called once when the stream is dropped (closeStreams waits for it). */
  onDrop?: () => void
}

type AnyRequest = IncomingMessage | Http2ServerRequest
type AnyResponse = ServerResponse | Http2ServerResponse

/**
 * closeStreamsTimeout (ms) is how long a stream has, by default, to take its final event once
 * closeStreams() asked it to close: a final event is a few hundred bytes, which a reading client
 * takes in far less; one that takes nothing in a second has stopped reading.
 */
export const closeStreamsTimeout = 1000

/** destroyResponse ends a response at once: its HTTP/2 stream is reset, an HTTP/1.x socket destroyed. */
function destroyResponse (res: AnyResponse): void {
  if (res.req.httpVersionMajor === 2) (res as Http2ServerResponse).stream.destroy()
  else (res as ServerResponse).destroy()
}

const knownOptions = ['metrics', 'maxConcurrentStreams'] as const

// Node's default for an HTTP/2 session's SETTINGS_MAX_CONCURRENT_STREAMS: no limit.
const unlimitedStreams = 2 ** 32 - 1

/** createRegistry builds the registry for one server, and the function that detaches it. */
function createRegistry (fastify: FastifyInstance, maxConcurrentStreams: number | null): { registry: ConnectionRegistry, detach: () => void } {
  const server = fastify.server
  // Keyed by what a request can reach: its socket for HTTP/1.x, its session for HTTP/2.
  const conns = new Map<Socket | Http2Session, Connection>()
  // A stream is dropped when its response closes, by the 'close' listener every request already
  // has (see onRequest), or when its connection closes: tracking one costs a Map entry and a
  // small record, no listener or closure of its own.
  const streams = new Map<AnyResponse, TrackedStream>()
  const waiters = new Set<() => void>()
  let inFlight = 0
  let active = 0
  let connectionsTotal = 0
  let requestsTotal = 0
  let reusedRequestsTotal = 0
  let slowUploadsClosed = 0
  let slowDownloadsClosed = 0
  let slowConsumers = 0
  let draining = false
  let detached = false

  /** connectionOf finds the connection a response travels on: its socket, or its HTTP/2 session. */
  function connectionOf (res: AnyResponse): Connection | undefined {
    const key = res.req.httpVersionMajor === 2 ? (res as Http2ServerResponse).stream.session : (res as ServerResponse).req.socket
    return key === undefined || key === null ? undefined : conns.get(key)
  }

  function add (key: Socket | Http2Session, conn: Connection): void {
    conns.set(key, conn)
    connectionsTotal++
  }

  function remove (key: Socket | Http2Session): void {
    const conn = conns.get(key)
    if (conn === undefined) return
    conns.delete(key)
    if (conn.inFlight > 0) {
      inFlight -= conn.inFlight
      active--
      conn.inFlight = 0
    }
    // Node closes the response in flight with its socket (and every stream of an HTTP/2
    // session), and its 'close' drops the stream; but an HTTP/1.1 response still queued behind
    // another one (pipelined) never gets a 'close': drop what is left here (or close() would
    // wait for it), and tell the stream. conn.response is the response of the connection's
    // latest request: the stream itself, unless others were pipelined behind it.
    if (conn.session === null && conn.streams > 0) {
      if (conn.response !== null) dropDead(conn.response)
      for (const [res, s] of streams) {
        if (conn.streams === 0) break
        if (s.conn === conn) dropDead(res)
      }
    }
    notifyIfIdle()
  }

  /** dropDead drops the stream of `res`, whose connection is gone, and aborts it if its response will never close. */
  function dropDead (res: AnyResponse): void {
    const s = streams.get(res)
    if (s === undefined) return
    dropStream(res)
    if (s.conn?.session === null && (res as ServerResponse).socket == null) abortQuietly(s.handle)
  }

  function abortQuietly (handle: StreamHandle): void {
    try {
      handle.abort?.()
    } catch (err) {
      fastify.log.warn({ err }, 'fastify-long-lived: a stream failed to abort')
    }
  }

  // Shared listeners (`this` is the socket or session): no closure per connection.
  function onConnectionClose (this: Socket | Http2Session): void { remove(this) }

  function onSocket (socket: Socket): void {
    if (detached) return
    add(socket, new Connection(socket, null))
    // 'close' fires once, so `on` is enough (and avoids once's wrapper).
    socket.on('close', onConnectionClose)
  }

  function onTlsSocket (socket: Socket & { alpnProtocol?: string | false }): void {
    // An HTTP/2 secure server also emits 'secureConnection' for its h2 sockets: those are
    // tracked through their session instead.
    if (socket.alpnProtocol === 'h2') markRawSocket(socket)
    else onSocket(socket)
  }

  function onSession (session: ServerHttp2Session): void {
    if (detached) return
    if (maxConcurrentStreams !== null && session.localSettings.maxConcurrentStreams === unlimitedStreams) {
      session.settings({ maxConcurrentStreams })
    }
    add(session, new Connection(session.socket as Socket, session))
    session.on('close', onConnectionClose)
  }

  function onRequest (req: AnyRequest, res: AnyResponse): void {
    const conn = connectionOf(res)
    requestsTotal++
    if (conn === undefined) return // a request injected by another path, or after detach
    if (conn.requests++ > 0) reusedRequestsTotal++
    if (conn.inFlight++ === 0) active++
    inFlight++
    if (req.httpVersionMajor === 2) {
      // An HTTP/2 stream forgets its session once closed, so remember the connection here.
      res.on('close', () => {
        dropStream(res)
        responseDone(conn, res)
      })
      return
    }
    conn.request = req as IncomingMessage
    conn.response = res as ServerResponse
    if (draining) (res as ServerResponse).setHeader('connection', 'close')
    // 'close' fires exactly once per response, so `on` is enough (and avoids once's wrapper).
    res.on('close', onResponseClose)
  }

  // `this` is an HTTP/1.x response: one shared function, no closure per request.
  function onResponseClose (this: ServerResponse): void {
    dropStream(this)
    const conn = conns.get(this.req.socket)
    if (conn !== undefined) responseDone(conn, this)
  }

  function responseDone (conn: Connection, res: AnyResponse): void {
    if (conn.inFlight === 0) return // its connection already closed and was counted then
    inFlight--
    if (--conn.inFlight === 0) {
      active--
      conn.request = null
      conn.response = null
      // While draining, a connection is closed as soon as its last response is done. A
      // response that started before draining still said keep-alive: this is the moment the
      // client would reuse it, so it is closed now rather than left to the keep-alive timer.
      if (draining && conn.streams === 0 && !conn.closed && !conn.ending) conn.end()
    } else if (conn.response === res) {
      conn.request = null
      conn.response = null
    }
    notifyIfIdle()
  }

  /**
   * destroyOne destroys a stream's response and forgets the stream now: its 'close' comes a
   * moment later, and a closeStreams() in between must not count it again.
   */
  function destroyOne (res: AnyResponse): void {
    destroyResponse(res)
    dropStream(res)
  }

  /** dropStream forgets the stream of `res`, if tracked (and `handle` is its handle, when given). */
  function dropStream (res: AnyResponse, handle?: StreamHandle): void {
    const s = streams.get(res)
    if (s === undefined || (handle !== undefined && s.handle !== handle)) return
    streams.delete(res)
    if (s.conn !== undefined) s.conn.streams--
    s.onDrop?.()
    notifyIfIdle()
  }

  function notifyIfIdle (): void {
    if (waiters.size === 0 || inFlight > 0 || streams.size > 0) return
    for (const wake of waiters) wake()
  }

  function counts (): ConnectionStats {
    return {
      open: conns.size,
      idle: conns.size - active,
      active,
      streams: streams.size,
      inFlight,
      connectionsTotal,
      requestsTotal,
      reusedRequestsTotal,
      reusedRatio: requestsTotal === 0 ? 0 : reusedRequestsTotal / requestsTotal,
      slowUploadsClosed,
      slowDownloadsClosed,
      slowConsumers,
      draining
    }
  }

  const registry: ConnectionRegistry = {
    stats: counts,

    forEach (fn) {
      for (const conn of conns.values()) fn(conn)
    },

    get draining () { return draining },

    trackStream (target, handle) {
      if (target === null || typeof target !== 'object') throw invalid('trackStream(target)', 'a Fastify reply or a server response', target)
      if (handle === null || typeof handle !== 'object' || typeof handle.close !== 'function') {
        throw invalid('trackStream(handle)', 'an object with a close(reason) method', handle)
      }
      const response: AnyResponse = 'raw' in target ? target.raw : target
      const conn = connectionOf(response)
      if (response.req.httpVersionMajor < 2 && (response as ServerResponse).socket == null && response.req.socket?.destroyed === true) {
        // A pipelined response whose connection is already gone: it will never close.
        abortQuietly(handle)
        return { untrack () {} }
      }
      if (response.writableEnded || (conn !== undefined && conn.closed) || (response as ServerResponse).destroyed === true) {
        return { untrack () {} }
      }
      const known = streams.get(response)
      if (known !== undefined) {
        known.handle = handle // tracked again: the new handle replaces the old one
      } else {
        streams.set(response, { handle, conn })
        if (conn !== undefined) conn.streams++
        // Not seen by onRequest (an injected request, one that came before the registry, or one
        // after it detached): no listener of ours drops it, so it gets its own.
        if (conn === undefined || detached) response.once('close', () => { dropStream(response) })
      }
      return { untrack () { dropStream(response, handle) } }
    },

    recordSlowClient (kind) {
      if (kind === 'upload') slowUploadsClosed++
      else if (kind === 'download') slowDownloadsClosed++
      else if (kind === 'consumer') slowConsumers++
      else throw invalid('recordSlowClient(kind)', "'upload', 'download' or 'consumer'", kind)
    },

    setDraining () {
      let marked = 0
      if (!draining) {
        draining = true
        for (const conn of conns.values()) {
          const res = conn.response
          if (res !== null && !res.headersSent) {
            res.setHeader('connection', 'close')
            marked++
          }
        }
      }
      return { marked }
    },

    closeIdle (opts = {}) {
      const includeNew = opts.includeNew ?? true
      let closed = 0
      const h1Idle: Connection[] = []
      for (const conn of conns.values()) {
        if (conn.inFlight > 0 || conn.streams > 0 || conn.closed || conn.ending) continue
        if (conn.session !== null) {
          conn.end() // GOAWAY
          closed++
        } else if (conn.requests === 0 && conn.socket.bytesRead === 0) {
          // A socket that has not sent a byte holds nothing (Node would keep it until headersTimeout).
          if (includeNew) {
            conn.socket.destroy()
            closed++
          }
        } else {
          h1Idle.push(conn)
        }
      }
      // Between two keep-alive requests, Node's own list knows whether the next request's
      // headers have started to arrive (ours learns of a request only once its headers are
      // parsed), so let it pick which of those sockets are really idle.
      if (h1Idle.length > 0) {
        (server as unknown as { closeIdleConnections: () => void }).closeIdleConnections()
        for (const conn of h1Idle) if (conn.socket.destroyed) closed++
      }
      return { closed }
    },

    async closeStreams (opts = {}) {
      if (!isPlainObject(opts)) throw invalid('closeStreams(opts)', 'an object', opts)
      const window = opts.window ?? 0
      const reason = opts.reason ?? 'shutdown'
      const timeout = positiveInt('closeStreams({ timeout })', opts.timeout, closeStreamsTimeout, 'ms')
      if (typeof window !== 'number' || !Number.isSafeInteger(window) || window < 0) {
        throw invalid('closeStreams({ window })', 'an integer >= 0 (ms)', window)
      }
      const list = [...streams]
      let closed = 0
      let failed = 0
      let cut = 0
      const step = list.length > 1 ? window / (list.length - 1) : 0
      const closeOne = async ([response, s]: [AnyResponse, TrackedStream]): Promise<void> => {
        if (streams.get(response) !== s) return // its client left while it waited for its turn
        // The stream has ended once the registry drops it (its response or connection closed),
        // whatever close() returns: a close() that hands a final event to Node returns before
        // the client has it, and one that waits for the client may wait forever.
        const dropped = new Promise<'ended'>((resolve) => { s.onDrop = () => { resolve('ended') } })
        let timer: NodeJS.Timeout | undefined
        const deadline = new Promise<'deadline'>((resolve) => { timer = setTimeout(resolve, timeout, 'deadline') })
        const ending = (async () => { await s.handle.close(reason); return await dropped })()
        try {
          if (await Promise.race([ending, deadline]) === 'ended') {
            closed++
          } else {
            cut++
            slowConsumers++
            destroyOne(response)
          }
        } catch (err) {
          failed++
          fastify.log.warn({ err }, 'fastify-long-lived: a stream failed to close gracefully: destroyed')
          destroyOne(response)
        } finally {
          clearTimeout(timer)
          ending.catch(() => {}) // settled or not, it has been accounted for
        }
      }
      await Promise.all(list.map((s, i) => {
        const delay = Math.round(i * step)
        if (delay === 0) return closeOne(s)
        return new Promise<void>((resolve) => {
          setTimeout(() => { closeOne(s).then(resolve, resolve) }, delay).unref()
        })
      }))
      if (cut > 0) {
        fastify.log.info({ cut, timeout, reason },
          `fastify-long-lived: ${cut} stream(s) did not take its final event within ${timeout} ms (the client stopped reading): destroyed`)
      }
      return { closed, failed, cut }
    },

    waitForIdle (timeout) {
      if (typeof timeout !== 'number' || !Number.isSafeInteger(timeout) || timeout < 0) {
        throw invalid('waitForIdle(timeout)', 'an integer >= 0 (ms)', timeout)
      }
      const result = (): DrainCounts['waitForIdle'] => ({ idle: inFlight === 0 && streams.size === 0, active: inFlight, streams: streams.size })
      if (inFlight === 0 && streams.size === 0) return Promise.resolve(result())
      return new Promise((resolve) => {
        const done = (): void => {
          clearTimeout(timer)
          waiters.delete(done)
          resolve(result())
        }
        const timer = setTimeout(done, timeout)
        timer.unref()
        waiters.add(done)
      })
    },

    closeStreamsOnClose: true,

    destroyAll () {
      let destroyed = 0
      for (const conn of [...conns.values()]) {
        if (conn.closed) continue
        conn.destroy()
        destroyed++
      }
      return { destroyed }
    }
  }

  const tls = server instanceof TlsServer
  const h2 = fastify.initialConfig.http2 === true
  if (h2) server.on('session', onSession)
  if (tls) server.on('secureConnection', onTlsSocket)
  else server.on('connection', h2 ? markRawSocket : onSocket)
  server.prependListener('request', onRequest)

  function detach (): void {
    detached = true
    server.removeListener('session', onSession)
    server.removeListener('secureConnection', onTlsSocket)
    server.removeListener('connection', onSocket)
    server.removeListener('connection', markRawSocket)
    server.removeListener('request', onRequest)
    for (const wake of waiters) wake()
  }

  return { registry, detach }
}

/** The registry's numbers as Prometheus metrics (`fastify_long_lived_*`). */
const registryMetrics: Array<MetricSpec<ConnectionStats>> = [
  { type: 'gauge', name: 'connections_open', help: 'Open connections (HTTP/1.x sockets and HTTP/2 sessions)', read: (s) => s.open },
  { type: 'gauge', name: 'connections_idle', help: 'Open connections with no request in flight', read: (s) => s.idle },
  { type: 'gauge', name: 'connections_active', help: 'Open connections with a request in flight', read: (s) => s.active },
  { type: 'gauge', name: 'streams_open', help: 'Open long-lived streams (SSE)', read: (s) => s.streams },
  { type: 'gauge', name: 'requests_in_flight', help: 'Requests whose response has not finished', read: (s) => s.inFlight },
  { type: 'gauge', name: 'draining', help: '1 while the server is draining, else 0', read: (s) => (s.draining ? 1 : 0) },
  { type: 'counter', name: 'connections_total', help: 'Connections accepted', read: (s) => s.connectionsTotal },
  { type: 'counter', name: 'requests_total', help: 'Requests received', read: (s) => s.requestsTotal },
  { type: 'counter', name: 'reused_requests_total', help: 'Requests received on an already used keep-alive connection', read: (s) => s.reusedRequestsTotal },
  { type: 'counter', name: 'slow_uploads_closed_total', help: 'Connections closed for sending a request body below the minimum data rate', read: (s) => s.slowUploadsClosed },
  { type: 'counter', name: 'slow_downloads_closed_total', help: 'Connections closed for reading a response below the minimum data rate', read: (s) => s.slowDownloadsClosed },
  { type: 'counter', name: 'slow_consumers_total', help: 'Streams that met their slow-consumer policy', read: (s) => s.slowConsumers }
]

function validate (opts: unknown): ConnectionsOptions & { maxConcurrentStreams: number | null } {
  const o = objectOption('', opts, [...knownOptions, ...fastifyRegisterKeys])
  checkMetricsOption(o.metrics)
  return { ...o, maxConcurrentStreams: positiveIntOrNull('maxConcurrentStreams', o.maxConcurrentStreams, 100, 'streams per HTTP/2 session') }
}

async function connectionsPlugin (fastify: FastifyInstance, opts: ConnectionsOptions): Promise<void> {
  const options = validate(opts)
  const { registry, detach } = createRegistry(fastify, options.maxConcurrentStreams)
  fastify.decorate('connections', registry)
  if (options.metrics != null) {
    const unregister = await registerMetrics(options.metrics, '', registryMetrics, () => [['', registry.stats()]])
    fastify.addHook('onClose', async () => { unregister() })
  }
  // Streams are long-lived by design: without this, server.close() would wait for them forever
  // (the @fastify/sse #57 hang). The shutdown plugin closes them earlier, spread over a window.
  // Fastify times preClose hooks out at its pluginTimeout (a timed-out hook fails the close):
  // the streams' deadline stays well inside it.
  const { pluginTimeout } = fastify.initialConfig as { pluginTimeout?: number }
  const timeout = pluginTimeout !== undefined && pluginTimeout > 0 ? Math.max(1, Math.min(closeStreamsTimeout, Math.floor(pluginTimeout / 2))) : closeStreamsTimeout
  fastify.addHook('preClose', async () => {
    if (registry.closeStreamsOnClose) await registry.closeStreams({ reason: 'server closing', timeout })
  })
  fastify.addHook('onClose', async () => { detach() })
}

export default fp(connectionsPlugin, {
  name: 'fastify-long-lived/connections',
  fastify: '5.x'
})
export { connectionsPlugin }
