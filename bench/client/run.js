// Upstream throughput: the client plugin's keep-alive pool vs a new connection per request.
//
//   npm run build && node bench/client/run.js [--rounds 5] [--duration 10] [--warmup 2]
//                                             [--callers 32] [--variants pool,per-request]
//                                             [--wait-others 1200] [--quiet-wait 30] [--build]
//
// Each run forks a fresh upstream (bench/client/upstream.js, plain node:http on 127.0.0.1) and
// a fresh caller process (bench/client/caller.js <variant>) that keeps `callers` requests in
// flight for a discarded warm-up, then for the measured duration. Variants alternate every
// round (A,B / B,A / ...) so that neither always gets the warmer machine. Prints the medians,
// the pool/per-request ratio of the medians and of each round, and writes the raw numbers to
// bench/results/client-<timestamp>.json. Every wait is bounded; every child is stopped on
// exit, on error and on Ctrl-C.
import os from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { busyMs, childStats, ensureBuild, forkChild, median, otherBenchmarks, pairedSummary, procStat, readConfig as readSettings, runMain, sleep, startChild, stopChild, waitForQuiet, writeResults } from '../lib.js'

const benchDir = dirname(fileURLToPath(import.meta.url))
const upstreamPath = join(benchDir, 'upstream.js')
const callerPath = join(benchDir, 'caller.js')
const distFiles = ['dist/plugins/connections.js', 'dist/plugins/client.js']
const ALL_VARIANTS = ['pool', 'per-request', 'undici']

const START_TIMEOUT_MS = 15e3
const STATS_TIMEOUT_MS = 5e3
const RUN_SLACK_MS = 20e3
const OTHERS_POLL_MS = 30e3
// Above this share of one core spent in other processes during a run, the run counts as
// disturbed: the summary warns and also gives the ratio over undisturbed rounds only.
const OTHER_CPU_WARN_PERCENT = 15
// Other benchmarks of this repository: running next to them would measure the machine.
const OTHER_BENCH = /bench\/(keepalive|sse)/

const numeric = {
  rounds: { env: 'BENCH_ROUNDS', def: 5, min: 1, max: 100 },
  duration: { env: 'BENCH_DURATION', def: 10, min: 1, max: 600 },
  warmup: { env: 'BENCH_WARMUP', def: 2, min: 0, max: 60 },
  callers: { env: 'BENCH_CALLERS', def: 32, min: 1, max: 4096 },
  'wait-others': { env: 'BENCH_WAIT_OTHERS', def: 1200, min: 0, max: 7200 },
  'quiet-wait': { env: 'BENCH_QUIET_WAIT', def: 30, min: 0, max: 600 }
}

const usage = `usage: node bench/client/run.js [options]

  --rounds N        rounds; each runs every variant once, order flipped every round (default 5, env BENCH_ROUNDS)
  --duration S      measured seconds per run (default 10, env BENCH_DURATION)
  --warmup S        discarded warm-up seconds per run, 0 for none (default 2, env BENCH_WARMUP)
  --callers N       requests kept in flight by the caller (default 32, env BENCH_CALLERS)
  --variants LIST   comma-separated, from ${ALL_VARIANTS.join(', ')}; the first is compared with the
                    second (default pool,per-request, env BENCH_VARIANTS)
  --wait-others S   wait up to S seconds (polling every 30 s) while bench/keepalive or bench/sse
                    runs; 0 to skip (default 1200, env BENCH_WAIT_OTHERS)
  --quiet-wait S    before each run, wait up to S seconds for the machine to be idle
                    (Linux only; 0 to skip; default 30, env BENCH_QUIET_WAIT)
  --build           run \`npm run build\` even if dist/ exists (it always runs when dist/ is missing)
  -h, --help        this text
`

function readConfig () {
  const config = readSettings({ numeric, usage, strings: ['variants'] })
  const variants = (config.variants ?? process.env.BENCH_VARIANTS ?? 'pool,per-request').split(',').map((v) => v.trim())
  if (variants.length < 2 || new Set(variants).size !== variants.length || variants.some((v) => !ALL_VARIANTS.includes(v))) {
    throw new Error(`--variants must list at least two distinct variants from ${ALL_VARIANTS.join(', ')}, got ${JSON.stringify(variants.join(','))}`)
  }
  config.variants = variants
  return config
}

/** waitForOthers waits (polling every 30 s, at most `seconds`) until no other benchmark runs. */
async function waitForOthers (seconds) {
  if (seconds === 0) return { waitedMs: 0, clear: null }
  const start = performance.now()
  for (;;) {
    const others = otherBenchmarks(OTHER_BENCH)
    const waitedMs = Math.round(performance.now() - start)
    if (others.length === 0) return { waitedMs, clear: true }
    if (waitedMs >= seconds * 1e3) {
      console.warn(`warning: still running after ${seconds} s, measuring anyway:\n  ${others.join('\n  ')}`)
      return { waitedMs, clear: false }
    }
    console.log(`another benchmark is running, waiting (${Math.round(waitedMs / 1e3)} s so far):\n  ${others.join('\n  ')}`)
    await sleep(OTHERS_POLL_MS)
  }
}

/** machineBusyMs reads the whole machine's busy time (ms, all CPUs, steal excluded); null off Linux. */
function machineBusyMs () {
  const s = procStat()
  return s === null ? null : busyMs(s) - s.steal
}

/** startUpstream forks the upstream and resolves with its port once it printed it. */
async function startUpstream () {
  const { child, info } = await startChild(upstreamPath, [], 'the upstream', (i) => Number.isInteger(i.port), START_TIMEOUT_MS)
  return { child, port: info.port }
}

const upstreamStats = (child) => childStats(child, 'the upstream', STATS_TIMEOUT_MS)

/** oneRun measures one variant against a fresh upstream, with a fresh caller process. */
async function oneRun (variant, round, slot, config) {
  const others = await waitForOthers(config['wait-others'])
  const quiet = await waitForQuiet(config['quiet-wait'])
  const { child: upstream, port } = await startUpstream()
  let caller = null
  try {
    caller = forkChild(callerPath, [variant, `http://127.0.0.1:${port}`, String(config.callers), String(config.warmup), String(config.duration)])
    caller.stdout.resume()
    const budget = (config.warmup + config.duration) * 1e3 + RUN_SLACK_MS
    let machineBefore = null
    let machineAfter = null
    const { result, before, after } = await new Promise((resolve, reject) => {
      let before = null
      const timer = setTimeout(() => { reject(new Error(`${variant}: no result within ${budget} ms`)) }, budget)
      const onExit = (code, signal) => {
        clearTimeout(timer)
        reject(new Error(`${variant}: the caller exited without a result (code ${code}, signal ${signal})`))
      }
      caller.once('exit', onExit)
      caller.on('message', (msg) => {
        if (msg?.cmd === 'measuring') {
          machineBefore = machineBusyMs()
          before = upstreamStats(upstream)
          before.catch(() => {})
        } else if (msg?.cmd === 'result') {
          machineAfter = machineBusyMs()
          clearTimeout(timer)
          caller.removeListener('exit', onExit)
          Promise.all([before, upstreamStats(upstream)]).then(([b, a]) => { resolve({ result: msg, before: b, after: a }) }, reject)
        }
      })
    })
    const upstreamCpuMs = (after.cpuUserUs + after.cpuSystemUs - before.cpuUserUs - before.cpuSystemUs) / 1e3
    // Busy time of the machine not spent in the caller or the upstream (the kernel's loopback
    // work lands partly here too, so a few % is normal).
    const otherCpuMs = machineBefore === null || machineAfter === null
      ? null
      : Math.max(0, machineAfter - machineBefore - result.callerCpuMs - upstreamCpuMs)
    return {
      round,
      slot,
      ...result,
      othersWaitMs: others.waitedMs,
      quietWaitMs: quiet.waitedMs,
      quietBeforeRun: quiet.quiet,
      otherCpuMs,
      otherCpuPercentOfOneCore: otherCpuMs === null ? null : 100 * otherCpuMs / (result.seconds * 1e3),
      upstreamConnections: after.connections - before.connections,
      upstreamConnectionsWholeRun: after.connections,
      upstreamRequests: after.requests - before.requests,
      upstreamCpuMs,
      upstreamCpuUsPerReq: result.requests > 0 ? upstreamCpuMs * 1e3 / result.requests : null
    }
  } finally {
    await Promise.all([caller === null ? null : stopChild(caller), stopChild(upstream)])
  }
}

function summarize (runs, config) {
  const byVariant = {}
  for (const v of config.variants) {
    const rs = runs.filter((r) => r.variant === v)
    const rps = rs.map((r) => r.reqPerSec)
    byVariant[v] = {
      runs: rs.length,
      medianReqPerSec: median(rps),
      minReqPerSec: Math.min(...rps),
      maxReqPerSec: Math.max(...rps),
      medianLatencyP50Ms: median(rs.map((r) => r.latencyP50Ms)),
      medianLatencyP99Ms: median(rs.map((r) => r.latencyP99Ms)),
      medianCallerCpuUsPerReq: median(rs.map((r) => r.callerCpuUsPerReq)),
      medianUpstreamConnections: median(rs.map((r) => r.upstreamConnections)),
      medianUpstreamConnectionsWholeRun: median(rs.map((r) => r.upstreamConnectionsWholeRun)),
      errors: rs.reduce((a, r) => a + r.errorCount + r.non2xx, 0),
      maxOtherCpuPercent: rs.some((r) => r.otherCpuPercentOfOneCore === null) ? null : Math.max(...rs.map((r) => r.otherCpuPercentOfOneCore))
    }
  }
  const [a, b] = config.variants
  const disturbed = (r) => r.otherCpuPercentOfOneCore !== null && r.otherCpuPercentOfOneCore > OTHER_CPU_WARN_PERCENT
  const paired = []
  const undisturbed = []
  for (let round = 1; round <= config.rounds; round++) {
    const ra = runs.find((r) => r.round === round && r.variant === a)
    const rb = runs.find((r) => r.round === round && r.variant === b)
    if (!ra || !rb) continue
    paired.push(ra.reqPerSec / rb.reqPerSec)
    if (!disturbed(ra) && !disturbed(rb)) undisturbed.push({ round, ratio: ra.reqPerSec / rb.reqPerSec })
  }
  return {
    byVariant,
    compared: `${a}/${b}`,
    ratioOfMedians: byVariant[a].medianReqPerSec / byVariant[b].medianReqPerSec,
    // Undisturbed: rounds where neither run lost more than OTHER_CPU_WARN_PERCENT % of a core to other processes.
    ...pairedSummary(paired, undisturbed)
  }
}

const fmt = (n, digits = 0) => n === null || n === undefined ? 'n/a' : n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })

function printTable (summary, config) {
  const head = ['variant', 'runs', 'median req/s', 'min', 'max', 'p50 ms', 'p99 ms', 'caller CPU µs/req',
    'new upstream connections (measured)', 'upstream connections (whole run)', 'max other CPU %', 'errors']
  const rows = config.variants.map((v) => {
    const s = summary.byVariant[v]
    return [v, String(s.runs), fmt(s.medianReqPerSec), fmt(s.minReqPerSec), fmt(s.maxReqPerSec), fmt(s.medianLatencyP50Ms, 2),
      fmt(s.medianLatencyP99Ms, 2), fmt(s.medianCallerCpuUsPerReq, 1), fmt(s.medianUpstreamConnections),
      fmt(s.medianUpstreamConnectionsWholeRun), fmt(s.maxOtherCpuPercent), String(s.errors)]
  })
  const lines = [head, head.map(() => '---'), ...rows].map((cells) => `| ${cells.join(' | ')} |`)
  console.log('\n' + lines.join('\n') + '\n')
  console.log(`${summary.compared} ratio of medians: ${fmt(summary.ratioOfMedians, 2)}`)
  console.log(`${summary.compared} per round: ${summary.pairedRatios.map((r) => fmt(r, 2)).join(', ')}` +
    ` (median ${fmt(summary.medianPairedRatio, 2)}, min ${fmt(summary.minPairedRatio, 2)}, max ${fmt(summary.maxPairedRatio, 2)})`)
  const busy = config.variants.filter((v) => (summary.byVariant[v].maxOtherCpuPercent ?? 0) > OTHER_CPU_WARN_PERCENT)
  if (busy.length > 0) {
    const u = summary.undisturbedPairedRatios
    console.log(`warning: in some runs more than ${OTHER_CPU_WARN_PERCENT} % of a core went to other processes (otherCpuPercentOfOneCore ` +
      `in the raw results); ${summary.compared} over the ${u.length} undisturbed rounds (${summary.undisturbedRounds.join(', ') || 'none'}): ` +
      (u.length > 0 ? `${u.map((r) => fmt(r, 2)).join(', ')} (median ${fmt(summary.medianUndisturbedPairedRatio, 2)})` : 'n/a'))
  }
}

async function main () {
  const config = readConfig()
  const dist = ensureBuild(distFiles, config.build).hashes
  const perRun = config.warmup + config.duration + 2
  console.log(`client bench: ${config.rounds} rounds x ${config.variants.length} variants (${config.variants.join(', ')}) x ` +
    `(${config.warmup} s warm-up + ${config.duration} s), ${config.callers} callers, node ${process.version}, ${os.cpus().length} CPUs ` +
    `(about ${Math.ceil(config.rounds * config.variants.length * perRun / 60)} min)`)

  const startedAt = new Date()
  const runs = []
  for (let round = 1; round <= config.rounds; round++) {
    const order = round % 2 === 1 ? config.variants : [...config.variants].reverse()
    for (const [slot, variant] of order.entries()) {
      const run = await oneRun(variant, round, slot, config)
      runs.push(run)
      const bad = run.errorCount + run.non2xx
      console.log(`round ${round}/${config.rounds} ${variant.padEnd(11)} ${fmt(run.reqPerSec).padStart(7)} req/s  ` +
        `p99 ${fmt(run.latencyP99Ms, 2)} ms  caller CPU ${fmt(run.callerCpuUsPerReq, 1)} µs/req  ` +
        `upstream saw ${fmt(run.upstreamConnections)} new connections (${fmt(run.upstreamConnectionsWholeRun)} with the warm-up)` +
        (run.otherCpuPercentOfOneCore === null ? '' : `  other CPU ${fmt(run.otherCpuPercentOfOneCore)} %`) +
        (bad > 0 ? `  ERRORS ${JSON.stringify(run.errors)} non2xx ${run.non2xx}` : ''))
    }
  }

  const summary = summarize(runs, config)
  printTable(summary, config)

  const file = writeResults('client', startedAt, { head: { config }, body: { dist, summary, runs } })
  console.log(`raw results: ${file}`)
}

await runMain(main, 'the upstream and the caller')
