/**
 * Every coded error of fastify-long-lived, in one place.
 *
 * Compare errors by `err.code`, never by message or `instanceof`: messages may be
 * reworded, codes are part of the public contract.
 */
import createError from '@fastify/error'

/** An option given at register time has a value the plugin cannot use. */
export const FLL_ERR_INVALID_OPTION = createError<'FLL_ERR_INVALID_OPTION', [string, string, string]>(
  'FLL_ERR_INVALID_OPTION',
  "fastify-long-lived: option '%s' must be %s, received %s",
  500,
  TypeError
)

/** headersTimeout is larger than requestTimeout (Node would silently swap them). */
export const FLL_ERR_TIMEOUT_ORDER = createError<'FLL_ERR_TIMEOUT_ORDER', [number, number]>(
  'FLL_ERR_TIMEOUT_ORDER',
  'fastify-long-lived: headersTimeout (%d ms) must not exceed requestTimeout (%d ms): ' +
  'Node would silently swap them. Lower headersTimeout or raise requestTimeout.',
  500,
  RangeError
)

/** The server was created with a different maxHeaderSize than the one asked for. */
export const FLL_ERR_MAX_HEADER_SIZE = createError<'FLL_ERR_MAX_HEADER_SIZE', [number, number]>(
  'FLL_ERR_MAX_HEADER_SIZE',
  'fastify-long-lived: maxHeaderSize %d was asked for, but the server was created with %d. ' +
  'maxHeaderSize can only be set when the server is created: pass it as ' +
  'Fastify({ http: { maxHeaderSize } }) (or Fastify({ https: { maxHeaderSize } })).',
  500
)

/** An optional peer dependency needed by the options given is not installed. */
export const FLL_ERR_MISSING_PEER = createError<'FLL_ERR_MISSING_PEER', [string, string]>(
  'FLL_ERR_MISSING_PEER',
  "fastify-long-lived: option '%s' needs the package '%s': install it next to fastify-long-lived.",
  500
)

/** An SSE event has a field the event-stream parser would read differently (or not at all). */
export const FLL_ERR_SSE_INVALID_EVENT = createError<'FLL_ERR_SSE_INVALID_EVENT', [string, string, { cause: unknown }?]>(
  'FLL_ERR_SSE_INVALID_EVENT',
  "fastify-long-lived: SSE field '%s' must be %s",
  500,
  TypeError
)

/** The SSE stream is closed (the client left, or the stream was closed): the event was not sent. */
export const FLL_ERR_SSE_CLOSED = createError<'FLL_ERR_SSE_CLOSED', [string]>(
  'FLL_ERR_SSE_CLOSED',
  'fastify-long-lived: the SSE stream is closed (%s)',
  500
)

/** The client read too slowly: more than maxBufferedBytes were waiting for it. */
export const FLL_ERR_SSE_SLOW_CONSUMER = createError<'FLL_ERR_SSE_SLOW_CONSUMER', [number]>(
  'FLL_ERR_SSE_SLOW_CONSUMER',
  'fastify-long-lived: the SSE client reads too slowly: more than %d bytes were waiting for it',
  500
)

/**
 * `reply.sse` was used on a route the sse plugin did not see declared with the `sse` option:
 * nothing would end the stream when the handler returns, so the request fails at once instead.
 */
export const FLL_ERR_SSE_NOT_A_STREAM_ROUTE = createError<'FLL_ERR_SSE_NOT_A_STREAM_ROUTE', [string, string]>(
  'FLL_ERR_SSE_NOT_A_STREAM_ROUTE',
  'fastify-long-lived: reply.sse was used on %s %s, which the sse plugin does not know as a stream route. ' +
  'Declare the route with `{ sse: true }`, after the plugin has loaded: `await app.register(...)` before the ' +
  'route, or declare routes inside `app.after(() => { ... })` or a plugin registered after it (as CommonJS apps do). ' +
  'A route declared before the plugin loaded is not seen by it.',
  500
)

/** The shutdown budgets do not fit inside the signal handler's delay or the orchestrator's grace period. */
export const FLL_ERR_SHUTDOWN_BUDGET = createError<'FLL_ERR_SHUTDOWN_BUDGET', [string]>(
  'FLL_ERR_SHUTDOWN_BUDGET',
  'fastify-long-lived: the shutdown budget does not fit: %s',
  500,
  RangeError
)

/** The shutdown finished, but not cleanly (stragglers destroyed, a stream or a hook failed, or an error caused it). */
export const FLL_ERR_SHUTDOWN_UNCLEAN = createError<'FLL_ERR_SHUTDOWN_UNCLEAN', [string]>(
  'FLL_ERR_SHUTDOWN_UNCLEAN',
  'fastify-long-lived: shutdown finished uncleanly: %s',
  500
)

/**
 * The upstream closed a reused keep-alive connection before sending a byte of the response, and
 * the request was not retried (its method is not idempotent, or its body cannot be sent again).
 * The undici error is the `cause`.
 */
export const FLL_ERR_UPSTREAM_CONNECTION_CLOSED = createError<'FLL_ERR_UPSTREAM_CONNECTION_CLOSED', [string, string, string, { cause: unknown }?]>(
  'FLL_ERR_UPSTREAM_CONNECTION_CLOSED',
  'fastify-long-lived: the upstream closed a reused connection before answering %s %s: the request may or may not ' +
  'have been processed, and it was not retried because %s',
  502
)

/** The upstream client is closing or closed: a new request was refused, or one in flight was cut at closeTimeout. */
export const FLL_ERR_UPSTREAM_CLOSED = createError<'FLL_ERR_UPSTREAM_CLOSED', [string]>(
  'FLL_ERR_UPSTREAM_CLOSED',
  'fastify-long-lived: the upstream client is closed (%s)',
  503
)

/** A saved SSE hub state given to `app.sse.restore()` is malformed: what is wrong is in the message. */
export const FLL_ERR_SSE_INVALID_STATE = createError<'FLL_ERR_SSE_INVALID_STATE', [string]>(
  'FLL_ERR_SSE_INVALID_STATE',
  'fastify-long-lived: the saved SSE state cannot be restored: %s',
  500,
  TypeError
)

/** `app.sse.restore()` came after a channel was created (or after an earlier restore). */
export const FLL_ERR_SSE_RESTORE_TOO_LATE = createError<'FLL_ERR_SSE_RESTORE_TOO_LATE', [string]>(
  'FLL_ERR_SSE_RESTORE_TOO_LATE',
  'fastify-long-lived: app.sse.restore() must come before any channel is created, and only once: %s',
  500
)
