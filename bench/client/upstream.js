// The upstream of the client benchmark: `node bench/client/upstream.js`.
//
// A plain node:http server (no Fastify: the same small cost for every variant) answering any
// request with {"hello":"world"}, keep-alive 72 s (the timeouts plugin's default, so its
// `Keep-Alive: timeout=72` hint lets the pool reuse connections). It listens on 127.0.0.1,
// port 0, prints one JSON line `{"port":12345,"pid":678}` and runs until SIGTERM, SIGINT or
// its parent's IPC channel closes. Over IPC it answers {"cmd":"stats"} with its CPU time and
// the connections and requests it has seen.
import http from 'node:http'

const body = JSON.stringify({ hello: 'world' })
let connections = 0
let requests = 0

const server = http.createServer((req, res) => {
  requests++
  req.resume()
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
  res.end(body)
})
server.keepAliveTimeout = 72e3
server.on('connection', () => { connections++ })

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port, pid: process.pid }) + '\n')
})

if (typeof process.send === 'function') {
  process.on('message', (msg) => {
    if (msg === null || typeof msg !== 'object' || msg.cmd !== 'stats') return
    const cpu = process.cpuUsage()
    process.send({ cmd: 'stats', id: msg.id, cpuUserUs: cpu.user, cpuSystemUs: cpu.system, connections, requests })
  })
  process.on('disconnect', () => { shutdown() })
}

let closing = false
function shutdown () {
  if (closing) return
  closing = true
  setTimeout(() => { process.exit(0) }, 3000).unref() // bounded, whatever is still open
  server.closeAllConnections()
  server.close(() => { process.exit(0) })
}
process.once('SIGTERM', shutdown)
process.once('SIGINT', shutdown)
