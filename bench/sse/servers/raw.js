// raw: node:http, no framework. A broadcast encodes each event once (one Buffer) and writes it
// to every open response: one res.write() per event per client.
import http from 'node:http'
import { eventBuffer, makePayloads, runServer, sseHeaders } from './common.js'

const clients = new Set()

const server = http.createServer((req, res) => {
  if (req.url === '/events') {
    res.writeHead(200, sseHeaders)
    res.flushHeaders()
    clients.add(res)
    res.on('close', () => clients.delete(res))
    return
  }
  if (req.url === '/probe') {
    res.end('ok')
    return
  }
  res.statusCode = 404
  res.end()
})

await runServer({
  listen: () => new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port))),
  subscribers: () => clients.size,
  broadcast (m, b) {
    const payload = makePayloads(b)
    for (let i = 0; i < m; i++) {
      const buf = eventBuffer(payload(i))
      for (const res of clients) res.write(buf)
    }
  }
})
