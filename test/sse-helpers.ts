/**
 * SSE test helpers: an app with the kit's connections + sse plugins, and a streaming client
 * (undici) that decodes events with a WHATWG-conformant parser.
 */
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import type { FastifyInstance, FastifyServerOptions } from 'fastify'
import type { Test } from 'tap'
import { Client } from 'undici'
import connections from '../plugins/connections.js'
import sse, { type SseOptions } from '../plugins/sse/index.js'
import { build, logCapture, waitUntil, type LogLine } from './helpers.js'

export async function sseApp (t: Test, opts: SseOptions = {}, fastifyOpts: FastifyServerOptions = {}): Promise<{ app: FastifyInstance, lines: LogLine[] }> {
  const capture = logCapture('debug')
  const app = build(t, { logger: capture.logger, ...fastifyOpts })
  await app.register(connections)
  await app.register(sse, opts)
  return { app, lines: capture.lines }
}

export interface StreamClient {
  status: number
  headers: Record<string, string | string[] | undefined>
  events: EventSourceMessage[]
  comments: string[]
  retries: number[]
  /** ended resolves when the response body ends (or errors). */
  ended: Promise<void>
  /** waitEvents resolves once at least `n` events arrived. */
  waitEvents: (n: number, ms?: number) => Promise<void>
  /** pause stops reading (the server's queue for this client fills up); resume reads again. */
  pause: () => void
  resume: () => void
  close: () => Promise<void>
}

/** openStream GETs `path` on its own connection and decodes the event stream as it arrives. */
export async function openStream (t: Test, port: number, path: string, headers: Record<string, string> = {}, opts: { keepData?: boolean } = {}): Promise<StreamClient> {
  const client = new Client(`http://127.0.0.1:${port}`)
  t.teardown(() => client.destroy())
  const res = await client.request({ path, method: 'GET', headers: { accept: 'text/event-stream', ...headers } })
  const events: EventSourceMessage[] = []
  const comments: string[] = []
  const retries: number[] = []
  const parser = createParser({
    // keepData false keeps only the length of each event's data, so a long test holds no payloads.
    onEvent: (e) => { events.push(opts.keepData === false ? { ...e, data: String(e.data.length) } : e) },
    onComment: (c) => { comments.push(c) },
    onRetry: (ms) => { retries.push(ms) }
  })
  const decoder = new TextDecoder()
  res.body.on('data', (chunk: Buffer) => { parser.feed(decoder.decode(chunk, { stream: true })) })
  const ended = new Promise<void>((resolve) => {
    res.body.once('end', resolve)
    res.body.once('error', () => { resolve() })
    res.body.once('close', resolve)
  })
  return {
    status: res.statusCode,
    headers: res.headers,
    events,
    comments,
    retries,
    ended,
    waitEvents: (n, ms = 5000) => waitUntil(() => events.length >= n, ms, `${n} events`),
    pause: () => { res.body.pause() },
    resume: () => { res.body.resume() },
    close: async () => { await client.destroy() }
  }
}

/**
 * publishUntil calls `publish` once per two turns of the event loop (the flusher writes at the
 * end of a turn, and Node tells backpressure after it) until `done()` or `max` calls, and
 * resolves with `done()`. With a client that stopped reading and `done` = "a response holds
 * bytes its client has not taken", it fills the kernel's buffers and no more.
 */
export async function publishUntil (publish: () => void, done: () => boolean, max = 2000): Promise<boolean> {
  for (let i = 0; i < max && !done(); i++) {
    publish()
    await new Promise<void>((resolve) => { setImmediate(() => { setImmediate(resolve) }) })
  }
  return done()
}
