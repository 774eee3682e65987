// One benchmark server: `node bench/server.js bare|kit`.
//
// bare: Fastify with no plugin. kit: Fastify + the compiled connections and timeouts plugins
// (from dist/, so run `npm run build` first), with their default options, minDataRate sweep
// included. Both serve GET / -> {"hello":"world"} with the logger off.
//
// It listens on 127.0.0.1, port 0, and prints one JSON line to stdout:
//   {"variant":"kit","port":12345,"pid":678}
// then stays up until SIGTERM or SIGINT (or until its parent's IPC channel closes, when it was
// started with child_process.fork). When forked, it answers the IPC message {"cmd":"stats"}
// with its own CPU time, RSS and, for kit, the registry's request counter, so the driver can
// measure the server's CPU cost from the inside.
import Fastify from 'fastify'

const variants = ['bare', 'kit']
const variant = process.argv[2]
if (!variants.includes(variant)) {
  console.error(`usage: node bench/server.js <${variants.join('|')}>`)
  process.exit(2)
}

const app = Fastify({ logger: false })

if (variant === 'kit') {
  let connections, timeouts
  try {
    connections = (await import('../dist/plugins/connections.js')).default
    timeouts = (await import('../dist/plugins/timeouts.js')).default
  } catch (err) {
    console.error('bench/server.js: cannot load dist/plugins/*.js; run `npm run build` first')
    console.error(err)
    process.exit(1)
  }
  await app.register(connections)
  await app.register(timeouts) // defaults: includes the minDataRate sweep (1 s interval)
}

app.get('/', async () => ({ hello: 'world' }))

await app.listen({ port: 0, host: '127.0.0.1' })
process.stdout.write(JSON.stringify({ variant, port: app.server.address().port, pid: process.pid }) + '\n')

if (typeof process.send === 'function') {
  process.on('message', (msg) => {
    if (msg === null || typeof msg !== 'object' || msg.cmd !== 'stats') return
    const cpu = process.cpuUsage()
    process.send({
      cmd: 'stats',
      id: msg.id,
      cpuUserUs: cpu.user,
      cpuSystemUs: cpu.system,
      rssBytes: process.memoryUsage.rss(),
      // Proves the plugin saw the load (null for bare).
      requestsTotal: variant === 'kit' ? app.connections.stats().requestsTotal : null
    })
  })
  process.on('disconnect', () => { shutdown('disconnect') })
}

let closing = false
function shutdown (why) {
  if (closing) return
  closing = true
  // Bounded: if close() hangs on a lingering connection, leave anyway.
  setTimeout(() => { process.exit(0) }, 3000).unref()
  app.close().then(() => { process.exit(0) }, (err) => {
    console.error(`bench/server.js: close after ${why} failed`, err)
    process.exit(1)
  })
}
process.once('SIGTERM', () => { shutdown('SIGTERM') })
process.once('SIGINT', () => { shutdown('SIGINT') })
