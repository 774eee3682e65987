// SSE broadcast, side by side: node:http (per event, and batched), Fastify with a hijacked
// reply, fastify-long-lived's sse plugin ("ours"), @fastify/sse, fastify-sse-v2 and better-sse.
//
//   npm run build && node bench/sse/run.js [--scenarios 1000x200x100,5000x20x100] [--rounds 5]
//                                          [--servers raw,ours,...] [--generators 1] [...]
//
// A scenario NxMxB is N clients, a broadcast of M events of B payload bytes each. Every run
// forks a fresh server (bench/sse/servers/<name>.js) and a load generator (bench/sse/loadgen.js,
// raw `net` sockets), connects the N clients, waits until the server counts N subscribers,
// reads the server's RSS (idle, with N connections), then triggers the broadcast over IPC and
// times it until every client has received all M events; 20 ms into the broadcast it sends
// one GET /probe on a fresh connection and times its reply. Each round runs every server once,
// in an order rotated every round; the tables give medians. Raw numbers go to
// bench/results/sse-<timestamp>.json. See bench/README.md, "SSE broadcast".
import { fork, spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..', '..')
const resultsDir = join(here, '..', 'results')
const loadgenPath = join(here, 'loadgen.js')

/** The servers, in table order; file is under servers/. */
const SERVERS = [
  { name: 'raw', file: 'raw.js' },
  { name: 'raw-batched', file: 'raw-batched.js' },
  { name: 'fastify-hijack', file: 'fastify-hijack.js' },
  { name: 'ours', file: 'ours.js' },
  { name: '@fastify/sse', file: 'fastify-sse.js' },
  { name: 'fastify-sse-v2', file: 'fastify-sse-v2.js' },
  { name: 'better-sse', file: 'better-sse.js' }
]
const distFiles = ['dist/plugins/connections.js', 'dist/plugins/sse/index.js', 'dist/plugins/sse/stream.js', 'dist/plugins/sse/hub.js', 'dist/plugins/sse/encoder.js']

// Upper bounds on every wait, so that nothing can hang the run.
const START_TIMEOUT_MS = 15e3
const IPC_TIMEOUT_MS = 10e3
const SUBSCRIBE_TIMEOUT_MS = 30e3
const PROBE_TIMEOUT_MS = 60e3
const STOP_TIMEOUT_MS = 5e3
const BUILD_TIMEOUT_MS = 180e3
const CONNECT_BATCH_TIMEOUT_MS = 25e3 // the generator gives up on a batch after 20 s
const OTHER_BENCH = /bench\/keepalive|autocannon/
// ours: the default maxBufferedBytes; a scenario whose M events do not fit gets more.
const OURS_DEFAULT_MAX_BUFFERED = 1024 * 1024
const PRECHECK = { n: 20, m: 50, b: 100 }

const usage = `usage: node bench/sse/run.js [options]

  --scenarios LIST   comma-separated NxMxB (clients x events x payload bytes)
                     (default 1000x200x100,5000x20x100; 100x5000x100 is the third one)
  --rounds N         rounds per scenario; each runs every server once, order rotated (default 5)
  --servers LIST     comma-separated subset of: ${SERVERS.map((s) => s.name).join(', ')}
  --generators N     load-generator processes, the clients split between them (default 1)
  --batch N          clients connected at a time (default 200)
  --timeout S        give up on a broadcast after S seconds (default 120)
  --probe-delay MS   when the probe request starts, after the broadcast (default 20)
  --warmup K         discarded broadcasts (same size) before the measured one, per run (default 1)
  --settle MS        pause between "all subscribed" and the idle RSS reading (default 500)
  --quiet-wait S     wait up to S seconds for bench/keepalive.js or autocannon to finish,
                     polling every 30 s (default 900; 0 to not wait, and not check)
  --no-precheck      skip the correctness pre-check (${PRECHECK.n}x${PRECHECK.m}x${PRECHECK.b}, every event parsed)
  --build            run \`npm run build\` first (it always runs when dist/ is missing)
  -h, --help         this text
`

function intFlag (values, name, def, min, max) {
  const raw = values[name]
  if (raw === undefined) return def
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`)
  return n
}

function readConfig () {
  const { values } = parseArgs({
    options: {
      scenarios: { type: 'string' },
      rounds: { type: 'string' },
      servers: { type: 'string' },
      generators: { type: 'string' },
      batch: { type: 'string' },
      timeout: { type: 'string' },
      'probe-delay': { type: 'string' },
      settle: { type: 'string' },
      warmup: { type: 'string' },
      'quiet-wait': { type: 'string' },
      'no-precheck': { type: 'boolean', default: false },
      build: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false }
    },
    strict: true
  })
  if (values.help) {
    process.stdout.write(usage)
    process.exit(0)
  }
  const scenarios = (values.scenarios ?? '1000x200x100,5000x20x100').split(',').map((s) => {
    const m = /^(\d+)x(\d+)x(\d+)$/.exec(s.trim())
    if (m === null) throw new Error(`--scenarios: ${JSON.stringify(s)} is not NxMxB`)
    const [n, events, b] = [Number(m[1]), Number(m[2]), Number(m[3])]
    if (n < 1 || n > 20000 || events < 1 || events > 1e6 || b < 16 || b > 1e6) {
      throw new Error(`--scenarios: ${s} out of bounds (N 1..20000, M 1..1e6, B 16..1e6)`)
    }
    return { label: `${n}x${events}x${b}`, n, m: events, b }
  })
  let servers = SERVERS
  if (values.servers !== undefined) {
    const names = values.servers.split(',').map((s) => s.trim())
    servers = names.map((name) => {
      const s = SERVERS.find((x) => x.name === name)
      if (s === undefined) throw new Error(`--servers: unknown server ${JSON.stringify(name)}`)
      return s
    })
  }
  return {
    scenarios,
    servers,
    rounds: intFlag(values, 'rounds', 5, 1, 100),
    generators: intFlag(values, 'generators', 1, 1, 8),
    batch: intFlag(values, 'batch', 200, 1, 5000),
    timeoutMs: intFlag(values, 'timeout', 120, 1, 3600) * 1e3,
    probeDelayMs: intFlag(values, 'probe-delay', 20, 0, 60e3),
    settleMs: intFlag(values, 'settle', 500, 0, 60e3),
    warmup: intFlag(values, 'warmup', 1, 0, 20),
    quietWait: intFlag(values, 'quiet-wait', 900, 0, 3600),
    precheck: !values['no-precheck'],
    build: values.build
  }
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms) })
const now = () => performance.now()

// ---------------------------------------------------------------------------------------------
// Children: every process this driver starts is in `children`, and killed on any exit.

/** @type {Set<import('node:child_process').ChildProcess>} */
const children = new Set()
let fdLimitWrapper = null // set by checkFdLimit when children must raise their own limit

function killAll () {
  for (const child of children) {
    try { child.kill('SIGKILL') } catch {}
  }
}
process.on('exit', killAll)
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    console.error(`\n${sig}: stopping the children`)
    killAll()
    process.exit(130)
  })
}

/** startChild forks a node script with an IPC channel (through `sh -c 'ulimit -n'` when needed). */
function startChild (script, args, env, execArgv = []) {
  const stdio = ['ignore', 'inherit', 'inherit', 'ipc']
  let child
  if (fdLimitWrapper === null) {
    child = fork(script, args, { cwd: root, stdio, env, execArgv })
  } else {
    child = spawn('/bin/sh', ['-c', `ulimit -n ${fdLimitWrapper} && exec "$@"`, 'sh', process.execPath, ...execArgv, script, ...args], { cwd: root, stdio, env })
  }
  children.add(child)
  child.once('exit', () => { children.delete(child) })
  // An IPC write can fail once the child is gone; that is seen through 'exit'.
  child.on('error', () => {})
  return child
}

function stopChild (child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, STOP_TIMEOUT_MS)
    child.once('exit', () => { clearTimeout(timer); resolve() })
    child.kill('SIGKILL')
  })
}

/** waitMessage resolves with the child's first message that `match`es, rejects on timeout or exit. */
function waitMessage (child, match, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer)
      child.removeListener('message', onMessage)
      child.removeListener('exit', onExit)
    }
    const timer = setTimeout(() => { cleanup(); reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)) }, timeoutMs)
    const onMessage = (msg) => {
      if (msg !== null && typeof msg === 'object' && match(msg)) { cleanup(); resolve(msg) }
    }
    const onExit = (code, signal) => { cleanup(); reject(new Error(`child exited (code ${code}, signal ${signal}) while waiting for ${what}`)) }
    child.on('message', onMessage)
    child.once('exit', onExit)
  })
}

let nextId = 1
function request (child, msg, what) {
  const id = nextId++
  const reply = waitMessage(child, (m) => m.id === id, IPC_TIMEOUT_MS, what)
  child.send({ ...msg, id })
  return reply
}

// ---------------------------------------------------------------------------------------------
// The machine: other benchmarks, file descriptors, CPU seen in /proc/stat.

function otherBenchmarks () {
  const r = spawnSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8', timeout: 5e3 })
  if (r.status !== 0) return []
  return r.stdout.split('\n').map((l) => l.trim()).filter((l) => {
    if (!OTHER_BENCH.test(l)) return false
    const pid = Number(l.split(/\s+/, 1)[0])
    return pid !== process.pid && !l.includes('ps -eo')
  })
}

async function waitForOtherBenchmarks (seconds) {
  if (seconds === 0) return
  const deadline = now() + seconds * 1e3
  for (;;) {
    const others = otherBenchmarks()
    if (others.length === 0) return
    if (now() >= deadline) throw new Error(`another benchmark is still running after ${seconds} s, not measuring:\n  ${others.join('\n  ')}`)
    console.log(`waiting for another benchmark to finish (polling every 30 s, up to ${seconds} s):\n  ${others.join('\n  ')}`)
    await sleep(Math.min(30e3, Math.max(0, deadline - now())))
  }
}

function checkFdLimit (maxClients, generators) {
  const r = spawnSync('/bin/sh', ['-c', 'echo $(ulimit -Sn) $(ulimit -Hn)'], { encoding: 'utf8', timeout: 5e3 })
  const [soft, hard] = (r.stdout ?? '').trim().split(/\s+/).map((x) => (x === 'unlimited' ? Infinity : Number(x)))
  // The server holds one socket per client, each generator its share, plus some slack.
  const need = maxClients + 256
  const limits = { soft, hard, need }
  if (!Number.isFinite(soft) || soft >= need) return limits
  if (hard >= need) {
    fdLimitWrapper = Math.min(hard, Math.max(need, 65536))
    console.log(`ulimit -n is ${soft}: starting the server and generators with ulimit -n ${fdLimitWrapper}`)
    limits.raisedTo = fdLimitWrapper
    return limits
  }
  throw new Error(`${maxClients} clients need about ${need} file descriptors per process, but ulimit -n is ${soft} (hard ${hard}).` +
    ` Raise it (e.g. \`ulimit -n 65536\` in a root shell, or LimitNOFILE= for a service) or use fewer clients. (${generators} generator(s))`)
}

const clockTicks = (() => {
  if (os.platform() !== 'linux') return null
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5e3 })
  const n = Number(r.stdout?.trim())
  return Number.isInteger(n) && n > 0 ? n : 100
})()

/** machineBusyMs: the whole machine's busy CPU time (ms, all CPUs) from /proc/stat, or null. */
function machineBusyMs () {
  if (clockTicks === null) return null
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0)) * 1e3 / clockTicks
  } catch {
    return null
  }
}

function ensureBuild (force) {
  const missing = distFiles.some((f) => !existsSync(join(root, f)))
  if (force || missing) {
    console.log(`> npm run build${missing ? ' (dist/ is missing)' : ''}`)
    const r = spawnSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit', timeout: BUILD_TIMEOUT_MS })
    if (r.error) throw r.error
    if (r.status !== 0) throw new Error(`npm run build failed (exit ${r.status ?? r.signal})`)
  }
  const builtAt = Math.min(...distFiles.map((f) => statSync(join(root, f)).mtimeMs))
  const newer = []
  for (const dir of ['plugins', 'plugins/sse']) {
    for (const f of readdirSync(join(root, dir))) {
      if (f.endsWith('.ts') && statSync(join(root, dir, f)).mtimeMs > builtAt) newer.push(`${dir}/${f}`)
    }
  }
  if (newer.length > 0) console.warn(`warning: ${newer.join(', ')} changed after dist/ was built; pass --build to measure the current sources`)
  return Object.fromEntries(distFiles.map((f) => [f, createHash('sha256').update(readFileSync(join(root, f))).digest('hex').slice(0, 16)]))
}

function packageVersion (name) {
  try {
    return JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')).version
  } catch {
    return null
  }
}

// ---------------------------------------------------------------------------------------------
// One run.

/** probe times one GET /probe on a fresh connection (ms until the whole reply is in). */
function probe (port) {
  return new Promise((resolve) => {
    const t0 = now()
    let done = false
    const finish = (result) => {
      if (done) return
      done = true
      clearTimeout(timer)
      resolve(result)
    }
    const timer = setTimeout(() => { req.destroy(); finish({ ms: null, error: `no reply within ${PROBE_TIMEOUT_MS} ms` }) }, PROBE_TIMEOUT_MS)
    const req = http.get({ host: '127.0.0.1', port, path: '/probe', agent: false, headers: { connection: 'close' } }, (res) => {
      res.resume()
      res.on('end', () => finish({ ms: now() - t0, status: res.statusCode }))
      res.on('error', (err) => finish({ ms: null, error: err.message }))
    })
    req.on('error', (err) => finish({ ms: null, error: err.message }))
  })
}

async function startServer (server, scenario) {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  if (server.name === 'ours') {
    // Each event is B + 30 bytes (its id and data fields); all M wait at once for each client.
    const need = scenario.m * (scenario.b + 32)
    if (need > OURS_DEFAULT_MAX_BUFFERED * 0.9) env.SSE_BENCH_MAX_BUFFERED = String(Math.ceil(need * 2))
  }
  const child = startChild(join(here, 'servers', server.file), [], env, ['--expose-gc'])
  try {
    const ready = await waitMessage(child, (m) => m.type === 'ready', START_TIMEOUT_MS, `${server.name} to listen`)
    return { child, port: ready.port, maxBuffered: env.SSE_BENCH_MAX_BUFFERED ?? null }
  } catch (err) {
    await stopChild(child)
    throw err
  }
}

async function startGenerators (count, port, n, batch, verify) {
  const gens = []
  try {
    for (let g = 0; g < count; g++) {
      const clients = Math.floor(n / count) + (g < n % count ? 1 : 0)
      if (clients === 0) continue
      const child = startChild(loadgenPath, [], { ...process.env, NODE_OPTIONS: '' })
      gens.push({ child, clients })
    }
    await Promise.all(gens.map((g) => waitMessage(g.child, (m) => m.type === 'ready', START_TIMEOUT_MS, 'the load generator')))
    const connectTimeout = CONNECT_BATCH_TIMEOUT_MS * (Math.ceil(n / batch) + 1)
    const replies = await Promise.all(gens.map((g) => {
      const p = waitMessage(g.child, (m) => m.type === 'connected', connectTimeout, 'the clients to connect')
      g.child.send({ type: 'connect', port, clients: g.clients, batch, verify })
      return p
    }))
    const failed = replies.reduce((a, r) => a + r.failed, 0)
    if (failed > 0) {
      const errors = {}
      for (const r of replies) for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v
      throw new Error(`${failed} of ${n} clients failed to connect: ${JSON.stringify(errors)}`)
    }
    return { gens, chunked: replies.every((r) => r.chunked) }
  } catch (err) {
    await Promise.all(gens.map((g) => stopChild(g.child)))
    throw err
  }
}

async function waitSubscribers (child, n) {
  const deadline = now() + SUBSCRIBE_TIMEOUT_MS
  for (;;) {
    const s = await request(child, { type: 'stats' }, 'server stats')
    if (s.subscribers >= n) return s.subscribers
    if (now() >= deadline) throw new Error(`the server counts ${s.subscribers} of ${n} subscribers after ${SUBSCRIBE_TIMEOUT_MS} ms`)
    await sleep(50)
  }
}

/**
 * broadcastOnce arms the generators for M events, triggers one broadcast and waits until every
 * client has them all (or a stream ended, or the timeout). With `withProbe`, GET /probe is sent
 * `probeDelayMs` after the trigger.
 */
async function broadcastOnce (srv, gens, { n, m, b }, config, withProbe) {
  const rec = {}
  const armed = await Promise.all(gens.map((g) => {
    const p = waitMessage(g.child, (x) => x.type === 'armed', IPC_TIMEOUT_MS, 'the generator to arm')
    g.child.send({ type: 'arm', m })
    return p
  }))
  rec.eventsBeforeBroadcast = armed.reduce((a, x) => a + x.preEvents, 0)

  // Every generator's 'done' (all its clients have M events), or a 'lost' (a stream ended), or the timeout.
  let doneCount = 0
  let lost = false
  let genCpuMs = 0
  let tDone = null
  const listeners = []
  const delivered = new Promise((resolve) => {
    const timer = setTimeout(() => resolve('timeout'), config.timeoutMs)
    for (const g of gens) {
      const onMessage = (x) => {
        if (x?.type === 'done') {
          genCpuMs += x.cpuMs
          if (++doneCount === gens.length) { tDone = now(); clearTimeout(timer); resolve('done') }
        } else if (x?.type === 'lost' && !lost) {
          lost = true
          clearTimeout(timer)
          // Let what is in flight arrive, so the report shows how far delivery got.
          setTimeout(() => resolve('lost'), 500)
        }
      }
      const onExit = () => { clearTimeout(timer); resolve('generator exited') }
      g.child.on('message', onMessage)
      g.child.once('exit', onExit)
      listeners.push(() => { g.child.removeListener('message', onMessage); g.child.removeListener('exit', onExit) })
    }
  })
  const busy0 = machineBusyMs()
  const loopDone = waitMessage(srv.child, (x) => x.type === 'broadcast-done', config.timeoutMs + IPC_TIMEOUT_MS, 'the broadcast loop')
  const t0 = now()
  srv.child.send({ type: 'broadcast', id: nextId++, m, b })
  // Sent even when the broadcast is over by then (it then times an idle server).
  const probed = withProbe ? sleep(config.probeDelayMs).then(() => probe(srv.port)) : null
  const outcome = await delivered
  const busy1 = machineBusyMs()
  for (const remove of listeners) remove()
  rec.outcome = outcome
  const loop = await loopDone
  if (loop.error !== null) throw new Error(`the broadcast threw: ${loop.error}`)
  rec.loopMs = loop.loopMs
  rec.loopCpuMs = loop.cpuMs
  const after = await request(srv.child, { type: 'stats' }, 'server stats')
  rec.serverCpuMs = after.cpuMs
  rec.rssAfterMB = after.rss / 2 ** 20
  if (probed !== null) {
    const pr = await probed
    rec.probeMs = pr.ms
    if (pr.error !== undefined) rec.probeError = pr.error
  }
  // A short grace, so that an event delivered twice would show up in the counts.
  await sleep(200)
  const reports = await Promise.all(gens.map((g) => request(g.child, { type: 'report' }, 'the generator report')))
  rec.delivered = {
    min: Math.min(...reports.map((r) => r.min)),
    max: Math.max(...reports.map((r) => r.max)),
    exact: reports.reduce((a, r) => a + r.exact, 0),
    total: reports.reduce((a, r) => a + r.total, 0),
    closed: reports.reduce((a, r) => a + r.closed, 0)
  }
  rec.bytesPerEvent = reports.reduce((a, r) => a + r.bytes, 0) / Math.max(1, rec.delivered.total)
  rec.complete = outcome === 'done' && rec.delivered.exact === n && !lost
  rec.deliverMs = outcome === 'done' ? tDone - t0 : null
  rec.eventsPerSec = rec.deliverMs === null ? null : n * m / (rec.deliverMs / 1e3)
  rec.generatorCpuMs = outcome === 'done' ? genCpuMs : null
  if (busy0 !== null && busy1 !== null && rec.deliverMs !== null) {
    // CPU the machine spent during the broadcast beyond the server and the generators (roughly: /proc/stat ticks are 10 ms).
    rec.otherCpuMs = Math.max(0, (busy1 - busy0) - rec.serverCpuMs - genCpuMs)
  }
  rec.reports = reports
  return rec
}

/**
 * runOnce: one server, one scenario. Returns the run's record; `error` is set (and the
 * timing fields null) when it could not finish.
 */
async function runOnce (server, scenario, config, { verify = false } = {}) {
  const { n, m, b } = scenario
  const rec = { server: server.name, scenario: scenario.label, n, m, b, at: new Date().toISOString() }
  let srv = null
  let gens = []
  try {
    srv = await startServer(server, scenario)
    rec.maxBufferedBytes = srv.maxBuffered === null ? null : Number(srv.maxBuffered)
    const before = await request(srv.child, { type: 'stats', gc: true }, 'server stats')
    const started = await startGenerators(verify ? 1 : config.generators, srv.port, n, config.batch, verify)
    gens = started.gens
    rec.chunked = started.chunked
    await waitSubscribers(srv.child, n)
    if (config.settleMs > 0) await sleep(config.settleMs)
    const idle = await request(srv.child, { type: 'stats', gc: true }, 'server stats')
    rec.rssBeforeMB = before.rss / 2 ** 20
    rec.rssIdleMB = idle.rss / 2 ** 20
    rec.rssPerConnKB = (idle.rss - before.rss) / 1024 / n
    rec.heapPerConnKB = (idle.heapUsed - before.heapUsed) / 1024 / n

    // Warm-up broadcasts (same size, delivered and discarded): the measured one then runs on
    // JIT-compiled code and grown buffers, as a server that has been broadcasting for a while.
    rec.warmupMs = []
    for (let w = 0; w < (verify ? 0 : config.warmup); w++) {
      const warm = await broadcastOnce(srv, gens, scenario, config, false)
      if (!warm.complete) throw new Error(`warm-up broadcast ${w + 1}: ${warm.outcome}, delivered min ${warm.delivered.min} max ${warm.delivered.max} per client`)
      rec.warmupMs.push(warm.deliverMs)
    }
    const r = await broadcastOnce(srv, gens, scenario, config, true)
    Object.assign(rec, r)
    const reports = r.reports
    delete rec.reports
    if (verify) rec.verify = checkEvents(server, reports, m, b)
  } catch (err) {
    rec.error = err.message
    rec.complete = false
  } finally {
    await Promise.all([...gens.map((g) => stopChild(g.child)), srv === null ? null : stopChild(srv.child)])
  }
  return rec
}

/** checkEvents compares every parsed event of the pre-check with what was broadcast, in order. */
function checkEvents (server, reports, m, b) {
  const filler = 'x'.repeat(b - 8)
  const problems = []
  let clients = 0
  for (const r of reports) {
    for (const [i, c] of r.parsed.entries()) {
      clients++
      if (c.error !== undefined) { problems.push(`client ${i}: ${c.error}`); continue }
      if (c.incomplete) problems.push(`client ${i}: the stream ends inside an event`)
      if (c.events.length !== m) problems.push(`client ${i}: parsed ${c.events.length} events, expected ${m}`)
      if (c.counted !== c.events.length) problems.push(`client ${i}: counted ${c.counted} "data:" markers but parsed ${c.events.length} events`)
      for (let k = 0; k < Math.min(m, c.events.length); k++) {
        const payload = String(k).padStart(8, '0') + filler
        const got = c.events[k]
        if (got !== payload && got !== JSON.stringify(payload)) {
          problems.push(`client ${i}: event ${k} is ${JSON.stringify(got.slice(0, 40))}...`)
          break
        }
      }
    }
  }
  return { ok: problems.length === 0, clients, problems: problems.slice(0, 10) }
}

// ---------------------------------------------------------------------------------------------
// Summaries.

function median (xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return null
  const mid = v.length >> 1
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

function fmt (x, digits = 0) {
  if (x === null || x === undefined || !Number.isFinite(x)) return '-'
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

function summarize (runs, servers) {
  const rows = servers.map((s) => {
    const all = runs.filter((r) => r.server === s.name)
    const ok = all.filter((r) => r.complete)
    const deliverMs = median(ok.map((r) => r.deliverMs))
    const serverCpuMs = median(ok.map((r) => r.serverCpuMs))
    return {
      server: s.name,
      runs: all.length,
      cpuPerEventUs: serverCpuMs === null || ok.length === 0 ? null : serverCpuMs * 1e3 / (ok[0].n * ok[0].m),
      complete: ok.length,
      deliverMs,
      eventsPerSec: median(ok.map((r) => r.eventsPerSec)),
      serverCpuMs,
      loopMs: median(ok.map((r) => r.loopMs)),
      probeMs: median(ok.map((r) => r.probeMs)),
      rssPerConnKB: median(all.filter((r) => r.rssPerConnKB !== undefined).map((r) => r.rssPerConnKB)),
      bytesPerEvent: median(ok.map((r) => r.bytesPerEvent)),
      generatorCpuMs: median(ok.map((r) => r.generatorCpuMs)),
      otherCpuMs: median(ok.map((r) => r.otherCpuMs)),
      minDeliverMs: ok.length ? Math.min(...ok.map((r) => r.deliverMs)) : null,
      maxDeliverMs: ok.length ? Math.max(...ok.map((r) => r.deliverMs)) : null,
      errors: all.filter((r) => !r.complete).map((r) => r.error ?? `${r.outcome}: min ${r.delivered?.min}, max ${r.delivered?.max}, exact ${r.delivered?.exact}/${r.n}`)
    }
  })
  const ref = (name) => rows.find((r) => r.server === name && r.deliverMs !== null)
  const raw = ref('raw')
  const hijack = ref('fastify-hijack')
  for (const r of rows) {
    r.timeVsRaw = raw && r.deliverMs !== null ? r.deliverMs / raw.deliverMs : null
    r.timeVsHijack = hijack && r.deliverMs !== null ? r.deliverMs / hijack.deliverMs : null
    r.cpuVsRaw = raw && r.serverCpuMs !== null ? r.serverCpuMs / raw.serverCpuMs : null
  }
  return rows
}

function table (rows) {
  const head = ['server', 'deliver ms', 'events/s', 'time/raw', 'time/hijack', 'CPU s', 'CPU/raw', 'CPU µs/event', 'loop ms', 'probe ms', 'RSS/conn KB', 'B/event', 'gen CPU s', 'ok']
  const lines = rows.map((r) => [
    r.server,
    fmt(r.deliverMs, 0),
    fmt(r.eventsPerSec, 0),
    fmt(r.timeVsRaw, 2),
    fmt(r.timeVsHijack, 2),
    fmt(r.serverCpuMs === null ? null : r.serverCpuMs / 1e3, 3),
    fmt(r.cpuVsRaw, 2),
    fmt(r.cpuPerEventUs, 2),
    fmt(r.loopMs, 0),
    fmt(r.probeMs, 0),
    fmt(r.rssPerConnKB, 1),
    fmt(r.bytesPerEvent, 0),
    fmt(r.generatorCpuMs === null ? null : r.generatorCpuMs / 1e3, 3),
    `${r.complete}/${r.runs}`
  ])
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)))
  const row = (cells) => '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ') + ' |'
  const rule = '|' + widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|'
  return [row(head), rule, ...lines.map(row)].join('\n')
}

function describe (rec) {
  if (!rec.complete) return `FAILED: ${rec.error ?? `${rec.outcome}, delivered min ${rec.delivered?.min} max ${rec.delivered?.max} per client`}`
  const gen = rec.generatorCpuMs / rec.deliverMs
  const warm = rec.warmupMs?.length ? ` (warm-up ${rec.warmupMs.map((x) => fmt(x, 0)).join(', ')} ms)` : ''
  return `${fmt(rec.deliverMs, 0)} ms${warm}, ${fmt(rec.eventsPerSec, 0)} ev/s, CPU ${fmt(rec.serverCpuMs, 0)} ms (loop ${fmt(rec.loopMs, 0)} ms), probe ${fmt(rec.probeMs, 0)} ms, ` +
    `${fmt(rec.rssPerConnKB, 1)} KB/conn, gen CPU ${fmt(rec.generatorCpuMs, 0)} ms${gen > 0.9 ? ' (GENERATOR-BOUND?)' : ''}` +
    (rec.otherCpuMs > 0.15 * rec.deliverMs && rec.otherCpuMs > 50 ? `, other CPU ${fmt(rec.otherCpuMs, 0)} ms (disturbed?)` : '')
}

// ---------------------------------------------------------------------------------------------

async function main () {
  const config = readConfig()
  const maxN = Math.max(...config.scenarios.map((s) => s.n))
  const limits = checkFdLimit(maxN, config.generators)
  const dist = config.servers.some((s) => s.name === 'ours') ? ensureBuild(config.build) : null
  await waitForOtherBenchmarks(config.quietWait)
  mkdirSync(resultsDir, { recursive: true })
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  const outFile = join(resultsDir, `sse-${stamp}.json`)
  const meta = {
    date: new Date().toISOString(),
    command: `node bench/sse/run.js ${process.argv.slice(2).join(' ')}`.trim(),
    node: process.version,
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? null,
    fdLimits: limits,
    config: { ...config, scenarios: config.scenarios.map((s) => s.label), servers: config.servers.map((s) => s.name) },
    versions: Object.fromEntries(['fastify', '@fastify/sse', 'fastify-sse-v2', 'better-sse'].map((p) => [p, packageVersion(p)])),
    dist
  }
  const out = { meta, precheck: [], scenarios: [] }
  const save = () => writeFileSync(outFile, JSON.stringify(out, null, 2) + '\n')
  console.log(`node ${process.version}, ${meta.cpus} CPUs (${meta.cpuModel}); ulimit -n ${limits.soft}`)

  if (config.precheck) {
    const s = { label: `${PRECHECK.n}x${PRECHECK.m}x${PRECHECK.b}`, ...PRECHECK }
    console.log(`\ncorrectness pre-check, ${s.label}: every event of every client parsed and compared`)
    for (const server of config.servers) {
      const rec = await runOnce(server, s, { ...config, settleMs: 0 }, { verify: true })
      out.precheck.push(rec)
      const v = rec.verify
      const ok = rec.complete && v?.ok === true && rec.eventsBeforeBroadcast === 0
      console.log(`  ${server.name.padEnd(15)} ${ok ? 'ok' : 'FAILED'}${rec.chunked ? ' (chunked)' : ''}, ${fmt(rec.bytesPerEvent, 0)} B/event` +
        (ok ? '' : `: ${rec.error ?? ''} ${rec.eventsBeforeBroadcast ? `${rec.eventsBeforeBroadcast} events before the broadcast;` : ''} ${(v?.problems ?? []).join('; ')}`))
    }
    save()
  }

  for (const scenario of config.scenarios) {
    await waitForOtherBenchmarks(config.quietWait)
    console.log(`\nscenario ${scenario.label}: ${scenario.n} clients x ${scenario.m} events x ${scenario.b} B, ${config.rounds} round(s)`)
    const runs = []
    const entry = { scenario: scenario.label, n: scenario.n, m: scenario.m, b: scenario.b, runs, summary: null }
    out.scenarios.push(entry)
    for (let round = 0; round < config.rounds; round++) {
      const k = round % config.servers.length
      const order = [...config.servers.slice(k), ...config.servers.slice(0, k)]
      console.log(`round ${round + 1}/${config.rounds}: ${order.map((s) => s.name).join(', ')}`)
      for (const server of order) {
        const rec = await runOnce(server, scenario, config)
        rec.round = round + 1
        runs.push(rec)
        console.log(`  ${server.name.padEnd(15)} ${describe(rec)}${rec.maxBufferedBytes ? ` [maxBufferedBytes ${rec.maxBufferedBytes}]` : ''}`)
        save()
      }
    }
    entry.summary = summarize(runs, config.servers)
    save()
    console.log(`\n${scenario.label} (${scenario.n} clients x ${scenario.m} events x ${scenario.b} B), medians of ${config.rounds} round(s):\n`)
    console.log(table(entry.summary))
    for (const r of entry.summary) {
      if (r.errors.length > 0) console.log(`  ${r.server}: ${r.errors.length} failed run(s): ${[...new Set(r.errors)].join('; ')}`)
    }
  }
  console.log(`\nraw results: ${outFile}`)
}

main().catch((err) => {
  console.error(err.stack ?? err)
  killAll()
  process.exit(1)
})
