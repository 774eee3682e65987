// SSE broadcast, side by side: node:http (per event, and batched), Fastify with a hijacked
// reply, fastify-long-lived's sse plugin ("ours"), @fastify/sse, fastify-sse-v2 and better-sse.
//
//   npm run build && node bench/sse/run.js [--scenarios 1000x200x100,5000x20x100] [--rounds 5]
//                                          [--servers raw,ours,...] [--generators 2] [...]
//
// A scenario NxMxB is N clients, a broadcast of M events of B payload bytes each. Every run
// forks a fresh server (bench/sse/servers/<name>.js) and load generators (bench/sse/loadgen.js,
// raw `net` sockets), connects the N clients, waits until the server counts N subscribers,
// reads the server's RSS and heap (idle, with N connections), runs a discarded warm-up
// broadcast, then triggers the measured broadcast over IPC and times it until every client has
// received all M events; 20 ms into it, it sends one GET /probe on a fresh connection and times
// its reply. A correctness pre-check parses every event first. Each round runs every server once,
// in an order rotated every round; the tables give medians. Raw numbers go to
// bench/results/sse-<timestamp>.json. See bench/README.md, "SSE broadcast".
import { fork, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { busyMs, ensureBuild, integerSetting, median, otherBenchmarks, procStat, sleep, waitForQuiet } from '../lib.js'

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
const STOP_GRACE_MS = 3e3 // a child asked to exit gets this long before SIGKILL
const CONNECT_BATCH_TIMEOUT_MS = 25e3 // the generator gives up on a batch after 20 s
const OTHER_BENCH = /bench\/(keepalive|shutdown\/run)\.js|autocannon/
// ours: the default maxBufferedBytes; a scenario whose M events do not fit gets more.
const OURS_DEFAULT_MAX_BUFFERED = 1024 * 1024
const PRECHECK = { n: 20, m: 50, b: 100 }
// A run is disturbed when, during its broadcast, other processes used more than this share of
// one core (and more than DISTURBED_MIN_MS): it is kept in the JSON but re-run (--retries).
const DISTURBED_SHARE = 0.25
const DISTURBED_MIN_MS = 100

const usage = `usage: node bench/sse/run.js [options]

  --scenarios LIST   comma-separated NxMxB (clients x events x payload bytes)
                     (default 1000x200x100,5000x20x100; 100x5000x100 is the third one)
  --rounds N         rounds per scenario; each runs every server once, order rotated (default 5)
  --servers LIST     comma-separated subset of: ${SERVERS.map((s) => s.name).join(', ')}
  --generators N     load-generator processes, the clients split between them (default 2)
  --batch N          clients connected at a time (default 200)
  --timeout S        give up on a broadcast after S seconds (default 120)
  --probe-delay MS   when the probe request starts, after the broadcast (default 20)
  --warmup K         discarded broadcasts (same size) before the measured one, per run (default 1)
  --settle MS        pause between "all subscribed" and the idle RSS reading (default 500)
  --quiet-wait S     wait up to S seconds for bench/keepalive.js, bench/shutdown/run.js or
                     autocannon to finish, polling every 30 s (default 900; 0: do not check)
  --idle-wait S      before each run, wait up to S seconds for the machine to be idle
                     (< 10 % busy over 1 s; Linux only; default 20; 0: do not wait)
  --retries K        re-run a disturbed run (other processes took > 25 % of a core during its
                     broadcast) up to K times; all attempts stay in the JSON (default 2)
  --no-precheck      skip the correctness pre-check (${PRECHECK.n}x${PRECHECK.m}x${PRECHECK.b}, every event parsed)
  --server-args A    extra node flags for the servers, space-separated (e.g. "--cpu-prof
                     --cpu-prof-dir=/tmp/prof" to profile them)
  --build            run \`npm run build\` first (it always runs when dist/ is missing)
  --report FILE      measure nothing: print the tables of a results file (bench/results/sse-*.json)
  -h, --help         this text
`

function intFlag (values, name, def, min, max) {
  return integerSetting(values[name], `--${name}`, def, min, max)
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
      'idle-wait': { type: 'string' },
      retries: { type: 'string' },
      'no-precheck': { type: 'boolean', default: false },
      'server-args': { type: 'string' },
      build: { type: 'boolean', default: false },
      report: { type: 'string' },
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
    generators: intFlag(values, 'generators', 2, 1, 8),
    batch: intFlag(values, 'batch', 200, 1, 5000),
    timeoutMs: intFlag(values, 'timeout', 120, 1, 3600) * 1e3,
    probeDelayMs: intFlag(values, 'probe-delay', 20, 0, 60e3),
    settleMs: intFlag(values, 'settle', 500, 0, 60e3),
    warmup: intFlag(values, 'warmup', 1, 0, 20),
    quietWait: intFlag(values, 'quiet-wait', 900, 0, 3600),
    idleWait: intFlag(values, 'idle-wait', 20, 0, 600),
    retries: intFlag(values, 'retries', 2, 0, 10),
    precheck: !values['no-precheck'],
    build: values.build,
    report: values.report ?? null,
    serverArgs: (values['server-args'] ?? '').split(' ').filter((x) => x !== '')
  }
}

const now = () => performance.now()

// ---------------------------------------------------------------------------------------------
// Children: every process this driver starts is in `children`, and killed on any exit.

/** @type {Set<import('node:child_process').ChildProcess>} */
const children = new Set()
let snapshotDir = null // set by snapshotDist

function killAll () {
  for (const child of children) {
    try { child.kill('SIGKILL') } catch {}
  }
  if (snapshotDir !== null) {
    try { rmSync(snapshotDir, { recursive: true, force: true }) } catch {}
    snapshotDir = null
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

/** startChild forks a node script with an IPC channel. */
function startChild (script, args, env, execArgv = []) {
  const child = fork(script, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env, execArgv })
  children.add(child)
  child.once('exit', () => { children.delete(child) })
  // An IPC write can fail once the child is gone; that is seen through 'exit'.
  child.on('error', () => {})
  return child
}

/** stopChild asks the child to exit (so that e.g. --cpu-prof can write its profile), then kills it. */
function stopChild (child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    let timer = setTimeout(() => {
      child.kill('SIGKILL')
      timer = setTimeout(resolve, STOP_TIMEOUT_MS)
    }, STOP_GRACE_MS)
    child.once('exit', () => { clearTimeout(timer); resolve() })
    try { child.send({ type: 'exit' }) } catch { child.kill('SIGKILL') }
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

async function waitForOtherBenchmarks (seconds) {
  if (seconds === 0) return
  const deadline = now() + seconds * 1e3
  for (;;) {
    const others = otherBenchmarks(OTHER_BENCH)
    if (others.length === 0) return
    if (now() >= deadline) throw new Error(`another benchmark is still running after ${seconds} s, not measuring:\n  ${others.join('\n  ')}`)
    console.log(`waiting for another benchmark to finish (polling every 30 s, up to ${seconds} s):\n  ${others.join('\n  ')}`)
    await sleep(Math.min(30e3, Math.max(0, deadline - now())))
  }
}

/**
 * checkFdLimit: the server holds one socket per client (a generator its share). Node raises its
 * own soft limit of open files to the hard limit when it starts, and children inherit that, so
 * what counts is the limit this process sees.
 */
function checkFdLimit (maxClients) {
  const r = spawnSync('/bin/sh', ['-c', 'ulimit -n'], { encoding: 'utf8', timeout: 5e3 })
  const raw = (r.stdout ?? '').trim()
  const limit = raw === 'unlimited' ? Infinity : Number(raw)
  const need = maxClients + 256
  if (!Number.isFinite(limit) || limit >= need) return { limit, need }
  throw new Error(`${maxClients} clients need about ${need} open files in the server process, but the limit is ${limit}.` +
    ' Raise the hard limit before starting (e.g. `ulimit -Hn 65536 && ulimit -Sn 65536` as root, LimitNOFILE= for a' +
    ' systemd service, --ulimit nofile=65536 for docker), or use fewer clients.')
}

/**
 * machineCpu reads the whole machine's CPU time (ms, all CPUs): `busy` is user, nice, system,
 * irq and steal; `softirq` apart, since much of the loopback TCP work of a run is accounted
 * there rather than to the sending or receiving process. null off Linux.
 */
function machineCpu () {
  const s = procStat()
  return s === null ? null : { busy: busyMs(s) - s.softirq, softirq: s.softirq }
}

/**
 * snapshotDist copies dist/ (its .js files) to bench/results/ (git-ignored, and under the
 * package, so that `fastify-plugin` & co. still resolve): every `ours` run of the session
 * then loads the same build even if dist/ is rebuilt meanwhile. Removed on exit. Returns the
 * directory and the hashes of the files it holds.
 */
function snapshotDist (stamp) {
  const dir = join(resultsDir, `sse-dist-${stamp}`)
  const hashes = (base) => {
    const out = {}
    const walk = (rel) => {
      for (const f of readdirSync(join(base, rel), { withFileTypes: true })) {
        const p = rel === '' ? f.name : `${rel}/${f.name}`
        if (f.isDirectory()) walk(p)
        else if (f.name.endsWith('.js')) out[p] = createHash('sha256').update(readFileSync(join(base, p))).digest('hex').slice(0, 16)
      }
    }
    walk('plugins')
    return out
  }
  for (let attempt = 0; attempt < 5; attempt++) {
    rmSync(dir, { recursive: true, force: true })
    mkdirSync(resultsDir, { recursive: true })
    cpSync(join(root, 'dist'), dir, { recursive: true, filter: (src) => statSync(src).isDirectory() || src.endsWith('.js') })
    snapshotDir = dir
    const copied = hashes(dir)
    // A build that ran during the copy shows as a difference: copy again.
    if (JSON.stringify(copied) === JSON.stringify(hashes(join(root, 'dist')))) return { dir, hashes: copied }
  }
  throw new Error('dist/ kept changing while it was being copied (a build running?)')
}

/** gitState: the commit and whether plugins/ differs from it (read-only git commands). */
function gitState () {
  const git = (...args) => spawnSync('git', args, { cwd: root, encoding: 'utf8', timeout: 5e3 }).stdout?.trim() ?? null
  return { head: git('rev-parse', '--short', 'HEAD'), pluginsChanged: git('status', '--porcelain', '--', 'plugins') }
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

async function startServer (server, scenario, config) {
  const env = { ...process.env }
  delete env.NODE_OPTIONS
  if (server.name === 'ours') {
    if (snapshotDir !== null) env.SSE_BENCH_DIST = snapshotDir
    // Each event is B + 30 bytes (its id and data fields); all M wait at once for each client.
    const need = scenario.m * (scenario.b + 32)
    if (need > OURS_DEFAULT_MAX_BUFFERED * 0.9) env.SSE_BENCH_MAX_BUFFERED = String(Math.ceil(need * 2))
  }
  const child = startChild(join(here, 'servers', server.file), [], env, ['--expose-gc', '--no-warnings', ...config.serverArgs])
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
  const cpu0 = machineCpu()
  const loopDone = waitMessage(srv.child, (x) => x.type === 'broadcast-done', config.timeoutMs + IPC_TIMEOUT_MS, 'the broadcast loop')
  const t0 = now()
  srv.child.send({ type: 'broadcast', id: nextId++, m, b })
  // Sent even when the broadcast is over by then (it then times an idle server).
  const probed = withProbe ? sleep(config.probeDelayMs).then(() => probe(srv.port)) : null
  const outcome = await delivered
  const cpu1 = machineCpu()
  for (const remove of listeners) remove()
  rec.outcome = outcome
  const loop = await loopDone
  if (loop.error !== null) throw new Error(`the broadcast threw: ${loop.error}`)
  rec.loopMs = loop.loopMs
  rec.loopCpuMs = loop.cpuMs
  const after = await request(srv.child, { type: 'stats' }, 'server stats')
  rec.serverCpuMs = after.cpuMs
  rec.rssAfterMB = after.rss / 2 ** 20
  rec.warnings = after.warnings
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
  if (cpu0 !== null && cpu1 !== null && rec.deliverMs !== null) {
    // CPU the machine spent during the broadcast beyond the server and the generators, softirq
    // apart (roughly: /proc/stat counts 10 ms ticks, and the server's CPU runs a little longer).
    rec.otherCpuMs = Math.max(0, (cpu1.busy - cpu0.busy) - rec.serverCpuMs - genCpuMs)
    rec.softirqMs = cpu1.softirq - cpu0.softirq
    rec.disturbed = rec.otherCpuMs > DISTURBED_SHARE * rec.deliverMs && rec.otherCpuMs > DISTURBED_MIN_MS
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
    srv = await startServer(server, scenario, config)
    rec.maxBufferedBytes = srv.maxBuffered === null ? null : Number(srv.maxBuffered)
    const before = await request(srv.child, { type: 'stats', gc: true }, 'server stats')
    const started = await startGenerators(verify ? 1 : config.generators, srv.port, n, config.batch, verify)
    gens = started.gens
    rec.chunked = started.chunked
    rec.generators = gens.length
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

function fmt (x, digits = 0) {
  if (x === null || x === undefined || !Number.isFinite(x)) return '-'
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

function summarize (runs, servers) {
  const rows = servers.map((s) => {
    const all = runs.filter((r) => r.server === s.name && r.discarded === undefined)
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
      heapPerConnKB: median(all.filter((r) => r.heapPerConnKB !== undefined).map((r) => r.heapPerConnKB)),
      bytesPerEvent: median(ok.map((r) => r.bytesPerEvent)),
      generatorCpuMs: median(ok.map((r) => r.generatorCpuMs)),
      otherCpuMs: median(ok.map((r) => r.otherCpuMs)),
      disturbed: ok.filter((r) => r.disturbed === true).length,
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
  const head = ['server', 'deliver ms', 'events/s', 'time/raw', 'time/hijack', 'CPU s', 'CPU/raw', 'CPU µs/event', 'loop ms', 'probe ms', 'RSS/conn KB', 'heap/conn KB', 'B/event', 'gen CPU s', 'ok']
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
    fmt(r.heapPerConnKB, 1),
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
  const gen = rec.generatorCpuMs / rec.generators / rec.deliverMs
  const warm = rec.warmupMs?.length ? ` (warm-up ${rec.warmupMs.map((x) => fmt(x, 0)).join(', ')} ms)` : ''
  return `${fmt(rec.deliverMs, 0)} ms${warm}, ${fmt(rec.eventsPerSec, 0)} ev/s, CPU ${fmt(rec.serverCpuMs, 0)} ms (loop ${fmt(rec.loopMs, 0)} ms), probe ${fmt(rec.probeMs, 0)} ms, ` +
    `${fmt(rec.rssPerConnKB, 1)} KB/conn, gen CPU ${fmt(rec.generatorCpuMs, 0)} ms${gen > 0.9 ? ' (GENERATOR-BOUND: a generator was busy > 90 % of the time)' : ''}` +
    (rec.disturbed ? `, other CPU ${fmt(rec.otherCpuMs, 0)} ms: DISTURBED` : '') +
    Object.entries(rec.warnings ?? {}).map(([w, k]) => `\n      server warning x${k}: ${w}`).join('')
}

// ---------------------------------------------------------------------------------------------

/** printReport prints the tables of a results file again (with this version's columns). */
function printReport (file) {
  const data = JSON.parse(readFileSync(file, 'utf8'))
  const { meta } = data
  console.log(`${meta.command}\n${meta.date}, node ${meta.node}, ${meta.cpus} CPUs (${meta.cpuModel}), ${meta.platform}`)
  console.log(`versions: ${Object.entries(meta.versions).map(([k, v]) => `${k} ${v}`).join(', ')}; git ${meta.git?.head ?? '?'}`)
  const servers = meta.config.servers.map((name) => SERVERS.find((s) => s.name === name))
  for (const entry of data.scenarios) {
    const rounds = Math.max(0, ...entry.runs.map((r) => r.round ?? 0))
    console.log(`\n${entry.scenario} (${entry.n} clients x ${entry.m} events x ${entry.b} B), medians of ${rounds} round(s):\n`)
    console.log(table(summarize(entry.runs, servers)))
  }
}

async function main () {
  const config = readConfig()
  if (config.report !== null) {
    printReport(config.report)
    return
  }
  const maxN = Math.max(...config.scenarios.map((s) => s.n))
  const limits = checkFdLimit(maxN)
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  let dist = null
  if (config.servers.some((s) => s.name === 'ours')) {
    const { builtAt, sourcesNewerThanBuild } = ensureBuild(distFiles, config.build)
    const build = { builtAt, sourcesNewerThanBuild }
    dist = { ...build, hashes: snapshotDist(stamp).hashes }
  }
  await waitForOtherBenchmarks(config.quietWait)
  mkdirSync(resultsDir, { recursive: true })
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
    dist,
    git: gitState()
  }
  const out = { meta, precheck: [], scenarios: [] }
  const save = () => writeFileSync(outFile, JSON.stringify(out, null, 2) + '\n')
  console.log(`node ${process.version}, ${meta.cpus} CPUs (${meta.cpuModel}); ulimit -n ${limits.limit}`)

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
        for (let attempt = 0; ; attempt++) {
          await waitForOtherBenchmarks(config.quietWait)
          const quiet = await waitForQuiet(config.idleWait)
          const rec = await runOnce(server, scenario, config)
          rec.idleWait = quiet
          rec.round = round + 1
          const retry = rec.complete && rec.disturbed === true && attempt < config.retries
          if (retry) rec.discarded = 'disturbed, re-run'
          runs.push(rec)
          console.log(`  ${server.name.padEnd(15)} ${describe(rec)}${rec.maxBufferedBytes ? ` [maxBufferedBytes ${rec.maxBufferedBytes}]` : ''}${retry ? ' -> re-run' : ''}`)
          save()
          if (!retry) break
        }
      }
    }
    entry.summary = summarize(runs, config.servers)
    save()
    console.log(`\n${scenario.label} (${scenario.n} clients x ${scenario.m} events x ${scenario.b} B), medians of ${config.rounds} round(s):\n`)
    console.log(table(entry.summary))
    for (const r of entry.summary) {
      if (r.errors.length > 0) console.log(`  ${r.server}: ${r.errors.length} failed run(s): ${[...new Set(r.errors)].join('; ')}`)
      if (r.disturbed > 0) console.log(`  ${r.server}: ${r.disturbed} of the runs above were still disturbed after ${config.retries} re-run(s)`)
    }
  }
  console.log(`\nraw results: ${outFile}`)
  killAll() // removes the dist/ snapshot
}

main().catch((err) => {
  console.error(err.stack ?? err)
  killAll()
  process.exit(1)
})
