/**
 * heartbeat: one timer per heartbeat interval for all the streams of an app, instead of one per
 * stream. Each tick offers every stream of the group a heartbeat; a stream sends one only when it
 * has been silent for the interval and has nothing waiting for its client.
 */

/** A stream that may send a heartbeat. */
export interface HeartbeatTarget {
  /** heartbeat sends a comment if the stream has been silent for `interval` ms (and is not backed up). */
  heartbeat (now: number, interval: number): void
}

interface Group {
  streams: Set<HeartbeatTarget>
  timer: NodeJS.Timeout
}

export class Heartbeats {
  readonly #groups = new Map<number, Group>()

  /** add offers `stream` a heartbeat every `interval` ms until delete(). */
  add (stream: HeartbeatTarget, interval: number): void {
    let group = this.#groups.get(interval)
    if (group === undefined) {
      const streams = new Set<HeartbeatTarget>()
      // Unref'd, and re-armed only once a tick's work is done.
      const timer = setTimeout(function tick () {
        const now = performance.now()
        for (const s of streams) s.heartbeat(now, interval)
        timer.refresh()
      }, interval)
      timer.unref()
      group = { streams, timer }
      this.#groups.set(interval, group)
    }
    group.streams.add(stream)
  }

  /** delete stops the heartbeats of `stream`; the group's timer goes with its last stream. */
  delete (stream: HeartbeatTarget, interval: number): void {
    const group = this.#groups.get(interval)
    if (group === undefined || !group.streams.delete(stream) || group.streams.size > 0) return
    clearTimeout(group.timer)
    this.#groups.delete(interval)
  }

  /** close clears every timer (the app is closing). */
  close (): void {
    for (const group of this.#groups.values()) clearTimeout(group.timer)
    this.#groups.clear()
  }
}
