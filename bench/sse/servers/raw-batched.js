// raw-batched: node:http, no framework, and the practical limit of a broadcast: the M events
// are encoded once and concatenated into ~16 KiB Buffers (cut on event boundaries), and those
// few Buffers are written to every open response.
import { eventBuffer, makePayloads, runRaw } from './common.js'

const BATCH_BYTES = 16 * 1024

function buildBatches (m, b) {
  const payload = makePayloads(b)
  const batches = []
  let parts = []
  let size = 0
  for (let i = 0; i < m; i++) {
    const buf = eventBuffer(payload(i))
    if (size > 0 && size + buf.length > BATCH_BYTES) {
      batches.push(Buffer.concat(parts, size))
      parts = []
      size = 0
    }
    parts.push(buf)
    size += buf.length
  }
  if (size > 0) batches.push(Buffer.concat(parts, size))
  return batches
}

await runRaw((clients, m, b) => {
  const batches = buildBatches(m, b)
  for (const res of clients) {
    for (const batch of batches) res.write(batch)
  }
})
