/**
 * stream: one open Server-Sent Events response. It owns the headers, the hijack, a bounded
 * queue with backpressure, the heartbeat, the AbortSignal, and the close with a final event.
 *
 * Delivery: events written during one turn of the event loop are queued as encoded Buffers (a
 * channel's events as the turn's shared Batch) and written to the socket as one write when the
 * turn ends (the app's Flusher), so a burst, a replay or a fast iterator costs one `write()`
 * instead of one per event, and a lone event still leaves within about a millisecond. What waits
 * for the client (our queue plus Node's) is bounded by `maxBufferedBytes`; past it, the
 * slow-consumer policy applies.
 */
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import { ServerResponse } from 'node:http'
import type { Http2ServerResponse } from 'node:http2'
import { FLL_ERR_SSE_CLOSED, FLL_ERR_SSE_SLOW_CONSUMER } from '../errors.js'
import type { ConnectionRegistry, StreamHandle } from '../connections.js'
import { Batch } from './batch.js'
import { encodeEvent, type Serializer, type SseEvent } from './encoder.js'
import type { Flushable, Flusher } from './flusher.js'
import type { HeartbeatTarget, Heartbeats } from './heartbeat.js'

/** What a stream needs to know, resolved by the plugin from its options and the route's. */
export interface StreamSettings {
  heartbeatInterval: number | null
  maxBufferedBytes: number
  onSlowConsumer: 'disconnect' | 'drop'
  retry: number | null
  maxLifetime: number | null
  closeEvent: string
  reconnectDelay: number
  reconnectJitter: number
  serializer: Serializer
  exposeErrors: boolean
  lastEventIdQuery: string | null
}

/** A place in one hub's publish order: `seq` in the numbering of `scope` (the hub's, opaque). */
export interface ReplayPoint {
  readonly scope: object
  readonly seq: number
}

/** Something a stream can subscribe to (a hub channel). */
export interface Subscribable {
  readonly name: string
  /**
   * locate places a Last-Event-ID in its hub's publish order: an id the hub assigned, or the id
   * of an event this channel keeps (a publisher's own). null when this channel cannot place it.
   */
  locate (lastEventId: string): ReplayPoint | null
  /**
   * missed returns the events published after `point` (each with its hub-wide `seq`, so several
   * channels' replays can be merged in publish order), or null when some are lost, or `point`
   * is null or another hub's: the client must reset.
   */
  missed (point: ReplayPoint | null): Array<{ seq: number, buf: Buffer }> | null
  /** attach delivers every new event to `sink` until detach. */
  attach (sink: StreamSink): void
  detach (sink: StreamSink): void
}

/** StreamSink is how a channel hands encoded events to a stream. */
export interface StreamSink {
  /** write queues one encoded event; false if the stream is closed or dropped it. */
  write (buf: Buffer): boolean
  /**
   * writeBatch queues a channel's batch: the events in it now and those added to it until it is
   * sealed. False if the stream is closed or dropped it.
   */
  writeBatch (batch: Batch): boolean
}

/** A value `send()` accepts: one event, a string (sent as data), or an (async) iterable of them. */
export type SseSource = SseEvent | string | AsyncIterable<SseEvent | string> | Iterable<SseEvent | string>

type State = 'new' | 'open' | 'closing' | 'closed'

const heartbeat = Buffer.from(':\n\n')
const headReason = 'HEAD request'

function isIterable (value: unknown): value is AsyncIterable<unknown> | Iterable<unknown> {
  return value !== null && typeof value === 'object' &&
    (typeof (value as AsyncIterable<unknown>)[Symbol.asyncIterator] === 'function' ||
     typeof (value as Iterable<unknown>)[Symbol.iterator] === 'function')
}

/** What all the streams of one app share: the registry, the flusher, the heartbeat timers. */
export interface StreamShared {
  registry: ConnectionRegistry | null
  flusher: Flusher
  heartbeats: Heartbeats
}

type Waiter = { resolve: () => void, reject: (err: Error) => void }

// The stream of a response, for SseStream's listeners, which are shared by all streams.
const kStream = Symbol('fastify-long-lived.sse.responseStream')
type StreamResponse = ServerResponse & { [kStream]?: SseStream }

/** GracefulClose is the registry's handle on a stream: close(reason) is closeGracefully(reason). */
class GracefulClose implements StreamHandle {
  readonly #stream: SseStream
  constructor (stream: SseStream) { this.#stream = stream }
  close (reason: string): Promise<void> { return this.#stream.closeGracefully(reason) }
  abort (): void { abortStream(this.#stream) }
}

// Set by SseStream's static block: ends a stream whose response will never close (see StreamHandle.abort).
let abortStream: (stream: SseStream) => void

/**
 * SseStream is `reply.sse`: the stream of one request, created on first use.
 *
 * An idle stream is kept small (thousands stay open per process): fields used by few streams
 * are created on first use, and once the headers are out the stream lets go of the Fastify
 * reply and request (only the response and the request's logger are kept).
 */
export class SseStream implements StreamSink, Flushable, HeartbeatTarget {
  /** The reply until the headers are sent; null after. */
  #reply: FastifyReply | null
  readonly #log: FastifyBaseLogger
  // Typed as HTTP/1.x; HTTP/2's compat response has the same methods, and the helpers at the
  // end of this file handle where it differs.
  readonly #res: StreamResponse
  readonly #settings: StreamSettings
  readonly #shared: StreamShared
  // Created on first use: most streams never need them, and an idle stream should stay small.
  #abort: AbortController | null = null
  readonly #lastEventId: string | null
  #state: State = 'new'
  /** What waits for the end of the turn, in order: encoded events and channel batches. */
  #pending: Array<Buffer | Batch> | null = null
  /** Bytes in #pending, except the last batch's while it is the tail (it may still grow). */
  #pendingBytes = 0
  /** The last entry of #pending when it is a batch. */
  #tail: Batch | null = null
  #flushScheduled = false
  /** True from a write() that returned false until 'drain': the client has not taken an earlier turn's bytes. */
  #backedUp = false
  #flushWaiters: Waiter[] | null = null
  #drainWaiters: Waiter[] | null = null
  /** Events skipped by the 'drop' policy, and skipped batches whose count may still grow. */
  #dropped = 0
  #droppedBatches: Batch[] | null = null
  #slowLogged = false
  /** performance.now() of the last write, in whole ms (an integer field needs no box of its own). */
  #lastWriteAt = 0
  #heartbeatOn = false
  #lifetimeTimer: NodeJS.Timeout | null = null
  #closeCallbacks: Array<() => void> | null = null
  #iterators: Set<AsyncIterator<unknown> | Iterator<unknown>> | null = null
  /** The channels subscribed to (an array: a stream has one or two; a Set would weigh more). */
  #subscriptions: Subscribable[] | null = null
  #kept = false
  #ended: { promise: Promise<void>, resolve: () => void } | null = null
  #closeReason = 'client disconnected'
  #clientLeft = false
  /** Set when the server cut the connection (slow-consumer policy, a failed write): what was queued was not delivered. */
  #cut = false

  static {
    abortStream = (stream) => { stream.#closed() }
  }

  // The response's listeners, shared by every stream (`this` is the response): no closure per stream.
  static #onClose (this: StreamResponse): void {
    const stream = this[kStream]
    if (stream !== undefined) stream.#closed()
  }

  static #onDrain (this: StreamResponse): void {
    const stream = this[kStream]
    if (stream !== undefined) stream.#drained()
  }

  /** Set on a route that is not a stream route: opening the stream throws it (the route would never end it). */
  readonly #refusal: Error | null

  constructor (request: FastifyRequest, reply: FastifyReply, settings: StreamSettings, shared: StreamShared, refusal: Error | null = null) {
    this.#refusal = refusal
    this.#reply = reply
    this.#log = reply.log
    this.#shared = shared
    this.#res = reply.raw as StreamResponse
    this.#settings = settings
    this.#lastEventId = readLastEventId(request, settings.lastEventIdQuery)
    this.#res[kStream] = this
    // 'close' fires once; #closed removes the listener itself (`on` spares once()'s wrapper).
    this.#res.on('close', SseStream.#onClose)
    if (isDestroyed(this.#res)) this.#closed()
  }

  /** lastEventId is the client's `Last-Event-ID` (or the configured query parameter), else null. */
  get lastEventId (): string | null { return this.#lastEventId }

  /** isConnected is true until the stream is closed or its client leaves. */
  get isConnected (): boolean { return this.#state === 'new' || this.#state === 'open' }

  /** signal aborts when the client leaves or the stream closes: pass it to whatever the source awaits. */
  get signal (): AbortSignal {
    if (this.#abort === null) {
      this.#abort = new AbortController()
      if (this.#state === 'closed') this.#abort.abort(new FLL_ERR_SSE_CLOSED(this.#closeReason))
    }
    return this.#abort.signal
  }

  /** shouldKeepAlive tells whether the stream stays open after the route handler returns. */
  get shouldKeepAlive (): boolean { return this.#kept || (this.#subscriptions?.length ?? 0) > 0 }

  /** Bytes waiting for the client: our queue plus what Node has not yet handed to the socket. */
  get bufferedBytes (): number { return this.#pendingBytes + (this.#tail?.bytes ?? 0) + (this.#res.writableLength ?? 0) }

  /** keepAlive keeps the stream open after the route handler returns (until close() or the client leaves). */
  keepAlive (): void {
    if (this.#refusal !== null) throw this.#refusal
    this.#kept = true
    // With nothing sent, the head goes out when the handler returns (the route's wrapper), or at
    // the end of this turn at the latest: a handler that returns `reply` (a thenable) never
    // settles until the response is done, so its wrapper cannot see it return.
    if (this.#state === 'new') setImmediate(SseStream.#openKept, this)
  }

  static #openKept (stream: SseStream): void {
    const reply = stream.#reply
    // Not if the head went out meanwhile, or the handler sent an ordinary reply instead.
    if (stream.#state === 'new' && reply !== null && !reply.sent && !stream.#res.headersSent) stream.sendHeaders()
  }

  /** #whenEnded resolves once the stream has closed (its promise is made on first demand). */
  #whenEnded (): Promise<void> {
    if (this.#state === 'closed') return Promise.resolve()
    if (this.#ended === null) {
      let done!: () => void
      const promise = new Promise<void>((resolve) => { done = resolve })
      this.#ended = { promise, resolve: done }
    }
    return this.#ended.promise
  }

  /** onClose runs `callback` once when the stream closes, for whatever reason. */
  onClose (callback: () => void): void {
    if (this.#state === 'closed') { queueMicrotask(callback); return }
    (this.#closeCallbacks ??= []).push(callback)
  }

  /**
   * sendHeaders commits the response head now (status from the argument, else reply.code(),
   * else 200); it is called by the first event otherwise. After it, the reply is hijacked.
   */
  sendHeaders (statusCode?: number): void {
    if (this.#state !== 'new') return
    if (this.#refusal !== null) throw this.#refusal
    const reply = this.#reply!
    const res = this.#res
    const headers = reply.getHeaders() as Record<string, string | number | string[] | undefined>
    headers['content-type'] = 'text/event-stream; charset=utf-8'
    headers['cache-control'] ??= 'no-cache, no-transform'
    headers['x-accel-buffering'] ??= 'no'
    delete headers['content-length']
    delete headers['transfer-encoding']
    const http2 = reply.request.raw.httpVersionMajor >= 2
    if (http2) {
      delete headers.connection // connection-specific headers are forbidden in HTTP/2
    } else {
      // Over HTTP/1.x the connection closes after the stream. A connection that carried a stream
      // is a poor candidate for reuse: a proxy keeping upstream connections alive (nginx
      // `keepalive`) would put one the server just ended back in its pool, the server then
      // closes it, and the request the proxy sends on it next fails (a 502 for a POST). Node
      // also keeps the socket for keepAliveTimeout when told `keep-alive`, even after a client's
      // `Connection: close`. A value set with reply.header() is the user's choice and is kept.
      headers.connection ??= 'close'
    }
    // Hijack before writing: from here Fastify no longer owns the response, so its
    // handlerTimeout cannot cut the stream; our own lifetime limits replace it.
    reply.hijack()
    res.writeHead(statusCode ?? reply.statusCode ?? 200, headers as Record<string, string | string[]>)
    const socket = http2 ? null : res.socket
    if (typeof socket?.setNoDelay === 'function') socket.setNoDelay(true) // (inject()'s socket has none)
    this.#state = 'open'
    this.#reply = null // from here the response is all a stream needs
    if (reply.request.method === 'HEAD') {
      this.#end(headReason) // the head is the whole answer: no body, no stream
      return
    }
    res.on('drain', SseStream.#onDrain)
    this.#shared.registry?.trackStream(res, new GracefulClose(this))
    if (this.#state !== 'open') return // its connection was already gone (the registry aborted it)
    if (this.#settings.retry !== null) this.write(encodeEvent({ retry: this.#settings.retry }))
    else res.flushHeaders()
    this.#startTimers()
  }

  /**
   * send writes one event, a string (as data), or every event of an (async) iterable. It
   * resolves once the events were handed to the socket and the socket is not backed up (so
   * awaiting it applies backpressure), and rejects with FLL_ERR_SSE_CLOSED if the stream
   * closes first. An iterable is pulled one event at a time; when the client leaves it is
   * `return()`ed. A source that throws after the headers were sent ends the stream with an
   * `error` event and the error is logged; the promise then resolves.
   */
  async send (source: SseSource): Promise<void> {
    if (!this.isConnected && this.#closeReason === headReason) return // a HEAD request: no body to send
    // (A Buffer is iterable, byte by byte: it goes to the encoder, which says what to do with bytes.)
    if (typeof source !== 'string' && !ArrayBuffer.isView(source) && isIterable(source)) return await this.#pump(source)
    if (!this.isConnected) throw new FLL_ERR_SSE_CLOSED(this.#closeReason)
    const buf = encodeEvent(typeof source === 'string' ? { data: source } : source as SseEvent, this.#settings.serializer)
    await this.#sendBuffer(buf)
  }

  /**
   * subscribe joins hub channels: it replays what the client missed since its Last-Event-ID
   * (in publish order across the channels), or sends `reset` for a channel that can no longer
   * tell, then delivers every new event, until the stream closes. Subscribing keeps the stream open.
   */
  subscribe (channels: Subscribable | Subscribable[]): { replayed: number, reset: boolean } {
    if (!this.isConnected) throw new FLL_ERR_SSE_CLOSED(this.#closeReason)
    this.sendHeaders()
    if (!this.isConnected) return { replayed: 0, reset: false } // a HEAD request
    const subscriptions = this.#subscriptions ??= []
    const list = [...new Set(Array.isArray(channels) ? channels : [channels])].filter((c) => !subscriptions.includes(c))
    const missed: Array<{ seq: number, buf: Buffer }> = []
    let reset = false
    if (this.#lastEventId !== null) {
      // The id is placed once for the whole stream (one of the hub's ids, or a publisher's id
      // kept by one of the channels), and every channel resumes from that same point. A
      // publisher's id kept more than once (reused, or in two channels) is placed at its oldest
      // copy: the client may get an event twice, but never misses one.
      let point: ReplayPoint | null = null
      for (const channel of [...list, ...subscriptions]) {
        const p = channel.locate(this.#lastEventId)
        if (p !== null && (point === null || (p.scope === point.scope && p.seq < point.seq))) point = p
      }
      for (const channel of list) {
        const events = channel.missed(point)
        if (events !== null) {
          missed.push(...events)
        } else {
          reset = true
          this.write(encodeEvent({ event: 'reset', data: { channel: channel.name, lastEventId: this.#lastEventId } }))
        }
      }
      // In publish order across channels, so the client's Last-Event-ID never skips back.
      missed.sort((a, b) => a.seq - b.seq)
      for (const e of missed) this.write(e.buf)
    }
    // Nothing can be published between the replay and the attach: this is all synchronous.
    for (const channel of list) {
      channel.attach(this)
      subscriptions.push(channel)
    }
    return { replayed: missed.length, reset }
  }

  /** close ends the stream after what is queued has been written. Resolves once it has ended. */
  close (): Promise<void> {
    if (this.#state === 'new') this.sendHeaders()
    this.#end('closed by the server')
    return this.#whenEnded()
  }

  /** write queues one encoded event (StreamSink). False if the stream is closed or the event was dropped. */
  write (buf: Buffer): boolean {
    if (this.#state === 'new') this.sendHeaders()
    if (this.#state !== 'open') return false
    // The limit applies while the socket is backed up, i.e. the client has not yet taken what
    // an earlier turn wrote. A burst within one turn says nothing about the client (it goes out
    // as one write when the turn ends anyway), so it is queued whole.
    if (this.#backedUp && this.bufferedBytes + buf.length > this.#settings.maxBufferedBytes) {
      this.#slowConsumer(null)
      return false
    }
    this.#enqueue(buf)
    return true
  }

  /**
   * writeBatch queues a channel's batch (StreamSink). While the socket is backed up, the batch
   * may grow only as far as this stream's limit leaves room (Batch.limit).
   */
  writeBatch (batch: Batch): boolean {
    if (this.#state === 'new') this.sendHeaders()
    if (this.#state !== 'open') return false
    if (this.#backedUp) {
      const room = this.#settings.maxBufferedBytes - this.bufferedBytes
      if (batch.bytes > room) {
        this.#slowConsumer(batch)
        return false
      }
      // Only the tail of #pending can grow, so the room left stays the same until the batch is sealed.
      this.#enqueue(batch)
      if (room < batch.limit) batch.limit = room
      return true
    }
    this.#enqueue(batch)
    return true
  }

  #enqueue (item: Buffer | Batch): void {
    const tail = this.#tail
    if (tail !== null) {
      // Something comes after the batch on this stream: it must take no more events.
      tail.seal()
      this.#pendingBytes += tail.bytes
      this.#tail = null
    }
    (this.#pending ??= []).push(item)
    if (item instanceof Batch) this.#tail = item
    else this.#pendingBytes += item.length
    if (!this.#flushScheduled) {
      this.#flushScheduled = true
      this.#shared.flusher.schedule(this)
    }
  }

  #sendBuffer (buf: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.write(buf)) {
        // Dropped by the 'drop' policy (the route asked for lossy delivery), or a HEAD request (no body to send).
        if (this.isConnected || this.#closeReason === headReason) resolve()
        else reject(new FLL_ERR_SSE_CLOSED(this.#closeReason))
        return
      }
      (this.#flushWaiters ??= []).push({ resolve, reject })
    })
  }

  /**
   * flushNow (Flushable, called by the app's flusher at the end of a turn) hands what is queued to
   * the socket now, unless the socket is backed up (then 'drain' does).
   */
  flushNow (): void {
    this.#flushScheduled = false
    if (this.#state !== 'open' || this.#pending === null) return
    if (this.#backedUp) return // #drained flushes
    this.#writePending()
  }

  /** #writePending hands the whole queue to Node as one write and settles the sends waiting for it. */
  #writePending (): void {
    const pending = this.#pending
    if (pending === null) return
    const data = pending.length === 1 ? bufferOf(pending[0]!) : this.#shared.flusher.join(pending.map(bufferOf))
    this.#pending = null
    this.#pendingBytes = 0
    this.#tail = null
    const res = this.#res
    let ok: boolean
    try {
      ok = res.write(data)
    } catch (err) {
      // Not a client's doing (e.g. a body written to a response that may have none): end the stream.
      this.#log.error({ err }, 'fastify-long-lived: SSE write failed')
      this.#cutOff('write failed', err as Error)
      return
    }
    // Node's http corks the socket at a response's first write in a tick and uncorks it in a
    // nextTick. Uncorking it now makes the syscall happen here, inside the flusher's time budget,
    // instead of in one long run of nextTicks after the slice. (Not res.cork()/uncork() around
    // the write: on Node 24 that emits 'drain' inside uncork(), before write()'s result is known.)
    // Only for HTTP/1.x: an HTTP/2 session's socket is not this stream's.
    if (res instanceof ServerResponse) {
      const socket = res.socket
      if (socket !== null && socket.writableCorked > 0) socket.uncork()
    }
    this.#backedUp = !ok
    this.#lastWriteAt = Math.floor(performance.now())
    const waiters = this.#flushWaiters
    if (waiters === null) return
    this.#flushWaiters = null
    if (ok) for (const w of waiters) w.resolve()
    else (this.#drainWaiters ??= []).push(...waiters)
  }

  /** #drained runs on the response's 'drain': the client took everything. */
  #drained (): void {
    this.#backedUp = false
    const waiters = this.#drainWaiters
    this.#drainWaiters = null
    if (waiters !== null) for (const w of waiters) w.resolve()
    if (this.#droppedBatches !== null) {
      for (const batch of this.#droppedBatches) {
        batch.seal() // what it takes from now on is for the clients that got it
        this.#dropped += batch.count
      }
      this.#droppedBatches = null
    }
    if (this.#dropped > 0 && this.#state === 'open') {
      const count = this.#dropped
      this.#dropped = 0
      this.#enqueue(encodeEvent({ event: 'dropped', data: { count } }))
    }
    if (this.#pending !== null) this.flushNow()
  }

  /** #slowConsumer applies the policy to a backed-up stream over its limit; `batch` is what did not fit, if a batch. */
  #slowConsumer (batch: Batch | null): void {
    const { onSlowConsumer, maxBufferedBytes } = this.#settings
    if (!this.#slowLogged) {
      this.#slowLogged = true
      this.#shared.registry?.recordSlowClient('consumer')
      this.#log.info({ bufferedBytes: this.bufferedBytes, maxBufferedBytes, policy: onSlowConsumer },
        'fastify-long-lived: SSE client reads too slowly')
    }
    if (onSlowConsumer === 'drop') {
      if (batch === null) {
        this.#dropped++
        return
      }
      // A batch's count is final once sealed; until then it is kept (one per channel at most).
      const kept = this.#droppedBatches?.filter((b) => {
        if (!b.sealed) return true
        this.#dropped += b.count
        return false
      }) ?? []
      kept.push(batch)
      this.#droppedBatches = kept
      return
    }
    // Nothing more can reach a client that does not read: cut it, and free what waits for it.
    this.#cutOff('slow consumer', new FLL_ERR_SSE_SLOW_CONSUMER(maxBufferedBytes))
  }

  /** #cutOff destroys the response: what was queued is not delivered. #closed finishes the cleanup. */
  #cutOff (reason: string, err: Error): void {
    this.#closeReason = reason
    this.#cut = true
    this.#state = 'closing' // no more writes
    this.#stopTimers()
    destroy(this.#res, err)
  }

  async #pump (source: AsyncIterable<SseEvent | string> | Iterable<SseEvent | string>): Promise<void> {
    if (!this.isConnected) throw new FLL_ERR_SSE_CLOSED(this.#closeReason)
    const iterator = Symbol.asyncIterator in source
      ? (source as AsyncIterable<SseEvent | string>)[Symbol.asyncIterator]()
      : (source as Iterable<SseEvent | string>)[Symbol.iterator]()
    const iterators = this.#iterators ??= new Set()
    iterators.add(iterator)
    let finished = false // the source is done: it returned or threw (not: an event it gave failed to encode or send)
    try {
      while (this.isConnected) {
        let step: IteratorResult<SseEvent | string>
        try {
          step = await iterator.next()
        } catch (err) {
          finished = true
          throw err
        }
        if (step.done === true) finished = true
        if (step.done === true || !this.isConnected) break
        const value = step.value
        await this.#sendBuffer(encodeEvent(typeof value === 'string' ? { data: value } : value, this.#settings.serializer))
      }
    } catch (err) {
      if (this.#state === 'new') throw err // no byte sent yet: let Fastify answer with an error
      if (this.isConnected) this.#fail(err as Error)
    } finally {
      iterators.delete(iterator)
      // Stopped early by the server (close(), shutdown, maxLifetime, a cut) before the stream's
      // own cleanup could: the source is told to finish, so its `finally` runs.
      if (!finished && this.#iterators === iterators) returnQuietly(iterator)
    }
    // Ended by the server (close(), shutdown, a failed source): done. The client leaving, or
    // being cut as a slow consumer, is not: what the source gave was not all delivered.
    if (this.#clientLeft || this.#cut) throw new FLL_ERR_SSE_CLOSED(this.#closeReason)
  }

  /** #fail ends an open stream because its source threw: an `error` event, then the end. */
  #fail (err: Error): void {
    this.#log.error({ err }, 'fastify-long-lived: SSE source failed')
    const message = this.#settings.exposeErrors ? err.message : 'Internal Server Error'
    this.#enqueue(encodeEvent({ event: 'error', data: { message } }))
    this.#end('source failed')
  }

  /**
   * closeGracefully ends the stream the way the server tells a client to come back later: a
   * final `closeEvent` whose data is `reason`, with `retry` = reconnectDelay + a random jitter,
   * then the end. Used by shutdown (through the registry), maxLifetime and draining.
   */
  closeGracefully (reason: string): Promise<void> {
    if (this.#state === 'new') this.sendHeaders()
    if (this.#state !== 'open') return this.#whenEnded()
    const { closeEvent, reconnectDelay, reconnectJitter } = this.#settings
    const retry = reconnectDelay + Math.floor(Math.random() * (reconnectJitter + 1))
    this.#enqueue(encodeEvent({ event: closeEvent, data: reason, retry }))
    this.#end(reason)
    return this.#whenEnded()
  }

  #end (reason: string): void {
    if (this.#state !== 'open') return
    this.#state = 'closing'
    this.#closeReason = reason
    this.#stopTimers()
    // Hand what is queued to Node now; end() then waits for it to reach the socket.
    this.#writePending()
    if (!this.#cut) this.#res.end() // (cut: the write failed and destroyed the response)
  }

  #startTimers (): void {
    const { heartbeatInterval, maxLifetime } = this.#settings
    if (heartbeatInterval !== null) {
      // Started only once the headers are out: before that there is no stream to keep alive.
      this.#lastWriteAt = Math.floor(performance.now())
      this.#shared.heartbeats.add(this, heartbeatInterval)
      this.#heartbeatOn = true
    }
    if (maxLifetime !== null) {
      // Jittered down by up to 10 %, so streams opened together do not all end together.
      const lifetime = Math.max(1, Math.round(maxLifetime * (1 - Math.random() * 0.1)))
      this.#lifetimeTimer = setTimeout(() => { this.closeGracefully('max lifetime').catch(() => {}) }, lifetime)
      this.#lifetimeTimer.unref()
    }
  }

  #stopTimers (): void {
    if (this.#heartbeatOn) this.#shared.heartbeats.delete(this, this.#settings.heartbeatInterval!)
    if (this.#lifetimeTimer !== null) clearTimeout(this.#lifetimeTimer)
    this.#heartbeatOn = false
    this.#lifetimeTimer = null
  }

  /** heartbeat (HeartbeatTarget, called by the app's heartbeat timer) sends a comment after `silence` ms without a write. */
  heartbeat (now: number, silence: number): void {
    // Skipped while data flows (it is a heartbeat already) and while the socket is backed up
    // (a heartbeat would only pile up behind what the client is not reading).
    if (this.#state === 'open' && now - this.#lastWriteAt >= silence && this.bufferedBytes === 0) this.#enqueue(heartbeat)
  }

  /** #closed runs once, when the response closes: the client left, or the stream ended. */
  #closed (): void {
    if (this.#state === 'closed') return
    const clientLeft = this.#state !== 'closing' || this.#cut
    this.#clientLeft = clientLeft
    this.#state = 'closed'
    this.#stopTimers()
    this.#res.removeListener('drain', SseStream.#onDrain)
    this.#res.removeListener('close', SseStream.#onClose)
    delete this.#res[kStream]
    this.#reply = null
    this.#pending = null
    this.#pendingBytes = 0
    this.#tail = null
    this.#droppedBatches = null
    const err = new FLL_ERR_SSE_CLOSED(this.#closeReason)
    // Ended by the server: everything was handed to Node before end(). Client gone: not delivered.
    for (const w of this.#flushWaiters ?? []) clientLeft ? w.reject(err) : w.resolve()
    for (const w of this.#drainWaiters ?? []) clientLeft ? w.reject(err) : w.resolve()
    this.#flushWaiters = null
    this.#drainWaiters = null
    for (const channel of this.#subscriptions ?? []) channel.detach(this)
    this.#subscriptions = null
    this.#abort?.abort(err)
    // A parked iterator is told to finish; a generator parked in an `await` gets the signal.
    for (const iterator of this.#iterators ?? []) returnQuietly(iterator)
    this.#iterators = null
    if (clientLeft) this.#log.debug('fastify-long-lived: SSE client disconnected')
    for (const callback of this.#closeCallbacks ?? []) {
      try {
        callback()
      } catch (cbErr) {
        this.#log.error({ err: cbErr }, 'fastify-long-lived: an SSE onClose callback threw')
      }
    }
    this.#closeCallbacks = null
    this.#ended?.resolve()
  }
}

// Http2ServerResponse is not a Writable: its stream holds what ServerResponse has itself.
function h2stream (res: ServerResponse): Http2ServerResponse['stream'] | undefined {
  return (res as unknown as Partial<Http2ServerResponse>).stream
}

/** returnQuietly tells an iterator to finish, ignoring what it throws or rejects with. */
function returnQuietly (iterator: AsyncIterator<unknown> | Iterator<unknown>): void {
  try {
    const r = iterator.return?.()
    if (r instanceof Promise) r.catch(() => {})
  } catch {}
}

function bufferOf (item: Buffer | Batch): Buffer {
  return item instanceof Batch ? item.data() : item
}

function isDestroyed (res: ServerResponse): boolean {
  return res.destroyed ?? h2stream(res)?.destroyed ?? false
}

function destroy (res: ServerResponse, err: Error): void {
  const stream = h2stream(res)
  if (stream !== undefined) stream.destroy(err)
  else res.destroy(err)
}

function readLastEventId (request: FastifyRequest, queryName: string | null): string | null {
  const header = request.headers['last-event-id']
  if (typeof header === 'string') return header
  if (queryName !== null) {
    const value = (request.query as Record<string, unknown> | undefined)?.[queryName]
    if (typeof value === 'string') return value
  }
  return null
}
