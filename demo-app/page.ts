/**
 * The demo page: plain HTML and JS served by the app, no front-end build, no library, nothing
 * loaded from elsewhere. It listens to /events with EventSource and shows ticks, messages, live
 * connection stats, sparklines of the last minute (events received per second, open
 * connections), and a note each time the stream reconnects (with how many events the server
 * replayed) or is lost.
 *
 * EventSource retries by itself after a network error, but gives up for good on an answer that
 * is not a 200 text/event-stream (a proxy's 502 while the app restarts): the page then makes a
 * new one, with a backoff, passing the last event id it saw as `?lastEventId=` since a new
 * EventSource cannot send Last-Event-ID (the app reads it with the sse option `lastEventIdQuery`).
 */
export const page = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fastify-long-lived demo</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2430; background: #f5f6f8; }
  body { margin: 0 auto; max-width: 980px; padding: 24px; }
  h1 { font-size: 1.4rem; margin: 0 0 4px; }
  p.sub { margin: 0 0 20px; color: #5b6472; }
  .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
  section { background: #fff; border-radius: 10px; padding: 16px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
  h2 { font-size: 1rem; margin: 0 0 10px; }
  #tick { font-size: 2.4rem; font-variant-numeric: tabular-nums; }
  #status { display: inline-block; padding: 2px 10px; border-radius: 999px; font-size: .85rem; background: #ddd; }
  #status.open { background: #c9f2d4; } #status.connecting { background: #ffe7a8; } #status.closed, #status.retrying { background: #f7c6c6; }
  dl { display: grid; grid-template-columns: auto 1fr; gap: 4px 16px; margin: 0; font-variant-numeric: tabular-nums; }
  dt { color: #5b6472; } dd { margin: 0; }
  ol { padding-left: 20px; margin: 0; max-height: 240px; overflow: auto; }
  li { margin: 4px 0; white-space: pre-wrap; word-break: break-word; }
  #notes li { color: #5b6472; }
  form { display: flex; gap: 8px; margin-bottom: 10px; }
  textarea { flex: 1; min-height: 44px; font: inherit; }
  button { font: inherit; padding: 6px 14px; }
  section.wide { grid-column: 1 / -1; }
  .sparks { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
  figure { margin: 0; }
  figcaption { color: #5b6472; font-size: .85rem; margin-bottom: 4px; font-variant-numeric: tabular-nums; }
  figcaption b { color: #1d2430; font-weight: 600; }
  svg.spark { display: block; width: 100%; height: 48px; background: #f5f6f8; border-radius: 6px; }
  svg.spark path { fill: none; stroke: #3a6ff7; stroke-width: 1.5; stroke-linejoin: round; stroke-linecap: round; vector-effect: non-scaling-stroke; }
  #ticklog { font-family: ui-monospace, monospace; font-size: .8rem; color: #5b6472; max-height: 3.6em; overflow: hidden; }
</style>
</head>
<body>
<h1>fastify-long-lived demo</h1>
<p class="sub">Server-Sent Events with replay, live connection stats, and graceful shutdown. Stream: <span id="status">connecting</span></p>
<div class="grid">
  <section>
    <h2>Ticks</h2>
    <div id="tick">–</div>
    <div id="ticklog" data-testid="ticklog"></div>
  </section>
  <section>
    <h2>Connections</h2>
    <dl>
      <dt>open</dt><dd id="s-open">–</dd>
      <dt>idle</dt><dd id="s-idle">–</dd>
      <dt>active</dt><dd id="s-active">–</dd>
      <dt>streams</dt><dd id="s-streams">–</dd>
      <dt>lifecycle</dt><dd id="s-lifecycle">–</dd>
    </dl>
  </section>
  <section class="wide">
    <h2>Last minute</h2>
    <div class="sparks">
      <figure>
        <figcaption>events received per second: <b id="rate-events">–</b> <span id="max-events"></span></figcaption>
        <svg id="spark-events" class="spark" viewBox="0 0 300 48" preserveAspectRatio="none" role="img" aria-label="Events received per second over the last minute"><path d=""/></svg>
      </figure>
      <figure>
        <figcaption>open connections: <b id="rate-connections">–</b> <span id="max-connections"></span></figcaption>
        <svg id="spark-connections" class="spark" viewBox="0 0 300 48" preserveAspectRatio="none" role="img" aria-label="Open connections over the last minute"><path d=""/></svg>
      </figure>
    </div>
  </section>
  <section>
    <h2>Messages</h2>
    <form id="send">
      <textarea id="text" maxlength="1000" placeholder="Say something to everyone (newlines welcome)"></textarea>
      <button type="submit">Send</button>
    </form>
    <ol id="messages"></ol>
  </section>
  <section>
    <h2>Stream notes</h2>
    <ol id="notes"></ol>
  </section>
</div>
<script>
(() => {
  const $ = (id) => document.getElementById(id)
  const ticks = []          // the tick numbers received, in order, the last 5000 (the test reads them)
  const received = new Set() // the last 2000 event ids seen, to tell a replay from a duplicate
  // Kept bounded, so a page left open for days does not grow: a replay never reaches further
  // back than the server's history (500 events per channel).
  const remember = (id) => {
    received.add(id)
    if (received.size > 2000) received.delete(received.values().next().value)
  }
  let connections = 0        // streams opened, across every EventSource the page made
  const samples = []         // the last minute, one sample a second: { at, events, connections }
  window.demo = { ticks, notes: [], messages: [], retries: [], welcomes: [], chart: { samples } }

  const note = (text) => {
    window.demo.notes.push(text)
    const li = document.createElement('li')
    li.textContent = new Date().toLocaleTimeString() + ' ' + text
    $('notes').prepend(li)
  }
  const setStatus = (s) => { $('status').textContent = s; $('status').className = s }

  // The stream. EventSource retries by itself after a network error (readyState CONNECTING: the
  // page leaves it alone, so there is never a second one), but gives up for good (CLOSED) on an
  // answer that is not a 200 text/event-stream, e.g. a proxy's 502 while the app restarts. Then
  // the page makes a new one after retryBaseMs, doubling up to retryMaxMs, half of it random so
  // that pages do not all come back at once; the doubling starts over once a stream opens.
  const retryBaseMs = 1000
  const retryMaxMs = 30000
  let failures = 0           // EventSources given up since the last open
  let lastEventId = null     // the last event id seen: a new EventSource resumes from it
  let eventsCounted = 0      // events received since the last sample
  let openConnections = null // from the latest stats event; null while the stream is down

  // A new EventSource cannot send Last-Event-ID: the id goes in the query (the app's sse option
  // lastEventIdQuery). The browser's own retries send the header, which the server prefers.
  const eventsUrl = () => lastEventId === null ? '/events' : '/events?lastEventId=' + encodeURIComponent(lastEventId)

  const connect = () => {
    const es = new EventSource(eventsUrl())
    es.addEventListener('open', () => { connections++; failures = 0; setStatus('open') })
    es.addEventListener('error', () => {
      openConnections = null
      $('rate-connections').textContent = '–'
      if (es.readyState !== EventSource.CLOSED) { setStatus('connecting'); return }
      es.close()
      const ceiling = Math.min(retryMaxMs, retryBaseMs * 2 ** failures)
      const delay = Math.round(ceiling / 2 + Math.random() * ceiling / 2)
      failures++
      window.demo.retries.push(delay)
      setStatus('retrying')
      note('Connection lost, retrying in ' + (delay / 1000).toFixed(1) + ' s.')
      setTimeout(connect, delay)
    })
    for (const [name, handler] of Object.entries(handlers)) es.addEventListener(name, handler)
  }

  // seen counts an event for the chart and keeps its id (events without one repeat the last).
  const seen = (e) => {
    eventsCounted++
    if (e.lastEventId !== '') lastEventId = e.lastEventId
  }
  const handlers = {
    tick (e) {
      seen(e)
      const { n } = JSON.parse(e.data)
      if (received.has(e.lastEventId)) return
      remember(e.lastEventId)
      ticks.push(n)
      if (ticks.length > 5000) ticks.splice(0, ticks.length - 5000)
      $('tick').textContent = n
      $('ticklog').textContent = ticks.slice(-30).join(' ')
    },
    message (e) {
      seen(e)
      if (received.has(e.lastEventId)) return
      remember(e.lastEventId)
      const { text } = JSON.parse(e.data)
      window.demo.messages.push(text)
      const li = document.createElement('li')
      li.textContent = text
      $('messages').prepend(li)
    },
    stats (e) {
      seen(e)
      const s = JSON.parse(e.data)
      openConnections = s.open
      $('rate-connections').textContent = s.open
      for (const k of ['open', 'idle', 'active', 'streams', 'lifecycle']) $('s-' + k).textContent = s[k]
    },
    welcome (e) {
      const welcome = JSON.parse(e.data)
      window.demo.welcomes.push(welcome)
      const { replayed, reset } = welcome
      if (connections > 1) note('Reconnected: ' + replayed + ' event' + (replayed === 1 ? '' : 's') + ' replayed' + (reset ? ' (history lost: reset)' : '') + '.')
      else note('Connected.')
    },
    reconnect (e) { note('Server asked us to reconnect (' + e.data + ').') },
    reset () { note('The server no longer has the missed events: starting over.') }
  }

  // The sparklines: x is time over the last minute, y is scaled to the highest value shown; a
  // gap in the data (stream down: connections unknown) breaks the line.
  const chartSpanMs = 60000
  const chartWidth = 300
  const chartHeight = 48
  const draw = (key, now) => {
    const values = samples.map((s) => s[key]).filter((v) => v !== null)
    const max = Math.max(1, ...values)
    const lines = [[]]
    for (const s of samples) {
      if (s[key] === null) {
        if (lines.at(-1).length > 0) lines.push([])
        continue
      }
      const x = (s.at - (now - chartSpanMs)) / chartSpanMs * chartWidth
      const y = chartHeight - 2 - s[key] / max * (chartHeight - 4)
      lines.at(-1).push(x.toFixed(1) + ' ' + y.toFixed(1))
    }
    // A lone point (a short stretch between two gaps) is a zero-length line: the round cap shows it as a dot.
    const d = lines.filter((l) => l.length > 0).map((l) => 'M' + l[0] + ' L' + (l.length === 1 ? l : l.slice(1)).join(' L')).join(' ')
    document.querySelector('#spark-' + key + ' path').setAttribute('d', d)
    $('max-' + key).textContent = values.length === 0 ? '' : '(max ' + Math.max(...values) + ')'
  }
  let sampledAt = Date.now()
  setInterval(() => {
    // Divided by the time really elapsed: a background tab's timers may run late.
    const now = Date.now()
    const events = Math.round(eventsCounted / ((now - sampledAt) / 1000) * 10) / 10
    eventsCounted = 0
    sampledAt = now
    samples.push({ at: now, events, connections: openConnections })
    $('rate-events').textContent = events
    while (samples[0].at <= now - chartSpanMs) samples.shift()
    draw('events', now)
    draw('connections', now)
  }, 1000)

  connect()

  $('send').addEventListener('submit', async (ev) => {
    ev.preventDefault()
    const text = $('text').value
    // A proxy's 502 (or a network error) has no JSON body: say what happened anyway.
    try {
      const res = await fetch('/messages', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text }) })
      if (res.ok) $('text').value = ''
      else note('Message refused: ' + (await res.json().catch(() => ({ message: res.status + ' ' + res.statusText }))).message)
    } catch (err) {
      note('Message not sent: ' + err.message)
    }
  })
})()
</script>
</body>
</html>
`
