/**
 * Issue 11: heartbeats could be 2x the interval apart. The shared timer ticked once per
 * interval, so a stream opened just after a tick (or one 1 ms short of the interval at a tick)
 * waited a whole extra period. Behind nginx's proxy_read_timeout that cut quiet streams.
 *
 * First exactly, with a fake clock whose timers fire a seeded random few ms late (a busy event
 * loop); then on a real socket.
 */
import { test } from 'tap'
import { Heartbeats, tickPeriod, type HeartbeatClock, type HeartbeatTarget, type HeartbeatTimer } from '../plugins/sse/heartbeat.js'
import { longLived, type LongLivedOptions, type SseRouteOption } from '../plugins/index.js'
import { build, collect, connect, get, listen, logCapture, prng, waitUntil } from './helpers.js'
import { sseApp } from './sse-helpers.js'

interface FakeTimer extends HeartbeatTimer { fn: () => void, ms: number, due: number }

/**
 * FakeClock: time moves only in run(); a due timer fires `lateness()` ms after its due time,
 * as a timer does when the event loop is busy, and refresh() re-arms it from the time it ran.
 */
class FakeClock implements HeartbeatClock {
  time = 0
  readonly timers = new Set<FakeTimer>()
  readonly #lateness: () => number

  constructor (lateness: () => number) { this.#lateness = lateness }

  now (): number { return this.time }

  setTimeout (fn: () => void, ms: number): FakeTimer {
    const clock = this
    const timer: FakeTimer = {
      fn,
      ms,
      due: this.time + ms,
      refresh () { timer.due = clock.time + ms; clock.timers.add(timer) },
      unref () {}
    }
    this.timers.add(timer)
    return timer
  }

  clearTimeout (timer: HeartbeatTimer): void { this.timers.delete(timer as FakeTimer) }

  /** run fires the timers due up to `until` (each a little late), then sets the time to `until`. */
  run (until: number): void {
    for (;;) {
      let next: FakeTimer | null = null
      for (const timer of this.timers) if (next === null || timer.due < next.due) next = timer
      if (next === null || next.due > until) break
      this.timers.delete(next) // a fired timer is gone until refreshed
      this.time = Math.max(this.time, next.due + this.#lateness())
      next.fn()
    }
    this.time = Math.max(this.time, until)
  }
}

/** FakeStream: a quiet stream that records its writes as SseStream does (floored, from the head on). */
class FakeStream implements HeartbeatTarget {
  readonly writes: number[]
  #lastWriteAt: number

  constructor (openedAt: number) {
    this.#lastWriteAt = Math.floor(openedAt)
    this.writes = [openedAt]
  }

  heartbeat (now: number, silence: number): void {
    if (now - this.#lastWriteAt < silence) return
    this.#lastWriteAt = Math.floor(now)
    this.writes.push(now)
  }

  gaps (): number[] {
    return this.writes.slice(1).map((at, i) => at - this.writes[i]!)
  }
}

test('Heartbeats: a stream added just after a tick gets its first heartbeat within the interval, and with jittery timers no gap exceeds interval + jitter', async (t) => {
  const interval = 1000
  const jitter = 5 // ms: the most a tick fires late
  const period = tickPeriod(interval)
  t.equal(period, 250, 'four ticks per interval')
  const seed = 11
  const random = prng(seed)
  const clock = new FakeClock(() => Math.floor(random() * (jitter + 1)))
  const heartbeats = new Heartbeats(clock)
  t.teardown(() => { heartbeats.close() })

  // A first stream starts the group's timer; the second is added 10 ms after a tick has run.
  const first = new FakeStream(clock.now())
  heartbeats.add(first, interval)
  clock.run(interval)
  const tickAt = first.writes[1]
  t.ok(tickAt !== undefined && tickAt <= interval + jitter, `the first stream's first heartbeat came at ${tickAt} ms`)
  clock.run(tickAt! + 10)
  const late = new FakeStream(clock.now())
  heartbeats.add(late, interval)

  // And one more added at every ms of a period, so every phase against the ticks is tried.
  const phased: FakeStream[] = []
  for (let i = 1; i <= period; i++) {
    clock.run(clock.now() + 1)
    const s = new FakeStream(clock.now())
    heartbeats.add(s, interval)
    phased.push(s)
  }

  clock.run(clock.now() + 50 * interval)
  const lateFirst = late.gaps()[0]
  t.ok(lateFirst !== undefined && lateFirst <= interval + jitter,
    `the stream added 10 ms after a tick had its first heartbeat ${lateFirst} ms after its head (at most ${interval} + ${jitter})`)

  const streams = [first, late, ...phased]
  const gaps = streams.flatMap((s) => s.gaps())
  const maxGap = Math.max(...gaps)
  const minGap = Math.min(...gaps)
  t.ok(streams.every((s) => s.writes.length >= 45), 'every stream got a heartbeat about every interval')
  t.ok(maxGap <= interval + jitter, `no gap over interval + jitter: max ${maxGap} ms (${gaps.length} gaps, seed ${seed})`)
  t.ok(minGap >= interval - period - 1, `no heartbeat sooner than needed: min ${minGap} ms`)

  // The group's timer goes with its last stream.
  for (const s of streams) heartbeats.delete(s, interval)
  t.equal(clock.timers.size, 0, 'no timer left once the last stream is gone')
})

test('Heartbeats: a tick period of at least 1 ms for tiny intervals, and one timer per interval', async (t) => {
  t.equal(tickPeriod(1), 1)
  t.equal(tickPeriod(3), 1)
  t.equal(tickPeriod(15e3), 3750)
  const clock = new FakeClock(() => 0)
  const heartbeats = new Heartbeats(clock)
  const a = new FakeStream(0)
  const b = new FakeStream(0)
  const c = new FakeStream(0)
  heartbeats.add(a, 2)
  heartbeats.add(b, 2)
  heartbeats.add(c, 100)
  t.equal(clock.timers.size, 2, 'streams with the same interval share a timer')
  clock.run(20)
  t.ok(Math.max(...a.gaps(), ...b.gaps()) <= 2, 'a 2 ms interval is kept')
  t.ok(c.writes.length === 1, 'no heartbeat before 100 ms')
  heartbeats.close()
  t.equal(clock.timers.size, 0, 'close() clears every timer')
})

test('a quiet stream on a real socket: heartbeats at most heartbeatInterval apart (+ a margin), also for a stream opened just after a tick', async (t) => {
  const interval = 200
  const margin = 120 // ms: timer lateness and the trip through the sockets, on a loaded CI machine
  const { app } = await sseApp(t, { heartbeatInterval: interval })
  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.sendHeaders(); reply.sse.keepAlive() })
  const port = await listen(app)

  /** open streams /events on a raw socket and records when its head and each heartbeat arrived. */
  async function open (): Promise<{ arrivals: number[], gaps: () => number[] }> {
    const socket = await connect(t, port)
    const received = collect(socket)
    const arrivals: number[] = []
    let seen = 0
    socket.on('data', () => {
      const text = received.text()
      const headEnd = text.indexOf('\r\n\r\n')
      if (headEnd === -1) return
      // The head, then each heartbeat (a ':' comment; nothing else is sent on this stream).
      const count = 1 + text.slice(headEnd).split(':\n\n').length - 1
      for (; seen < count; seen++) arrivals.push(performance.now())
    })
    socket.write(get('/events', { accept: 'text/event-stream' }))
    return { arrivals, gaps: () => arrivals.slice(1).map((at, i) => at - arrivals[i]!) }
  }

  const periods = 6
  const first = await open()
  await waitUntil(() => first.arrivals.length >= 2, 5000, 'the first heartbeat')
  // Opened as soon as a tick's heartbeat arrived: the case that waited two periods.
  const second = await open()
  await waitUntil(() => second.arrivals.length >= periods + 1, periods * interval * 3, `${periods} heartbeats`)
  for (const [name, s] of [['first', first], ['second (opened just after a tick)', second]] as const) {
    const gaps = s.gaps().map(Math.round)
    t.ok(Math.max(...gaps) <= interval + margin, `${name} stream: gaps ${gaps.join(', ')} ms, none over ${interval} + ${margin}`)
  }
})

test('a heartbeat at or above the proxy\'s longest accepted silence is a warning, for the plugin and for a route', async (t) => {
  const warnings = async (opts: LongLivedOptions, route?: SseRouteOption): Promise<string[]> => {
    const { logger, lines } = logCapture('warn')
    const app = build(t, { logger })
    await app.register(longLived, { shutdown: false, ...opts })
    if (route !== undefined) app.get('/events', { sse: route }, async (_req, reply) => { reply.sse.keepAlive() })
    await app.ready()
    await app.close()
    return lines.filter((l) => l.code === 'FLL_WARN_HEARTBEAT_ABOVE_PROXY').map((l) => l.msg)
  }
  t.same(await warnings({ timeouts: { proxy: 'aws-alb' } }), [], 'the default 15 s behind an ALB (60 s): none')
  t.same(await warnings({ sse: { heartbeatInterval: 120e3 } }), [], 'no proxy named: nothing to check against')
  t.match(await warnings({ timeouts: { proxy: 'aws-alb' }, sse: { heartbeatInterval: 45001 } }),
    [/heartbeatInterval of the sse plugin \(45001 ms\) leaves no margin under the longest silence the proxy \(aws-alb\) accepts \(60000 ms\).*at or below 45000 ms/])
  t.same(await warnings({ timeouts: { proxy: 'aws-alb' }, sse: { heartbeatInterval: 45000 } }), [], 'three quarters of it: fine')
  t.match(await warnings({ timeouts: { proxy: 'gcp-lb' } }, { heartbeatInterval: null }),
    [/heartbeatInterval of route GET \/events \(null: no heartbeat\) leaves no margin .* \(gcp-lb\) accepts \(30000 ms\)/], 'a route\'s own setting, named')
  t.match(await warnings({ timeouts: { proxy: { idleTimeout: 60e3, responseTimeout: 10e3 } } }, { heartbeatInterval: 5e3 }),
    [/of the sse plugin \(15000 ms\)/], 'a route below the proxy\'s silence is fine; the plugin\'s 15 s is not')
})
