import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import { longLived, shutdown, type LifecycleState, type ShutdownOutcome } from '../../plugins/index.js'

const app = Fastify()

test('fastify.lifecycle', () => {
  expect(app.lifecycle.state).type.toBe<LifecycleState>()
  expect(app.lifecycle.done).type.toBe<Promise<ShutdownOutcome>>()
  expect(app.lifecycle.shutdown()).type.toBe<Promise<ShutdownOutcome>>()
  expect(app.lifecycle.shutdown).type.toBeCallableWith({ signal: 'SIGTERM' })
  expect(app.lifecycle.shutdown).type.not.toBeCallableWith({ signal: 15 })
  expect(app.lifecycle.options.drainDelay).type.toBe<number>()
  expect(app.lifecycle.options.readinessPath).type.toBe<string | null>()
  // @ts-expect-error Cannot assign to 'state' because it is a read-only property
  app.lifecycle.state = 'closed'
})

test('shutdown options', () => {
  expect(app.register).type.toBeCallableWith(shutdown, { drainDelay: 5000, terminationGracePeriod: 30000, readinessPath: '/readyz' })
  expect(app.register).type.toBeCallableWith(shutdown, { signals: false, terminationGracePeriod: null })
  expect(app.register).type.not.toBeCallableWith(shutdown, { drainDelay: '5s' })
  expect(app.register).type.not.toBeCallableWith(shutdown, { signals: 'SIGTERM' })
  expect(app.register).type.toBeCallableWith(shutdown, { signals: ['SIGTERM', 'SIGHUP'], streamCloseTimeout: 500 })
  expect(app.register).type.not.toBeCallableWith(shutdown, { signals: ['SIGKILL'] })
})

test('longLived: each section an options object, true or false', () => {
  expect(app.register).type.toBeCallableWith(longLived)
  expect(app.register).type.toBeCallableWith(longLived, { timeouts: { proxy: 'nginx' }, sse: false, client: true, shutdown: { drainDelay: 1000 } })
  expect(app.register).type.not.toBeCallableWith(longLived, { timeouts: { proxy: 'haproxy' } })
  expect(app.register).type.not.toBeCallableWith(longLived, { sse: 'yes' })
})
