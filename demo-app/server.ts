/**
 * Starts the demo app from the environment: HOST (127.0.0.1), PORT (3000), TICK_MS (1000),
 * DRAIN_DELAY_MS (0), STATE_FILE (a file in the OS temp folder; 'none' keeps nothing),
 * LOG_LEVEL (info). SIGTERM / SIGINT shut it down gracefully; the process exits 0 when
 * everything closed cleanly.
 */
import { tmpdir } from 'node:os'
import { join } from 'node:path'
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
const stateFile = process.env.STATE_FILE ?? join(tmpdir(), `fastify-long-lived-demo-${port}.json`)
const config: DemoConfig = {
  host: process.env.HOST ?? '127.0.0.1',
  port,
  tickMs: intFromEnv('TICK_MS', 1000, 10, 3_600_000),
  drainDelayMs: intFromEnv('DRAIN_DELAY_MS', 0, 0, 20_000),
  stateFile: stateFile === 'none' ? null : stateFile,
  logLevel: process.env.LOG_LEVEL ?? 'info',
  signals: true
}

const app = await buildApp(config)
// Fastify logs one line when ready: "Server listening at http://127.0.0.1:3000".
await app.listen({ host: config.host, port: config.port })
