// What the benchmark drivers share: integer settings, the build they measure, the machine's
// CPU from /proc/stat, waiting for a quiet machine, spotting the repository's other
// benchmarks, and the results file. Plain JS (no build step), used by bench/keepalive.js, bench/client/run.js and
// bench/sse/run.js.
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The repository's root folder. */
export const root = join(dirname(fileURLToPath(import.meta.url)), '..')

export const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms) })

const BUILD_TIMEOUT_MS = 180e3

/**
 * integerSetting reads one integer setting: `raw` (a flag, else its environment variable) or
 * `def` when absent; throws a message naming the setting when it is not an integer in bounds.
 */
export function integerSetting (raw, label, def, min, max) {
  if (raw === undefined || raw === '') return def
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new Error(`${label} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`)
  }
  return n
}

/**
 * ensureBuild runs `npm run build` when one of `distFiles` is missing, or when `force`; then
 * warns when a plugins/ source is newer than the build (dist/ is what gets measured). Returns
 * when it was built, the sources newer than it, and a hash of each measured file.
 */
export function ensureBuild (distFiles, force) {
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
  const hashes = Object.fromEntries(distFiles.map((f) => [f, createHash('sha256').update(readFileSync(join(root, f))).digest('hex').slice(0, 16)]))
  return { builtAt: new Date(builtAt).toISOString(), sourcesNewerThanBuild: newer, hashes }
}

// USER_HZ, the unit of /proc/stat (100 on practically every Linux).
const clockTicks = (() => {
  if (os.platform() !== 'linux') return null
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5e3 })
  const n = Number(r.stdout?.trim())
  return Number.isInteger(n) && n > 0 ? n : 100
})()

/**
 * procStat reads the whole machine's CPU time (ms, all CPUs) from the first line of
 * /proc/stat: { user, nice, system, idle, iowait, irq, softirq, steal }. null off Linux.
 */
export function procStat () {
  if (clockTicks === null) return null
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    const ms = (i) => (f[i] ?? 0) * 1e3 / clockTicks
    return { user: ms(0), nice: ms(1), system: ms(2), idle: ms(3), iowait: ms(4), irq: ms(5), softirq: ms(6), steal: ms(7) }
  } catch {
    return null
  }
}

/** busyMs is the time the machine's CPUs were not idle (nor waiting for I/O), from a procStat() reading. */
export function busyMs (s) {
  return s.user + s.nice + s.system + s.irq + s.softirq + s.steal
}

/**
 * waitForQuiet waits (at most `seconds`) until the machine is busy less than `percent` % of one
 * CPU over a 1 s sample, so that a run does not start while another job holds a CPU. It only
 * schedules runs; interference that starts mid-run is each driver's to detect.
 */
export async function waitForQuiet (seconds, percent = 10) {
  const sampleMs = 1e3
  const start = performance.now()
  if (seconds === 0 || procStat() === null) return { waitedMs: 0, quiet: null }
  for (;;) {
    const a = busyMs(procStat())
    await sleep(sampleMs)
    const busyPercent = 100 * (busyMs(procStat()) - a) / sampleMs
    const waitedMs = Math.round(performance.now() - start)
    if (busyPercent < percent) return { waitedMs, quiet: true }
    if (waitedMs >= seconds * 1e3) return { waitedMs, quiet: false }
  }
}

/** otherBenchmarks lists the command lines of running processes that match `pattern` (not this one). */
export function otherBenchmarks (pattern) {
  const r = spawnSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8', timeout: 5e3 })
  if (r.status !== 0) return []
  return r.stdout.split('\n').map((l) => l.trim()).filter((l) => {
    if (!pattern.test(l)) return false
    const pid = Number(l.split(/\s+/, 1)[0])
    return pid !== process.pid && !l.includes('ps -eo')
  })
}

/**
 * writeResults writes bench/results/<bench>-<timestamp>.json: the command, the dates, the
 * machine, then `data` (config, summary, runs...). Returns the file's path, relative to the root.
 */
export function writeResults (bench, startedAt, data) {
  const dir = join(root, 'bench', 'results')
  mkdirSync(dir, { recursive: true })
  const file = join(dir, `${bench}-${startedAt.toISOString().replace(/[:.]/g, '-')}.json`)
  writeFileSync(file, JSON.stringify({
    bench,
    command: ['node', relative(root, process.argv[1]), ...process.argv.slice(2)].join(' '),
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    ...data.head,
    env: {
      node: process.version,
      platform: `${os.platform()} ${os.release()} ${os.arch()}`,
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model ?? null,
      loadavgAtEnd: os.loadavg()
    },
    ...data.body
  }, null, 2) + '\n')
  return relative(root, file)
}
