import { test } from 'tap'
import { Registry } from 'prom-client'
import { longLived } from '../plugins/index.js'
import { build, listen, logCapture } from './helpers.js'

test('longLived registers every plugin from one options object, in order', async (t) => {
  const capture = logCapture()
  const app = build(t, { logger: capture.logger })
  const registry = new Registry()
  await app.register(longLived, {
    timeouts: { proxy: 'nginx' },
    sse: { retry: 1000 },
    client: { connections: 8 },
    shutdown: { signals: false, readinessPath: '/readyz' },
    metrics: { registry }
  })
  await listen(app)
  t.equal(app.timeouts.keepAliveTimeout, 72e3, 'timeouts with its options')
  t.equal(typeof app.sse.channel, 'function', 'sse')
  t.equal(app.upstream.options.connections, 8, 'client with its options')
  t.equal(app.lifecycle.options.readinessPath, '/readyz', 'shutdown with its options')
  t.match(await registry.metrics(), /fastify_long_lived_connections_open/, 'metrics go to the registry')
  t.equal((await app.inject('/readyz')).statusCode, 200)

  const order: string[] = []
  app.lifecycle.on('closed', () => { order.push('lifecycle closed') })
  const closeUpstream = app.upstream.close.bind(app.upstream)
  app.upstream.close = async () => { order.push('upstream closed'); return await closeUpstream() }
  await app.close()
  t.same(order, ['upstream closed', 'lifecycle closed'], 'the pool closes before the outcome is settled')
  t.match(await app.lifecycle.done, { clean: true })
})

test('false leaves a plugin out, true and omitted use the defaults; connections is always there', async (t) => {
  const app = build(t)
  await app.register(longLived, { sse: false, client: false, shutdown: false, timeouts: true })
  await app.ready()
  t.ok(app.hasDecorator('connections'))
  t.ok(app.hasDecorator('timeouts'))
  t.notOk(app.hasDecorator('sse'))
  t.notOk(app.hasDecorator('upstream'))
  t.notOk(app.hasDecorator('lifecycle'))
  t.equal(app.timeouts.requestTimeout, 120e3)
})

test('bad sections are coded errors', async (t) => {
  for (const [opts, message] of [
    [{ sse: 'yes' }, /'sse' must be an options object, true \(defaults\) or false \(left out\)/],
    [{ shutdowns: {} }, /'shutdowns' must be one of the known options/],
    [{ timeouts: { keepAliveTimeout: -1 } }, /'keepAliveTimeout'/]
  ] as const) {
    const app = build(t)
    await t.rejects(async () => { await app.register(longLived, opts as never).ready() }, { code: 'FLL_ERR_INVALID_OPTION', message })
  }
})
