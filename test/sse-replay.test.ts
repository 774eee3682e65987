/**
 * Issue 12, part 2: replay that never lies. Across a restart (the hub saved and restored), with
 * ids from another instance, and with a publisher's own ids, a reconnecting client gets exactly
 * the events it missed, in publish order, or `reset` for a channel that cannot tell: never a
 * spurious reset, never a replay of events it did not miss.
 */
import { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { Channel, HubState } from '../plugins/index.js'
import { listen } from './helpers.js'
import { openStream, sseApp } from './sse-helpers.js'

/** seqOf reads the hub sequence number of a hub-assigned id (`<tag>-<seq>`). */
const seqOf = (id: string): number => Number(id.slice(id.lastIndexOf('-') + 1))

/** serve adds GET /events, subscribed to `channels`, and listens. */
async function serve (app: FastifyInstance, channels: Channel[]): Promise<number> {
  app.get('/events', { sse: true }, async (_req, reply) => {
    const { replayed, reset } = reply.sse.subscribe(channels)
    await reply.sse.send({ event: 'welcome', data: { replayed, reset } })
  })
  return await listen(app)
}

/** resume connects with `lastEventId` and returns what came before the welcome event, as `event:data` (or `reset:channel`). */
async function resume (t: Test, port: number, lastEventId: string): Promise<{ got: string[], welcome: { replayed: number, reset: boolean } }> {
  const s = await openStream(t, port, '/events', { 'last-event-id': lastEventId })
  for (let n = 1; !s.events.some((e) => e.event === 'welcome'); n++) await s.waitEvents(n)
  await s.close()
  const at = s.events.findIndex((e) => e.event === 'welcome')
  const got = s.events.slice(0, at).map((e) => e.event === 'reset' ? `reset:${JSON.parse(e.data).channel}` : `${e.event ?? 'message'}:${e.data}`)
  return { got, welcome: JSON.parse(s.events[at]!.data) }
}

/** restart saves `app`'s hub, closes it, and returns a new app whose hub restored it (through JSON, as from a file). */
async function restart (t: Test, app: FastifyInstance): Promise<FastifyInstance> {
  const state = JSON.parse(JSON.stringify(app.sse.save())) as HubState
  await app.close()
  const { app: next } = await sseApp(t)
  next.sse.restore(state)
  return next
}

test('across a restart, a channel that never published anything sends no reset', async (t) => {
  const { app: first } = await sseApp(t)
  const ticks = first.sse.channel('ticks')
  first.sse.channel('messages')
  const last = ticks.publish({ event: 'tick', data: '1' })

  const app = await restart(t, first)
  const port = await serve(app, [app.sse.channel('ticks'), app.sse.channel('messages')])
  app.sse.channel('ticks').publish({ event: 'tick', data: '2' })
  for (let i = 0; i < 3; i++) {
    const { got, welcome } = await resume(t, port, last)
    t.same(got, ['tick:2'], `reconnect ${i + 1}: the missed tick, no reset for messages`)
    t.same(welcome, { replayed: 1, reset: false })
  }
})

test('across a restart, the 3 messages posted while the client was away are replayed, in publish order', async (t) => {
  const { app: first } = await sseApp(t)
  const ticks = first.sse.channel('ticks')
  const messages = first.sse.channel('messages')
  const last = ticks.publish({ event: 'tick', data: '1' }) // the client's last event, then it leaves
  ticks.publish({ event: 'tick', data: '2' })
  messages.publish({ event: 'message', data: 'a' })
  ticks.publish({ event: 'tick', data: '3' })
  messages.publish({ event: 'message', data: 'b' })
  messages.publish({ event: 'message', data: 'c' })

  const app = await restart(t, first)
  const port = await serve(app, [app.sse.channel('ticks'), app.sse.channel('messages')])
  app.sse.channel('messages').publish({ event: 'message', data: 'd' })
  const { got, welcome } = await resume(t, port, last)
  t.same(got, ['tick:2', 'message:a', 'tick:3', 'message:b', 'message:c', 'message:d'], 'every missed event of both processes, once, in order')
  t.same(welcome, { replayed: 6, reset: false })

  // And a second restart: the watermark and the sequence go on.
  const again = await restart(t, app)
  const port2 = await serve(again, [again.sse.channel('ticks'), again.sse.channel('messages')])
  t.same((await resume(t, port2, last)).got, ['tick:2', 'message:a', 'tick:3', 'message:b', 'message:c', 'message:d'])
})

test('an id this hub did not issue gets a reset, never a replay: two instances, one restored', async (t) => {
  // Instance C ran first and saved its history; A starts; B starts from C's saved state.
  const { app: c } = await sseApp(t)
  const old = c.sse.channel('ticks')
  const idsFromC = Array.from({ length: 50 }, (_v, i) => old.publish({ data: `c${i}` }))
  const saved = JSON.parse(JSON.stringify(c.sse.save())) as HubState
  await c.close()
  const { app: a } = await sseApp(t)
  const { app: b } = await sseApp(t)
  b.sse.restore(saved)
  const aTicks = a.sse.channel('ticks')
  const bTicks = b.sse.channel('ticks')
  const portA = await serve(a, [aTicks])
  const portB = await serve(b, [bTicks])
  const idFromA = aTicks.publish({ data: 'a1' })
  const idFromB = bTicks.publish({ data: 'b1' })
  t.match(idFromA, /^[0-9a-z]{8}-1$/, 'a hub-assigned id is <tag>-<seq>')
  t.not(a.sse.tag, b.sse.tag, 'each instance has its own tag')
  t.not(b.sse.tag, c.sse.tag, 'a restored hub numbers under a tag of its own')
  t.equal(idFromB, `${b.sse.tag}-51`, 'and goes on with the saved sequence')

  t.same((await resume(t, portB, idFromA)).got, ['reset:ticks'], "A's id at B (which restored 50 events): reset, not a replay")
  t.same((await resume(t, portA, idFromB)).got, ['reset:ticks'], "B's id at A: reset")
  t.same((await resume(t, portA, `${a.sse.tag}-2`)).got, ['reset:ticks'], 'one of our ids from the future (not issued yet): reset')
  t.same((await resume(t, portB, idsFromC[47]!)).got, ['message:c48', 'message:c49', 'message:b1'], "C's id at B, which restored C: exactly what was missed")
  // Plain numbers (ids of the old format, µs since boot), anything else.
  for (const id of ['1', String(seqOf(idFromB)), String(Date.now() * 1000), 'not-an-id', '']) {
    t.same((await resume(t, portB, id)).got, ['reset:ticks'], `Last-Event-ID '${id}': reset`)
  }
})

test("a publisher's own ids (numbers above the hub sequence) replay by exact match", async (t) => {
  const { app } = await sseApp(t)
  const prices = app.sse.channel('prices')
  const port = await serve(app, [prices])
  // µs timestamps: far above the hub's sequence.
  const base = Date.now() * 1000
  const ids = [0, 1, 2, 3].map((i) => prices.publish({ id: base + i * 10, event: 'price', data: String(i) }))
  t.equal(ids[0], String(base), "the publisher's id is kept as it is")
  for (let i = 0; i < 3; i++) {
    const { got, welcome } = await resume(t, port, ids[1]!)
    t.same(got, ['price:2', 'price:3'], `reconnect ${i + 1}: exactly the events after it`)
    t.same(welcome, { replayed: 2, reset: false })
  }
  t.same((await resume(t, port, String(base + 5))).got, ['reset:prices'], 'a number between two ids was never sent: reset')
})

test('one Last-Event-ID resumes every channel of a stream: placed once, each channel replays after it, or resets if it lost events after it', async (t) => {
  const { app } = await sseApp(t)
  const prices = app.sse.channel('prices', { historySize: 10 })
  const ticks = app.sse.channel('ticks', { historySize: 10 })
  const news = app.sse.channel('news', { historySize: 2 })
  const stats = app.sse.channel('stats', { ephemeral: true })
  const port = await serve(app, [prices, ticks, news, stats])
  const base = Date.now() * 1000
  const p1 = prices.publish({ id: base + 1, event: 'price', data: '1' })
  const n1 = news.publish({ event: 'news', data: '1' })
  ticks.publish({ event: 'tick', data: '1' })
  stats.publish({ event: 'stats', data: '1' })
  prices.publish({ id: base + 2, event: 'price', data: '2' })
  const t2 = ticks.publish({ event: 'tick', data: '2' })

  t.same((await resume(t, port, p1)).got, ['news:1', 'tick:1', 'price:2', 'tick:2'],
    "a publisher's id of one channel: every channel replays what came after it, merged in publish order")
  t.same((await resume(t, port, n1)).got, ['tick:1', 'price:2', 'tick:2'], 'a hub-assigned id of another channel: the same')
  t.same((await resume(t, port, t2)).got, [], 'the latest id: nothing to replay, no reset')

  news.publish({ event: 'news', data: '2' })
  news.publish({ event: 'news', data: '3' })
  news.publish({ event: 'news', data: '4' }) // news keeps 2: news 2 is lost
  const { got, welcome } = await resume(t, port, p1)
  t.same(got, ['reset:news', 'tick:1', 'price:2', 'tick:2'], 'the channel that lost events after the id resets; the others replay')
  t.same(welcome, { replayed: 3, reset: true })
  t.same((await resume(t, port, String(base + 99))).got, ['reset:prices', 'reset:ticks', 'reset:news'],
    'an id no channel can place: every channel with history resets (the ephemeral one never does)')
})

test('a publisher id kept twice (reused, or in two channels) resumes from its oldest copy: repeats, never a gap', async (t) => {
  const { app } = await sseApp(t)
  const a = app.sse.channel('a')
  const b = app.sse.channel('b')
  a.publish({ id: '1', data: 'a1' }) // the client's last event
  b.publish({ id: '1', data: 'b1' })
  b.publish({ id: '2', data: 'b2' })
  const v = app.sse.channel('v')
  v.publish({ id: 'v1', data: 'first' }) // another client's last event
  v.publish({ id: 'v2', data: 'second' })
  v.publish({ id: 'v1', data: 'third' })
  app.get('/ba', { sse: true }, async (_req, reply) => {
    const { replayed, reset } = reply.sse.subscribe([b, a])
    await reply.sse.send({ event: 'welcome', data: { replayed, reset } })
  })
  const port = await serve(app, [v])
  const s = await openStream(t, port, '/ba', { 'last-event-id': '1' })
  for (let n = 1; !s.events.some((e) => e.event === 'welcome'); n++) await s.waitEvents(n)
  t.same(s.events.slice(0, -1).map((e) => e.data), ['b1', 'b2'], 'id 1 is placed at its oldest copy (in a): b1 and b2 both come')
  t.same((await resume(t, port, 'v1')).got, ['message:second', 'message:third'], 'a reused id in one channel: from its oldest copy')
})

test('two processes restored from one saved state never give one id to two events: the other\'s new ids get a reset', async (t) => {
  const { app: first } = await sseApp(t)
  const seen = first.sse.channel('ticks').publish({ data: 'before' })
  const state = JSON.parse(JSON.stringify(first.sse.save())) as HubState
  await first.close()
  // A stale state file read twice: after a crash, or two instances of an overlapping deploy.
  const [{ app: one }, { app: two }] = await Promise.all([sseApp(t), sseApp(t)])
  one.sse.restore(state)
  two.sse.restore(state)
  const oneTicks = one.sse.channel('ticks')
  const twoTicks = two.sse.channel('ticks')
  const fromOne = ['x', 'y', 'z'].map((d) => oneTicks.publish({ data: `one-${d}` }))
  for (const d of ['x', 'y', 'z']) twoTicks.publish({ data: `two-${d}` })
  t.not(fromOne.at(-1), twoTicks.events().at(-1)!.id, 'the same seq, different ids')
  const port = await serve(two, [twoTicks])
  t.same((await resume(t, port, fromOne.at(-1)!)).got, ['reset:ticks'], "the other process's id: reset, not a silent skip of two-x and two-y")
  t.same((await resume(t, port, seen)).got, ['message:two-x', 'message:two-y', 'message:two-z'], 'an id of the saved run resumes in both')
})

test("a channel named '__proto__' is saved and restored like any other", async (t) => {
  const { app: first } = await sseApp(t)
  const last = first.sse.channel('__proto__').publish({ data: 'p1' })
  first.sse.channel('__proto__').publish({ data: 'p2' })
  const app = await restart(t, first)
  const proto = app.sse.channel('__proto__')
  t.same(proto.events().map((e) => e.buf.toString().split('\n')[1]), ['data: p1', 'data: p2'], 'its history came back')
  const port = await serve(app, [proto])
  t.same((await resume(t, port, last)).got, ['message:p2'])
})
