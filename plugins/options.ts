/**
 * Option checks shared by every plugin: each throws FLL_ERR_INVALID_OPTION naming the
 * option, what it accepts and the value received, so a bad option fails at register time.
 *
 * Convention: `undefined` means "use the default", `null` switches a feature off.
 */
import { FLL_ERR_INVALID_OPTION } from './errors.js'

/** Keys Fastify itself reads from `register(plugin, opts)`: never an unknown option of ours. */
export const fastifyRegisterKeys = ['prefix', 'logLevel', 'logSerializers'] as const

/** describe renders a received value for an error message: strings quoted, objects as JSON. */
export function describe (value: unknown): string {
  if (typeof value === 'string') return `'${value}'`
  if (typeof value === 'function') return 'a function'
  if (typeof value === 'bigint') return `${value}n`
  if (value === undefined) return 'undefined'
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return String(value)
  }
}

/** invalid builds the coded error for option `name`, which accepts `accepted`. */
export function invalid (name: string, accepted: string, value: unknown): Error {
  return new FLL_ERR_INVALID_OPTION(name, accepted, describe(value))
}

/** isPlainObject is true for `{}`-like objects (not arrays, not null, not class instances with other prototypes). */
export function isPlainObject (value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

/**
 * objectOption returns `value` as an options object: `undefined` becomes `{}`; anything
 * else that is not a plain object throws. Unknown keys throw too: a typo in an option name
 * must not silently fall back to a default.
 */
export function objectOption (name: string, value: unknown, known: readonly string[]): Record<string, unknown> {
  if (value === undefined) return {}
  if (!isPlainObject(value)) throw invalid(name, 'an object', value)
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) {
      throw invalid(name === '' ? key : `${name}.${key}`, `one of the known options (${known.join(', ')})`, 'an unknown option')
    }
  }
  return value
}

/** nonNegativeInt returns `value` (or `fallback` when undefined), an integer >= 0; `meaning` says what it counts and what 0 does. */
export function nonNegativeInt (name: string, value: unknown, fallback: number, meaning = 'ms; 0 disables it'): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw invalid(name, `an integer >= 0 (${meaning})`, value)
  }
  return value
}

/** positiveInt returns `value` (or `fallback` when undefined), an integer > 0. */
export function positiveInt (name: string, value: unknown, fallback: number, unit = ''): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw invalid(name, `a positive integer${unit === '' ? '' : ` (${unit})`}`, value)
  }
  return value
}

/** positiveIntOrNull is positiveInt where `null` switches the feature off. */
export function positiveIntOrNull (name: string, value: unknown, fallback: number | null, unit = ''): number | null {
  if (value === null) return null
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw invalid(name, `a positive integer${unit === '' ? '' : ` (${unit})`} or null`, value)
  }
  return value
}
