// Keep-alive throughput: bare Fastify vs Fastify + connections + timeouts (the "kit").
//
//   npm run build && node bench/keepalive.js [--rounds 5] [--duration 10] [--warmup 2]
//                                            [--connections 100] [--pipelining 1]
//                                            [--quiet-wait 30] [--build]
//
// Each round runs both variants, each in a fresh server process (bench/server.js), and the
// order flips every round (bare,kit / kit,bare / ...) so that neither variant always gets
// the warmer (or the more throttled) machine. Every run is a discarded autocannon warm-up,
// then a measured autocannon run against 127.0.0.1. Prints a summary table and writes the raw
// numbers to bench/results/keepalive-<timestamp>.json. See bench/README.md.
import autocannon from 'autocannon'
import os from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { busyMs, childStats, ensureBuild, median, pairedSummary, procStat, readConfig, runMain, startChild, stopChild, waitForQuiet, writeResults } from './lib.js'

const benchDir = dirname(fileURLToPath(import.meta.url))
const serverPath = join(benchDir, 'server.js')
const distFiles = ['dist/plugins/connections.js', 'dist/plugins/timeouts.js']
const VARIANTS = ['bare', 'kit']

// Upper bounds on every wait, so that nothing can hang the run.
const SERVER_START_TIMEOUT_MS = 15e3
const STATS_TIMEOUT_MS = 5e3
const CANNON_SLACK_MS = 15e3
// Above this share of one core spent in other processes during a run, the run counts as
// disturbed: the summary warns and also gives the ratio over undisturbed rounds only.
const OTHER_CPU_WARN_PERCENT = 15

/** The numeric settings: flag name, environment variable, default, bounds. */
const numeric = {
  rounds: { env: 'BENCH_ROUNDS', def: 5, min: 1, max: 100 },
  duration: { env: 'BENCH_DURATION', def: 10, min: 1, max: 600 },
  warmup: { env: 'BENCH_WARMUP', def: 2, min: 0, max: 60 },
  connections: { env: 'BENCH_CONNECTIONS', def: 100, min: 1, max: 10000 },
  pipelining: { env: 'BENCH_PIPELINING', def: 1, min: 1, max: 100 },
  'quiet-wait': { env: 'BENCH_QUIET_WAIT', def: 30, min: 0, max: 600 }
}

const usage = `usage: node bench/keepalive.js [options]

  --rounds N       rounds; each runs bare and kit once, order flipped every round (default 5, env BENCH_ROUNDS)
  --duration S     measured seconds per run (default 10, env BENCH_DURATION)
  --warmup S       discarded warm-up seconds per run, 0 for none (default 2, env BENCH_WARMUP)
  --connections N  autocannon connections (default 100, env BENCH_CONNECTIONS)
  --pipelining N   autocannon pipelining (default 1, env BENCH_PIPELINING)
  --quiet-wait S   before each run, wait up to S seconds for the machine to be idle
                   (Linux only; 0 to skip; default 30, env BENCH_QUIET_WAIT)
  --build          run \`npm run build\` even if dist/ exists (it always runs when dist/ is missing)
  -h, --help       this text
`

/**
 * machineCpu reads the whole machine's busy and steal time (ms, all CPUs), so that a run can
 * tell how much CPU went to processes other than the server and this driver. null off Linux.
 */
function machineCpu () {
  const s = procStat()
  return s === null ? null : { busyMs: busyMs(s) - s.steal, stealMs: s.steal }
}

/** startServer forks `bench/server.js <variant>` and resolves once it printed its port. */
async function startServer (variant) {
  const { child, info } = await startChild(serverPath, [variant], `${variant} server`,
    (i) => i.variant === variant && Number.isInteger(i.port), SERVER_START_TIMEOUT_MS)
  return { child, port: info.port }
}

/** serverStats asks the server for its own CPU time (µs), RSS and request counter. */
const serverStats = (child) => childStats(child, `server ${child.pid}`, STATS_TIMEOUT_MS)

/**
 * cannon runs autocannon for `seconds` against 127.0.0.1:port, stopping it by force if it
 * overruns by CANNON_SLACK_MS.
 */
function cannon (port, seconds, config) {
  return new Promise((resolve, reject) => {
    let guard = null
    const instance = autocannon({
      url: `http://127.0.0.1:${port}/`,
      connections: config.connections,
      pipelining: config.pipelining,
      duration: seconds
    }, (err, result) => {
      clearTimeout(guard)
      if (err) reject(err)
      else resolve(result)
    })
    guard = setTimeout(() => { instance.stop() }, seconds * 1e3 + CANNON_SLACK_MS)
  })
}

/** oneRun measures one variant in a fresh server process. */
async function oneRun (variant, round, slot, config) {
  const quiet = await waitForQuiet(config['quiet-wait'])
  const { child, port } = await startServer(variant)
  try {
    if (config.warmup > 0) await cannon(port, config.warmup, config)
    const before = await serverStats(child)
    const machineBefore = machineCpu()
    const selfBefore = process.cpuUsage()
    const r = await cannon(port, config.duration, config)
    const self = process.cpuUsage(selfBefore)
    const machineAfter = machineCpu()
    const after = await serverStats(child)
    const cpuMs = (after.cpuUserUs + after.cpuSystemUs - before.cpuUserUs - before.cpuSystemUs) / 1e3
    const driverCpuMs = (self.user + self.system) / 1e3
    // Busy time of the machine not spent in the server or in this driver (autocannon): the
    // kernel's own network work lands partly here too, so a few % is normal.
    const otherCpuMs = machineBefore === null || machineAfter === null
      ? null
      : Math.max(0, machineAfter.busyMs - machineBefore.busyMs - cpuMs - driverCpuMs)
    const total = r.requests.total
    const run = {
      round,
      slot,
      variant,
      quietWaitMs: quiet.waitedMs,
      quietBeforeRun: quiet.quiet,
      reqPerSec: r.requests.average,
      reqPerSecStddev: r.requests.stddev,
      requests: total,
      seconds: r.duration,
      latencyAvgMs: r.latency.average,
      latencyP50Ms: r.latency.p50,
      latencyP99Ms: r.latency.p99,
      latencyMaxMs: r.latency.max,
      errors: r.errors,
      timeouts: r.timeouts,
      non2xx: r.non2xx,
      resets: r.resets,
      serverCpuMs: cpuMs,
      serverCpuUsPerReq: total > 0 ? cpuMs * 1e3 / total : null,
      serverRssMB: after.rssBytes / 2 ** 20,
      driverCpuMs,
      otherCpuMs,
      otherCpuPercentOfOneCore: otherCpuMs === null ? null : 100 * otherCpuMs / (r.duration * 1e3),
      stealMs: machineBefore === null || machineAfter === null ? null : machineAfter.stealMs - machineBefore.stealMs,
      // kit only: what the connections registry counted during the measured run.
      registryRequests: after.requestsTotal === null ? null : after.requestsTotal - before.requestsTotal
    }
    return run
  } finally {
    await stopChild(child)
  }
}

function summarize (runs, rounds) {
  const byVariant = {}
  for (const v of VARIANTS) {
    const rs = runs.filter((r) => r.variant === v)
    const rps = rs.map((r) => r.reqPerSec)
    const mean = rps.reduce((a, b) => a + b, 0) / rps.length
    const sd = Math.sqrt(rps.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, rps.length - 1))
    byVariant[v] = {
      runs: rs.length,
      medianReqPerSec: median(rps),
      minReqPerSec: Math.min(...rps),
      maxReqPerSec: Math.max(...rps),
      meanReqPerSec: mean,
      cvPercent: rps.length > 1 ? 100 * sd / mean : 0,
      medianLatencyP50Ms: median(rs.map((r) => r.latencyP50Ms)),
      medianLatencyP99Ms: median(rs.map((r) => r.latencyP99Ms)),
      medianServerCpuUsPerReq: median(rs.map((r) => r.serverCpuUsPerReq)),
      errors: rs.reduce((a, r) => a + r.errors + r.timeouts + r.non2xx, 0),
      maxOtherCpuPercent: rs.some((r) => r.otherCpuPercentOfOneCore === null) ? null : Math.max(...rs.map((r) => r.otherCpuPercentOfOneCore))
    }
  }
  // The same round's kit/bare: both ran back to back, so slow drift of the machine cancels out.
  const paired = []
  const pairedCpu = []
  const undisturbed = []
  const disturbed = (r) => r.otherCpuPercentOfOneCore !== null && r.otherCpuPercentOfOneCore > OTHER_CPU_WARN_PERCENT
  for (let round = 1; round <= rounds; round++) {
    const bare = runs.find((r) => r.round === round && r.variant === 'bare')
    const kit = runs.find((r) => r.round === round && r.variant === 'kit')
    if (!bare || !kit) continue
    paired.push(kit.reqPerSec / bare.reqPerSec)
    pairedCpu.push(kit.serverCpuUsPerReq / bare.serverCpuUsPerReq)
    if (!disturbed(bare) && !disturbed(kit)) undisturbed.push({ round, ratio: kit.reqPerSec / bare.reqPerSec })
  }
  return {
    byVariant,
    ratioOfMedians: byVariant.kit.medianReqPerSec / byVariant.bare.medianReqPerSec,
    // Undisturbed: rounds where neither run lost more than OTHER_CPU_WARN_PERCENT % of a core to other processes.
    ...pairedSummary(paired, undisturbed),
    ratioOfMedianServerCpuPerReq: byVariant.kit.medianServerCpuUsPerReq / byVariant.bare.medianServerCpuUsPerReq,
    // Server CPU per request, kit/bare in the same round: the server's own cost, less sensitive
    // than req/s to CPU taken by other processes (not to a slower host, which hits both alike).
    pairedServerCpuRatios: pairedCpu,
    medianPairedServerCpuRatio: median(pairedCpu)
  }
}

const fmt = (n, digits = 0) => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })

function printTable (summary) {
  const head = ['variant', 'runs', 'median req/s', 'min', 'max', 'CV %', 'p50 ms', 'p99 ms', 'server CPU µs/req', 'max other CPU %', 'errors']
  const rows = VARIANTS.map((v) => {
    const s = summary.byVariant[v]
    return [v, String(s.runs), fmt(s.medianReqPerSec), fmt(s.minReqPerSec), fmt(s.maxReqPerSec), fmt(s.cvPercent, 1),
      fmt(s.medianLatencyP50Ms), fmt(s.medianLatencyP99Ms), fmt(s.medianServerCpuUsPerReq, 1),
      s.maxOtherCpuPercent === null ? 'n/a' : fmt(s.maxOtherCpuPercent), String(s.errors)]
  })
  const lines = [head, head.map(() => '---'), ...rows].map((cells) => `| ${cells.join(' | ')} |`)
  console.log('\n' + lines.join('\n') + '\n')
  console.log(`kit/bare ratio of medians: ${fmt(summary.ratioOfMedians, 3)}`)
  console.log(`kit/bare per round (same-round pairs): ${summary.pairedRatios.map((r) => fmt(r, 3)).join(', ')}` +
    ` (median ${fmt(summary.medianPairedRatio, 3)}, min ${fmt(summary.minPairedRatio, 3)}, max ${fmt(summary.maxPairedRatio, 3)})`)
  console.log(`kit/bare server CPU per request: ratio of medians ${fmt(summary.ratioOfMedianServerCpuPerReq, 3)}, ` +
    `per round ${summary.pairedServerCpuRatios.map((r) => fmt(r, 3)).join(', ')} (median ${fmt(summary.medianPairedServerCpuRatio, 3)})`)
  const busy = VARIANTS.filter((v) => (summary.byVariant[v].maxOtherCpuPercent ?? 0) > OTHER_CPU_WARN_PERCENT)
  if (busy.length > 0) {
    console.log(`warning: in some runs more than ${OTHER_CPU_WARN_PERCENT} % of a core went to other processes: ` +
      'the machine was not quiet, so those numbers are skewed (see otherCpuPercentOfOneCore in the raw results)')
    const u = summary.undisturbedPairedRatios
    console.log(`kit/bare over the ${u.length} undisturbed rounds (${summary.undisturbedRounds.join(', ') || 'none'}): ` +
      (u.length > 0 ? `${u.map((r) => fmt(r, 3)).join(', ')} (median ${fmt(summary.medianUndisturbedPairedRatio, 3)})` : 'n/a'))
  }
}

async function main () {
  const config = readConfig({ numeric, usage })
  const dist = ensureBuild(distFiles, config.build).hashes
  const perRun = config.warmup + config.duration + 2
  console.log(`keepalive bench: ${config.rounds} rounds x ${VARIANTS.length} variants x (${config.warmup} s warm-up + ${config.duration} s), ` +
    `${config.connections} connections, pipelining ${config.pipelining}, node ${process.version}, ${os.cpus().length} CPUs ` +
    `(about ${Math.ceil(config.rounds * VARIANTS.length * perRun / 60)} min)`)

  const startedAt = new Date()
  const runs = []
  for (let round = 1; round <= config.rounds; round++) {
    const order = round % 2 === 1 ? VARIANTS : [...VARIANTS].reverse()
    for (const [slot, variant] of order.entries()) {
      const run = await oneRun(variant, round, slot, config)
      runs.push(run)
      const bad = run.errors + run.timeouts + run.non2xx
      console.log(`round ${round}/${config.rounds} ${variant.padEnd(4)} ${fmt(run.reqPerSec).padStart(7)} req/s  ` +
        `p99 ${fmt(run.latencyP99Ms)} ms  server CPU ${fmt(run.serverCpuUsPerReq, 1)} µs/req` +
        (run.otherCpuPercentOfOneCore === null ? '' : `  other CPU ${fmt(run.otherCpuPercentOfOneCore)} %`) +
        (bad > 0 ? `  ERRORS ${run.errors} timeouts ${run.timeouts} non2xx ${run.non2xx}` : '') +
        (run.registryRequests !== null && run.registryRequests < run.requests ? `  (registry counted only ${run.registryRequests} of ${run.requests})` : ''))
    }
  }

  const summary = summarize(runs, config.rounds)
  printTable(summary)

  const file = writeResults('keepalive', startedAt, { head: { config }, body: { dist, summary, runs } })
  console.log(`raw results: ${file}`)
}

await runMain(main, 'the servers')
