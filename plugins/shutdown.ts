/**
 * shutdown: the lifecycle of a server with long-lived connections, decorated as
 * `fastify.lifecycle`: running -> draining -> closing -> closed.
 *
 * - draining (a signal, or lifecycle.drain()): readiness answers 503, every response carries
 *   `Connection: close` and its connection closes when it is done; the listener stays open for
 *   `drainDelay` so load balancers take the instance out first; then the streams get a final
 *   event with a jittered `retry`, spread over `streamDrainWindow`; a stream whose client has
 *   not taken it within `streamCloseTimeout` (it stopped reading) is destroyed.
 * - closing (fastify.close()): the listener closes, idle connections close at once, requests
 *   in flight get until `closeTimeout`, stragglers are destroyed and counted; only then do the
 *   `onClose` hooks run (pools, databases, the upstream client).
 * - closed: the outcome (clean or not, and why) resolves `lifecycle.done`. The host decides to
 *   exit; this plugin never calls process.exit. With `signals` on, close-with-grace, which
 *   handles SIGTERM/SIGINT and crashes, exits once the shutdown is done (0 when clean, else 1).
 *
 * Like Go's Shutdown it stops accepting, closes idle connections, answers Connection: close
 * and waits; unlike it, it also ends hijacked streams, gracefully.
 */
import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { EventEmitter } from 'node:events'
import { FLL_ERR_SHUTDOWN_BUDGET, FLL_ERR_SHUTDOWN_UNCLEAN } from './errors.js'
import { fastifyRegisterKeys, invalid, nonNegativeInt, objectOption, positiveInt, positiveIntOrNull } from './options.js'

/** The states of the lifecycle, in order. */
export type LifecycleState = 'running' | 'draining' | 'closing' | 'closed'

/** The signals the shutdown plugin can handle (`signals: true` is SIGTERM and SIGINT). */
export type ShutdownSignal = 'SIGTERM' | 'SIGINT' | 'SIGHUP' | 'SIGQUIT' | 'SIGUSR2'

const shutdownSignals: readonly ShutdownSignal[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR2']
const defaultSignals: readonly ShutdownSignal[] = Object.freeze(['SIGTERM', 'SIGINT'] as const)

// Every signal close-with-grace handles unless skipped. A Record, so that a signal added to its
// type is a type error here rather than a signal silently handled.
const closeWithGraceSignals = Object.keys({
  SIGHUP: 1, SIGINT: 1, SIGQUIT: 1, SIGILL: 1, SIGTRAP: 1, SIGABRT: 1, SIGBUS: 1, SIGFPE: 1, SIGSEGV: 1, SIGUSR2: 1, SIGTERM: 1
} satisfies Record<closeWithGrace.Signals, 1>) as closeWithGrace.Signals[]

/**
 * signalsOption resolves `signals` to the list handled, frozen; [] when off. Not SIGUSR2 by
 * default: nodemon sends it to restart, and a library must not turn that into a shutdown.
 */
function signalsOption (value: unknown): readonly ShutdownSignal[] {
  if (value === undefined || value === true) return defaultSignals
  if (value === false) return Object.freeze([])
  if (!Array.isArray(value) || value.length === 0 || value.some((v) => !shutdownSignals.includes(v))) {
    throw invalid('signals', `a boolean, or a non-empty array of ${shutdownSignals.join(', ')}`, value)
  }
  return Object.freeze([...new Set(value as ShutdownSignal[])])
}

/** Why the shutdown started. */
export type ShutdownCause = 'signal' | 'error' | 'manual' | 'close'

/** What a finished shutdown reports. */
export interface ShutdownOutcome {
  /**
   * True when everything closed on its own: no request destroyed at closeTimeout, no stream or
   * hook failed, not forced, not caused by an error. Streams cut because their client stopped
   * reading (`counts.streamsCut`) do not count against it.
   */
  clean: boolean
  cause: ShutdownCause
  signal: string | null
  error: Error | null
  /** Why it is not clean, in words (empty when clean). */
  failures: string[]
  durations: { draining: number, closing: number, total: number }
  counts: {
    /** Streams ended with a final event, and those whose graceful close failed. */
    streamsClosed: number
    streamsFailed: number
    /**
     * Streams whose client did not take the final event within `streamCloseTimeout` (it stopped
     * reading), destroyed. A client's doing: they do not make the outcome unclean.
     */
    streamsCut: number
    /** Idle connections closed when closing began. */
    idleClosed: number
    /** Requests (and streams) in flight when closing began, and those that finished by themselves. */
    inFlightAtClose: number
    inFlightFinished: number
    /** Connections still busy at `closeTimeout`, destroyed. */
    destroyed: number
  }
}

/** Options of the shutdown plugin (durations in ms). */
export interface ShutdownOptions {
  /**
   * drainDelay is how long the listener stays open after draining starts, serving requests with
   * `Connection: close`, so load balancers see readiness fail and take the instance out before
   * it stops accepting. Kubernetes deployments want about 5000. @default 0
   */
  drainDelay?: number
  /** streamDrainWindow spreads the final events of open streams over this many ms, so clients do not all reconnect at once. 0: all at once. @default 2000 */
  streamDrainWindow?: number
  /**
   * streamCloseTimeout is how long (ms) each stream has to end once told to close: its client
   * must take the final event (and what was queued before it) in that time, or the stream is
   * destroyed and counted in `streamsCut`. Bounds what a client that stopped reading can add
   * to a shutdown. @default 1000
   */
  streamCloseTimeout?: number
  /** closeTimeout is how long requests in flight get to finish once closing starts; then they are destroyed. @default 10000 */
  closeTimeout?: number
  /** hooksTimeout is the allowance for `onClose` hooks (pools, databases) in the budget check. @default 5000 */
  hooksTimeout?: number
  /** errorCloseTimeout replaces closeTimeout (and skips drainDelay and the stream window) when a crash starts the shutdown. @default 3000 */
  errorCloseTimeout?: number
  /**
   * signals installs close-with-grace for these signals (true: SIGTERM and SIGINT, what
   * orchestrators and Ctrl-C send), uncaughtException and unhandledRejection; it exits the
   * process once the shutdown is done (0 when clean, else 1). A natural exit (the event loop
   * runs empty) is never delayed. false when the host owns signals: call
   * `fastify.lifecycle.shutdown()` yourself. @default true
   */
  signals?: boolean | readonly ShutdownSignal[]
  /**
   * signalDelay is close-with-grace's deadline: past it the process exits with 1 whatever is
   * open. Must hold drainDelay + streamDrainWindow + streamCloseTimeout + closeTimeout +
   * hooksTimeout. @default 25000
   */
  signalDelay?: number
  /** terminationGracePeriod is the orchestrator's grace period (Kubernetes: 30000); signalDelay must fit inside it. null: not checked. @default null */
  terminationGracePeriod?: number | null
  /** readinessPath registers a GET route answering 200 while running, 503 from draining on. null: none. @default null */
  readinessPath?: string | null
  /** livenessPath registers a GET route answering 200 until the server is closed. null: none. @default null */
  livenessPath?: string | null
}

/** The options as resolved at register time: every default filled in, `signals` as the list handled ([] when off). */
export type ResolvedShutdownOptions = Readonly<Omit<Required<ShutdownOptions>, 'signals'> & { signals: readonly ShutdownSignal[] }>

/** The lifecycle, decorated as `fastify.lifecycle`. Emits 'draining', 'closing' and 'closed' (with the outcome). */
export interface Lifecycle extends EventEmitter {
  readonly state: LifecycleState
  /** done resolves with the outcome once the server is closed, however the shutdown started. */
  readonly done: Promise<ShutdownOutcome>
  /** drain enters draining (idempotent): readiness 503, Connection: close. It does not close anything. */
  drain (): void
  /** shutdown runs the whole sequence (idempotent: a second call returns the same promise). */
  shutdown (opts?: { signal?: string, error?: Error }): Promise<ShutdownOutcome>
  /** forceClose destroys every connection at once (what a second signal does) and logs what was open. */
  forceClose (why: string): void
  /** The resolved options, frozen. */
  readonly options: ResolvedShutdownOptions
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The lifecycle of fastify-long-lived's shutdown plugin. */
    lifecycle: Lifecycle
  }
}

const knownOptions = [
  'drainDelay', 'streamDrainWindow', 'streamCloseTimeout', 'closeTimeout', 'hooksTimeout', 'errorCloseTimeout', 'signals',
  'signalDelay', 'terminationGracePeriod', 'readinessPath', 'livenessPath'
] as const

function pathOption (name: string, value: unknown): string | null {
  if (value === undefined || value === null) return null
  if (typeof value !== 'string' || !value.startsWith('/')) throw invalid(name, "a path starting with '/', or null", value)
  return value
}

/** resolveOptions validates the options, checks the budget, and returns a frozen resolved copy. */
export function resolveOptions (opts: unknown): ResolvedShutdownOptions {
  const o = objectOption('', opts, [...knownOptions, ...fastifyRegisterKeys])
  const r: ResolvedShutdownOptions = {
    drainDelay: nonNegativeInt('drainDelay', o.drainDelay, 0),
    streamDrainWindow: nonNegativeInt('streamDrainWindow', o.streamDrainWindow, 2e3),
    streamCloseTimeout: positiveInt('streamCloseTimeout', o.streamCloseTimeout, 1e3, 'ms'),
    closeTimeout: positiveInt('closeTimeout', o.closeTimeout, 10e3, 'ms'),
    hooksTimeout: nonNegativeInt('hooksTimeout', o.hooksTimeout, 5e3),
    errorCloseTimeout: positiveInt('errorCloseTimeout', o.errorCloseTimeout, 3e3, 'ms'),
    signals: signalsOption(o.signals),
    signalDelay: positiveInt('signalDelay', o.signalDelay, 25e3, 'ms'),
    terminationGracePeriod: positiveIntOrNull('terminationGracePeriod', o.terminationGracePeriod, null, 'ms'),
    readinessPath: pathOption('readinessPath', o.readinessPath),
    livenessPath: pathOption('livenessPath', o.livenessPath)
  }
  const sum = r.drainDelay + r.streamDrainWindow + r.streamCloseTimeout + r.closeTimeout + r.hooksTimeout
  const parts = `drainDelay ${r.drainDelay} + streamDrainWindow ${r.streamDrainWindow} + streamCloseTimeout ${r.streamCloseTimeout} + ` +
    `closeTimeout ${r.closeTimeout} + hooksTimeout ${r.hooksTimeout} = ${sum} ms`
  const signals = r.signals
  if (signals.length > 0 && sum > r.signalDelay) {
    throw new FLL_ERR_SHUTDOWN_BUDGET(`${parts}, more than signalDelay ${r.signalDelay} ms: raise signalDelay or lower the others`)
  }
  if (r.terminationGracePeriod !== null) {
    const outer = signals.length > 0 ? r.signalDelay : sum
    const what = signals.length > 0 ? `signalDelay ${r.signalDelay} ms` : parts
    if (outer > r.terminationGracePeriod) {
      throw new FLL_ERR_SHUTDOWN_BUDGET(`${what}, more than terminationGracePeriod ${r.terminationGracePeriod} ms: the orchestrator would kill the process first`)
    }
  }
  return Object.freeze(r)
}

/**
 * checkPluginTimeout refuses a streamCloseTimeout that Fastify's pluginTimeout would cut: the
 * streams still open at fastify.close() are ended in a preClose hook, which Fastify times out
 * (the rest of the closing phase is not waited for inside one).
 */
function checkPluginTimeout (r: ResolvedShutdownOptions, pluginTimeout: number): void {
  if (pluginTimeout > 0 && r.streamCloseTimeout >= pluginTimeout) {
    throw new FLL_ERR_SHUTDOWN_BUDGET(`streamCloseTimeout ${r.streamCloseTimeout} ms, not less than Fastify's pluginTimeout ${pluginTimeout} ms, ` +
      'which times the preClose hook that ends the streams: lower streamCloseTimeout or raise pluginTimeout (0 disables it)')
  }
}

// How long (ms) a connection that has sent nothing yet gets, once the listener is closed, before
// it counts as idle: a request sent just before the listener closed arrives within this.
const newConnectionGrace = 250

/** delay waits `ms`, unless `cut` fires first (a second signal must not wait out the drain). */
function delay (ms: number, cut: AbortSignal): Promise<void> {
  if (ms === 0 || cut.aborted) return Promise.resolve()
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms)
    function done (): void {
      clearTimeout(timer)
      cut.removeEventListener('abort', done)
      resolve()
    }
    cut.addEventListener('abort', done)
  })
}

class LifecycleImpl extends EventEmitter implements Lifecycle {
  readonly options: ResolvedShutdownOptions
  readonly done: Promise<ShutdownOutcome>
  #fastify: FastifyInstance
  #state: LifecycleState = 'running'
  #resolveDone!: (outcome: ShutdownOutcome) => void
  #shutdown: Promise<ShutdownOutcome> | null = null
  #closing: Promise<void> | null = null
  #forced = new AbortController()
  #startedAt = 0
  #drainingAt = 0
  #closingAt = 0
  #cause: ShutdownCause = 'close'
  #signal: string | null = null
  #error: Error | null = null
  #failures: string[] = []
  #counts: ShutdownOutcome['counts'] = {
    streamsClosed: 0, streamsFailed: 0, streamsCut: 0, idleClosed: 0, inFlightAtClose: 0, inFlightFinished: 0, destroyed: 0
  }

  constructor (fastify: FastifyInstance, options: ResolvedShutdownOptions) {
    super()
    this.#fastify = fastify
    this.options = options
    this.done = new Promise((resolve) => { this.#resolveDone = resolve })
  }

  get state (): LifecycleState { return this.#state }

  /** shuttingDown is true once shutdown() was called (rather than fastify.close() directly). */
  get shuttingDown (): boolean { return this.#shutdown !== null }

  #enter (state: 'draining' | 'closing'): void {
    this.#state = state
    this.emit(state)
  }

  drain (): void {
    if (this.#state !== 'running') return
    this.#drainingAt = performance.now()
    if (this.#startedAt === 0) this.#startedAt = this.#drainingAt
    const { marked } = this.#fastify.connections.setDraining()
    this.#enter('draining')
    this.#fastify.log.info({ lifecycle: 'draining', inFlightMarked: marked, drainDelay: this.options.drainDelay },
      'fastify-long-lived: draining: readiness is 503, every response now carries Connection: close')
  }

  shutdown (opts: { signal?: string, error?: Error } = {}): Promise<ShutdownOutcome> {
    if (this.#shutdown !== null) return this.#shutdown
    this.#startedAt = performance.now()
    this.#signal = opts.signal ?? null
    this.#error = opts.error ?? null
    this.#cause = opts.error !== undefined ? 'error' : opts.signal !== undefined ? 'signal' : 'manual'
    if (this.#error !== null) {
      this.#failures.push(`caused by an error: ${this.#error.message}`)
      this.#fastify.log.error({ err: this.#error }, 'fastify-long-lived: shutting down after an error')
    }
    this.#shutdown = this.#run()
    return this.#shutdown
  }

  async #run (): Promise<ShutdownOutcome> {
    const crash = this.#cause === 'error'
    this.drain()
    // A crash skips the courtesy: no drain delay, no spreading of the stream closes.
    await delay(crash ? 0 : this.options.drainDelay, this.#forced.signal)
    await this.#closeStreams(crash || this.#forced.signal.aborted ? 0 : this.options.streamDrainWindow)
    let closeError: Error | null = null
    try {
      await this.#fastify.close()
    } catch (err) {
      closeError = err as Error
      this.#fastify.log.error({ err }, 'fastify-long-lived: fastify.close() failed')
    }
    // Here every onClose hook has run (a failing one made close() reject): the outcome is final.
    this.finish(closeError)
    return await this.done
  }

  async #closeStreams (window: number): Promise<void> {
    const started = performance.now()
    const timeout = this.options.streamCloseTimeout
    const { closed, failed, cut } = await this.#fastify.connections.closeStreams({ window, reason: 'shutdown', timeout })
    this.#counts.streamsClosed += closed
    this.#counts.streamsFailed += failed
    this.#counts.streamsCut += cut
    if (failed > 0) this.#failures.push(`${failed} stream(s) failed to close gracefully`)
    this.#fastify.log.info({
      lifecycle: 'draining', streamsClosed: closed, streamsFailed: failed, streamsCut: cut, window, streamCloseTimeout: timeout, durationMs: Math.round(performance.now() - started)
    }, 'fastify-long-lived: streams told to reconnect elsewhere')
  }

  /**
   * startClosing runs from preClose, whether the shutdown started here or fastify.close() was
   * called directly: it ends the streams still open (within streamCloseTimeout), then starts
   * the closing phase without waiting for it; closingDone() waits for it, from onClose.
   * Fastify times preClose hooks out at its pluginTimeout (10 s by default: less than
   * closeTimeout may be), and onClose hooks are not timed. server.close(), which Fastify calls
   * right after preClose, waits for the connections that the closing phase ends by its deadline.
   */
  async startClosing (): Promise<void> {
    if (this.#state === 'closing' || this.#state === 'closed') return
    if (this.#state === 'running') this.drain() // fastify.close() called directly
    if (this.#fastify.connections.stats().streams > 0) await this.#closeStreams(0)
    this.#closing ??= this.#close()
  }

  /** closingDone resolves once the closing phase has ended (at once if it never started). */
  async closingDone (): Promise<void> {
    await this.#closing
  }

  async #close (): Promise<void> {
    const registry = this.#fastify.connections
    this.#closingAt = performance.now()
    this.#enter('closing')
    const forced = this.#forced.signal
    // Keep-alive sockets between requests close now; sockets that have not sent a byte yet are
    // left a moment: one accepted just before the listener closed may have its request on the wire.
    let { closed: idleClosed } = registry.closeIdle({ includeNew: false })
    // Stop accepting now, before waiting: Fastify would close the listener only after preClose.
    this.#fastify.server.close(() => {})
    const before = registry.stats()
    const inFlightAtClose = before.inFlight + before.streams
    const timeout = this.#cause === 'error' ? Math.min(this.options.errorCloseTimeout, this.options.closeTimeout) : this.options.closeTimeout
    const deadline = this.#closingAt + timeout
    const remaining = (): number => Math.max(0, Math.round(deadline - performance.now()))
    let waited = await this.#waitForIdle(remaining())
    if (waited.idle && this.#hasNewConnections() && !forced.aborted) {
      await delay(Math.min(newConnectionGrace, remaining()), forced)
      waited = await this.#waitForIdle(remaining())
    }
    idleClosed += registry.closeIdle().closed
    const stragglers = waited.active + waited.streams
    // Whatever is left now is either busy past its deadline, or an idle socket whose client has
    // not closed its side yet: both are destroyed, only the first are counted as stragglers.
    registry.destroyAll()
    const arrived = registry.stats().requestsTotal - before.requestsTotal
    Object.assign(this.#counts, { idleClosed, inFlightAtClose, inFlightFinished: Math.max(0, inFlightAtClose + arrived - stragglers), destroyed: stragglers })
    if (stragglers > 0) this.#failures.push(`${stragglers} request(s) or stream(s) still busy after ${timeout} ms were destroyed`)
    this.#fastify.log.info({
      lifecycle: 'closing',
      idleClosed,
      inFlightAtClose,
      inFlightFinished: this.#counts.inFlightFinished,
      destroyed: stragglers,
      closeTimeout: timeout,
      durationMs: Math.round(performance.now() - this.#closingAt)
    }, 'fastify-long-lived: closing: listener closed, in-flight requests done')
  }

  /** #hasNewConnections: is a connection open that has not sent a byte yet? */
  #hasNewConnections (): boolean {
    let found = false
    this.#fastify.connections.forEach((info) => { if (info.requests === 0 && info.inFlight === 0 && info.bytesRead === 0) found = true })
    return found
  }

  async #waitForIdle (timeout: number): Promise<{ idle: boolean, active: number, streams: number }> {
    const registry = this.#fastify.connections
    if (this.#forced.signal.aborted) {
      const s = registry.stats()
      return { idle: false, active: s.inFlight, streams: s.streams }
    }
    let onForced = (): void => {}
    const forced = new Promise<{ idle: boolean, active: number, streams: number }>((resolve) => {
      onForced = () => {
        const s = registry.stats()
        resolve({ idle: false, active: s.inFlight, streams: s.streams })
      }
      this.#forced.signal.addEventListener('abort', onForced, { once: true })
    })
    try {
      return await Promise.race([registry.waitForIdle(timeout), forced])
    } finally {
      this.#forced.signal.removeEventListener('abort', onForced)
    }
  }

  forceClose (why: string): void {
    if (this.#forced.signal.aborted) return
    const open = this.#fastify.connections.stats()
    this.#fastify.log.error({ lifecycle: this.#state, open: open.open, inFlight: open.inFlight, streams: open.streams, active: open.active },
      `fastify-long-lived: ${why}: destroying every connection now`)
    this.#failures.push(`forced: ${why}`)
    this.#forced.abort() // the closing phase counts what was busy as destroyed
    this.#fastify.connections.destroyAll()
  }

  /** finish runs after the onClose hooks: the outcome. */
  finish (hookError: Error | null): void {
    if (this.#state === 'closed') return
    if (hookError !== null) this.#failures.push(`an onClose hook failed: ${hookError.message}`)
    const now = performance.now()
    if (this.#startedAt === 0) this.#startedAt = this.#closingAt
    const outcome: ShutdownOutcome = {
      clean: this.#failures.length === 0,
      cause: this.#cause,
      signal: this.#signal,
      error: this.#error,
      failures: [...this.#failures],
      durations: {
        draining: Math.round((this.#closingAt || now) - (this.#drainingAt || this.#closingAt || now)),
        closing: Math.round(now - (this.#closingAt || now)),
        total: Math.round(now - this.#startedAt)
      },
      counts: { ...this.#counts }
    }
    this.#state = 'closed'
    this.#fastify.log.info({
      lifecycle: 'closed',
      clean: outcome.clean,
      cause: outcome.cause,
      signal: outcome.signal,
      durations: outcome.durations,
      counts: outcome.counts,
      failures: outcome.failures
    },
      `fastify-long-lived: closed ${outcome.clean ? 'cleanly' : 'with failures'} in ${outcome.durations.total} ms`)
    this.emit('closed', outcome)
    this.#resolveDone(outcome)
  }
}

async function shutdownPlugin (fastify: FastifyInstance, opts: ShutdownOptions): Promise<void> {
  const options = resolveOptions(opts)
  checkPluginTimeout(options, (fastify.initialConfig as { pluginTimeout?: number }).pluginTimeout ?? 0)
  const lifecycle = new LifecycleImpl(fastify, options)
  fastify.decorate('lifecycle', lifecycle as Lifecycle)
  // This plugin ends the streams itself during close (and counts them): the registry's own
  // safety net in preClose, which runs before ours, must leave them to us.
  fastify.connections.closeStreamsOnClose = false

  if (options.readinessPath !== null) {
    fastify.get(options.readinessPath, async (_req, reply) => {
      if (lifecycle.state === 'running') return { status: 'ready' }
      return reply.code(503).send({ status: lifecycle.state })
    })
  }
  if (options.livenessPath !== null) {
    fastify.get(options.livenessPath, async () => ({ status: 'alive', lifecycle: lifecycle.state }))
  }

  fastify.addHook('preClose', async () => { await lifecycle.startClosing() })
  // When fastify.close() is called directly, the outcome is settled here. onClose hooks run in
  // reverse order of registration: register this plugin before the plugins it should outlast
  // (pools, databases), right after connections. A shutdown() settles the outcome itself once
  // fastify.close() has returned, every hook included.
  fastify.addHook('onClose', async () => {
    await lifecycle.closingDone()
    if (!lifecycle.shuttingDown) lifecycle.finish(null)
  })

  if (options.signals.length > 0) {
    const unsubscribe = processSignals.subscribe({
      signals: options.signals,
      delay: options.signalDelay,
      log: fastify.log,
      lifecycle
    })
    fastify.addHook('onClose', async () => { unsubscribe() })
  }
}

// Process signals, shared by every app of the process that asked for them.
//
// A signal belongs to the process, not to one app: with one close-with-grace per app, a process
// running several apps (tests, a main app next to a metrics app) had each of them add its own
// listeners (MaxListenersExceededWarning past 10), and on SIGTERM the first app to finish
// exited the process while the others were still draining. One handler per process instead:
// a signal any app handles shuts every app down, in parallel, and the process exits once the
// last is done (0 when all were clean), within the largest signalDelay. The set below is the
// only module-level state of the kit, because the resource it guards is process-wide; it holds
// an app only from register to close.

interface SignalSubscriber {
  signals: readonly ShutdownSignal[]
  delay: number
  log: FastifyInstance['log']
  lifecycle: LifecycleImpl
}

const processSignals = {
  subscribers: new Set<SignalSubscriber>(),
  handle: null as { uninstall: () => void } | null,
  /** Set once a signal (or a crash) started the shutdown: close-with-grace owns the process until it exits. */
  running: null as null | ((subscriber: SignalSubscriber) => void),

  /** subscribe hands `subscriber` to the process's signal handler; the function returned takes it back. */
  subscribe (subscriber: SignalSubscriber): () => void {
    this.subscribers.add(subscriber)
    // An app that registers while the process shuts down is shut down too: the process exits.
    if (this.running !== null) this.running(subscriber)
    else this.install()
    return () => {
      this.subscribers.delete(subscriber)
      this.install()
    }
  },

  /** install (re)installs close-with-grace for the signals the subscribers handle, or removes it when none is left. */
  install (): void {
    if (this.running !== null) return
    this.handle?.uninstall()
    this.handle = null
    const all = [...this.subscribers]
    if (all.length === 0) return
    const signals = new Set(all.flatMap((s) => s.signals))
    const each = (fn: (s: SignalSubscriber) => void): void => { for (const s of all) fn(s) }
    let unclean: Error | null = null
    this.handle = closeWithGrace({
      delay: Math.max(...all.map((s) => s.delay)),
      // close-with-grace handles every signal it knows, and the process's natural exit
      // ('beforeExit'), unless skipped: keep only the chosen signals, and never delay an exit.
      skip: [...closeWithGraceSignals.filter((name) => !signals.has(name as ShutdownSignal)), 'beforeExit'],
      // (The unclean outcome was logged by each app: the last line stays the outcome.)
      logger: { error: (msg: unknown) => { if (msg !== unclean) all[0]!.log.error(msg as object) } },
      onSecondSignal (signal) { each((s) => { s.lifecycle.forceClose(`second ${signal}`) }) },
      onSecondError (err) {
        each((s) => {
          s.log.error({ err }, 'fastify-long-lived: another error while shutting down')
          s.lifecycle.forceClose('second error')
        })
      },
      onTimeout (ms) { each((s) => { s.lifecycle.forceClose(`shutdown took longer than signalDelay (${ms} ms)`) }) }
    }, async ({ signal, err }) => {
      const shutdowns = new Map<SignalSubscriber, Promise<ShutdownOutcome>>()
      const start = (s: SignalSubscriber): void => {
        if (!shutdowns.has(s)) shutdowns.set(s, s.lifecycle.shutdown({ signal, error: err }))
      }
      this.running = start
      for (const s of all) start(s)
      // allSettled: one app failing must not let the process exit while the others drain.
      let settled: Array<PromiseSettledResult<ShutdownOutcome>>
      do settled = await Promise.allSettled(shutdowns.values())
      while (settled.length < shutdowns.size)
      // The loggers write asynchronously (pino): what they hold is written before the exit, in order.
      await Promise.all([...shutdowns.keys()].map(async (s) => { await flushLog(s.log) }))
      const failures = settled.flatMap((r) => r.status === 'rejected' ? [String(r.reason)] : r.value.failures)
      if (failures.length > 0 || settled.some((r) => r.status === 'fulfilled' && !r.value.clean)) {
        unclean = new FLL_ERR_SHUTDOWN_UNCLEAN(failures.join('; '))
        throw unclean
      }
    })
  }
}

/**
 * flushLog waits (at most a second) until the logger's destination has written everything. Fastify's
 * default logger (pino) writes through an asynchronous SonicBoom, and at process.exit pino writes
 * what is buffered synchronously while an earlier write may still be in flight: lines came out
 * out of order or not at all (the outcome before the draining line). pino's flush(cb) does not
 * wait for that write (it returns at once with the default minLength 0), so this waits for the
 * destination's 'drain' while it is writing. Any other logger: nothing to wait for.
 */
async function flushLog (log: FastifyInstance['log']): Promise<void> {
  let stream: { _writing?: unknown, once?: unknown } | undefined
  for (let o: object | null = log; o !== null && stream === undefined; o = Object.getPrototypeOf(o)) {
    const key = Object.getOwnPropertySymbols(o).find((sym) => sym.description === 'pino.stream')
    if (key !== undefined) stream = (o as Record<symbol, typeof stream>)[key]
  }
  if (stream?._writing !== true || typeof stream.once !== 'function') return
  const destination = stream as EventEmitter
  await new Promise<void>((resolve) => {
    const timer = setTimeout(done, 1000)
    function done (): void {
      clearTimeout(timer)
      destination.removeListener('drain', done)
      resolve()
    }
    destination.once('drain', done)
  })
}

export default fp(shutdownPlugin, {
  name: 'fastify-long-lived/shutdown',
  fastify: '5.x',
  dependencies: ['fastify-long-lived/connections']
})
export { shutdownPlugin }
