/**
 * hub: named channels. A publish encodes the event once and hands the same Buffer to every
 * subscriber's bounded writer (through the turn's shared Batch: see batch.ts); a replay buffer
 * lets a reconnecting client with Last-Event-ID receive exactly what it missed, in order, or a
 * `reset` event when that is no longer possible.
 *
 * Ids: when the publisher gives none, the channel assigns `<tag>-<seq>`: `seq` numbers every
 * publish of the hub, on all its channels, and `tag` names the hub (random when it starts, kept
 * by save() and restore()). A stream resumes all its channels from the one Last-Event-ID a client
 * keeps: the id is placed once in the hub's order (one of our ids: its seq; else a kept event with
 * exactly that id, a publisher's own, in one of the stream's channels: that event's seq), then
 * each channel replays its events after that point, or sends `reset` if it no longer keeps them
 * all (its watermark, `lostUpTo`). An id the hub cannot place (another instance's, another
 * process's that was not restored, a publisher's id pushed out of the history) gets `reset`,
 * never a replay.
 *
 * Storage sits behind `HistoryStore` (module-private until the scale-out backend needs the seam).
 */
import { randomBytes } from 'node:crypto'
import { FLL_ERR_SSE_INVALID_STATE, FLL_ERR_SSE_RESTORE_TOO_LATE } from '../errors.js'
import { describe, invalid, isPlainObject, nonNegativeInt, objectOption, positiveIntOrNull } from '../options.js'
import { Batch } from './batch.js'
import { encodeEvent, encodeEventText, type Serializer, type SseEvent } from './encoder.js'
import type { ReplayPoint, StreamSink, Subscribable } from './stream.js'

/** One published event, encoded once. `seq` orders events across all channels of a hub. */
export interface StoredEvent {
  readonly seq: number
  readonly id: string
  readonly buf: Buffer
  /** Date.now() when it was published. */
  readonly at: number
}

/** HistoryStore keeps a channel's recent events for replay (in memory by default). */
interface HistoryStore {
  append (event: StoredEvent): void
  /** seqOf returns the seq of the newest kept event whose id is exactly `id`, or null. */
  seqOf (id: string): number | null
  /**
   * after returns the kept events with a seq above `seq`, oldest first, or null when some of
   * this channel's events after it are no longer kept: the client must then reset.
   */
  after (seq: number): StoredEvent[] | null
}

/** Options of one channel. */
export interface ChannelOptions {
  /** historySize is how many recent events are kept for replay. 0 keeps none. @default 100 (the plugin's `history`) */
  historySize?: number
  /** historyTtl (ms) drops kept events older than that. null: kept until pushed out. @default null (the plugin's `history`) */
  historyTtl?: number | null
  /**
   * ephemeral marks a channel of throw-away events (live stats, presence): they carry no id
   * unless the publisher gives one, are never replayed or saved, and missing them never causes
   * a reset. @default false
   */
  ephemeral?: boolean
}

/** The hub-wide defaults of the replay buffer. */
export type HistoryDefaults = Required<Pick<ChannelOptions, 'historySize' | 'historyTtl'>>

/** One kept event in a saved state: its encoded bytes as text (UTF-8). */
export interface SavedEvent {
  seq: number
  id: string
  at: number
  text: string
}

/** What a saved state keeps of one channel. */
export interface ChannelState {
  /** lostUpTo is the channel's watermark: the highest seq of its events that is no longer kept (0: none lost). */
  lostUpTo: number
  /** events are the kept events, oldest first. */
  events: SavedEvent[]
}

/**
 * HubState is what `app.sse.save()` returns and `app.sse.restore()` takes: plain JSON, so it can
 * be written to a file at close and read back at the next start.
 */
export interface HubState {
  /** version of this layout. */
  version: 1
  /** seq is the last number of the hub's sequence: a restored hub goes on from there (under a tag of its own). */
  seq: number
  /** tags are the tags that numbered the saved seqs (the last 32 runs): their ids still resume after a restore. */
  tags: TagRange[]
  /** channels holds each channel's history and watermark (ephemeral channels are not saved). */
  channels: Record<string, ChannelState>
}

const stateVersion = 1
/** The largest seq a saved state may hold (and a hub number up to). */
const maxSeq = 2 ** 50
// The slabs kept events are encoded into: see Slabs.
const minSlab = 1024
const maxSlab = 64 * 1024

/** The seqs one tag of a hub numbered: ids `<tag>-<seq>` with from <= seq <= to. */
export interface TagRange {
  tag: string
  from: number
  to: number
}

// Earlier tags a hub keeps vouching for after restores (ids older than that get `reset`).
const maxEarlierTags = 32

/**
 * The numbering one hub's channels share (module-private): its tag and its sequence. Each start
 * of a hub numbers under a new tag, also after a restore: two processes that restored the same
 * saved state (a stale file after a crash, an overlapping deploy) never give one id to two
 * different events. The tags of the runs it was restored from stay known for the seqs they
 * numbered, so their ids still resume.
 */
class Sequence {
  tag = newTag()
  /** `<tag>-`, the start of every id the hub assigns. */
  prefix = `${this.tag}-`
  /** The first seq numbered under `tag`. */
  first = 1
  /** The seq of the last event published on any channel of the hub (0: none yet). */
  last = 0
  /** The tags of earlier runs (restored), newest last. */
  earlier: TagRange[] = []

  /** seqOf returns the seq of an id this hub (or a run it was restored from) assigned, or null for any other id. */
  seqOf (id: string): number | null {
    const parsed = parseHubId(id)
    if (parsed === null) return null
    const { tag, seq } = parsed
    // An id of ours "from the future" was not given by this run: it cannot be vouched for.
    if (tag === this.tag) return seq >= this.first && seq <= this.last ? seq : null
    const range = this.earlier.find((r) => r.tag === tag)
    return range !== undefined && seq >= range.from && seq <= range.to ? seq : null
  }

  /** tags lists the ranges this hub vouches for, its own included once it numbered something. */
  tags (): TagRange[] {
    const own = this.last >= this.first ? [{ tag: this.tag, from: this.first, to: this.last }] : []
    return [...this.earlier, ...own].slice(-maxEarlierTags)
  }

  /** restore goes on from a saved numbering: the next seq follows `seq`, under a new tag. */
  restore (seq: number, tags: TagRange[]): void {
    this.earlier = tags.slice(-maxEarlierTags)
    this.last = seq
    this.first = seq + 1
  }
}

/** parseHubId splits an id of the hub's form, `<tag>-<seq>`, or returns null for any other id. */
function parseHubId (id: string): { tag: string, seq: number } | null {
  const dash = id.lastIndexOf('-')
  if (dash <= 0) return null
  const digits = id.slice(dash + 1)
  if (!/^[1-9]\d{0,15}$/.test(digits)) return null
  return { tag: id.slice(0, dash), seq: Number(digits) }
}

/** newTag returns a random hub tag: 8 base36 characters (40 bits). */
function newTag (): string {
  return randomBytes(5).readUIntBE(0, 5).toString(36).padStart(8, '0')
}

/**
 * Slabs hold the bytes of a channel's kept events, one after the other, so a history costs about
 * what its events weigh. `Buffer.from()` of a small string is a slice of Node's shared 8 KB pool,
 * and a kept slice keeps its whole pool alive: small events published between other work each
 * pinned a pool of their own (40 KB of events held 3.9 MB). A slab holds only this channel's
 * events, and the history lets go of them oldest first, so only the oldest slab (its start) and
 * the newest (its end) hold bytes of no kept event. A slab is sized to about an eighth of what
 * the history holds (1 KB to 64 KB); an event larger than a quarter of it gets an allocation of
 * its own. Encoding into a slab is as cheap as Buffer.from() (no copy, no allocation per event).
 */
class Slabs {
  #slab: Buffer | null = null
  #used = 0

  /** bytes returns `text` as UTF-8 in this channel's memory; `held` is what the history holds now (bytes). */
  bytes (text: string, held: number): Buffer {
    const length = Buffer.byteLength(text)
    let slab = this.#slab
    if (slab === null || this.#used + length > slab.length) {
      let size = minSlab
      while (size < maxSlab && size * 8 < held) size *= 2
      // A slab wastes at most a quarter at its end: a larger event gets its own allocation.
      if (length * 4 > size) return ownBuffer(text, length)
      slab = this.#slab = Buffer.allocUnsafeSlow(size)
      this.#used = 0
    }
    const start = this.#used
    slab.write(text, start, length)
    this.#used = start + length
    return slab.subarray(start, start + length)
  }
}

function ownBuffer (text: string, length: number): Buffer {
  const buf = Buffer.allocUnsafeSlow(length)
  buf.write(text, 0, length)
  return buf
}

/** MemoryHistory keeps the last `size` events, optionally expiring after `ttl` ms. */
export class MemoryHistory implements HistoryStore {
  readonly #size: number
  readonly #ttl: number | null
  readonly #slabs = new Slabs()
  /** The kept events are #events[#head..], oldest first; forgetting moves #head (no copy per publish). */
  #events: StoredEvent[] = []
  #head = 0
  #bytes = 0
  /** The highest seq no longer kept: a client behind it has lost events. 0: none lost. */
  #lostUpTo = 0

  constructor (size: number, ttl: number | null) {
    this.#size = size
    this.#ttl = ttl
  }

  /** keeps tells whether the history keeps any event (historySize > 0). */
  get keeps (): boolean { return this.#size > 0 }

  /** lostUpTo is the watermark: the highest seq no longer kept (0: none lost). */
  get lostUpTo (): number {
    this.#expire()
    return this.#lostUpTo
  }

  /**
   * bytes returns the encoded event `text` as a Buffer in the history's own memory (see Slabs),
   * for an event it will keep.
   */
  bytes (text: string): Buffer { return this.#slabs.bytes(text, this.#bytes) }

  /**
   * restore starts the history from a saved state (before any append): its events (oldest first;
   * those beyond historySize count as lost) and its watermark.
   */
  restore (state: ChannelState): void {
    if (this.#events.length > 0) throw new Error('MemoryHistory.restore() must come before any append()')
    this.#lostUpTo = state.lostUpTo
    for (const e of state.events) {
      this.append({ seq: e.seq, id: e.id, at: e.at, buf: this.keeps ? this.bytes(e.text) : Buffer.from(e.text, 'utf8') })
    }
  }

  /** events returns the kept events, oldest first (expired ones dropped). */
  events (): StoredEvent[] {
    this.#expire()
    return this.#events.slice(this.#head)
  }

  append (event: StoredEvent): void {
    this.#events.push(event)
    this.#bytes += event.buf.length
    const kept = this.#events.length - this.#head
    if (kept > this.#size) this.#forget(kept - this.#size)
  }

  /** seqOf returns the seq of the oldest kept event with exactly this id (a replay from there repeats rather than skips). */
  seqOf (id: string): number | null {
    this.#expire()
    const events = this.#events
    for (let i = this.#head; i < events.length; i++) {
      if (events[i]!.id === id) return events[i]!.seq
    }
    return null
  }

  after (seq: number): StoredEvent[] | null {
    this.#expire()
    if (seq < this.#lostUpTo) return null
    const events = this.#events
    let i = events.length
    while (i > this.#head && events[i - 1]!.seq > seq) i--
    return events.slice(i)
  }

  #expire (): void {
    if (this.#ttl === null) return
    const limit = Date.now() - this.#ttl
    let n = 0
    while (this.#head + n < this.#events.length && this.#events[this.#head + n]!.at < limit) n++
    if (n > 0) this.#forget(n)
  }

  #forget (n: number): void {
    const events = this.#events
    const end = this.#head + n
    this.#lostUpTo = events[end - 1]!.seq
    for (let i = this.#head; i < end; i++) {
      this.#bytes -= events[i]!.buf.length
      events[i] = undefined as unknown as StoredEvent // let go of it now, not at the next compaction
    }
    this.#head = end
    // Compact once the forgotten part outweighs the kept one: amortised O(1) per event.
    if (end > 64 && end * 2 > events.length) {
      this.#events = events.slice(end)
      this.#head = 0
    }
  }
}

// Set by Hub's static block: the numbering a channel of `hub` shares.
let sequenceOf: (hub: Hub) => Sequence
// Set by Channel's static block: what save() keeps of a channel (null: ephemeral).
let channelState: (channel: Channel) => ChannelState | null

/** Channel is one named topic of a hub. */
export class Channel implements Subscribable {
  readonly name: string
  readonly #serializer: Serializer
  readonly #sequence: Sequence
  readonly #history: MemoryHistory | null
  readonly #sinks = new Set<StreamSink>()
  /** The batch this turn's publishes go to, until it is sealed. */
  #batch: Batch | null = null

  /** A null history makes an ephemeral channel. */
  constructor (hub: Hub, name: string, history: MemoryHistory | null) {
    this.#serializer = hub.serializer
    this.#sequence = sequenceOf(hub)
    this.name = name
    this.#history = history
  }

  /** events returns the events kept for replay, oldest first (to look at; `app.sse.save()` saves them). */
  events (): StoredEvent[] { return this.#history?.events() ?? [] }

  /** subscribers is the number of streams currently subscribed. */
  get subscribers (): number { return this.#sinks.size }

  /**
   * publish encodes `event` once, keeps it for replay and writes it to every subscriber.
   * Returns the event's id (`<tag>-<seq>` when the event had none; '' for an ephemeral event without one).
   */
  publish (event: SseEvent): string {
    const history = this.#history
    if (history === null) {
      this.#deliver(encodeEvent(event, this.#serializer))
      return event.id === undefined ? '' : String(event.id)
    }
    // The sequence moves only once the event is encoded: an invalid event leaves no hole.
    const seq = this.#sequence.last + 1
    const id = event.id === undefined ? this.#sequence.prefix + seq : String(event.id)
    const withId = event.id === undefined ? { ...event, id } : event
    // A kept event is encoded into the history's own memory (see Slabs); one kept by none
    // (historySize 0) into Node's pool, the cheapest.
    const buf = history.keeps ? history.bytes(encodeEventText(withId, this.#serializer)) : encodeEvent(withId, this.#serializer)
    this.#sequence.last = seq
    // Appended even with historySize 0: the history then knows the event was lost.
    history.append({ seq, id, buf, at: Date.now() })
    this.#deliver(buf)
    return id
  }

  /** #deliver appends `buf` to this turn's batch, or starts a new batch and hands it to every subscriber. */
  #deliver (buf: Buffer): void {
    if (this.#batch !== null && this.#batch.add(buf)) return
    if (this.#sinks.size === 0) {
      this.#batch = null
      return
    }
    const next = new Batch(buf)
    this.#batch = next
    // Sealed when the turn ends even if no stream reads it (every subscriber backed up), and let
    // go of, so a quiet channel keeps no burst alive.
    setImmediate(Channel.#endTurn, this, next)
    for (const sink of this.#sinks) sink.writeBatch(next)
  }

  static #endTurn (channel: Channel, batch: Batch): void {
    batch.seal()
    if (channel.#batch === batch) channel.#batch = null
  }

  static {
    channelState = (channel) => {
      const history = channel.#history
      if (history === null) return null
      const events = history.events().map((e) => ({ seq: e.seq, id: e.id, at: e.at, text: e.buf.toString('utf8') }))
      return { lostUpTo: history.lostUpTo, events }
    }
  }

  locate (lastEventId: string): ReplayPoint | null {
    const seq = this.#sequence.seqOf(lastEventId) ?? this.#history?.seqOf(lastEventId) ?? null
    return seq === null ? null : { scope: this.#sequence, seq }
  }

  missed (point: ReplayPoint | null): StoredEvent[] | null {
    if (this.#history === null) return [] // ephemeral: nothing to replay, nothing to lose
    // Not placed, or placed in another hub's order: what this channel published since is unknown.
    if (point === null || point.scope !== this.#sequence) return null
    return this.#history.after(point.seq)
  }

  attach (sink: StreamSink): void {
    // The open batch went out before this subscriber came: what follows goes to a new one.
    this.#batch?.seal()
    this.#sinks.add(sink)
  }

  detach (sink: StreamSink): void {
    this.#sinks.delete(sink)
  }
}

const channelKeys = ['historySize', 'historyTtl', 'ephemeral'] as const
/** What a historySize counts, and what its 0 does (for its option errors). */
export const historySizeMeaning = 'events kept; 0 keeps none'

/** Hub holds the channels of one app (`fastify.sse`). */
export class Hub {
  readonly serializer: Serializer
  readonly #channels = new Map<string, Channel>()
  /** Each channel's options as created, to refuse different ones later. */
  readonly #configs = new Map<string, string>()
  readonly #defaults: HistoryDefaults
  readonly #sequence = new Sequence()
  /** The saved channels restore() took, until their channel is created (save() carries the others over). */
  #saved: Map<string, ChannelState> | null = null

  static {
    sequenceOf = (hub) => hub.#sequence
  }

  constructor (serializer: Serializer, defaults: HistoryDefaults) {
    this.serializer = serializer
    this.#defaults = defaults
  }

  /** tag names this run of the hub in the ids it assigns (`<tag>-<seq>`): random at each start, restored or not. */
  get tag (): string { return this.#sequence.tag }

  /**
   * channel returns the channel `name` (a non-empty string), created with `opts` the first time.
   * Invalid options throw FLL_ERR_INVALID_OPTION. A channel the restored state holds starts with
   * its saved history and watermark.
   */
  channel (name: string, opts?: ChannelOptions): Channel {
    let channel = this.#channels.get(name)
    // The lookup an app may do on every publish: nothing to check.
    if (channel !== undefined && opts === undefined) return channel
    if (typeof name !== 'string' || name === '') throw invalid('channel name', 'a non-empty string', name)
    const o = objectOption(`channel(${name})`, opts, channelKeys)
    const historySize = nonNegativeInt(`channel(${name}).historySize`, o.historySize, this.#defaults.historySize, historySizeMeaning)
    const historyTtl = positiveIntOrNull(`channel(${name}).historyTtl`, o.historyTtl, this.#defaults.historyTtl, 'ms')
    if (o.ephemeral !== undefined && typeof o.ephemeral !== 'boolean') throw invalid(`channel(${name}).ephemeral`, 'a boolean', o.ephemeral)
    const config = `historySize ${historySize}, historyTtl ${historyTtl}, ephemeral ${o.ephemeral === true}`
    if (channel !== undefined && this.#configs.get(name) !== config) {
      // Options apply at creation: different ones later would be silently ignored.
      throw invalid(`channel(${name})`, `the options it was created with (${this.#configs.get(name)!})`, config)
    }
    if (channel === undefined) {
      this.#configs.set(name, config)
      let history: MemoryHistory | null = null
      if (o.ephemeral !== true) {
        history = new MemoryHistory(historySize, historyTtl)
        const saved = this.#saved?.get(name)
        if (saved !== undefined) {
          history.restore(saved)
          this.#saved!.delete(name)
        }
      }
      channel = new Channel(this, name, history)
      this.#channels.set(name, channel)
    }
    return channel
  }

  /** channels lists the names of the channels created so far. */
  get channels (): string[] { return [...this.#channels.keys()] }

  /**
   * save returns the hub's state as plain JSON: its tag and sequence, and each channel's kept
   * events and watermark (the saved channels of a restore that were not created since are
   * carried over). Write it somewhere when the app closes; give it to restore() at the next start,
   * and clients resume across the restart exactly: each gets what it missed, or `reset`.
   */
  save (): HubState {
    // No prototype: a channel may be named '__proto__'.
    const channels: Record<string, ChannelState> = Object.create(null)
    for (const [name, saved] of this.#saved ?? []) channels[name] = saved
    for (const [name, channel] of this.#channels) {
      const state = channelState(channel)
      if (state !== null) channels[name] = state
    }
    return { version: stateVersion, seq: this.#sequence.last, tags: this.#sequence.tags(), channels }
  }

  /**
   * restore makes this hub go on from a state save() returned (e.g. read back from a file): its
   * sequence goes on from the saved one (under this run's own tag), the saved runs' ids still
   * resume, and channels created later start from their saved history and watermark. It must come before any channel is created (FLL_ERR_SSE_RESTORE_TOO_LATE), and
   * only once. `state` is checked whole first: anything malformed throws FLL_ERR_SSE_INVALID_STATE,
   * saying what is wrong, and leaves the hub as it was.
   */
  restore (state: unknown): void {
    if (this.#saved !== null) throw new FLL_ERR_SSE_RESTORE_TOO_LATE('restore() was already called')
    if (this.#channels.size > 0) {
      throw new FLL_ERR_SSE_RESTORE_TOO_LATE(`channels were already created: ${[...this.#channels.keys()].join(', ')}`)
    }
    const checked = checkState(state)
    this.#sequence.restore(checked.seq, checked.tags)
    this.#saved = new Map(Object.entries(checked.channels))
  }
}

/** checkState returns `value` as a HubState (a copy), or throws FLL_ERR_SSE_INVALID_STATE naming what is wrong. */
function checkState (value: unknown): HubState {
  const fail = (path: string, accepted: string, received: unknown): Error => {
    const text = describe(received)
    return new FLL_ERR_SSE_INVALID_STATE(`${path} must be ${accepted}, received ${text.length > 100 ? `${text.slice(0, 100)}...` : text}`)
  }
  const object = (path: string, v: unknown, keys: readonly string[]): Record<string, unknown> => {
    if (!isPlainObject(v)) throw fail(path, 'an object', v)
    for (const key of keys) if (!(key in v)) throw fail(`${path}.${key}`, 'present', undefined)
    for (const key of Object.keys(v)) if (!keys.includes(key)) throw fail(path, `an object of ${keys.join(', ')}`, `the unknown key '${key}'`)
    return v
  }
  const seqIn = (path: string, v: unknown, min: number, max: number): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw fail(path, `an integer from ${min} to ${max}`, v)
    return v
  }

  const s = object('state', value, ['version', 'seq', 'tags', 'channels'])
  if (s.version !== stateVersion) throw fail('state.version', String(stateVersion), s.version)
  // 2^50: room for a million events a second for 35 years, far from where numbers lose precision.
  const seq = seqIn('state.seq', s.seq, 0, maxSeq)
  if (!Array.isArray(s.tags) || s.tags.length > maxEarlierTags) throw fail('state.tags', `an array of at most ${maxEarlierTags} tags`, s.tags)
  let below = 0
  const tags = s.tags.map((t: unknown, i): TagRange => {
    const at = `state.tags[${i}]`
    const range = object(at, t, ['tag', 'from', 'to'])
    if (typeof range.tag !== 'string' || !/^[0-9a-z]{1,32}$/.test(range.tag)) throw fail(`${at}.tag`, 'a tag of 1 to 32 characters 0-9 a-z', range.tag)
    // In order, each run after the one before it, all within the saved sequence.
    const from = seqIn(`${at}.from`, range.from, below + 1, seq)
    const to = seqIn(`${at}.to`, range.to, from, seq)
    below = to
    return { tag: range.tag, from, to }
  })
  if (new Set(tags.map((t) => t.tag)).size !== tags.length) throw fail('state.tags', 'tags that differ from each other', s.tags)
  // The seq an id of the saved runs stands for (null for a publisher's own id).
  const seqOfId = (id: string): number | null => {
    const parsed = parseHubId(id)
    return parsed !== null && tags.some((t) => t.tag === parsed.tag) ? parsed.seq : null
  }
  if (!isPlainObject(s.channels)) throw fail('state.channels', 'an object', s.channels)
  // No prototype: a channel may be named '__proto__'.
  const channels: Record<string, ChannelState> = Object.create(null)
  const seen = new Set<number>()
  for (const [name, c] of Object.entries(s.channels)) {
    const path = `state.channels[${JSON.stringify(name)}]`
    if (name === '') throw fail('state.channels', 'named by non-empty strings', name)
    const channel = object(path, c, ['lostUpTo', 'events'])
    const lostUpTo = seqIn(`${path}.lostUpTo`, channel.lostUpTo, 0, seq)
    if (!Array.isArray(channel.events)) throw fail(`${path}.events`, 'an array', channel.events)
    let previous = lostUpTo
    const events = channel.events.map((e: unknown, i): SavedEvent => {
      const at = `${path}.events[${i}]`
      const event = object(at, e, ['seq', 'id', 'at', 'text'])
      // In publish order, after the watermark, numbered by this state's sequence, each seq once in the hub.
      previous = seqIn(`${at}.seq`, event.seq, previous + 1, seq)
      if (seen.has(previous)) throw fail(`${at}.seq`, 'a seq no other saved event has', previous)
      seen.add(previous)
      if (typeof event.id !== 'string') throw fail(`${at}.id`, 'a string', event.id)
      const idSeq = seqOfId(event.id)
      if (idSeq !== null && idSeq !== previous) throw fail(`${at}.id`, `the id of seq ${previous} (a saved run's id names its seq)`, event.id)
      if (typeof event.at !== 'number' || !Number.isFinite(event.at)) throw fail(`${at}.at`, 'a time in ms', event.at)
      // The text is written to clients as it is: it must be one whole event, carrying its id.
      const text = event.text
      if (typeof text !== 'string' || !text.endsWith('\n\n') || text.indexOf('\n\n') !== text.length - 2 ||
          text.includes('\r') || !`\n${text}`.includes(`\nid: ${event.id}\n`)) {
        throw fail(`${at}.text`, `one encoded event with the line 'id: ${event.id}'`, text)
      }
      return { seq: previous, id: event.id, at: event.at, text }
    })
    channels[name] = { lostUpTo, events }
  }
  return { version: stateVersion, seq, tags, channels }
}
