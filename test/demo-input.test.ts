/**
 * Issue 12, part 4: the demo as an example people copy. Its routes take only what they document
 * (route schemas, no type coercion), and a client leaving early is not a server error.
 */
import { test, type Test } from 'tap'
import net from 'node:net'
import type { FastifyInstance } from 'fastify'
import { request } from 'undici'
import { buildApp } from '../demo-app/app.js'
import { listen, logCapture, waitUntil, type LogLine } from './helpers.js'

async function demoApp (t: Test): Promise<{ app: FastifyInstance, port: number, lines: LogLine[] }> {
  const { logger, lines } = logCapture('info')
  const app = await buildApp({ host: '127.0.0.1', port: 0, tickMs: 1000, drainDelayMs: 0, stateFile: null, logLevel: 'info', logStream: logger.stream, signals: false })
  t.teardown(() => app.close())
  return { app, port: await listen(app), lines }
}

test('/slow and /upstream/slow take a plain decimal integer from 0 to 60000, and answer 400 to anything else', async (t) => {
  const { port } = await demoApp(t)
  const bad = ['1e309', 'Infinity', '9'.repeat(10_000), '0x10', '0b11', '0o7', '  5', '5 ', '+5', '-1', '60001', '1.5', '1e3', '', '05', 'NaN', 'five']
  for (const path of ['/slow', '/upstream/slow']) {
    for (const ms of bad) {
      const res = await request(`http://127.0.0.1:${port}${path}?ms=${encodeURIComponent(ms)}`)
      const body = await res.body.json() as { code?: string }
      t.equal(res.statusCode, 400, `${path}?ms=${ms.length > 12 ? `${ms.slice(0, 12)}… (${ms.length} chars)` : JSON.stringify(ms)}: 400`)
      t.equal(body.code, 'FST_ERR_VALIDATION')
    }
    const missing = await request(`http://127.0.0.1:${port}${path}`)
    t.equal(missing.statusCode, 400, `${path} without ms: 400`)
    await missing.body.dump()
    for (const ms of ['0', '7']) {
      const res = await request(`http://127.0.0.1:${port}${path}?ms=${ms}`)
      t.same([res.statusCode, await res.body.json()], [200, { sleptMs: Number(ms) }], `${path}?ms=${ms}`)
    }
  }
})

test('POST /messages takes { text } as a string of 1..1000 characters, nothing else', async (t) => {
  const { port } = await demoApp(t)
  const post = async (body: unknown): Promise<number> => {
    const res = await request(`http://127.0.0.1:${port}/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    await res.body.dump()
    return res.statusCode
  }
  for (const body of [{ text: 123 }, { text: true }, { text: ['a'] }, { text: null }, { text: '' }, { text: 'x'.repeat(1001) }, {}, { text: 'hi', extra: 1 }, 'hi', ['hi']]) {
    t.equal(await post(body), 400, `${JSON.stringify(body).slice(0, 40)}: 400`)
  }
  t.equal(await post({ text: 'hi' }), 202)
  t.equal(await post({ text: 'x'.repeat(1000) }), 202)
})

test('a client leaving /slow or /upstream/slow early is logged at info, never as an error', async (t) => {
  const { app, port, lines } = await demoApp(t)
  for (const path of ['/slow', '/upstream/slow']) {
    const socket = net.connect(port, '127.0.0.1')
    t.teardown(() => socket.destroy())
    socket.write(`GET ${path}?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n`)
    await waitUntil(() => app.connections.stats().inFlight >= 1, 5000, `${path} to be in flight`)
    socket.destroy()
    await waitUntil(() => app.connections.stats().inFlight === 0, 5000, `${path} to end once the client left`)
  }
  await waitUntil(() => lines.filter((l) => l.msg === 'demo: the client left before the answer').length >= 2, 5000, 'both to be logged')
  t.same(lines.filter((l) => l.level >= 40).map((l) => l.msg), [], 'nothing at warn or error level')
  t.notOk(lines.some((l) => (l.res as { statusCode?: number } | undefined)?.statusCode === 500), 'no 500')
})
