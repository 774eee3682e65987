/**
 * encoder: pure functions from a Server-Sent Event to the bytes the WHATWG event-stream parser
 * reads back as exactly that event (https://html.spec.whatwg.org/multipage/server-sent-events.html).
 *
 * Injection-safe by construction: `data` and comments are split on every line break the parser
 * knows (CRLF, LF and a lone CR), so each line stays inside its own field; `event` and `id`
 * cannot be split that way, so a line break in them (or a NUL in `id`, which makes the parser
 * drop the field) is an error, never silently altered. One encoded Buffer can be written to
 * any number of streams.
 *
 * Its one import is its coded error, from the module that holds every error of the kit.
 */
import { FLL_ERR_SSE_INVALID_EVENT } from '../errors.js'

/** An event to send. Every field is optional, but an event must have at least one. */
export interface SseEvent {
  /** id sets the client's last event ID (sent back as `Last-Event-ID` on reconnect). `''` resets it. */
  id?: string | number
  /** event is the event type; absent or `''` means `message`. */
  event?: string
  /** data is sent as is when a string, else serialized (JSON by default). `undefined`: no data field. */
  data?: unknown
  /** retry (ms, integer >= 0) tells the client how long to wait before reconnecting. */
  retry?: number
  /** comment is sent as comment lines, which clients ignore (used for heartbeats and padding). */
  comment?: string
}

/** Serializer turns non-string data into text. It must return a string. */
export type Serializer = (data: unknown) => string

/** The default serializer: JSON. */
export const jsonSerializer: Serializer = (data) => JSON.stringify(data)

const lineBreak = /\r\n|\r|\n/

function hasLineBreak (s: string): boolean {
  return s.includes('\n') || s.includes('\r')
}

/** fieldLines writes `name: line` for each line of `value`, split as the parser splits lines. */
function fieldLines (name: string, value: string): string {
  if (!hasLineBreak(value)) return `${name}: ${value}\n`
  let out = ''
  for (const line of value.split(lineBreak)) out += `${name}: ${line}\n`
  return out
}

/** commentLines writes `: line` for each line of `text`. */
function commentLines (text: string): string {
  if (!hasLineBreak(text)) return `: ${text}\n`
  let out = ''
  for (const line of text.split(lineBreak)) out += `: ${line}\n`
  return out
}

function serializeData (data: unknown, serialize: Serializer): string {
  if (typeof data === 'string') return data
  let text: unknown
  try {
    text = serialize(data)
  } catch (err) {
    throw new FLL_ERR_SSE_INVALID_EVENT('data', `serializable data (the serializer threw: ${(err as Error).message})`, { cause: err })
  }
  if (typeof text !== 'string') {
    throw new FLL_ERR_SSE_INVALID_EVENT('data', `data the serializer turns into a string (it returned ${typeof text})`)
  }
  return text
}

/**
 * encodeEventText returns the event-stream text of one event, ending with the blank line that
 * dispatches it. Throws FLL_ERR_SSE_INVALID_EVENT for a value the parser would read otherwise.
 */
export function encodeEventText (event: SseEvent, serialize: Serializer = jsonSerializer): string {
  if (event === null || typeof event !== 'object') {
    throw new FLL_ERR_SSE_INVALID_EVENT('event', 'an object such as { data }')
  }
  if (ArrayBuffer.isView(event)) {
    throw new FLL_ERR_SSE_INVALID_EVENT('event', 'an object such as { data } or a string, not bytes (a Buffer, or a chunk of a ' +
      "byte-mode Readable): decode them first, e.g. buf.toString() or readable.setEncoding('utf8')")
  }
  let out = ''
  let fields = 0
  if (event.comment !== undefined) {
    if (typeof event.comment !== 'string') throw new FLL_ERR_SSE_INVALID_EVENT('comment', 'a string')
    out += commentLines(event.comment)
    fields++
  }
  if (event.event !== undefined) {
    if (typeof event.event !== 'string') throw new FLL_ERR_SSE_INVALID_EVENT('event', 'a string')
    if (hasLineBreak(event.event)) throw new FLL_ERR_SSE_INVALID_EVENT('event', 'a name without CR or LF')
    out += `event: ${event.event}\n`
    fields++
  }
  if (event.id !== undefined) {
    const id = typeof event.id === 'number' && Number.isFinite(event.id) ? String(event.id) : event.id
    if (typeof id !== 'string') throw new FLL_ERR_SSE_INVALID_EVENT('id', 'a string or a finite number')
    if (hasLineBreak(id) || id.includes('\0')) throw new FLL_ERR_SSE_INVALID_EVENT('id', 'an id without CR, LF or NUL')
    out += `id: ${id}\n`
    fields++
  }
  if (event.retry !== undefined) {
    if (typeof event.retry !== 'number' || !Number.isSafeInteger(event.retry) || event.retry < 0) {
      throw new FLL_ERR_SSE_INVALID_EVENT('retry', 'an integer >= 0 (ms)')
    }
    out += `retry: ${event.retry}\n`
    fields++
  }
  if (event.data !== undefined) {
    out += fieldLines('data', serializeData(event.data, serialize))
    fields++
  }
  if (fields === 0) throw new FLL_ERR_SSE_INVALID_EVENT('event', 'at least one of id, event, data, retry or comment')
  return out + '\n'
}

/** encodeEvent returns one event as a Buffer, ready to be written to any number of streams. */
export function encodeEvent (event: SseEvent, serialize: Serializer = jsonSerializer): Buffer {
  return Buffer.from(encodeEventText(event, serialize), 'utf8')
}
