/**
 * Migrating from @fastify/sse, at the type level: what of its code compiles here unchanged, and
 * what the compiler points out. @fastify/sse's own types are not imported: they clash with ours
 * (TS2717 on `FastifyReply.sse`), see the README's "Types" item; test/migration.test.ts runs both.
 */
import Fastify from 'fastify'
import { Readable } from 'node:stream'
import { expect, test } from 'tstyche'
import type { SseStream } from '../../plugins/index.js'

const app = Fastify()
const handler = async (): Promise<void> => {}

test("@fastify/sse's route forms: 'only', kind 'only' and heartbeat false compile; 'dual' and 'manual' do not", () => {
  expect(app.get).type.toBeCallableWith('/a', { sse: true }, handler)
  expect(app.get).type.toBeCallableWith('/a', { sse: 'only' }, handler)
  expect(app.get).type.toBeCallableWith('/a', { sse: { kind: 'only', heartbeat: false, serializer: (d: unknown) => JSON.stringify(d) } }, handler)
  expect(app.get).type.not.toBeCallableWith('/a', { sse: 'dual' }, handler)
  expect(app.get).type.not.toBeCallableWith('/a', { sse: 'manual' }, handler)
  expect(app.get).type.not.toBeCallableWith('/a', { sse: { kind: 'manual' } }, handler)
})

test('reply.sse: send() takes a Readable and refuses a Buffer; stream() and replay() do not exist', () => {
  expect<SseStream['send']>().type.toBeCallableWith(Readable.from([{ data: 1 }]))
  expect<SseStream['send']>().type.not.toBeCallableWith(Buffer.from('x'))
  expect<SseStream>().type.not.toHaveProperty('stream')
  expect<SseStream>().type.not.toHaveProperty('replay')
  expect<SseStream>().type.toHaveProperty('shouldKeepAlive')
  expect<ReturnType<SseStream['close']>>().type.toBe<Promise<void>>()
})
