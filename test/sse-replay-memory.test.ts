/**
 * Issue 12, part 2: what a channel keeps for replay costs about what its events weigh. A small
 * Buffer made by Buffer.from() is a slice of Node's shared 8 KB pool, and keeping the slice keeps
 * the whole pool: kept events published between other work each pinned a pool of their own
 * (40 KB of events held 3.9 MB).
 */
import { test } from 'tap'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { sseApp } from './sse-helpers.js'

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

/** buffersInUse collects garbage until what is freed is counted (V8 frees Buffers' memory after the collection), then reads it. */
async function buffersInUse (): Promise<number> {
  for (let i = 0; i < 3; i++) {
    gc()
    await new Promise((resolve) => { setImmediate(resolve) })
  }
  return process.memoryUsage().arrayBuffers
}

/** otherWork makes the pooled Buffers an app makes between two publishes (more than one pool's worth), and drops them. */
function otherWork (): void {
  for (let i = 0; i < 3; i++) Buffer.from('x'.repeat(4000))
}

test('kept events pin about what they weigh: the distinct memory under them is close to their bytes', async (t) => {
  const { app } = await sseApp(t)
  const ch = app.sse.channel('ticks', { historySize: 500 })
  for (let i = 0; i < 1000; i++) {
    ch.publish({ event: 'tick', data: { n: i, at: new Date().toISOString() } })
    otherWork()
  }
  const kept = ch.events()
  t.equal(kept.length, 500)
  const bytes = kept.reduce((sum, e) => sum + e.buf.length, 0)
  const pinned = [...new Set(kept.map((e) => e.buf.buffer))].reduce((sum, ab) => sum + ab.byteLength, 0)
  t.ok(pinned < 1.5 * bytes, `${kept.length} kept events of ${bytes} bytes sit on ${pinned} bytes of memory (${(pinned / bytes).toFixed(2)}x)`)

  // A history restored from a saved state, too.
  const { app: next } = await sseApp(t)
  next.sse.restore(JSON.parse(JSON.stringify(app.sse.save())))
  const restored = next.sse.channel('ticks', { historySize: 500 }).events()
  const restoredPinned = [...new Set(restored.map((e) => e.buf.buffer))].reduce((sum, ab) => sum + ab.byteLength, 0)
  t.ok(restoredPinned < 1.5 * bytes, `restored: ${bytes} bytes on ${restoredPinned} bytes of memory`)

  // Large events.
  const big = app.sse.channel('big', { historySize: 20 })
  for (let i = 0; i < 40; i++) big.publish({ data: 'b'.repeat(3000 + i) })
  const bigKept = big.events()
  const bigBytes = bigKept.reduce((sum, e) => sum + e.buf.length, 0)
  const bigPinned = [...new Set(bigKept.map((e) => e.buf.buffer))].reduce((sum, ab) => sum + ab.byteLength, 0)
  t.ok(bigPinned < 1.5 * bigBytes, `20 events of about 3 KB: ${bigBytes} bytes on ${bigPinned} bytes of memory`)
})

test('process memory: a history of 500 small events grows the Buffers in use by about their size', async (t) => {
  const { app } = await sseApp(t)
  const before = await buffersInUse()
  const ch = app.sse.channel('ticks', { historySize: 500 })
  for (let i = 0; i < 500; i++) {
    ch.publish({ event: 'tick', data: { n: i, at: new Date().toISOString() } })
    otherWork()
  }
  const growth = await buffersInUse() - before
  const bytes = ch.events().reduce((sum, e) => sum + e.buf.length, 0)
  // Before: each event held a pool of 8 KB, 500 of them about 4 MB.
  t.ok(growth < 4 * bytes, `Buffers in use grew by ${(growth / 1024).toFixed(0)} KB for ${(bytes / 1024).toFixed(0)} KB of kept events`)
})

test('an event kept by no history (historySize 0) is encoded as before; consecutive kept events share their slab', async (t) => {
  const { app } = await sseApp(t)
  const none = app.sse.channel('none', { historySize: 0 })
  t.equal(none.publish({ data: 'x' }).length > 0, true)
  const ch = app.sse.channel('c', { historySize: 10 })
  ch.publish({ data: 'a' })
  ch.publish({ data: 'b' })
  const [a, b] = ch.events()
  t.equal(a!.buf.buffer, b!.buf.buffer, 'two small events, one allocation')
  t.equal(a!.buf.toString(), `id: ${app.sse.tag}-2\ndata: a\n\n`)
  t.equal(b!.buf.toString(), `id: ${app.sse.tag}-3\ndata: b\n\n`)
})
