// raw: node:http, no framework. A broadcast encodes each event once (one Buffer) and writes it
// to every open response: one res.write() per event per client.
import { eventBuffer, makePayloads, runRaw } from './common.js'

await runRaw((clients, m, b) => {
  const payload = makePayloads(b)
  for (let i = 0; i < m; i++) {
    const buf = eventBuffer(payload(i))
    for (const res of clients) res.write(buf)
  }
})
