/**
 * fastify-long-lived: Fastify 5 plugins for long-lived HTTP connections.
 * Each plugin is usable alone; import it from its own subpath or from here.
 */
export { default as connections, connectionsPlugin } from './connections.js'
export type {
  ConnectionInfo, ConnectionRegistry, ConnectionStats, ConnectionsOptions, DrainCounts,
  PromRegistryLike, SlowClientKind, StreamHandle, StreamRegistration
} from './connections.js'
export { default as timeouts, timeoutsPlugin, proxyPresets, keepAliveAbove } from './timeouts.js'
export type { DataRate, EffectiveTimeouts, ProxyPresetName, ProxyTimeouts, TimeoutsOptions } from './timeouts.js'
export * as errors from './errors.js'
export { default as sse, ssePlugin, acceptsEventStream, encodeEvent, encodeEventText, jsonSerializer, Channel, Hub, MemoryHistory, SseStream } from './sse/index.js'
export type {
  ChannelOptions, HistoryStore, Serializer, SseEvent, SseOptions, SseRouteOption, SseRouteSettings, SseSource, StoredEvent, StreamSink, Subscribable
} from './sse/index.js'
export { default as shutdown, shutdownPlugin } from './shutdown.js'
export type { Lifecycle, LifecycleState, ShutdownCause, ShutdownOptions, ShutdownOutcome } from './shutdown.js'
