/**
 * fastify-long-lived: Fastify 5 plugins for long-lived HTTP connections.
 * Each plugin is usable alone; import it from its own subpath or from here.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import clientPluginDefault, { type ClientOptions as ClientOpts } from './client.js'
import connectionsPluginDefault, { type PromRegistryLike as Registry } from './connections.js'
import { fastifyRegisterKeys, invalid, isPlainObject, objectOption } from './options.js'
import shutdownPluginDefault, { type ShutdownOptions as ShutdownOpts } from './shutdown.js'
import ssePluginDefault, { type SseOptions as SseOpts } from './sse/index.js'
import timeoutsPluginDefault, { type TimeoutsOptions as TimeoutsOpts } from './timeouts.js'

export { default as connections, connectionsPlugin } from './connections.js'
export type {
  ConnectionInfo, ConnectionRegistry, ConnectionStats, ConnectionsOptions, DrainCounts,
  PromRegistryLike, SlowClientKind, StreamHandle, StreamRegistration
} from './connections.js'
export { default as timeouts, timeoutsPlugin, proxyPresets, keepAliveAbove } from './timeouts.js'
export type { DataRate, EffectiveTimeouts, ProxyPresetName, ProxyTimeouts, TimeoutsOptions } from './timeouts.js'
export * as errors from './errors.js'
export { default as sse, ssePlugin, acceptsEventStream, encodeEvent, encodeEventText, jsonSerializer, Batch, Channel, Hub, MemoryHistory, SseStream } from './sse/index.js'
export type {
  ChannelOptions, ChannelState, HubState, ReplayPoint, TagRange, SavedEvent, Serializer, SseEvent, SseOptions, SseRouteOption, SseRouteSettings,
  SseSource, StoredEvent, StreamSink, Subscribable
} from './sse/index.js'
export { default as shutdown, shutdownPlugin } from './shutdown.js'
export type { Lifecycle, LifecycleState, ResolvedShutdownOptions, ShutdownCause, ShutdownOptions, ShutdownOutcome, ShutdownSignal } from './shutdown.js'
export { default as client, clientPlugin } from './client.js'
export type { ClientOptions, ResolvedClientOptions, Upstream, UpstreamCloseResult, UpstreamOriginStats, UpstreamRequestOptions } from './client.js'

// longLived: every plugin of the kit from one options object.

/**
 * Options of `longLived`: one section per plugin. A section may be omitted or `true` (the
 * plugin with its defaults), an object (its options), or `false` (the plugin is left out).
 * `connections` is always registered: the others stand on it.
 */
export interface LongLivedOptions {
  timeouts?: TimeoutsOpts | boolean
  sse?: SseOpts | boolean
  client?: Omit<ClientOpts, 'metrics'> | boolean
  shutdown?: ShutdownOpts | boolean
  /** metrics exposes the registry's (and the client pool's) numbers on a prom-client Registry. */
  metrics?: { registry: Registry, prefix?: string } | null
}

const sections = ['timeouts', 'sse', 'client', 'shutdown'] as const

function section<T> (name: string, value: unknown): T | null {
  if (value === false) return null
  if (value === undefined || value === true) return {} as T
  if (!isPlainObject(value)) throw invalid(name, 'an options object, true (defaults) or false (left out)', value)
  return value as T
}

async function longLivedPlugin (fastify: FastifyInstance, opts: LongLivedOptions): Promise<void> {
  const o = objectOption('', opts, [...sections, 'metrics', ...fastifyRegisterKeys])
  const metrics = o.metrics === undefined ? null : o.metrics as LongLivedOptions['metrics']
  const timeouts = section<TimeoutsOpts>('timeouts', o.timeouts)
  const sse = section<SseOpts>('sse', o.sse)
  const client = section<ClientOpts>('client', o.client)
  const shutdown = section<ShutdownOpts>('shutdown', o.shutdown)
  // Order matters: connections first, the others stand on it; shutdown second, because onClose
  // hooks run in reverse order of registration: its outcome is settled once the client pool (and
  // whatever the app registers later) has closed.
  await fastify.register(connectionsPluginDefault, { metrics })
  if (shutdown !== null) await fastify.register(shutdownPluginDefault, shutdown)
  if (timeouts !== null) await fastify.register(timeoutsPluginDefault, timeouts)
  if (sse !== null) await fastify.register(ssePluginDefault, sse)
  if (client !== null) await fastify.register(clientPluginDefault, { ...client, metrics })
}

/** longLived registers connections, shutdown, timeouts, sse and client from one options object. */
export const longLived = fp(longLivedPlugin, { name: 'fastify-long-lived', fastify: '5.x' })
