import { test } from 'tap'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { encodeEvent, encodeEventText, type SseEvent } from '../plugins/sse/encoder.js'
import { prng } from './helpers.js'

/** decode feeds bytes to a WHATWG-conformant parser and returns what a client would see. */
function decode (bytes: Buffer | string): { events: EventSourceMessage[], retries: number[], comments: string[] } {
  const events: EventSourceMessage[] = []
  const retries: number[] = []
  const comments: string[] = []
  const parser = createParser({
    onEvent: (e) => { events.push(e) },
    onRetry: (ms) => { retries.push(ms) },
    onComment: (c) => { comments.push(c) }
  })
  parser.feed(typeof bytes === 'string' ? bytes : bytes.toString('utf8'))
  return { events, retries, comments }
}

test('encodes each field as the parser reads it', async (t) => {
  t.equal(encodeEventText({ data: 'hello' }), 'data: hello\n\n')
  t.equal(encodeEventText({ event: 'tick', id: 7, data: { n: 1 } }), 'event: tick\nid: 7\ndata: {"n":1}\n\n')
  t.equal(encodeEventText({ retry: 3000 }), 'retry: 3000\n\n')
  t.equal(encodeEventText({ comment: 'ping' }), ': ping\n\n')
  t.equal(encodeEventText({ id: 0, data: 'x' }), 'id: 0\ndata: x\n\n', 'id 0 is sent')
  t.equal(encodeEventText({ id: '', data: 'x' }), 'id: \ndata: x\n\n', 'an empty id is sent (it resets the last event ID)')
  t.equal(encodeEventText({ data: '' }), 'data: \n\n', 'empty data is an event with empty data')
  t.equal(encodeEventText({ data: 'a\r\nb\nc\rd' }), 'data: a\ndata: b\ndata: c\ndata: d\n\n', 'CRLF, LF and a lone CR all split')
  t.equal(encodeEventText({ comment: 'a\nb' }), ': a\n: b\n\n')
  t.equal(encodeEventText({ data: ' leading' }), 'data:  leading\n\n', 'a leading space survives: the parser strips only one')
  t.same(decode(encodeEvent({ data: ' leading' })).events[0]!.data, ' leading')
  t.equal(encodeEventText({ data: null }), 'data: null\n\n', 'null is data too')
  t.equal(encodeEventText({ data: 1 }, (d) => `<${String(d)}>`), 'data: <1>\n\n', 'a custom serializer')
  t.ok(Buffer.isBuffer(encodeEvent({ data: 'é' })))
  t.equal(encodeEvent({ data: 'é' }).toString('utf8'), 'data: é\n\n')

  const back = decode(encodeEvent({ event: 'x', id: 'a b', retry: 10, comment: 'c', data: 'line1\nline2' }))
  t.same(back.events, [{ event: 'x', id: 'a b', data: 'line1\nline2' }])
  t.same(back.retries, [10])
  t.same(back.comments, ['c'], 'the parser strips the one space after the colon, as for fields')
})

test('rejects what the parser would read differently, with a coded error naming the field', async (t) => {
  const bad: Array<[SseEvent, string]> = [
    [{ event: 'a\nevent: b' }, 'event'],
    [{ event: 'a\rb' }, 'event'],
    [{ id: '1\ndata: forged' }, 'id'],
    [{ id: 'a\rb' }, 'id'],
    [{ id: 'a\0b' }, 'id'],
    [{ id: Number.NaN }, 'id'],
    [{ id: {} as never }, 'id'],
    [{ event: 1 as never }, 'event'],
    [{ retry: -1 }, 'retry'],
    [{ retry: 1.5 }, 'retry'],
    [{ retry: '10' as never }, 'retry'],
    [{ comment: 5 as never }, 'comment'],
    [{}, 'event'],
    [null as never, 'event'],
    [{ data: 1n }, 'data'],
    [{ data: Symbol('x') }, 'data']
  ]
  let i = 0
  for (const [event, field] of bad) {
    t.throws(() => encodeEvent(event), { code: 'FLL_ERR_SSE_INVALID_EVENT', message: new RegExp(`SSE field '${field}'`) }, `rejects ${field}: ${String(i++)}`)
  }
  const cyclic: Record<string, unknown> = {}
  cyclic.self = cyclic
  const err = (() => { try { encodeEvent({ data: cyclic }) } catch (e) { return e as Error & { cause?: unknown } } })()
  t.ok(err?.cause instanceof TypeError, 'the serializer\'s error is kept as the cause')
  t.throws(() => encodeEvent({ data: 1 }, () => 5 as never), { code: 'FLL_ERR_SSE_INVALID_EVENT', message: /returned number/ })
})

const pieces = ['\r', '\n', '\r\n', '\n\n', '\0', ' ', '  ', ':', ': ', 'data:', 'id:', 'event:', 'retry:', 'a', 'Zz', 'é', '日本', '😀', '\t', '\u2028', '\uFEFF', 'x'.repeat(40)]

function randomString (rand: () => number): string {
  let s = ''
  const n = Math.floor(rand() * 8)
  for (let i = 0; i < n; i++) s += pieces[Math.floor(rand() * pieces.length)]
  return s
}

test('fuzz: thousands of random events decode to exactly what was sent, or fail with a coded error', async (t) => {
  const seed = 20261127
  const rand = prng(seed)
  let encoded = 0
  let rejected = 0
  for (let i = 0; i < 5000; i++) {
    const event: SseEvent = {}
    if (rand() < 0.5) event.event = randomString(rand)
    if (rand() < 0.5) event.id = randomString(rand)
    if (rand() < 0.2) event.comment = randomString(rand)
    if (rand() < 0.1) event.retry = Math.floor(rand() * 10_000)
    if (rand() < 0.9) event.data = rand() < 0.8 ? randomString(rand) : { text: randomString(rand) }
    let bytes: Buffer
    try {
      bytes = encodeEvent(event)
    } catch (err) {
      rejected++
      const code = (err as { code?: string }).code
      if (code !== 'FLL_ERR_SSE_INVALID_EVENT') t.fail(`case ${i} (seed ${seed}) threw ${String(err)}`)
      continue
    }
    encoded++
    // Two events back to back: nothing may leak from the first into the second.
    const { events, retries, comments } = decode(Buffer.concat([bytes, encodeEvent({ data: 'sentinel' })]))
    const expectedData = event.data === undefined ? undefined : (typeof event.data === 'string' ? event.data : JSON.stringify(event.data))
    const expected: EventSourceMessage[] = []
    if (expectedData !== undefined) {
      expected.push({ data: expectedData.replace(/\r\n|\r/g, '\n'), event: event.event === '' ? undefined : event.event, id: event.id === undefined ? undefined : String(event.id) })
    }
    expected.push({ data: 'sentinel', event: undefined, id: undefined })
    const got = events.map((e) => ({ data: e.data, event: e.event === '' ? undefined : e.event, id: e.id }))
    if (JSON.stringify(got) !== JSON.stringify(expected)) {
      t.fail(`case ${i} (seed ${seed}): ${JSON.stringify(event)} decoded as ${JSON.stringify(got)}`)
      break
    }
    if (event.retry !== undefined && JSON.stringify(retries) !== JSON.stringify([event.retry])) t.fail(`case ${i}: retry ${JSON.stringify(retries)}`)
    if (event.comment !== undefined && comments.join('\n') !== event.comment.split(/\r\n|\r|\n/).join('\n')) {
      t.fail(`case ${i}: comments ${JSON.stringify(comments)}`)
    }
  }
  t.ok(encoded > 1000, `${encoded} events round-tripped`)
  t.ok(rejected > 100, `${rejected} events rejected with a coded error`)
})
