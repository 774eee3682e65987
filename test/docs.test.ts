/**
 * The README documents every option: for each plugin (and the umbrella), every option its
 * validation knows has a row in that plugin's section, with a type and a default.
 */
import { test, type Test } from 'tap'
import { readFileSync } from 'node:fs'
import type { FastifyPluginAsync } from 'fastify'
import { client, connections, longLived, shutdown, sse, timeouts } from '../plugins/index.js'
import { fastifyRegisterKeys } from '../plugins/options.js'
import { build } from './helpers.js'

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8').replace(/\r\n/g, '\n')

/** section returns the README text from the heading `title` to the next heading of the same level. */
function section (title: string): string {
  const start = readme.indexOf(`\n${title}\n`)
  if (start === -1) return ''
  const level = title.split(' ')[0]!
  const end = readme.indexOf(`\n${level} `, start + title.length + 1)
  return readme.slice(start, end === -1 ? undefined : end)
}

/** knownOptions asks a plugin's validation which options it knows (from its error for an unknown one). */
async function knownOptions (t: Test, plugin: FastifyPluginAsync<never>, withConnections: boolean): Promise<string[]> {
  const app = build(t)
  if (withConnections) await app.register(connections)
  const err = await app.register(plugin, { 'not-an-option': 1 } as never).then(() => null, (e: Error) => e)
  const message = err?.message ?? ''
  const list = /known options \(([^)]*)\)/.exec(message)?.[1]
  t.ok(list, `the unknown option is refused with the list of known ones (${message})`)
  return (list ?? '').split(', ').filter((k) => !(fastifyRegisterKeys as readonly string[]).includes(k))
}

const plugins: Array<[string, FastifyPluginAsync<never>, boolean]> = [
  ['## The umbrella: `longLived`', longLived as never, false],
  ['## connections', connections as never, false],
  ['## timeouts', timeouts as never, true],
  ['## sse', sse as never, true],
  ['## shutdown', shutdown as never, true],
  ['## client', client as never, true]
]

test('the README has a row, with a type and a default, for every option of every plugin', async (t) => {
  t.ok(readme.length < 200_000, `the README is of a sane size (${readme.length} characters)`)
  for (const [title, plugin, withConnections] of plugins) {
    const text = section(title)
    t.ok(text.length > 0, `the README has a section "${title}"`)
    const keys = await knownOptions(t, plugin, withConnections)
    t.ok(keys.length > 0, `${title}: its options are known`)
    const missing = keys.filter((key) => {
      // | `key` | type (may hold \|) | default (not empty, may hold \|) | ...
      const cell = '(?:[^|\\\\]|\\\\.)'
      const row = new RegExp(`^\\| \`${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\` \\| ${cell}+ \\| ${cell}*\\S${cell}* \\|`, 'm')
      return !row.test(text)
    })
    t.same(missing, [], `${title}: every option (${keys.join(', ')}) has a row with its type and default`)
  }
})
