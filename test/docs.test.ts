/**
 * The README documents every option: for each plugin (and the umbrella), every option its
 * validation knows has a row in that plugin's section, with a type and a default.
 */
import { test, type Test } from 'tap'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import type { FastifyPluginAsync } from 'fastify'
import { client, connections, errors, longLived, shutdown, sse, timeouts } from '../plugins/index.js'
import { fastifyRegisterKeys } from '../plugins/options.js'
import { resolveOptions as resolveClient } from '../plugins/client.js'
import { resolveOptions as resolveShutdown } from '../plugins/shutdown.js'
import { resolveOptions as resolveSse } from '../plugins/sse/index.js'
import { resolveOptions as resolveTimeouts } from '../plugins/timeouts.js'
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

/** rows returns the option rows of a section's tables: key, and the default cell as written. */
function rows (text: string): Array<{ key: string, cell: string }> {
  const out: Array<{ key: string, cell: string }> = []
  for (const line of text.split('\n')) {
    const cells = line.split(/(?<!\\)\|/).map((c) => c.trim())
    // | `key` | type | default | description |
    const key = /^`([\w.]+)`$/.exec(cells[1] ?? '')?.[1]
    if (key !== undefined && cells.length >= 6) out.push({ key, cell: cells[3]! })
  }
  return out
}

/**
 * documented parses the leading code span of a default cell: a literal (`20000`, `null`,
 * `'disconnect'`, `true`) or a list of them in braces (`{ 240, 5000 }`: the values of an object,
 * in order). undefined when the cell documents something else (`see below`, `JSON.stringify`).
 */
function documented (cell: string): { value: unknown } | undefined {
  const code = /^`([^`]+)`/.exec(cell)?.[1]
  if (code === undefined) return undefined
  const literal = (x: string): { value: unknown } | undefined => {
    if (/^-?\d+$/.test(x)) return { value: Number(x) }
    if (x === 'null' || x === 'true' || x === 'false') return { value: JSON.parse(x) }
    if (/^'[^']*'$/.test(x)) return { value: x.slice(1, -1) }
    return undefined
  }
  const list = /^\{ (.*) \}$/.exec(code)?.[1]
  if (list === undefined) return literal(code)
  const values = list.split(', ').map(literal)
  return values.every((v) => v !== undefined) ? { value: values.map((v) => v!.value) } : undefined
}

/** at reads a dotted path of the resolved options; a braced default compares with the object's values. */
function at (resolved: object, path: string): { value: unknown } | undefined {
  let value: unknown = resolved
  for (const part of path.split('.')) {
    if (value === null || typeof value !== 'object' || !(part in value)) return undefined
    value = (value as Record<string, unknown>)[part]
  }
  return { value }
}

// Resolved options whose form differs from what the table writes, by design.
const resolvedAs: Record<string, Record<string, unknown>> = {
  // `signals: true` resolves to the list it stands for.
  '## shutdown': { signals: true },
  // The client's `metrics` (a registry) is not part of its resolved options: the plugin registers it.
  '## client': { metrics: null }
}

test('every default the README documents is the one the code resolves (from the resolved options)', async (t) => {
  const sse = resolveSse({})
  const resolvers: Array<[string, object]> = [
    ['## timeouts', resolveTimeouts({})],
    ['## sse', { ...sse.settings, history: sse.history }],
    ['## shutdown', { ...resolveShutdown({}), ...resolvedAs['## shutdown'] }],
    ['## client', { ...resolveClient({}), ...resolvedAs['## client'] }]
  ]
  t.same(resolveShutdown({}).signals, ['SIGTERM', 'SIGINT'], '`signals: true` is SIGTERM and SIGINT')
  for (const [title, resolved] of resolvers) {
    const options = section(title).split('\n### ').filter((part) => part.startsWith('Options')).join('\n')
    const checked: string[] = []
    for (const { key, cell } of rows(options)) {
      const doc = documented(cell)
      if (doc === undefined) continue
      const actual = at(resolved, key)
      if (actual === undefined) {
        t.fail(`${title}: \`${key}\` is documented with a default, but the resolved options have no such key`)
        continue
      }
      const value = Array.isArray(doc.value) && actual.value !== null && typeof actual.value === 'object' && !Array.isArray(actual.value)
        ? Object.values(actual.value)
        : actual.value
      t.same(value, doc.value, `${title}: \`${key}\` defaults to ${cell.split(' |')[0]}`)
      checked.push(key)
    }
    t.ok(checked.length >= 5, `${title}: ${checked.length} documented defaults checked (${checked.join(', ')})`)
  }
})

test('every error code the plugins export, and every warning code they log, has a row in "Error and warning codes"', async (t) => {
  const text = section('## Error and warning codes')
  t.ok(text.length > 0, 'the section exists')
  const documentedCodes = new Set([...text.matchAll(/^\| `(FLL_(?:ERR|WARN)_[A-Z_]+)` \|/gm)].map((m) => m[1]))
  // Each export of errors.ts is named after its code.
  const exported = Object.keys(errors)
  t.ok(exported.length >= 10, `${exported.length} exported error codes`)
  // Warnings (and an error answered without an Error object) are written with a literal code in the plugins' sources.
  const sources = readdirSync(new URL('../plugins/', import.meta.url), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => readFileSync(new URL(`../plugins/${f}`, import.meta.url), 'utf8'))
  const warned = new Set(sources.flatMap((src) => [...src.matchAll(/'(FLL_(?:WARN|ERR)_[A-Z_]+)'/g)].map((m) => m[1]!)))
  t.ok(warned.size >= 20, `${warned.size} codes written in the sources`)
  for (const code of [...exported, ...warned]) t.ok(documentedCodes.has(code), `${code} has a row`)
  for (const code of documentedCodes) t.ok(exported.includes(code!) || warned.has(code!), `${code} is still raised by the code`)
})

/**
 * anchors returns the ids GitHub gives the headings of a Markdown text: lower case, punctuation
 * dropped, spaces turned into hyphens, and -1, -2... for repeats. Headings in code blocks are not.
 */
function anchors (markdown: string): Set<string> {
  const seen = new Map<string, number>()
  const out = new Set<string>()
  let fenced = false
  for (const line of markdown.split('\n')) {
    if (/^\s*```/.test(line)) fenced = !fenced
    const heading = fenced ? null : /^#{1,6} (.+)$/.exec(line)
    if (heading === null) continue
    const base = heading[1]!.trim().toLowerCase().replace(/[^\p{L}\p{N}\s_-]/gu, '').replace(/\s/g, '-')
    const n = seen.get(base) ?? 0
    seen.set(base, n + 1)
    out.add(n === 0 ? base : `${base}-${n}`)
  }
  return out
}

test('every link of the README leads somewhere: its own headings, and files of the repository with theirs', async (t) => {
  const own = anchors(readme)
  const links = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]!).filter((l) => !/^https?:/.test(l))
  t.ok(links.length >= 20, `${links.length} links within the repository`)
  for (const link of links) {
    const [path, anchor] = link.split('#') as [string, string | undefined]
    if (path === '') {
      t.ok(own.has(anchor!), `#${anchor} is a heading of the README`)
      continue
    }
    const file = new URL(`../${path}`, import.meta.url)
    t.ok(existsSync(file), `${path} exists`)
    if (anchor !== undefined && existsSync(file)) t.ok(anchors(readFileSync(file, 'utf8')).has(anchor), `${link}: a heading of ${path}`)
  }
})
