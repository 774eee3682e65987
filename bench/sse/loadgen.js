// The load generator of bench/sse/run.js: a child process that holds many SSE clients on raw
// `net` sockets (no HTTP or SSE library, so that it stays cheap) and counts the events each one
// receives. run.js forks it; it is driven over IPC:
//   -> { type: 'connect', port, clients, batch, verify }  <- { type: 'connected', ok, failed, errors, chunked }
//   -> { type: 'arm', m }       <- { type: 'armed', preEvents }   then, once, when every client has m events:
//                                  { type: 'done', cpuMs }        or, if a client's stream ends first: { type: 'lost' }
//   -> { type: 'report', id }   <- { type: 'report', id, ... } (per-client counts; the parsed events with verify)
//
// Counting: every server here writes exactly one `data:` field per event (payloads are
// "00000042xxxx..."), so the count of the bytes "data:" in the body is the count of events.
// It is robust to chunked framing (CRLF lines never contain it) and to TCP splitting it (the
// last 4 bytes of each read are kept to find a marker that straddles two reads). With
// `verify`, every body is also kept, de-chunked and parsed as an event stream, and run.js
// checks the events themselves (the correctness pre-check).
import net from 'node:net'

const MARK = Buffer.from('data:')
const KEEP = MARK.length - 1
const HEAD_END = Buffer.from('\r\n\r\n')
const HEAD_LIMIT = 16 * 1024
const BATCH_TIMEOUT_MS = 20e3

process.on('disconnect', () => process.exit(0))

let clients = []
let verify = false
let expected = Infinity
let armed = false
let complete = 0
let doneSent = false
let lostSent = false
let cpuAtArm = null

function send (msg) {
  if (process.connected) process.send(msg)
}

function countMarks (c, chunk) {
  let n = 0
  if (c.tail !== null) {
    // A match in tail + the next 4 bytes necessarily starts in the tail: it straddles the reads.
    const joint = Buffer.concat([c.tail, chunk.subarray(0, KEEP)])
    if (joint.indexOf(MARK) !== -1) n++
  }
  let i = chunk.indexOf(MARK)
  while (i !== -1) {
    n++
    i = chunk.indexOf(MARK, i + MARK.length)
  }
  // Copied, so that the tail does not keep the whole read alive.
  if (chunk.length >= KEEP) c.tail = Buffer.from(chunk.subarray(chunk.length - KEEP))
  else c.tail = Buffer.from(Buffer.concat([c.tail ?? Buffer.alloc(0), chunk]).subarray(-KEEP))
  return n
}

function onBody (c, chunk) {
  if (chunk.length === 0) return
  c.bytes += chunk.length
  if (verify) c.body.push(chunk)
  const n = countMarks(c, chunk)
  if (n === 0) return
  if (!armed) {
    c.preEvents += n
    return
  }
  const before = c.count
  c.count += n
  if (before < expected && c.count >= expected) {
    complete++
    if (complete === clients.length && !doneSent) {
      doneSent = true
      const u = process.cpuUsage(cpuAtArm)
      send({ type: 'done', cpuMs: (u.user + u.system) / 1e3 })
    }
  }
}

function openClient (port) {
  return new Promise((resolve) => {
    const c = { sock: null, head: null, headBuf: [], headLen: 0, status: 0, chunked: false, count: 0, preEvents: 0, bytes: 0, tail: null, body: [], closed: false, error: null }
    let settled = false
    const settle = (ok) => {
      if (settled) return
      settled = true
      resolve({ c, ok })
    }
    const sock = net.connect({ host: '127.0.0.1', port })
    c.sock = sock
    sock.setNoDelay(true)
    sock.on('connect', () => {
      sock.write(`GET /events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n`)
    })
    sock.on('data', (chunk) => {
      if (c.head !== null) {
        onBody(c, chunk)
        return
      }
      c.headBuf.push(chunk)
      c.headLen += chunk.length
      const buf = Buffer.concat(c.headBuf, c.headLen)
      const end = buf.indexOf(HEAD_END)
      if (end === -1) {
        if (c.headLen > HEAD_LIMIT) {
          c.error = 'response head too large'
          sock.destroy()
          settle(false)
        }
        return
      }
      c.head = buf.subarray(0, end).toString('latin1')
      c.headBuf = null
      c.status = Number(c.head.slice(9, 12))
      c.chunked = /\r\ntransfer-encoding:\s*chunked/i.test(c.head)
      if (c.status !== 200) {
        c.error = `status ${c.status}`
        sock.destroy()
        settle(false)
        return
      }
      settle(true)
      onBody(c, buf.subarray(end + HEAD_END.length))
    })
    sock.on('error', (err) => {
      c.error ??= err.code ?? err.message
      settle(false)
    })
    sock.on('close', () => {
      c.closed = true
      settle(false)
      if (armed && c.count < expected && !lostSent) {
        lostSent = true
        send({ type: 'lost' })
      }
    })
  })
}

async function connectAll ({ port, clients: n, batch }) {
  clients = []
  let failed = 0
  const errors = {}
  for (let start = 0; start < n; start += batch) {
    const size = Math.min(batch, n - start)
    const pending = []
    for (let i = 0; i < size; i++) pending.push(openClient(port))
    let timer
    const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(null), BATCH_TIMEOUT_MS) })
    const results = await Promise.race([Promise.all(pending), timeout])
    clearTimeout(timer)
    if (results === null) {
      send({ type: 'connected', ok: clients.length, failed: n - clients.length, errors: { 'batch timeout': 1 }, chunked: false })
      return
    }
    for (const { c, ok } of results) {
      clients.push(c)
      if (!ok) {
        failed++
        errors[c.error ?? 'closed'] = (errors[c.error ?? 'closed'] ?? 0) + 1
      }
    }
    if (failed > 0) break
  }
  send({ type: 'connected', ok: clients.length - failed, failed, errors, chunked: clients.every((c) => c.chunked) })
}

/** dechunk decodes a chunked transfer-coded body (what arrived of it). */
function dechunk (buf) {
  const parts = []
  let i = 0
  while (i < buf.length) {
    const eol = buf.indexOf('\r\n', i)
    if (eol === -1) break
    const size = parseInt(buf.subarray(i, eol).toString('latin1'), 16)
    if (!Number.isFinite(size)) throw new Error(`bad chunk size at ${i}`)
    if (size === 0) break
    const start = eol + 2
    if (start + size + 2 > buf.length) throw new Error('truncated chunk')
    if (buf[start + size] !== 13 || buf[start + size + 1] !== 10) throw new Error('chunk not followed by CRLF')
    parts.push(buf.subarray(start, start + size))
    i = start + size + 2
  }
  return Buffer.concat(parts)
}

/** parseEvents reads an event stream as the WHATWG parser does, returning the dispatched events' data. */
function parseEvents (text) {
  const events = []
  let data = null
  let rest = ''
  for (const line of text.split(/\r\n|\r|\n/)) {
    rest = line
    if (line === '') {
      if (data !== null) events.push(data)
      data = null
      continue
    }
    if (line.startsWith(':')) continue
    const colon = line.indexOf(':')
    const field = colon === -1 ? line : line.slice(0, colon)
    let value = colon === -1 ? '' : line.slice(colon + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    if (field === 'data') data = data === null ? value : `${data}\n${value}`
  }
  return { events, incomplete: data !== null || rest !== '' }
}

function report () {
  const counts = clients.map((c) => c.count)
  const out = {
    clients: clients.length,
    min: Math.min(...counts),
    max: Math.max(...counts),
    exact: counts.filter((n) => n === expected).length,
    total: counts.reduce((a, b) => a + b, 0),
    closed: clients.filter((c) => c.closed).length,
    bytes: clients.reduce((a, c) => a + c.bytes, 0)
  }
  if (verify) {
    out.parsed = clients.map((c) => {
      try {
        const body = Buffer.concat(c.body)
        const { events, incomplete } = parseEvents((c.chunked ? dechunk(body) : body).toString('utf8'))
        return { events, incomplete, counted: c.count + c.preEvents }
      } catch (err) {
        return { error: err.message, counted: c.count + c.preEvents }
      }
    })
  }
  return out
}

process.on('message', (msg) => {
  if (msg === null || typeof msg !== 'object') return
  if (msg.type === 'connect') {
    verify = msg.verify === true
    connectAll(msg).catch((err) => send({ type: 'connected', ok: 0, failed: msg.clients, errors: { [err.message]: 1 }, chunked: false }))
  } else if (msg.type === 'arm') {
    expected = msg.m
    complete = 0
    doneSent = false
    lostSent = false
    for (const c of clients) {
      c.count = 0
      c.bytes = 0 // from here on: the broadcast's bytes (chunk framing included)
    }
    armed = true
    cpuAtArm = process.cpuUsage()
    send({ type: 'armed', preEvents: clients.reduce((a, c) => a + c.preEvents, 0) })
  } else if (msg.type === 'report') {
    send({ type: 'report', id: msg.id, ...report() })
  } else if (msg.type === 'exit') {
    for (const c of clients) c.sock.destroy()
    process.exit(0)
  }
})

send({ type: 'ready' })
