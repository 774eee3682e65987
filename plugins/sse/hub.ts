/**
 * hub: named channels. A publish encodes the event once and hands the same Buffer to every
 * subscriber's bounded writer (through the turn's shared Batch: see batch.ts); a replay buffer
 * lets a reconnecting client with Last-Event-ID receive exactly what it missed, in order, or a
 * `reset` event when that is no longer possible.
 *
 * Ids: when the publisher gives none, the channel assigns one from a sequence shared by the
 * whole hub, so a stream subscribed to several channels can resume all of them from the one
 * Last-Event-ID a client keeps. The sequence starts at the boot time in microseconds, so ids
 * keep growing across restarts and an id from an earlier process is known to be lost (reset)
 * rather than mistaken for one of ours. A publisher's own ids are kept as they are
 * (resumable per channel, by exact match).
 *
 * Storage sits behind `HistoryStore`, the seam where a pub/sub backend can plug in later.
 */
import { Batch } from './batch.js'
import { encodeEvent, type Serializer, type SseEvent } from './encoder.js'
import type { StreamSink, Subscribable } from './stream.js'

/** One published event, encoded once. `seq` orders events across all channels of a hub. */
export interface StoredEvent {
  readonly seq: number
  readonly id: string
  readonly buf: Buffer
  readonly at: number
}

/** HistoryStore keeps a channel's recent events for replay (in memory by default). */
export interface HistoryStore {
  append (event: StoredEvent): void
  /**
   * since returns the events after `lastEventId`, oldest first, or null when the events after
   * it are no longer all kept (or the id was never seen): the client must then reset.
   */
  since (lastEventId: string): StoredEvent[] | null
}

/** Options of one channel. */
export interface ChannelOptions {
  /** historySize is how many recent events are kept for replay. 0 keeps none. @default 100 */
  historySize?: number
  /** historyTtl (ms) drops kept events older than that. null: kept until pushed out. @default null */
  historyTtl?: number | null
  /**
   * ephemeral marks a channel of throw-away events (live stats, presence): they carry no id
   * unless the publisher gives one, are never replayed, and missing them never causes a reset.
   * @default false
   */
  ephemeral?: boolean
  /**
   * events seeds the replay buffer with events kept from an earlier process (`channel.events()`
   * saved on close), so clients resume across a restart. Only at creation. @default []
   */
  events?: readonly StoredEvent[]
}

/** The hub-wide defaults of the replay buffer. */
export type HistoryDefaults = Required<Pick<ChannelOptions, 'historySize' | 'historyTtl'>>

/** MemoryHistory is a ring of the last `size` events, optionally expiring after `ttl` ms. */
export class MemoryHistory implements HistoryStore {
  readonly #size: number
  readonly #ttl: number | null
  #events: StoredEvent[] = []
  /** The highest seq no longer kept (or never kept: before this hub began): a client behind it has lost events. */
  #lostUpTo: number

  constructor (size: number, ttl: number | null, firstSeq: number) {
    this.#size = size
    this.#ttl = ttl
    this.#lostUpTo = firstSeq - 1
  }

  /** restore seeds the buffer with earlier events (oldest first); the ones before them count as lost. */
  restore (events: readonly StoredEvent[]): void {
    if (this.#events.length > 0) throw new Error('MemoryHistory.restore() must come before any append()')
    this.#events = events.slice(-this.#size)
    if (this.#events.length > 0) this.#lostUpTo = this.#events[0]!.seq - 1
  }

  /** events returns the kept events, oldest first (expired ones dropped). */
  events (): StoredEvent[] {
    this.#expire()
    return [...this.#events]
  }

  append (event: StoredEvent): void {
    this.#events.push(event)
    if (this.#events.length > this.#size) this.#forget(this.#events.length - this.#size)
  }

  since (lastEventId: string): StoredEvent[] | null {
    this.#expire()
    const events = this.#events
    for (let i = events.length - 1; i >= 0; i--) {
      if (events[i]!.id === lastEventId) return events.slice(i + 1)
    }
    // Not one of ours: a hub sequence number from another channel of the same stream?
    if (!/^\d{1,16}$/.test(lastEventId)) return null
    const seq = Number(lastEventId)
    if (seq < this.#lostUpTo) return null
    return events.filter((e) => e.seq > seq)
  }

  #expire (): void {
    if (this.#ttl === null) return
    const limit = Date.now() - this.#ttl
    let n = 0
    while (n < this.#events.length && this.#events[n]!.at < limit) n++
    if (n > 0) this.#forget(n)
  }

  #forget (n: number): void {
    const gone = this.#events.splice(0, n)
    this.#lostUpTo = gone[gone.length - 1]!.seq
  }
}

/** Channel is one named topic of a hub. */
export class Channel implements Subscribable {
  readonly name: string
  readonly #hub: Hub
  readonly #history: MemoryHistory | null
  readonly #sinks = new Set<StreamSink>()
  /** The batch this turn's publishes go to, until it is sealed. */
  #batch: Batch | null = null

  /** A null history makes an ephemeral channel. */
  constructor (hub: Hub, name: string, history: MemoryHistory | null) {
    this.#hub = hub
    this.name = name
    this.#history = history
  }

  /** events returns the events kept for replay, oldest first: save them to resume after a restart. */
  events (): StoredEvent[] { return this.#history?.events() ?? [] }

  /** subscribers is the number of streams currently subscribed. */
  get subscribers (): number { return this.#sinks.size }

  /**
   * publish encodes `event` once, keeps it for replay and writes it to every subscriber.
   * Returns the event's id (the channel's sequence when the event had none).
   */
  publish (event: SseEvent): string {
    if (this.#history === null) {
      this.#deliver(encodeEvent(event, this.#hub.serializer))
      return event.id === undefined ? '' : String(event.id)
    }
    const seq = this.#hub.nextSeq()
    const id = event.id === undefined ? String(seq) : String(event.id)
    const buf = encodeEvent(event.id === undefined ? { ...event, id } : event, this.#hub.serializer)
    // Appended even with historySize 0: the history then knows the event was lost.
    this.#history.append({ seq, id, buf, at: Date.now() })
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

  missed (lastEventId: string): StoredEvent[] | null {
    if (this.#history === null) return [] // ephemeral: nothing to replay, nothing to lose
    // An id "from the future" belongs to another process: what came between is unknown.
    if (/^\d{1,16}$/.test(lastEventId) && Number(lastEventId) > this.#hub.lastSeq) return null
    return this.#history.since(lastEventId)
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

/** Hub holds the channels of one app (`fastify.sse`). */
export class Hub {
  readonly serializer: Serializer
  readonly #channels = new Map<string, Channel>()
  readonly #defaults: HistoryDefaults
  readonly #firstSeq: number
  #seq: number

  constructor (serializer: Serializer, defaults: HistoryDefaults, now = Date.now()) {
    this.serializer = serializer
    this.#defaults = defaults
    this.#firstSeq = now * 1000
    this.#seq = this.#firstSeq - 1
  }

  /** nextSeq returns the next number of the hub-wide sequence. */
  nextSeq (): number { return ++this.#seq }

  /** lastSeq is the number of the last event published on any channel. */
  get lastSeq (): number { return this.#seq }

  /** channel returns the channel `name`, created with `opts` the first time. */
  channel (name: string, opts: ChannelOptions = {}): Channel {
    let channel = this.#channels.get(name)
    if (channel === undefined) {
      const size = opts.historySize ?? this.#defaults.historySize
      const ttl = opts.historyTtl === undefined ? this.#defaults.historyTtl : opts.historyTtl
      let history: MemoryHistory | null = null
      if (opts.ephemeral !== true) {
        history = new MemoryHistory(size, ttl, this.#firstSeq)
        if (opts.events !== undefined) history.restore(opts.events)
      }
      channel = new Channel(this, name, history)
      this.#channels.set(name, channel)
    }
    return channel
  }

  /** channels lists the names of the channels created so far. */
  get channels (): string[] { return [...this.#channels.keys()] }
}
