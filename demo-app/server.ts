/**
 * Starts the demo app from the environment: HOST (127.0.0.1), PORT (3000), TICK_MS (1000),
 * DRAIN_DELAY_MS (0), STATE_FILE (a file in the OS temp folder; 'none' keeps nothing),
 * LOG_LEVEL (info). SIGTERM / SIGINT shut it down gracefully; the process exits 0 when
 * everything closed cleanly. A STATE_FILE that cannot be read is ignored with one warning, and
 * one that cannot be written is logged as one error at exit (the exit code stays 0: the
 * shutdown itself was clean).
 */
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { buildApp, type DemoConfig } from './app.js'

function intFromEnv (name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = Number(raw)
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max}, received '${raw}'`)
  }
  return value
}

const port = intFromEnv('PORT', 3000, 0, 65535)
// Made absolute, so the logs name the file wherever the demo was started from. Empty: the default.
const stateFileEnv = process.env.STATE_FILE ?? ''
const stateFile = stateFileEnv === 'none'
  ? null
  : resolve(stateFileEnv === '' ? join(tmpdir(), `fastify-long-lived-demo-${port}.json`) : stateFileEnv)
const config: DemoConfig = {
  host: process.env.HOST ?? '127.0.0.1',
  port,
  tickMs: intFromEnv('TICK_MS', 1000, 10, 3_600_000),
  drainDelayMs: intFromEnv('DRAIN_DELAY_MS', 0, 0, 20_000),
  stateFile,
  logLevel: process.env.LOG_LEVEL ?? 'info',
  signals: true
}

const app = await buildApp(config)
// Fastify logs one line when ready: "Server listening at http://127.0.0.1:3000".
await app.listen({ host: config.host, port: config.port })
