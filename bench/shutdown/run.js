// Shutdown load test: keep-alive load plus many SSE clients, then SIGTERM; every request the
// server accepted must get a complete answer, every SSE client its final event.
//
//   npm run build && node bench/shutdown/run.js [--rounds 3] [--connections 50] [--sse 1000] [--load-ms 2000]
//
// Variants, alternated round by round: `kit` (Fastify + connections + sse + shutdown) and
// `baseline` (bare Fastify + close-with-grace calling app.close(), SSE written by hand).
// Load: N keep-alive clients (undici, one connection each) sending GET /hello back to back.
// Only 127.0.0.1; every wait is bounded; every child is killed on exit.
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import net from 'node:net'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Client } from 'undici'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const { values: flags } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    connections: { type: 'string', default: '50' },
    sse: { type: 'string', default: '1000' },
    'load-ms': { type: 'string', default: '2000' },
    variants: { type: 'string', default: 'kit,baseline' }
  }
})
const rounds = Number(flags.rounds)
const connections = Number(flags.connections)
const sseClients = Number(flags.sse)
const loadMs = Number(flags['load-ms'])
const variants = flags.variants.split(',')
const children = new Set()
process.on('exit', () => { for (const c of children) c.kill('SIGKILL') })
process.on('SIGINT', () => { process.exit(130) })

if (!existsSync(join(root, 'dist/plugins/index.js'))) {
  console.error('dist/ is missing: run `npm run build` first')
  process.exit(1)
}

function deadline (promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((_resolve, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms) })
  ]).finally(() => clearTimeout(timer))
}

function startServer (variant) {
  const reportFile = join(tmpdir(), `fll-shutdown-${process.pid}-${Date.now()}.json`)
  const child = spawn(process.execPath, [join(root, 'bench/shutdown/server.js'), variant], {
    cwd: root, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { ...process.env, REPORT_FILE: reportFile }
  })
  children.add(child)
  const messages = []
  const waiters = []
  child.on('message', (m) => { messages.push(m); for (const w of waiters.splice(0)) w() })
  const next = async (type, ms) => {
    const end = Date.now() + ms
    for (;;) {
      const found = messages.find((m) => m.type === type)
      if (found !== undefined) return found
      if (Date.now() > end) throw new Error(`no '${type}' message from the ${variant} server within ${ms} ms`)
      await deadline(new Promise((resolve) => { waiters.push(resolve) }), end - Date.now(), `'${type}'`).catch(() => {})
    }
  }
  const exited = new Promise((resolve) => { child.once('exit', (code, signal) => { children.delete(child); resolve({ code, signal, at: performance.now() }) }) })
  const report = () => {
    if (!existsSync(reportFile)) return null
    const r = JSON.parse(readFileSync(reportFile, 'utf8'))
    rmSync(reportFile)
    return r
  }
  return { child, next, exited, report }
}

/** An SSE client on a raw socket: did it get the final event before its connection ended? */
function openSse (port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' })
    const state = { text: '', headers: false, ended: false, finalEvent: false, socket }
    socket.setEncoding('latin1')
    socket.on('data', (chunk) => {
      state.text = (state.text + chunk).slice(-512) // only the tail matters
      if (!state.headers && state.text.includes('\r\n\r\n')) { state.headers = true; resolve(state) }
      if (state.text.includes('event: reconnect')) state.finalEvent = true
    })
    socket.on('error', () => {})
    socket.on('close', () => { state.ended = true; if (!state.headers) reject(new Error('SSE client closed before its head')) })
    socket.write('GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n')
  })
}

/** One keep-alive load client: GET /hello back to back until stopped; every outcome counted. */
async function loadWorker (port, counts, stop) {
  const client = new Client(`http://127.0.0.1:${port}`, { pipelining: 1, connect: { timeout: 2000 } })
  try {
    while (!stop.done) {
      try {
        const res = await client.request({ path: '/hello', method: 'GET', headersTimeout: 15e3, bodyTimeout: 15e3 })
        await res.body.text()
        if (res.statusCode === 200) counts.ok++
        else if (res.statusCode >= 500) counts.status5xx++
        else counts.otherStatus++
        if (res.headers.connection === 'close') counts.connectionClose++
      } catch (err) {
        const code = err.code ?? err.cause?.code ?? err.name
        if (code === 'ECONNREFUSED') {
          counts.refused++
          await new Promise((resolve) => { setTimeout(resolve, 20) }) // the listener is gone: the balancer would stop sending
        } else {
          counts.errors[code] = (counts.errors[code] ?? 0) + 1
        }
      }
    }
  } finally {
    await client.destroy().catch(() => {})
  }
}

async function runOnce (variant) {
  const server = startServer(variant)
  const { port } = await server.next('listening', 30e3)
  const sse = []
  for (let i = 0; i < sseClients; i += 100) {
    sse.push(...await deadline(Promise.all(Array.from({ length: Math.min(100, sseClients - i) }, () => openSse(port))), 30e3, 'SSE clients'))
  }
  const counts = { ok: 0, status5xx: 0, otherStatus: 0, refused: 0, connectionClose: 0, errors: {} }
  const stop = { done: false }
  const workers = Array.from({ length: connections }, () => loadWorker(port, counts, stop))
  await new Promise((resolve) => { setTimeout(resolve, loadMs) })
  const okBeforeSignal = counts.ok
  const signalAt = performance.now()
  server.child.kill('SIGTERM')
  const exit = await deadline(server.exited, 60e3, `the ${variant} server to exit`)
  const closed = server.report()
  stop.done = true
  await deadline(Promise.all(workers), 30e3, 'the load workers to stop')
  for (const s of sse) s.socket.destroy()
  const errors = Object.values(counts.errors).reduce((a, b) => a + b, 0)
  const accepted = closed?.accepted == null ? null : closed.accepted - sseClients
  return {
    variant,
    exitCode: exit.code,
    shutdownMs: Math.round(exit.at - signalAt),
    phases: closed?.outcome?.durations ?? null,
    outcomeClean: closed?.outcome?.clean ?? null,
    accepted,
    completed: counts.ok,
    okBeforeSignal,
    okAfterSignal: counts.ok - okBeforeSignal,
    status5xx: counts.status5xx,
    otherStatus: counts.otherStatus,
    errors: counts.errors,
    // Accepted by the server but not answered completely: a reset, a cut body, or a 5xx.
    failedAccepted: accepted === null ? null : Math.max(0, accepted - counts.ok - counts.otherStatus) + counts.status5xx,
    errorsTotal: errors,
    refused: counts.refused,
    connectionClose: counts.connectionClose,
    sseClients,
    sseFinalEvent: sse.filter((s) => s.finalEvent).length,
    sseCutWithoutFinalEvent: sse.filter((s) => s.ended && !s.finalEvent).length,
    baselineTimedOut: closed?.timedOut ?? false
  }
}

const results = []
for (let r = 0; r < rounds; r++) {
  const order = r % 2 === 0 ? variants : [...variants].reverse()
  for (const variant of order) {
    const result = await runOnce(variant)
    results.push(result)
    console.log(JSON.stringify(result))
  }
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length === 0 ? null : s[Math.floor((s.length - 1) / 2)] }
console.log('\n| variant | runs | accepted (median) | failed accepted (max) | 5xx (max) | client errors (max) | SSE final event (min / clients) | SSE cut without it (max) | shutdown ms (median) | exit codes |')
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
for (const variant of variants) {
  const rs = results.filter((x) => x.variant === variant)
  console.log(`| ${variant} | ${rs.length} | ${median(rs.map((x) => x.accepted))} | ${Math.max(...rs.map((x) => x.failedAccepted ?? NaN))} | ` +
    `${Math.max(...rs.map((x) => x.status5xx))} | ${Math.max(...rs.map((x) => x.errorsTotal))} | ${Math.min(...rs.map((x) => x.sseFinalEvent))} / ${sseClients} | ` +
    `${Math.max(...rs.map((x) => x.sseCutWithoutFinalEvent))} | ${median(rs.map((x) => x.shutdownMs))} | ${rs.map((x) => x.exitCode).join(' ')} |`)
}
const kit = results.filter((x) => x.variant === 'kit' && x.phases !== null)
if (kit.length > 0) {
  console.log(`\nkit phases (median ms): draining ${median(kit.map((x) => x.phases.draining))}, closing ${median(kit.map((x) => x.phases.closing))}, total ${median(kit.map((x) => x.phases.total))}`)
}
mkdirSync(join(root, 'bench/results'), { recursive: true })
const file = join(root, 'bench/results', `shutdown-${new Date().toISOString().replace(/[:.]/g, '-')}.json`)
writeFileSync(file, JSON.stringify({ command: process.argv.slice(1).join(' '), node: process.version, rounds, connections, sseClients, loadMs, results }, null, 2))
console.log(`\nraw results: ${file}`)
