import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import { connections, sse, type Channel, type SseEvent, type SseStream } from '../../plugins/index.js'

const app = Fastify()

test('reply.sse is always there, typed as the stream', () => {
  app.get('/events', { sse: true }, async (_req, reply) => {
    expect(reply.sse).type.toBe<SseStream>()
    expect(reply.sse.lastEventId).type.toBe<string | null>()
    expect(reply.sse.isConnected).type.toBe<boolean>()
    expect(reply.sse.signal).type.toBe<AbortSignal>()
    expect(reply.sse.send({ id: 1, event: 'tick', data: { n: 1 } })).type.toBe<Promise<void>>()
    expect(reply.sse.send).type.toBeCallableWith('plain data')
    expect(reply.sse.send).type.toBeCallableWith((async function * () { yield { data: 1 } })())
    expect(reply.sse.send).type.toBeCallableWith([{ data: 1 }, 'two'])
    expect(reply.sse.send).type.not.toBeCallableWith({ id: true })
    expect(reply.sse.send).type.not.toBeCallableWith({ retry: '10' })
    expect(reply.sse.subscribe(app.sse.channel('c'))).type.toBe<{ replayed: number, reset: boolean }>()
    expect(reply.sse.close()).type.toBe<Promise<void>>()
    expect(reply.sse.onClose).type.toBeCallableWith(() => {})
    // @ts-expect-error Cannot assign to 'sse' because it is a read-only property
    reply.sse = null
  })
})

test('the hub and its channels', () => {
  expect(app.sse.channel('news')).type.toBe<Channel>()
  expect(app.sse.channel('news', { historySize: 10, historyTtl: null }).publish({ data: 'x' })).type.toBe<string>()
  expect(app.sse.channel).type.not.toBeCallableWith('news', { historySize: '10' })
  expect<SseEvent>().type.not.toBeAssignableFrom({ data: 1, colour: 'red' })
})

test('plugin and route options', () => {
  expect(app.register).type.toBeCallableWith(connections)
  expect(app.register).type.toBeCallableWith(sse, { heartbeatInterval: null, onSlowConsumer: 'drop', history: { historySize: 50 } })
  expect(app.register).type.not.toBeCallableWith(sse, { onSlowConsumer: 'block' })
  expect(app.register).type.not.toBeCallableWith(sse, { heartbeatInterval: '15s' })
  expect(app.get).type.toBeCallableWith('/a', { sse: { maxBufferedBytes: 1024 } }, async () => {})
  expect(app.get).type.not.toBeCallableWith('/a', { sse: { closeEvent: 'x' } }, async () => {})
})
