import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import {
  connections, timeouts,
  type ConnectionInfo, type ConnectionStats, type EffectiveTimeouts, type StreamRegistration
} from '../../plugins/index.js'

const app = Fastify()

test('connections decorator', () => {
  expect(app.connections.stats()).type.toBe<ConnectionStats>()
  expect(app.connections.stats().reusedRatio).type.toBe<number>()
  expect(app.connections.draining).type.toBe<boolean>()
  expect(app.connections.closeStreams({ window: 1000 })).type.toBe<Promise<{ closed: number, failed: number, cut: number }>>()
  expect(app.connections.waitForIdle(1000)).type.toBe<Promise<{ idle: boolean, active: number, streams: number }>>()
  expect(app.connections.forEach).type.toBeCallableWith((info: ConnectionInfo) => { expect(info.request).type.toBe<import('node:http').IncomingMessage | null>() })
  expect(app.connections.recordSlowClient).type.toBeCallableWith('consumer')
  expect(app.connections.recordSlowClient).type.not.toBeCallableWith('fast')
  expect(app.connections.waitForIdle).type.not.toBeCallableWith()
  app.get('/', (_req, reply) => {
    expect(app.connections.trackStream(reply, { close: () => {} })).type.toBe<StreamRegistration>()
    expect(app.connections.trackStream).type.not.toBeCallableWith(reply, {})
  })
})

test('connections options', () => {
  expect(app.register).type.toBeCallableWith(connections)
  expect(app.register).type.toBeCallableWith(connections, { metrics: null })
  expect(app.register).type.not.toBeCallableWith(connections, { metrics: { prefix: 'x_' } })
})

test('timeouts decorator is read-only and tells where a value can be absent', () => {
  expect(app.timeouts).type.toBe<EffectiveTimeouts>()
  expect(app.timeouts.headersTimeout).type.toBe<number | null>()
  expect(app.timeouts.socketTimeout).type.toBe<number>()
  // @ts-expect-error Cannot assign to 'keepAliveTimeout' because it is a read-only property
  app.timeouts.keepAliveTimeout = 1
})

test('timeouts options', () => {
  expect(app.register).type.toBeCallableWith(timeouts, { proxy: 'aws-alb', handlerTimeout: 5000 })
  expect(app.register).type.toBeCallableWith(timeouts, { proxy: { idleTimeout: 60e3, responseTimeout: 30e3 }, minDataRate: null })
  expect(app.register).type.toBeCallableWith(timeouts, { minDataRate: { request: null, response: { bytesPerSecond: 500 } } })
  expect(app.register).type.not.toBeCallableWith(timeouts, { proxy: 'haproxy' })
  expect(app.register).type.not.toBeCallableWith(timeouts, { keepAliveTimeout: '72s' })
  expect(app.register).type.not.toBeCallableWith(timeouts, { proxy: { idleTimeout: 60e3 } })
})
