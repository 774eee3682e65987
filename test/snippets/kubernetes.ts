import Fastify from 'fastify'
import { longLived } from 'fastify-long-lived'

const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(longLived, {
  timeouts: { proxy: 'nginx' },    // ingress-nginx: keep-alive 72 s, above its upstream 60 s
  shutdown: {
    readinessPath: '/readyz',
    livenessPath: '/healthz',
    drainDelay: 0,                 // the preStop sleep holds SIGTERM back while endpoints update
    terminationGracePeriod: 30000  // terminationGracePeriodSeconds (35) minus the preStop sleep (5)
  }
})

app.get('/', async () => ({ hello: 'world' }))

await app.listen({ port: 3000, host: '0.0.0.0' }) // in a container, listen on every interface
