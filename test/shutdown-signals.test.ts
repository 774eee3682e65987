/**
 * Signals are the process's: several apps in one process share one handler. No listener per
 * app (no MaxListenersExceededWarning), and a SIGTERM drains every app before the exit, not
 * only the first to finish.
 */
import { test, type Test } from 'tap'
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { withDeadline } from './helpers.js'
import { forkLogged } from './shutdown-fixture.js'
import { openStream } from './sse-helpers.js'

interface Ready { ports: number[], warnings: string[], listeners: number[] }

/** manyApps forks the fixture with `apps` apps; resolves `ready` once they all listen. */
function manyApps (t: Test, apps: number): { child: ChildProcess, exited: Promise<[number | null, string | null]>, ready: Promise<Ready>, logs: () => Array<Record<string, unknown>> } {
  const { child, logs, exited } = forkLogged(t, './fixtures/many-apps.ts', { APPS: String(apps) })
  const ready = withDeadline(once(child, 'message') as Promise<[Ready]>, 30000, 'the apps to listen').then(([r]) => r)
  return { child, exited, ready, logs }
}

test('12 apps with signals in one process: one listener per signal, no MaxListenersExceededWarning', async (t) => {
  const { child, exited, ready } = manyApps(t, 12)
  const { warnings, listeners } = await ready
  t.same(warnings, [], 'no warning')
  t.same(listeners, [1, 1, 1], 'SIGTERM, SIGINT and uncaughtException have one listener each')
  child.kill('SIGTERM')
  t.same((await withDeadline(exited, 15000, 'the process to exit'))[0], 0, 'all 12 closed cleanly, exit 0')
})

test('SIGTERM with two apps in one process: both drain their streams before the process exits', async (t) => {
  const { child, exited, ready, logs } = manyApps(t, 2)
  const { ports } = await ready
  const streams = await Promise.all(ports.map(async (port) => await openStream(t, port, '/events')))
  child.kill('SIGTERM')
  const [code] = await withDeadline(exited, 15000, 'the process to exit')
  t.equal(code, 0, 'exit 0: both clean')
  for (const [i, s] of streams.entries()) {
    await withDeadline(s.ended, 5000, `app ${i}'s stream to end`)
    t.same(s.events.map((e) => e.event), ['reconnect'], `app ${i}'s client got the final event`)
  }
  const closed = logs().filter((l) => l.lifecycle === 'closed')
  t.same(closed.map((l) => l.app).sort(), [0, 1], 'each app logged its outcome')
  t.ok(closed.every((l) => l.clean === true), 'both clean')
  for (const app of [0, 1]) {
    const phases = logs().filter((l) => l.app === app && typeof l.lifecycle === 'string').map((l) => l.lifecycle as string)
    const order = ['draining', 'closing', 'closed']
    t.same([...new Set(phases)], order, `app ${app}: the phases are logged in order`)
    t.equal(logs().filter((l) => l.app === app).at(-1)?.lifecycle, 'closed', `app ${app}: its last line is the outcome (${JSON.stringify(logs().filter((l) => l.app === app).slice(-2).map((l) => l.msg))})`)
  }
})
