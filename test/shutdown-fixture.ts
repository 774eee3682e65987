/**
 * fixture forks test/fixtures/shutdown-server.ts (forkLogged, any fixture) (connections + sse + shutdown with signals on)
 * for the signal tests, and collects its JSON log lines.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'
import type { ShutdownOptions } from '../plugins/shutdown.js'
import { withDeadline } from './helpers.js'

/** forkLogged forks a TypeScript fixture (killed at the end of `t`) and collects the JSON log lines it writes to stdout. */
export function forkLogged (t: Test, fixturePath: string, env: Record<string, string>): { child: ChildProcess, logs: () => Array<Record<string, unknown>>, exited: Promise<[number | null, string | null]> } {
  const child = fork(fileURLToPath(new URL(fixturePath, import.meta.url)), {
    execArgv: process.execArgv,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit', 'ipc']
  })
  t.teardown(() => { child.kill('SIGKILL') })
  let out = ''
  child.stdout!.setEncoding('utf8')
  child.stdout!.on('data', (chunk: string) => { out += chunk })
  const exited = once(child, 'exit') as Promise<[number | null, string | null]>
  const logs = (): Array<Record<string, unknown>> => out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
  return { child, logs, exited }
}

/** Forks the signal fixture, resolves once it listens; collects its JSON log lines. */
export async function fixture (t: Test, options: ShutdownOptions = {}): Promise<{ child: ChildProcess, port: number, logs: () => Array<Record<string, unknown>>, exited: Promise<[number | null, string | null]> }> {
  const { child, logs, exited } = forkLogged(t, './fixtures/shutdown-server.ts', { SHUTDOWN_OPTIONS: JSON.stringify(options) })
  // A fixture that fails at boot (a bad option) exits: fail at once rather than at the deadline.
  const failed = exited.then(([code]) => { throw new Error(`the fixture exited with ${code} before listening`) })
  const [{ port }] = await withDeadline(Promise.race([once(child, 'message') as Promise<[{ port: number }]>, failed]), 30000, 'the fixture to listen')
  failed.catch(() => {})
  return { child, port, logs, exited }
}
