/**
 * Test helpers: real servers on 127.0.0.1 port 0, raw sockets, captured logs, and waits that
 * end on an event or a deadline (never a sleep used as synchronisation).
 */
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { once, type EventEmitter } from 'node:events'
import net from 'node:net'
import { Writable } from 'node:stream'
import type { Test } from 'tap'

/** A captured log line (pino JSON). */
export interface LogLine { level: number, msg: string, code?: string, [key: string]: unknown }

/** logCapture returns a Fastify logger option that keeps every line, and the lines. */
export function logCapture (level = 'info'): { logger: { level: string, stream: Writable }, lines: LogLine[] } {
  const lines: LogLine[] = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) if (line !== '') lines.push(JSON.parse(line))
      cb()
    }
  })
  return { logger: { level, stream }, lines }
}

/** build creates a Fastify app closed at the end of the test `t`. */
export function build (t: Test, opts: FastifyServerOptions = {}): FastifyInstance {
  const app = Fastify(opts)
  t.teardown(() => app.close())
  return app
}

/** listen starts `app` on 127.0.0.1 port 0 and returns the port. */
export async function listen (app: FastifyInstance): Promise<number> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}

/** withDeadline rejects if `promise` has not settled within `ms`. */
export async function withDeadline<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => { reject(new Error(`timed out after ${ms} ms waiting for ${what}`)) }, ms)
  })
  try {
    return await Promise.race([promise, deadline])
  } finally {
    clearTimeout(timer)
  }
}

/** waitFor resolves with the arguments of the next `event` on `emitter`, or rejects after `ms`. */
export function waitFor (emitter: EventEmitter, event: string, ms = 5000): Promise<unknown[]> {
  return withDeadline(once(emitter, event), ms, `'${event}'`)
}

/**
 * waitUntil resolves once `check()` is true, checking after each turn of the event loop's
 * I/O phase (setImmediate), and rejects after `ms`. For state that changes on another
 * object's event we cannot subscribe to (e.g. the server side of a socket closing).
 */
export async function waitUntil (check: () => boolean, ms = 5000, what = 'a condition'): Promise<void> {
  const start = Date.now()
  while (!check()) {
    if (Date.now() - start > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise<void>((resolve) => { setTimeout(resolve, 2) })
  }
}

/** connect opens a raw TCP socket to the port, destroyed at the end of the test. */
export async function connect (t: Test, port: number): Promise<net.Socket> {
  const socket = net.connect({ port, host: '127.0.0.1' })
  t.teardown(() => { socket.destroy() })
  await waitFor(socket, 'connect')
  return socket
}

/** collect gathers everything a socket receives until it closes; `text()` reads it so far. */
export function collect (socket: net.Socket): { text: () => string, closed: Promise<unknown[]> } {
  const chunks: Buffer[] = []
  socket.on('data', (chunk: Buffer) => { chunks.push(chunk) })
  // A server that cuts a client may reset the connection (ECONNRESET) rather than end it: the
  // tests look at what arrived and at the close, so the error itself is not a failure.
  socket.on('error', () => {})
  const closed = once(socket, 'close')
  return { text: () => Buffer.concat(chunks).toString('latin1'), closed }
}

/** Deferred is a promise with its resolve function, to hold a handler until the test says so. */
export function deferred<T = void> (): { promise: Promise<T>, resolve: (value: T) => void } {
  let resolve!: (value: T) => void
  const promise = new Promise<T>((_resolve) => { resolve = _resolve })
  return { promise, resolve }
}

/** get is one plain HTTP/1.1 request line with headers, for raw sockets. */
export function get (path: string, headers: Record<string, string> = {}): string {
  const lines = [`GET ${path} HTTP/1.1`, 'Host: 127.0.0.1']
  for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`)
  return lines.join('\r\n') + '\r\n\r\n'
}

/** mulberry32: a small seeded PRNG, so a failing case can be replayed from its seed. */
export function prng (seed: number): () => number {
  return () => {
    seed = (seed + 0x6D2B79F5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}
