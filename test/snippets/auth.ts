import { randomBytes } from 'node:crypto'
import Fastify, { type FastifyRequest } from 'fastify'
import { longLived } from 'fastify-long-lived'

// Sessions in memory for the example; yours come from a session store or a signed token.
const sessions = new Map<string, { user: string, expiresAt: number }>()
const sessionTtl = Number(process.env.SESSION_TTL_MS ?? 15 * 60e3)

function sessionOf (request: FastifyRequest): { user: string, expiresAt: number } | null {
  const token = /(?:^|;\s*)session=([\w-]+)/.exec(request.headers.cookie ?? '')?.[1]
  const session = token === undefined ? undefined : sessions.get(token)
  return session !== undefined && session.expiresAt > Date.now() ? session : null
}

const app = Fastify({ logger: true, return503OnClosing: false })
await app.register(longLived)

app.post('/login', async (request, reply) => { // stands for your real login
  const token = randomBytes(16).toString('base64url')
  sessions.set(token, { user: 'ada', expiresAt: Date.now() + sessionTtl })
  reply.header('set-cookie', `session=${token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${Math.ceil(sessionTtl / 1000)}`)
  return { user: 'ada' }
})

app.get('/events', {
  sse: true,
  preHandler: async (request, reply) => {
    if (sessionOf(request) === null) return reply.code(401).send({ error: 'log in again' })
  }
}, async (request, reply) => {
  const { user, expiresAt } = sessionOf(request)!
  // The stream does not check the session again by itself: end it when the session expires.
  // EventSource reconnects, and the new request goes through the preHandler again.
  const expiry = setTimeout(() => { reply.sse.closeGracefully('session expired').catch(() => {}) }, expiresAt - Date.now())
  reply.sse.onClose(() => { clearTimeout(expiry) })
  reply.sse.keepAlive()
  await reply.sse.send({ event: 'hello', data: { user } })
})

await app.listen({ port: 3000 })
