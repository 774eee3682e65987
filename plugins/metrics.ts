/**
 * metrics: the kit's Prometheus metrics, one place. Every metric is read at scrape time from a
 * plugin's own stats (prom-client's `collect`), so nothing runs per request. prom-client is an
 * optional peer: it is loaded only when an app asks for metrics.
 */
import { FLL_ERR_MISSING_PEER } from './errors.js'
import { invalid, objectOption } from './options.js'

/** The part of a prom-client Registry the kit uses. */
export interface PromRegistryLike {
  registerMetric (metric: unknown): void
  removeSingleMetric (name: string): void
}

/** The `metrics` option every plugin takes. */
export interface MetricsOption {
  registry: PromRegistryLike
  /** Metric name prefix. @default 'fastify_long_lived_' */
  prefix?: string
}

/** A gauge or a counter read from one sample of a plugin's stats. */
export interface MetricSpec<S> {
  type: 'gauge' | 'counter'
  name: string
  help: string
  read: (sample: S) => number
}

/** checkMetricsOption throws FLL_ERR_INVALID_OPTION unless `value` is null, undefined or a valid `metrics` option. */
export function checkMetricsOption (value: unknown): void {
  if (value === undefined || value === null) return
  const m = objectOption('metrics', value, ['registry', 'prefix'])
  const reg = m.registry as Partial<PromRegistryLike> | undefined
  if (reg === null || typeof reg !== 'object' || typeof reg.registerMetric !== 'function' || typeof reg.removeSingleMetric !== 'function') {
    throw invalid('metrics.registry', 'a prom-client Registry', reg)
  }
  if (m.prefix !== undefined && (typeof m.prefix !== 'string' || !/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(m.prefix))) {
    throw invalid('metrics.prefix', 'a Prometheus metric name prefix such as \'myapp_\'', m.prefix)
  }
}

/**
 * registerMetrics registers `specs` as `<prefix><name>` on the option's registry. At each scrape,
 * `samples()` gives the current stats: one series per sample, labelled `label=<key>` when a label
 * is given (e.g. one series per upstream origin). Returns the function that removes them again.
 */
export async function registerMetrics<S> (
  option: MetricsOption,
  name: string,
  specs: Array<MetricSpec<S>>,
  samples: () => Iterable<[string, S]>,
  label: string | null = null
): Promise<() => void> {
  let prom: typeof import('prom-client')
  try {
    prom = await import('prom-client')
  } catch {
    throw new FLL_ERR_MISSING_PEER('metrics', 'prom-client')
  }
  const registry = option.registry as unknown as import('prom-client').Registry
  const prefix = (option.prefix ?? 'fastify_long_lived_') + name
  const labelNames = label === null ? [] : [label]
  const names: string[] = []
  for (const spec of specs) {
    const config = {
      name: prefix + spec.name,
      help: spec.help,
      labelNames,
      registers: [registry],
      // A counter is set from the plugin's own total: reset, then incremented by it.
      collect (this: { reset: () => void, set?: (labels: object, v: number) => void, inc?: (labels: object, v: number) => void }) {
        this.reset()
        for (const [key, sample] of samples()) {
          const labels = label === null ? {} : { [label]: key }
          if (spec.type === 'gauge') this.set!(labels, spec.read(sample))
          else this.inc!(labels, spec.read(sample))
        }
      }
    }
    // eslint-disable-next-line no-new
    if (spec.type === 'gauge') new prom.Gauge(config)
    // eslint-disable-next-line no-new
    else new prom.Counter(config)
    names.push(config.name)
  }
  return () => { for (const n of names) registry.removeSingleMetric(n) }
}
