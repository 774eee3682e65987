/**
 * Issue 12, part 2: the demo's STATE_FILE. A file that cannot be used never stops the demo (it
 * starts with one warning naming the file), a save that fails is one error naming the file, and
 * replay across a restart is exact: a client resumes with every event it missed and no reset.
 */
import { test, type Test } from 'tap'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { EventSourceMessage } from 'eventsource-parser'
import type { FastifyInstance } from 'fastify'
import { request } from 'undici'
import { buildApp } from '../demo-app/app.js'
import { listen, waitUntil, withDeadline, type LogLine } from './helpers.js'
import { startProgram } from './program.js'
import { openStream, type StreamClient } from './sse-helpers.js'

function tempDir (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'fll-demo-state-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  return dir
}

interface Run { started: boolean, lines: LogLine[], stderr: string, code: unknown }

/** runDemo starts demo-app/server.ts with `stateFile`, stops it with SIGTERM once it listens, and returns its log. */
async function runDemo (t: Test, stateFile: string): Promise<Run> {
  const p = await startProgram(t, 'demo-app/server.ts', { HOST: '127.0.0.1', PORT: '0', TICK_MS: '50', LOG_LEVEL: 'info', STATE_FILE: stateFile }, 60000)
  const started = p.port !== null
  if (started) p.child.kill('SIGTERM')
  const [code] = await withDeadline(p.exited, 30000, 'the demo to exit')
  const lines = p.out().split('\n').filter((l) => l !== '').map((l): LogLine => {
    try { return JSON.parse(l) } catch { return { level: 60, msg: `not a log line: ${l}` } }
  })
  return { started, lines, stderr: p.err(), code }
}

test('a STATE_FILE that cannot be used: the demo starts anyway, with one warning naming the file and what was ignored', async (t) => {
  const dir = tempDir(t)
  const cases: Array<[string, (file: string) => void, RegExp]> = [
    ['corrupt JSON', (f) => { writeFileSync(f, '{"n": 3, "sse": nope}') }, /it is not JSON/],
    ['truncated', (f) => { writeFileSync(f, JSON.stringify({ n: 3, sse: { version: 1, seq: 0, tags: [], channels: {} } }).slice(0, 30)) }, /it is not JSON/],
    ['empty', (f) => { writeFileSync(f, '') }, /it is empty/],
    ['{}', (f) => { writeFileSync(f, '{}') }, /tick counter 'n'/],
    ['a directory', (f) => { mkdirSync(f) }, /EISDIR/],
    ["an older demo's file", (f) => { writeFileSync(f, JSON.stringify({ n: 5, channels: { ticks: [] } })) }, /no SSE state/],
    ['a malformed hub state', (f) => { writeFileSync(f, JSON.stringify({ n: 5, sse: { version: 1, seq: -1, tags: [], channels: {} } })) }, /state\.seq must be/]
  ]
  const runs = await Promise.all(cases.map(async ([what, make], i) => {
    const file = join(dir, `state-${i}.json`)
    make(file)
    return { what, file, run: await runDemo(t, file) }
  }))
  for (const [i, { what, file, run }] of runs.entries()) {
    t.ok(run.started, `${what}: the demo started`)
    t.equal(run.stderr, '', `${what}: nothing on stderr (no raw stack)`)
    const warnings = run.lines.filter((l) => l.level === 40)
    t.equal(warnings.length, 1, `${what}: one warning`)
    t.match(warnings[0]?.msg, cases[i]![2], `${what}: it says what is wrong (${warnings[0]?.msg})`)
    t.ok(warnings[0]?.msg.includes(file) && warnings[0]?.msg.includes('ignored'), `${what}: it names the file and says it was ignored`)
    const errors = run.lines.filter((l) => l.level >= 50)
    if (what === 'a directory') {
      t.equal(errors.length, 1, `${what}: the save at exit fails with one error`)
      t.match(errors[0]?.msg, new RegExp(`STATE_FILE ${file} could not be written`), `${what}: naming the file`)
    } else {
      t.same(errors, [], `${what}: no error`)
      t.match(JSON.parse(readFileSync(file, 'utf8')), { n: Number, sse: { version: 1 } }, `${what}: replaced at exit by a good state`)
    }
    t.equal(run.code, 0, `${what}: exit code 0`)
  }
})

test('a STATE_FILE in a folder that does not exist: the demo runs, and the failed save at exit is one error naming the file', async (t) => {
  const file = join(tempDir(t), 'missing', 'state.json')
  const run = await runDemo(t, file)
  t.ok(run.started)
  t.equal(run.stderr, '', 'nothing on stderr (no raw stack)')
  t.same(run.lines.filter((l) => l.level === 40), [], 'no warning at start: no file is a first start')
  const errors = run.lines.filter((l) => l.level >= 50)
  t.equal(errors.length, 1, 'one error')
  t.match(errors[0]?.msg, `STATE_FILE ${file} could not be written: ENOENT`)
  t.equal(errors[0]?.stateFile, file)
  t.equal(run.code, 0, 'and the shutdown itself is clean')
})

/** startDemo builds the demo in this process, with fast ticks, and listens. */
async function startDemo (t: Test, stateFile: string): Promise<{ app: FastifyInstance, port: number }> {
  const app = await buildApp({ host: '127.0.0.1', port: 0, tickMs: 20, drainDelayMs: 0, stateFile, logLevel: 'silent', signals: false })
  t.teardown(() => app.close())
  return { app, port: await listen(app) }
}

/** leave waits for a tick on `client`, disconnects it, and returns its Last-Event-ID and last tick number. */
async function leave (client: StreamClient): Promise<{ lastEventId: string, lastTick: number }> {
  await waitUntil(() => client.events.some((e) => e.event === 'tick'), 10000, 'a tick')
  await client.close()
  const lastEventId = client.events.filter((e) => e.id !== undefined && e.id !== '').at(-1)!.id!
  const lastTick = JSON.parse(client.events.filter((e) => e.event === 'tick').at(-1)!.data).n as number
  return { lastEventId, lastTick }
}

/** comeBack reconnects with `lastEventId` and returns the events before the welcome (the replay) and the welcome. */
async function comeBack (t: Test, port: number, lastEventId: string): Promise<{ replay: EventSourceMessage[], welcome: { replayed: number, reset: boolean } }> {
  const client = await openStream(t, port, '/events', { 'last-event-id': lastEventId })
  for (let n = 1; !client.events.some((e) => e.event === 'welcome'); n++) await client.waitEvents(n, 10000)
  await client.close()
  const at = client.events.findIndex((e) => e.event === 'welcome')
  return { replay: client.events.slice(0, at), welcome: JSON.parse(client.events[at]!.data) }
}

test('restart: a client away while 3 messages were posted gets all 3, and every tick it missed, with no reset', async (t) => {
  const file = join(tempDir(t), 'state.json')
  const first = await startDemo(t, file)
  const { lastEventId, lastTick } = await leave(await openStream(t, first.port, '/events'))
  // A tick after the client's last event, then the messages.
  const ticks = first.app.sse.channel('ticks')
  await waitUntil(() => ticks.events().at(-1)!.id !== lastEventId, 10000, 'the next tick')
  const texts = ['one', 'two', 'three']
  for (const text of texts) {
    const posted = await request(`http://127.0.0.1:${first.port}/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text }) })
    t.equal(posted.statusCode, 202)
    await posted.body.dump()
  }
  await first.app.close()

  const second = await startDemo(t, file)
  const { replay, welcome } = await comeBack(t, second.port, lastEventId)
  t.same(replay.filter((e) => e.event === 'reset'), [], 'no reset')
  t.same(replay.filter((e) => e.event === 'message').map((e) => JSON.parse(e.data).text), texts, 'the 3 messages, in order')
  const replayedTicks = replay.filter((e) => e.event === 'tick').map((e) => JSON.parse(e.data).n as number)
  t.same(replayedTicks, replayedTicks.map((_n, i) => lastTick + 1 + i), `every tick after ${lastTick}, none twice (${replayedTicks.length})`)
  t.match(welcome, { replayed: replay.length, reset: false, resumedFrom: lastEventId })
})

test('restart: with no message ever posted, no reconnect gets a reset', async (t) => {
  const file = join(tempDir(t), 'state.json')
  const first = await startDemo(t, file)
  const { lastEventId } = await leave(await openStream(t, first.port, '/events'))
  await first.app.close()

  const second = await startDemo(t, file)
  for (let i = 0; i < 2; i++) {
    const { replay, welcome } = await comeBack(t, second.port, lastEventId)
    t.same(replay.filter((e) => e.event === 'reset'), [], `reconnect ${i + 1}: no reset`)
    t.equal(welcome.reset, false)
  }
  // And once more across a second restart.
  await second.app.close()
  const third = await startDemo(t, file)
  t.equal((await comeBack(t, third.port, lastEventId)).welcome.reset, false, 'after a second restart too')
})
