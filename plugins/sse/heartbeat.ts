/**
 * heartbeat: one timer per heartbeat interval for all the streams of an app, instead of one per
 * stream. The timer ticks `ticksPerInterval` times per interval, and each tick offers every stream
 * of the group a heartbeat; a stream sends one only when it has been silent for the interval less
 * one tick period, and has nothing waiting for its client.
 *
 * The guarantee: on a quiet stream, two writes (its head counts as one) are at most `interval`
 * ms apart, plus the timer's lateness (how late the event loop runs a due timer), and at least
 * `interval` less one tick period apart (3/4 of it, less 1 ms: writes are recorded in whole ms).
 * Ticking once per interval could not promise that: a stream opened just after a tick, or one
 * whose silence fell 1 ms short of the interval at a tick, waited a whole extra period (up to 2x
 * the interval, enough for a proxy's read timeout to cut it).
 */

/** A stream that may send a heartbeat. */
export interface HeartbeatTarget {
  /**
   * heartbeat sends a comment if the stream has written nothing for at least `silence` ms up to
   * `now` (a HeartbeatClock time, ms), and is not backed up.
   */
  heartbeat (now: number, silence: number): void
}

/** HeartbeatTimer is what Heartbeats uses of a Node timer. */
export interface HeartbeatTimer {
  refresh (): unknown
  unref (): unknown
}

/**
 * HeartbeatClock is where Heartbeats reads the time and sets its timers: the process's
 * (performance.now() and setTimeout) unless a test gives a fake one.
 */
export interface HeartbeatClock {
  /** now is a monotonic time in ms, the one streams record their writes in (performance.now()). */
  now (): number
  setTimeout (fn: () => void, ms: number): HeartbeatTimer
  clearTimeout (timer: HeartbeatTimer): void
}

const processClock: HeartbeatClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (timer) => { clearTimeout(timer as NodeJS.Timeout) }
}

/**
 * ticksPerInterval: how many times per interval the group's timer offers its streams a
 * heartbeat. The gap between two writes lies between (1 - 1/ticksPerInterval) and 1 interval;
 * 4 keeps heartbeats near the interval for one pass over the group per quarter interval.
 */
const ticksPerInterval = 4

/** tickPeriod (ms) of a group's timer for `interval`: a quarter of it, at least 1 ms. */
export function tickPeriod (interval: number): number {
  return Math.max(1, Math.floor(interval / ticksPerInterval))
}

interface Group {
  streams: Set<HeartbeatTarget>
  timer: HeartbeatTimer
}

export class Heartbeats {
  readonly #groups = new Map<number, Group>()
  readonly #clock: HeartbeatClock

  /** clock is the time and timers to use; the process's by default. */
  constructor (clock: HeartbeatClock = processClock) {
    this.#clock = clock
  }

  /**
   * add offers `stream` a heartbeat until delete(), so that it writes something at least every
   * `interval` ms (plus timer lateness). The stream counts its silence from its last write, so
   * it should record one when added (its head).
   */
  add (stream: HeartbeatTarget, interval: number): void {
    let group = this.#groups.get(interval)
    if (group === undefined) {
      const streams = new Set<HeartbeatTarget>()
      const clock = this.#clock
      const period = tickPeriod(interval)
      // A stream silent for `silence` at a tick would pass the interval before the next one:
      // it sends now. (A tick comes at most one period, plus lateness, after the one before.)
      const silence = interval - period
      // Unref'd, and re-armed only once a tick's work is done (ticks never overlap).
      const timer = clock.setTimeout(function tick () {
        const now = clock.now()
        for (const s of streams) s.heartbeat(now, silence)
        timer.refresh()
      }, period)
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
    this.#clock.clearTimeout(group.timer)
    this.#groups.delete(interval)
  }

  /** close clears every timer (the app is closing). */
  close (): void {
    for (const group of this.#groups.values()) this.#clock.clearTimeout(group.timer)
    this.#groups.clear()
  }
}
