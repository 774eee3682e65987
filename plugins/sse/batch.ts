/**
 * batch: the events one channel publishes during one turn of the event loop, shared by all its
 * subscribers.
 *
 * The first publish of a turn hands a new Batch to every subscriber (one step per subscriber);
 * the publishes after it only append to the batch (one step in all), so a burst of M events to
 * N subscribers costs N + M steps instead of N × M, and the publisher's loop never holds the
 * event loop for long. When the streams write it out, the batch is joined into one Buffer once,
 * and every subscriber writes that same Buffer.
 *
 * A batch is sealed (takes no more events) when the turn ends, when a stream first reads it, or
 * when something must come after it on one of its streams (another channel's batch, a direct
 * send, a new subscriber): the channel's next publish then starts a new batch, so each stream
 * still receives its events in publish order. It is also full when one more event would take a
 * backed-up subscriber past its maxBufferedBytes: the next batch then goes to every subscriber
 * again, and that one meets its slow-consumer policy. (With 'drop', a stream skips a whole batch
 * that does not fit, where one event at a time might have let a smaller later event through;
 * the `dropped` count stays exact.)
 */

export class Batch {
  #parts: Buffer[] | null
  #joined: Buffer | null = null
  #sealed = false
  /** Total bytes of the events, so far. */
  bytes: number
  /** Number of events, so far. */
  count = 1
  /** The most bytes the batch may hold: the least room left among the backed-up streams that took it. */
  limit = Infinity

  constructor (first: Buffer) {
    this.#parts = [first]
    this.bytes = first.length
  }

  /** sealed tells whether the batch takes no more events. */
  get sealed (): boolean { return this.#sealed }

  /** add appends one event and returns true, or returns false (and seals) when it is sealed or `buf` would pass the limit. */
  add (buf: Buffer): boolean {
    if (this.#sealed) return false
    if (this.bytes + buf.length > this.limit) {
      this.#sealed = true
      return false
    }
    this.#parts!.push(buf)
    this.bytes += buf.length
    this.count++
    return true
  }

  /** seal closes the batch: later events go to a new one. */
  seal (): void { this.#sealed = true }

  /** data seals the batch and returns its events as one Buffer (joined once, for every reader). */
  data (): Buffer {
    this.#sealed = true
    if (this.#joined === null) {
      const parts = this.#parts!
      this.#joined = parts.length === 1 ? parts[0]! : Buffer.concat(parts, this.bytes)
      this.#parts = null // the joined copy is all that is needed from now on
    }
    return this.#joined
  }
}
