/**
 * The demo page: plain HTML and JS served by the app, no front-end build. It listens to
 * /events with EventSource and shows ticks, messages, live connection stats, and a note each
 * time the stream reconnects (with how many events the server replayed).
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
  #status.open { background: #c9f2d4; } #status.connecting { background: #ffe7a8; } #status.closed { background: #f7c6c6; }
  dl { display: grid; grid-template-columns: auto 1fr; gap: 4px 16px; margin: 0; font-variant-numeric: tabular-nums; }
  dt { color: #5b6472; } dd { margin: 0; }
  ol { padding-left: 20px; margin: 0; max-height: 240px; overflow: auto; }
  li { margin: 4px 0; white-space: pre-wrap; word-break: break-word; }
  #notes li { color: #5b6472; }
  form { display: flex; gap: 8px; margin-bottom: 10px; }
  textarea { flex: 1; min-height: 44px; font: inherit; }
  button { font: inherit; padding: 6px 14px; }
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
  const ticks = []          // every tick number received, in order (the test reads it)
  const received = new Set() // event ids seen, to tell a replay from a duplicate
  let connections = 0
  window.demo = { ticks, notes: [], messages: [] }

  const note = (text) => {
    window.demo.notes.push(text)
    const li = document.createElement('li')
    li.textContent = new Date().toLocaleTimeString() + ' ' + text
    $('notes').prepend(li)
  }
  const setStatus = (s) => { $('status').textContent = s; $('status').className = s }

  const es = new EventSource('/events')
  es.addEventListener('open', () => { connections++; setStatus('open') })
  es.addEventListener('error', () => { setStatus(es.readyState === EventSource.CLOSED ? 'closed' : 'connecting') })
  es.addEventListener('tick', (e) => {
    const { n } = JSON.parse(e.data)
    if (received.has(e.lastEventId)) return
    received.add(e.lastEventId)
    ticks.push(n)
    $('tick').textContent = n
    $('ticklog').textContent = ticks.slice(-30).join(' ')
  })
  es.addEventListener('message', (e) => {
    if (received.has(e.lastEventId)) return
    received.add(e.lastEventId)
    const { text } = JSON.parse(e.data)
    window.demo.messages.push(text)
    const li = document.createElement('li')
    li.textContent = text
    $('messages').prepend(li)
  })
  es.addEventListener('stats', (e) => {
    const s = JSON.parse(e.data)
    for (const k of ['open', 'idle', 'active', 'streams', 'lifecycle']) $('s-' + k).textContent = s[k]
  })
  es.addEventListener('welcome', (e) => {
    const { replayed, reset } = JSON.parse(e.data)
    if (connections > 1) note('Reconnected: ' + replayed + ' event' + (replayed === 1 ? '' : 's') + ' replayed' + (reset ? ' (history lost: reset)' : '') + '.')
    else note('Connected.')
  })
  es.addEventListener('reconnect', (e) => { note('Server asked us to reconnect (' + e.data + ').') })
  es.addEventListener('reset', () => { note('The server no longer has the missed events: starting over.') })

  $('send').addEventListener('submit', async (ev) => {
    ev.preventDefault()
    const text = $('text').value
    const res = await fetch('/messages', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text }) })
    if (res.ok) $('text').value = ''
    else note('Message refused: ' + (await res.json()).message)
  })
})()
</script>
</body>
</html>
`
