// The calling side of the client benchmark, one process per run:
//
//   node bench/client/caller.js <variant> <origin> <callers> <warmupSeconds> <durationSeconds>
//
// `callers` concurrent loops each send GET <origin>/ and read the JSON body, again and again,
// for a discarded warm-up and then the measured duration. Variants:
// - pool:        dist/plugins/client.js with its defaults (keep-alive pool, 128 per origin).
// - per-request: the same plugin with `pipelining: 0`: a new connection for every request
//                (undici sends `connection: close`), the "no keep-alive" failure mode.
// - undici:      a bare undici Agent (keep-alive, no limit), to see what the plugin costs.
// The plugin variants run in a Fastify app that does not listen (the pool is what is measured).
// Both plugin variants get headersTimeout/bodyTimeout 5 s so that no request can hang a run.
//
// Forked by bench/client/run.js, it reports over IPC: {"cmd":"measuring"} when the measured
// phase starts, then {"cmd":"result", ...} with its counts, latencies and own CPU time.
import Fastify from 'fastify'
import { Agent, request } from 'undici'

const VARIANTS = ['pool', 'per-request', 'undici']
const [variant, origin, callersArg, warmupArg, durationArg] = process.argv.slice(2)
const callers = Number(callersArg)
const warmup = Number(warmupArg)
const duration = Number(durationArg)
if (!VARIANTS.includes(variant) || !/^http:\/\//.test(origin ?? '') || !Number.isInteger(callers) || callers < 1 ||
    !(warmup >= 0) || !(duration > 0)) {
  console.error(`usage: node bench/client/caller.js <${VARIANTS.join('|')}> <http://host:port> <callers> <warmupSeconds> <durationSeconds>`)
  process.exit(2)
}
const report = (msg) => { if (typeof process.send === 'function') process.send(msg) }
const url = `${origin}/`

let send
let close
let poolStats = () => null
if (variant === 'undici') {
  const agent = new Agent({ headersTimeout: 5e3, bodyTimeout: 5e3 })
  send = () => request(url, { dispatcher: agent })
  close = () => agent.close()
} else {
  let connections, client
  try {
    connections = (await import('../../dist/plugins/connections.js')).default
    client = (await import('../../dist/plugins/client.js')).default
  } catch (err) {
    console.error('bench/client/caller.js: cannot load dist/plugins/*.js; run `npm run build` first')
    console.error(err)
    process.exit(1)
  }
  const app = Fastify({ logger: false })
  await app.register(connections)
  await app.register(client, { headersTimeout: 5e3, bodyTimeout: 5e3, ...(variant === 'per-request' ? { pipelining: 0 } : {}) })
  await app.ready()
  send = () => app.upstream.request(url)
  close = () => app.close()
  poolStats = () => app.upstream.stats()[origin] ?? null
}

/** phase runs the callers for `seconds`; `record` keeps each request's latency (ms). */
async function phase (seconds, record) {
  const latencies = []
  const errors = {}
  let ok = 0
  let non2xx = 0
  const end = performance.now() + seconds * 1e3
  async function loop () {
    while (performance.now() < end) {
      const t0 = performance.now()
      try {
        const res = await send()
        await res.body.json()
        if (res.statusCode === 200) ok++
        else non2xx++
        if (record) latencies.push(performance.now() - t0)
      } catch (err) {
        const code = err.code ?? err.name
        errors[code] = (errors[code] ?? 0) + 1
      }
    }
  }
  const start = performance.now()
  await Promise.all(Array.from({ length: callers }, loop))
  return { seconds: (performance.now() - start) / 1e3, ok, non2xx, errors, latencies }
}

function percentile (sorted, p) {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.floor(p / 100 * sorted.length))]
}

if (warmup > 0) await phase(warmup, false)
const before = poolStats()
report({ cmd: 'measuring' })
const cpuBefore = process.cpuUsage()
const r = await phase(duration, true)
const cpu = process.cpuUsage(cpuBefore)
const after = poolStats()
const sorted = Float64Array.from(r.latencies).sort()
report({
  cmd: 'result',
  variant,
  callers,
  seconds: r.seconds,
  requests: r.ok,
  reqPerSec: r.ok / r.seconds,
  non2xx: r.non2xx,
  errors: r.errors,
  errorCount: Object.values(r.errors).reduce((a, b) => a + b, 0),
  latencyP50Ms: percentile(sorted, 50),
  latencyP99Ms: percentile(sorted, 99),
  latencyMaxMs: sorted.length === 0 ? null : sorted[sorted.length - 1],
  callerCpuMs: (cpu.user + cpu.system) / 1e3,
  callerCpuUsPerReq: r.ok > 0 ? (cpu.user + cpu.system) / r.ok : null,
  // What the plugin counted over the measured phase (null for bare undici).
  plugin: before === null || after === null
    ? null
    : {
        connectionsOpened: after.connectionsTotal - before.connectionsTotal,
        requestsWritten: after.requestsTotal - before.requestsTotal,
        reusedRequests: after.reusedRequestsTotal - before.reusedRequestsTotal,
        connectedAtEnd: after.connected
      }
})
await Promise.race([close(), new Promise((resolve) => { setTimeout(resolve, 3e3).unref() })])
process.exit(0)
