/**
 * Issue 12, part 2: `app.sse.channel()` options are checked like plugin options, and the hub's
 * state is saved and restored whole (`app.sse.save()` / `app.sse.restore()`), checked as what it
 * is: something read back from a file.
 */
import { test } from 'tap'
import { listen } from './helpers.js'
import { openStream, sseApp } from './sse-helpers.js'

test('channel options and names are checked when the channel is asked for, with the coded error of plugin options', async (t) => {
  const { app } = await sseApp(t)
  const bad: Array<[unknown, unknown, RegExp]> = [
    ['a', { historySize: 2.5 }, /option 'channel\(a\)\.historySize' must be an integer >= 0 .*received 2\.5/],
    ['a', { historySize: 'a' }, /'channel\(a\)\.historySize'.*received 'a'/],
    ['a', { historySize: -1 }, /'channel\(a\)\.historySize'/],
    ['a', { historyTtl: 0 }, /'channel\(a\)\.historyTtl' must be a positive integer \(ms\) or null/],
    ['a', { historyTtl: '1h' }, /'channel\(a\)\.historyTtl'/],
    ['a', { ephemeral: 'yes' }, /'channel\(a\)\.ephemeral' must be a boolean/],
    ['a', { events: 'nope' }, /'channel\(a\)\.events' must be one of the known options \(historySize, historyTtl, ephemeral\)/],
    ['a', { colour: 'red' }, /'channel\(a\)\.colour'/],
    ['a', 'opts', /'channel\(a\)' must be an object/],
    ['', {}, /'channel name' must be a non-empty string, received ''/],
    [42, {}, /'channel name' must be a non-empty string, received 42/]
  ]
  for (const [name, opts, message] of bad) {
    t.throws(() => app.sse.channel(name as string, opts as never), { code: 'FLL_ERR_INVALID_OPTION', message }, `${JSON.stringify(name)} ${JSON.stringify(opts)}`)
  }
  t.same(app.sse.channels, [], 'no channel was made by a call that threw')

  // Valid ones: 0 keeps no history, null keeps events until pushed out.
  const none = app.sse.channel('none', { historySize: 0, historyTtl: null, ephemeral: false })
  none.publish({ data: 'x' })
  t.same(none.events(), [])
  const three = app.sse.channel('three', { historySize: 3 })
  for (let i = 0; i < 5; i++) three.publish({ data: String(i) })
  t.same(three.events().map((e) => e.buf.toString()), ['2', '3', '4'].map((d, i) => `id: ${app.sse.tag}-${i + 4}\ndata: ${d}\n\n`),
    'historySize 3 keeps the last 3, and every publish works (2.5 made every one after the third throw)')
  t.equal(app.sse.channel('three'), three, 'the same channel the second time')
})

test('save() returns the hub as versioned, plain JSON; restore() gives the next process the sequence, the saved tags, histories and watermarks', async (t) => {
  const { app: first } = await sseApp(t)
  const ticks = first.sse.channel('ticks', { historySize: 2 })
  first.sse.channel('quiet')
  first.sse.channel('stats', { ephemeral: true }).publish({ data: 'not kept' })
  const ids = [1, 2, 3].map((n) => ticks.publish({ event: 'tick', data: { n } }))
  const state = first.sse.save()
  t.same(JSON.parse(JSON.stringify(state)), state, 'JSON-serialisable as it is')
  const ats = state.channels.ticks!.events.map((e) => e.at)
  t.ok(ats.every((at) => Math.abs(at - Date.now()) < 60_000), 'each event has its publish time (ms)')
  t.same(JSON.parse(JSON.stringify(state)), {
    version: 1,
    seq: 3,
    tags: [{ tag: first.sse.tag, from: 1, to: 3 }],
    channels: {
      ticks: {
        lostUpTo: 1,
        events: [2, 3].map((n) => ({ seq: n, id: ids[n - 1], at: ats[n - 2], text: `event: tick\nid: ${ids[n - 1]}\ndata: {"n":${n}}\n\n` }))
      },
      quiet: { lostUpTo: 0, events: [] }
    }
  }, 'the last seq, the tag that numbered it, and each non-ephemeral channel with its watermark and kept events')
  await first.close()

  const { app } = await sseApp(t)
  t.not(app.sse.tag, first.sse.tag, 'a fresh hub has a tag of its own')
  app.sse.restore(JSON.parse(JSON.stringify(state)))
  t.not(app.sse.tag, first.sse.tag, 'the restored hub numbers under a tag of its own')
  const restored = app.sse.channel('ticks', { historySize: 2 })
  t.same(restored.events().map((e) => e.id), [ids[1], ids[2]])
  t.equal(restored.publish({ data: 'next' }), `${app.sse.tag}-4`, 'the sequence goes on')
  const again = app.sse.save()
  t.same(again.tags, [{ tag: first.sse.tag, from: 1, to: 3 }, { tag: app.sse.tag, from: 4, to: 4 }], 'both runs\' tags, each with the seqs it numbered')
  t.same(again.channels.quiet, { lostUpTo: 0, events: [] }, 'a saved channel not created in this run is carried over')
  t.equal(again.channels.ticks!.lostUpTo, 2)

  app.get('/events', { sse: true }, async (_req, reply) => { reply.sse.subscribe(restored) })
  const port = await listen(app)
  const lost = await openStream(t, port, '/events', { 'last-event-id': ids[0]! })
  await lost.waitEvents(1)
  t.equal(lost.events[0]!.event, 'reset', 'an id behind the restored watermark: reset')
  await lost.close()
  const kept = await openStream(t, port, '/events', { 'last-event-id': ids[1]! })
  await kept.waitEvents(2)
  t.same(kept.events.map((e) => e.data), ['{"n":3}', 'next'], 'one after it: exactly the missed events')
})

test('restore() into a smaller history or past the ttl counts the dropped events as lost', async (t) => {
  const { app: first } = await sseApp(t)
  const ch = first.sse.channel('c')
  const ids = Array.from({ length: 5 }, (_v, i) => ch.publish({ data: String(i) }))
  const state = first.sse.save()
  for (const e of state.channels.c!.events.slice(0, 3)) e.at = Date.now() - 60_000
  const { app } = await sseApp(t)
  app.sse.restore(state)
  const small = app.sse.channel('c', { historySize: 3, historyTtl: 30_000 })
  t.same(small.events().map((e) => e.id), ids.slice(3), 'the newest 3 fit, and the oldest of them has expired')
  t.equal(app.sse.save().channels.c!.lostUpTo, 3, 'the watermark covers the dropped ones')
})

test('restore() must come first, and only once', async (t) => {
  const { app: first } = await sseApp(t)
  const state = first.sse.save()
  const { app } = await sseApp(t)
  app.sse.channel('early')
  t.throws(() => { app.sse.restore(state) }, { code: 'FLL_ERR_SSE_RESTORE_TOO_LATE', message: /before any channel is created.*early/ })
  const { app: twice } = await sseApp(t)
  twice.sse.restore(state)
  t.throws(() => { twice.sse.restore(state) }, { code: 'FLL_ERR_SSE_RESTORE_TOO_LATE', message: /already called/ })
})

test('restore() checks the state whole: anything malformed is a coded error saying what, and changes nothing', async (t) => {
  const { app: first } = await sseApp(t)
  const ch = first.sse.channel('c')
  ch.publish({ data: 'one' })
  ch.publish({ id: 'own', data: 'two' })
  const good = first.sse.save()
  const tags = good.tags
  // A copy of the good state, changed by `f` (loosely typed: it breaks the state on purpose).
  const edit = (f: (s: any) => void): unknown => {
    const s = JSON.parse(JSON.stringify(good))
    f(s)
    return s
  }
  const cases: Array<[string, unknown, RegExp]> = [
    ['not an object', 'state', /state must be an object, received 'state'/],
    ['null', null, /state must be an object, received null/],
    ['{}', {}, /state\.version must be present/],
    ['a newer version', edit((s) => { s.version = 2 }), /state\.version must be 1, received 2/],
    ['an unknown key', edit((s) => { s.extra = 1 }), /unknown key 'extra'/],
    ['a bad tag', edit((s) => { s.tags[0].tag = 'A-B' }), /state\.tags\[0\]\.tag must be/],
    ['tags out of order', edit((s) => { s.tags = [{ tag: 'x', from: 2, to: 2 }, { tag: 'y', from: 1, to: 1 }] }), /state\.tags\[1\]\.from must be an integer from 3/],
    ['a tag twice', edit((s) => { s.tags = [{ tag: 'x', from: 1, to: 1 }, { tag: 'x', from: 2, to: 2 }] }), /state\.tags must be tags that differ/],
    ['a seq beyond 2^50', edit((s) => { s.seq = 2 ** 50 + 1 }), /state\.seq must be an integer from 0 to 1125899906842624/],
    ['a hub id that does not name its seq', edit((s) => { s.channels.c.events[0].id = `${tags[0]!.tag}-2`; s.channels.c.events[0].text = `id: ${tags[0]!.tag}-2\ndata: one\n\n` }), /events\[0\]\.id must be the id of seq 1/],
    ['one seq in two channels', edit((s) => { s.channels.d = { lostUpTo: 0, events: [s.channels.c.events[0]] } }), /state\.channels\["d"\]\.events\[0\]\.seq must be a seq no other saved event has/],
    ['a negative seq', edit((s) => { s.seq = -1 }), /state\.seq must be an integer from 0/],
    ['channels as an array', edit((s) => { s.channels = [] }), /state\.channels must be an object/],
    ['a channel without events', edit((s) => { delete s.channels.c.events }), /state\.channels\["c"\]\.events must be present/],
    ['a watermark above seq', edit((s) => { s.channels.c.lostUpTo = 3 }), /state\.channels\["c"\]\.lostUpTo must be an integer from 0 to 2, received 3/],
    ['events out of order', edit((s) => { s.channels.c.events.reverse() }), /events\[1\]\.seq must be an integer from 3 to 2, received 1/],
    ['an event at or below the watermark', edit((s) => { s.channels.c.lostUpTo = 1 }), /events\[0\]\.seq must be an integer from 2 to 2, received 1/],
    ['an event above seq', edit((s) => { s.seq = 1 }), /lostUpTo|seq must be an integer from|to must be an integer from/],
    ['an id that is not a string', edit((s) => { s.channels.c.events[0].id = 1 }), /events\[0\]\.id must be a string, received 1/],
    ['a bad time', edit((s) => { s.channels.c.events[0].at = 'now' }), /events\[0\]\.at must be a time in ms/],
    ['a text of two events', edit((s) => { s.channels.c.events[1].text = 'id: own\ndata: two\n\ndata: injected\n\n' }), /events\[1\]\.text must be one encoded event with the line 'id: own'/],
    ['a text without its id', edit((s) => { s.channels.c.events[1].text = 'data: two\n\n' }), /events\[1\]\.text must be one encoded event/],
    ['a text with a CR', edit((s) => { s.channels.c.events[1].text = 'id: own\ndata: a\rdata: b\n\n' }), /events\[1\]\.text must be/],
    ['an unnamed channel', edit((s) => { s.channels[''] = { lostUpTo: 0, events: [] } }), /state\.channels must be named by non-empty strings/]
  ]
  const { app } = await sseApp(t)
  const fresh = app.sse.tag
  for (const [what, state, message] of cases) {
    t.throws(() => { app.sse.restore(state) }, { code: 'FLL_ERR_SSE_INVALID_STATE', message }, what)
  }
  t.equal(app.sse.tag, fresh, 'the hub is as it was')
  app.sse.restore(good)
  t.same(app.sse.save().tags, tags, 'and a good state is still taken')
  t.same(app.sse.channel('c').events().map((e) => e.id), [`${tags[0]!.tag}-1`, 'own'])
})

test('channel() again with other options is refused; with the same ones, or none, it returns the channel', async (t) => {
  const { app } = await sseApp(t)
  const ticks = app.sse.channel('ticks', { historySize: 10 })
  t.equal(app.sse.channel('ticks'), ticks, 'no options: the channel')
  t.equal(app.sse.channel('ticks', { historySize: 10 }), ticks, 'the same options: the channel')
  t.throws(() => app.sse.channel('ticks', { ephemeral: true }), {
    code: 'FLL_ERR_INVALID_OPTION',
    message: /'channel\(ticks\)' must be the options it was created with \(historySize 10, historyTtl null, ephemeral false\)/
  })
  t.throws(() => app.sse.channel('ticks', { historySize: 11 }), { code: 'FLL_ERR_INVALID_OPTION' })
})
