/**
 * Issue 11: the SSE head always said `Connection: keep-alive` over HTTP/1.x, even to a client
 * that sent `Connection: close` (Node then kept the socket for keepAliveTimeout, 72 s), and a
 * proxy with upstream keep-alive put a connection the server was about to close back in its
 * pool. Now it says `Connection: close`, unless the route set the header itself.
 */
import { test } from 'tap'
import { collect, connect, get, listen, waitUntil, withDeadline } from './helpers.js'
import { sseApp } from './sse-helpers.js'

// Far below the 72 s keep-alive timeout the socket was kept for.
const promptly = 3000 // ms

/** parseHead reads the status line and the headers of a raw HTTP/1.1 response, or null if not all there yet. */
function parseHead (text: string): { status: number, headers: Record<string, string> } | null {
  const end = text.indexOf('\r\n\r\n')
  if (end === -1) return null
  const [statusLine = '', ...lines] = text.slice(0, end).split('\r\n')
  const headers: Record<string, string> = {}
  for (const line of lines) {
    const colon = line.indexOf(':')
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
  }
  return { status: Number(statusLine.split(' ')[1]), headers }
}

test('HEAD with Connection: close gets Connection: close, and the server closes the socket at once', async (t) => {
  const { app } = await sseApp(t)
  const ch = app.sse.channel('c')
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(ch) })
  const port = await listen(app)
  const socket = await connect(t, port)
  const received = collect(socket)
  socket.write('HEAD /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n')
  await withDeadline(received.closed, promptly, 'the server to close the socket after the HEAD answer')
  const head = parseHead(received.text())
  t.equal(head?.status, 200)
  t.equal(head?.headers['content-type'], 'text/event-stream; charset=utf-8')
  t.equal(head?.headers.connection, 'close')
  await waitUntil(() => app.connections.stats().open === 0, promptly, 'the server side of the socket to close')
})

test('a stream the server ends says Connection: close, and its socket closes after the end', async (t) => {
  const { app } = await sseApp(t, { heartbeatInterval: null })
  app.get('/events', { sse: true }, async (_req, reply) => {
    await reply.sse.send({ event: 'only', data: 'one' })
    await reply.sse.close()
  })
  const port = await listen(app)
  const socket = await connect(t, port)
  const received = collect(socket)
  // No Connection header: HTTP/1.1 would keep the connection alive by default.
  socket.write(get('/events', { accept: 'text/event-stream' }))
  await withDeadline(received.closed, promptly, 'the server to close the socket after the stream')
  const text = received.text()
  t.equal(parseHead(text)?.headers.connection, 'close')
  t.match(text, /event: only\ndata: one\n\n/)
  t.ok(text.endsWith('0\r\n\r\n'), 'the stream ended cleanly (the last chunk) before the close')
  await waitUntil(() => app.connections.stats().open === 0, promptly, 'the server side of the socket to close')
  t.equal(app.connections.stats().requestsTotal, 1)
})

test('a Connection header set with reply.header() is kept: keep-alive keeps the connection for the next request', async (t) => {
  const { app } = await sseApp(t, { heartbeatInterval: null })
  app.get('/events', { sse: true }, async (_req, reply) => {
    reply.header('connection', 'keep-alive')
    await reply.sse.send('one')
  })
  app.get('/', async () => 'next')
  const port = await listen(app)
  const socket = await connect(t, port)
  const received = collect(socket)
  socket.write(get('/events', { accept: 'text/event-stream' }))
  await waitUntil(() => received.text().endsWith('0\r\n\r\n'), promptly, 'the end of the stream')
  t.equal(parseHead(received.text())?.headers.connection, 'keep-alive', 'the header the route set')
  // The same socket serves the next request: the route asked for keep-alive.
  socket.write(get('/'))
  await waitUntil(() => received.text().endsWith('next'), promptly, 'the next response on the same socket')
  t.equal(app.connections.stats().connectionsTotal, 1)
  t.equal(app.connections.stats().reusedRequestsTotal, 1)
})
