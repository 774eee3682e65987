// What the benchmark drivers share: their settings, the build they measure, their child
// processes, the machine's CPU from /proc/stat, waiting for a quiet machine, spotting the
// repository's other benchmarks, medians, and the results file. Plain JS (no build step), used
// by bench/keepalive.js, bench/client/run.js and bench/sse/run.js.
import { fork, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

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
 * readConfig reads a driver's flags: `--help` prints `usage` and exits; each `numeric` setting
 * ({ name: { env, def, min, max } }) comes from its flag, else its environment variable, else
 * its default; `--build` is a boolean; the names in `strings` are returned as given (undefined
 * when absent), for the driver to check. Unknown flags throw.
 */
export function readConfig ({ numeric, usage, strings = [] }) {
  const options = {
    build: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false }
  }
  for (const name of [...Object.keys(numeric), ...strings]) options[name] = { type: 'string' }
  const { values } = parseArgs({ options, strict: true })
  if (values.help) {
    process.stdout.write(usage)
    process.exit(0)
  }
  const config = { build: values.build }
  for (const [name, spec] of Object.entries(numeric)) {
    config[name] = integerSetting(values[name] ?? process.env[spec.env], `--${name} (or ${spec.env})`, spec.def, spec.min, spec.max)
  }
  for (const name of strings) config[name] = values[name]
  return config
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

/** median of the finite numbers in `xs`; null when there is none. */
export function median (xs) {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return null
  const mid = v.length >> 1
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

/**
 * pairedSummary sums up the A/B ratios of the same rounds (`paired`), and of the rounds no
 * other process disturbed (`undisturbed`: { round, ratio }).
 */
export function pairedSummary (paired, undisturbed) {
  return {
    pairedRatios: paired,
    medianPairedRatio: median(paired),
    minPairedRatio: Math.min(...paired),
    maxPairedRatio: Math.max(...paired),
    undisturbedRounds: undisturbed.map((u) => u.round),
    undisturbedPairedRatios: undisturbed.map((u) => u.ratio),
    medianUndisturbedPairedRatio: undisturbed.length > 0 ? median(undisturbed.map((u) => u.ratio)) : null
  }
}

/** The children forked by forkChild, stopped by runMain when the driver ends. */
const children = new Set()

/** forkChild forks `path` with `args` from the repository's root (stdout piped, IPC on) and keeps track of it. */
export function forkChild (path, args) {
  const child = fork(path, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
  children.add(child)
  child.once('exit', () => { children.delete(child) })
  return child
}

/**
 * startChild forks `path` (see forkChild) and resolves with the child and the JSON object it
 * prints as its first line (e.g. its port), once `check(info)` accepts it; rejects (and stops
 * the child) if it exits first, prints something else, or says nothing within `timeoutMs`.
 * `what` names the child in the errors.
 */
export function startChild (path, args, what, check, timeoutMs = 15e3) {
  const child = forkChild(path, args)
  return new Promise((resolve, reject) => {
    let buf = ''
    const fail = (err) => {
      clearTimeout(timer)
      child.stdout.removeListener('data', onData)
      child.removeListener('exit', onExit)
      stopChild(child).finally(() => { reject(err) })
    }
    const timer = setTimeout(() => { fail(new Error(`${what} did not print its port within ${timeoutMs} ms`)) }, timeoutMs)
    const onExit = (code, signal) => { fail(new Error(`${what} exited before listening (code ${code}, signal ${signal})`)) }
    const onData = (chunk) => {
      buf += chunk
      const nl = buf.indexOf('\n')
      if (nl === -1) return
      clearTimeout(timer)
      child.stdout.removeListener('data', onData)
      child.removeListener('exit', onExit)
      child.stdout.resume() // drain anything else it prints
      let info = null
      try {
        info = JSON.parse(buf.slice(0, nl))
      } catch {}
      if (info === null || typeof info !== 'object' || !check(info)) {
        fail(new Error(`${what} printed ${JSON.stringify(buf.slice(0, nl))} instead of its port`))
        return
      }
      resolve({ child, info })
    }
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', onData)
    child.once('exit', onExit)
  })
}

let statsId = 0
/**
 * childStats asks a child started by startChild for its numbers over IPC ({ cmd: 'stats', id }
 * answered with the same cmd and id); rejects after `timeoutMs`.
 */
export function childStats (child, what, timeoutMs = 5e3) {
  const id = ++statsId
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.removeListener('message', onMessage)
      reject(new Error(`${what} did not answer a stats request within ${timeoutMs} ms`))
    }, timeoutMs)
    const onMessage = (msg) => {
      if (msg === null || typeof msg !== 'object' || msg.cmd !== 'stats' || msg.id !== id) return
      clearTimeout(timer)
      child.removeListener('message', onMessage)
      resolve(msg)
    }
    child.on('message', onMessage)
    child.send({ cmd: 'stats', id })
  })
}

/** stopChild sends SIGTERM, then SIGKILL if the child has not exited within `timeoutMs`. */
export function stopChild (child, timeoutMs = 5e3) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
    child.once('exit', () => {
      clearTimeout(timer)
      resolve()
    })
    child.kill('SIGTERM')
  })
}

/**
 * runMain runs a driver's `main` and then exits (1 if it threw). Every forked child is stopped
 * at the end, on error, and on SIGINT/SIGTERM (then the exit code is 130); `what` names them
 * in the message.
 */
export async function runMain (main, what) {
  const stopAll = () => Promise.all([...children].map((c) => stopChild(c)))
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, () => {
      console.error(`\n${sig}: stopping ${what}`)
      stopAll().finally(() => { process.exit(130) })
    })
  }
  let exitCode = 0
  try {
    await main()
  } catch (err) {
    console.error(err)
    exitCode = 1
  } finally {
    await stopAll()
  }
  process.exit(exitCode)
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
