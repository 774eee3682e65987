import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import type { Agent, Dispatcher } from 'undici'
import client, {
  clientPlugin,
  type ClientOptions, type ResolvedClientOptions, type Upstream, type UpstreamCloseResult, type UpstreamOriginStats
} from '../../plugins/client.js'

const app = Fastify()

test('fastify.upstream is always there, typed as the pool', () => {
  expect(app.upstream).type.toBe<Upstream>()
  expect(app.upstream.request('http://127.0.0.1:3000/')).type.toBe<Promise<Dispatcher.ResponseData>>()
  expect(app.upstream.request).type.toBeCallableWith(new URL('http://127.0.0.1:3000/'))
  expect(app.upstream.request).type.toBeCallableWith('http://127.0.0.1:3000/', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
  expect(app.upstream.request).type.toBeCallableWith('http://127.0.0.1:3000/', { method: 'PUT', body: Buffer.from('x'), idempotent: true, headersTimeout: 1000 })
  app.get('/', async (request) => {
    expect(app.upstream.request).type.toBeCallableWith('http://127.0.0.1:3000/', { signal: request.signal })
  })
  expect(app.upstream.request).type.not.toBeCallableWith()
  expect(app.upstream.request).type.not.toBeCallableWith('http://127.0.0.1:3000/', { origin: 'http://elsewhere' })
  expect(app.upstream.request).type.not.toBeCallableWith('http://127.0.0.1:3000/', { dispatcher: app.upstream.agent })
  expect(app.upstream.request).type.not.toBeCallableWith('http://127.0.0.1:3000/', { method: 1 })

  expect(app.upstream.agent).type.toBe<Agent>()
  expect(app.upstream.dispatcher).type.toBe<Dispatcher>()
  expect(app.upstream.stats()).type.toBe<Record<string, UpstreamOriginStats>>()
  expect<UpstreamOriginStats['reusedRatio']>().type.toBe<number>()
  expect(app.upstream.closed).type.toBe<boolean>()
  expect(app.upstream.close()).type.toBe<Promise<UpstreamCloseResult>>()
  expect(app.upstream.options).type.toBe<ResolvedClientOptions>()
  expect(app.upstream.options.connections).type.toBe<number | null>()
  expect(app.upstream.options.keepAliveTimeout).type.toBe<number>()
})

test('what fastify.upstream does not allow', () => {
  // @ts-expect-error Cannot assign to 'connections' because it is a read-only property
  app.upstream.options.connections = 1
  // @ts-expect-error Cannot assign to 'closed' because it is a read-only property
  app.upstream.closed = true
  // @ts-expect-error Cannot assign to 'agent' because it is a read-only property
  app.upstream.agent = null
})

test('client options', () => {
  expect(client).type.toBe(clientPlugin)
  expect(app.register).type.toBeCallableWith(client)
  expect(app.register).type.toBeCallableWith(client, { connections: 64, keepAliveTimeout: 4000, keepAliveMaxTimeout: 60e3, pipelining: 0 })
  expect(app.register).type.toBeCallableWith(client, {
    connections: null,
    keepAliveTimeoutThreshold: 0,
    connectTimeout: 0,
    headersTimeout: 0,
    bodyTimeout: 0,
    maxRequestsPerConnection: null,
    maxConnectionAge: 300e3,
    tls: { rejectUnauthorized: true, servername: 'api.internal' },
    closeTimeout: 0,
    metrics: null
  })
  expect({ metrics: { registry: { registerMetric () {}, removeSingleMetric () {} }, prefix: 'myapp_' } }).type.toBeAssignableTo<ClientOptions>()
  expect(app.register).type.not.toBeCallableWith(client, { connections: '10' })
  expect(app.register).type.not.toBeCallableWith(client, { keepAliveTimeout: null })
  expect(app.register).type.not.toBeCallableWith(client, { pipelining: null })
  expect(app.register).type.not.toBeCallableWith(client, { connection: 10 })
  expect(app.register).type.not.toBeCallableWith(client, { metrics: { prefix: 'x_' } })
  expect(app.register).type.not.toBeCallableWith(client, { tls: 'yes' })
})
