/**
 * startProgram runs a TypeScript program (the demo, a README snippet) in a child process, through
 * the loader tap runs the tests with, and waits until Fastify logs where it listens.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'
import { waitUntil } from './helpers.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const listening = /Server listening at http:\/\/127\.0\.0\.1:(\d+)/

export interface Program {
  child: ChildProcess
  /** The port it listens on; null when it exited before listening. */
  port: number | null
  /** What it wrote to stdout and stderr so far. */
  out: () => string
  err: () => string
  exited: Promise<[number | null, NodeJS.Signals | null]>
}

/** startProgram starts `path` (from the repository root) with `env` added, killed at the end of `t` if still running. */
export async function startProgram (t: Test, path: string, env: Record<string, string>, ms = 30000): Promise<Program> {
  const child = spawn(process.execPath, [...process.execArgv, path], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let out = ''
  let err = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { out += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { err += chunk })
  await waitUntil(() => listening.test(out) || child.exitCode !== null, ms, `${path} to listen`)
  const port = Number(listening.exec(out)?.[1])
  return { child, port: port > 0 ? port : null, out: () => out, err: () => err, exited }
}
