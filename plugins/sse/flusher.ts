/**
 * flusher: when the streams of one app write what they queued during a turn of the event loop.
 *
 * Every stream with something queued joins one list; at the end of the turn (setImmediate) the
 * list is worked through, one `write()` per stream. A broadcast to thousands of streams would
 * keep the event loop busy for the whole list, so the work stops after `budget` ms and goes on in
 * the next turn: other requests are served in between. Each stream keeps its own queue, so the
 * order of a stream's events never changes, and nothing is skipped or written twice.
 */

/** A stream the flusher can write out. */
export interface Flushable {
  /** flushNow hands everything the stream has queued to its socket. */
  flushNow (): void
}

export class Flusher {
  readonly #budget: number
  #list: Flushable[] = []
  #scheduled = false
  // The last join: in a broadcast every subscriber queued the same Buffers, so they all write
  // the same joined Buffer instead of each copying the events into its own.
  #joinedParts: Buffer[] = []
  #joined: Buffer | null = null

  /** budget (ms) is the longest one turn spends writing before it yields. */
  constructor (budget: number) {
    this.#budget = budget
  }

  /** schedule writes `stream` out at the end of this turn (or a later one, if the list is long). A stream joins once per flush. */
  schedule (stream: Flushable): void {
    this.#list.push(stream)
    if (!this.#scheduled) {
      this.#scheduled = true
      setImmediate(this.#run)
    }
  }

  /**
   * join returns `parts` as one Buffer, the same one as the previous call when the parts are the
   * same Buffers in the same order (compared by identity: cheaper than copying them again).
   */
  join (parts: Buffer[]): Buffer {
    const last = this.#joinedParts
    if (this.#joined !== null && last.length === parts.length) {
      let same = true
      for (let i = 0; i < parts.length; i++) if (parts[i] !== last[i]) { same = false; break }
      if (same) return this.#joined
    }
    this.#joinedParts = parts
    this.#joined = Buffer.concat(parts)
    return this.#joined
  }

  readonly #run = (): void => {
    this.#scheduled = false
    const deadline = performance.now() + this.#budget
    const list = this.#list
    let i = 0
    // Streams scheduled while this runs join the end of the list and are written in this turn
    // too, unless the budget runs out first.
    while (i < list.length) {
      list[i++]!.flushNow()
      if ((i & 31) === 0 && performance.now() >= deadline) break
    }
    // What was written leaves the list, so a list that never empties (a steady firehose) does not grow.
    this.#list = i < list.length ? list.slice(i) : []
    this.#joinedParts = [] // keep no event alive past this turn
    this.#joined = null
    if (this.#list.length > 0) {
      this.#scheduled = true
      setImmediate(this.#run)
    }
  }
}
