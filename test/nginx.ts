/**
 * A real nginx in front of a test app: its own config in a temp dir (no system config, no
 * daemon, logs and pid in the temp dir), listening on 127.0.0.1 on a free port, proxying to
 * `upstream app { server 127.0.0.1:<upstreamPort>; keepalive 16; }` with keep-alive to the app,
 * as the README's "Behind nginx" recipe does, or through the `upstream` and `server` blocks a
 * test gives (`servers`: the README's snippet). Stopped and removed when the test ends.
 *
 * Without nginx the tests that need it are skipped (`nginxSkip`), unless CI is set or
 * FLL_REQUIRE_NGINX=1, where they fail: CI installs Debian's nginx (.ci/run).
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import type { Test } from 'tap'
import { withDeadline } from './helpers.js'

/** The nginx binary: NGINX_PATH, else the PATH, else where distributions put it (/usr/sbin may not be in PATH). */
export function nginxPath (): string | null {
  const candidates = [
    process.env.NGINX_PATH,
    ...(process.env.PATH ?? '').split(delimiter).filter((dir) => dir !== '').map((dir) => join(dir, 'nginx')),
    '/usr/sbin/nginx',
    '/usr/local/sbin/nginx',
    '/usr/local/nginx/sbin/nginx'
  ]
  for (const path of candidates) {
    if (path === undefined || path === '') continue
    try {
      accessSync(path, constants.X_OK)
      return path
    } catch {}
  }
  return null
}

const required = process.env.CI !== undefined || process.env.FLL_REQUIRE_NGINX === '1'

/**
 * nginxSkip is the `skip` option of a test that needs nginx: a message when nginx is missing
 * and not required, else false (a required but missing nginx makes startNginx throw).
 */
export const nginxSkip: string | false = nginxPath() === null && !required
  ? 'nginx is not installed: apt-get install nginx to run this test (CI or FLL_REQUIRE_NGINX=1 make it a failure)'
  : false

export interface NginxOptions {
  /** The port of the app on 127.0.0.1. */
  upstreamPort: number
  /** Directives added to the `http` block. */
  extraHttpConfig?: string
  /** Directives added to `location /` (after the defaults, which they may not repeat). */
  locationConfig?: string
  /**
   * servers replaces the default `upstream app` and `server` blocks (and so `locationConfig`):
   * it gets the address nginx must listen on and the app's, both `127.0.0.1:<port>`, and
   * returns the blocks to put in `http` (the README's snippet, with its addresses replaced).
   */
  servers?: (addresses: { listen: string, upstream: string }) => string
}

export interface Nginx {
  /** The port nginx listens on, on 127.0.0.1. */
  port: number
  /** errorLog reads nginx's error log so far (for a failing assertion's message). */
  errorLog: () => string
  /** stop ends nginx (SIGTERM, then SIGKILL after 5 s) and waits for its exit. Also run at teardown. */
  stop: () => Promise<void>
}

/** freePort finds a port nobody listens on, by binding port 0 and letting it go. */
async function freePort (): Promise<number> {
  const server = net.createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as net.AddressInfo
  server.close()
  await once(server, 'close')
  return port
}

/** defaultServers: `upstream app` with keep-alive to the app, and a server that proxies everything to it. */
function defaultServers (port: number, opts: NginxOptions): string {
  return `upstream app {
    server 127.0.0.1:${opts.upstreamPort};
    keepalive 16;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_connect_timeout 2s;
      proxy_send_timeout 10s;
      proxy_read_timeout 10s;
      ${opts.locationConfig ?? ''}
    }
  }`
}

function config (dir: string, port: number, opts: NginxOptions): string {
  return `# fastify-long-lived test nginx
daemon off;
# One process: the child we spawn is nginx itself, and a signal to it stops everything.
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections 512; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  ${opts.servers?.({ listen: `127.0.0.1:${port}`, upstream: `127.0.0.1:${opts.upstreamPort}` }) ?? defaultServers(port, opts)}
  ${opts.extraHttpConfig ?? ''}
}
`
}

/** acceptsConnections resolves once something accepts a TCP connection on the port, or rejects after `ms`. */
async function acceptsConnections (port: number, exited: Promise<unknown>, ms: number): Promise<void> {
  const start = Date.now()
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect({ port, host: '127.0.0.1' })
      socket.once('connect', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => { socket.destroy(); resolve(false) })
    })
    if (ok) return
    if (Date.now() - start > ms) throw new Error(`nginx did not accept connections on port ${port} within ${ms} ms`)
    // Refused: nginx has not bound its port yet. Try again shortly, unless it has exited.
    const retry = new Promise((resolve) => { setTimeout(resolve, 10, 'retry') })
    if (await Promise.race([exited.then(() => 'exited'), retry]) === 'exited') throw new Error('nginx exited before accepting connections')
  }
}

/**
 * startNginx runs nginx in front of 127.0.0.1:`upstreamPort` until the end of the test `t` (or
 * stop()), and resolves once it accepts connections (within 5 s).
 */
export async function startNginx (t: Test, opts: NginxOptions): Promise<Nginx> {
  const bin = nginxPath()
  if (bin === null) throw new Error('nginx is not installed (CI or FLL_REQUIRE_NGINX=1: it is required): apt-get install nginx')
  const dir = mkdtempSync(join(tmpdir(), 'fll-nginx-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const errorLog = (): string => { try { return readFileSync(join(dir, 'error.log'), 'utf8') } catch { return '' } }

  // The free port may be taken between our probe and nginx's bind: then try another.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort()
    writeFileSync(join(dir, 'nginx.conf'), config(dir, port, opts))
    // -e: the error log before the config is read (otherwise the system's /var/log/nginx).
    const child = spawn(bin, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')], {
      stdio: ['ignore', 'ignore', 'pipe']
    })
    let stderr = ''
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', (chunk: string) => { stderr += chunk })
    const exited = once(child, 'exit').catch(() => {})
    child.once('error', () => {}) // a spawn failure shows as an exit (code null) and in the message below
    let stopped: Promise<void> | null = null
    const stop = (): Promise<void> => {
      stopped ??= (async () => {
        if (child.exitCode !== null || child.signalCode !== null) return
        // SIGTERM: a fast shutdown (SIGQUIT would wait for open streams to end).
        child.kill('SIGTERM')
        try {
          await withDeadline(exited, 5000, 'nginx to exit after SIGTERM')
        } catch {
          child.kill('SIGKILL')
          await exited
        }
      })()
      return stopped
    }
    t.teardown(stop)
    try {
      await acceptsConnections(port, exited, 5000)
      return { port, errorLog, stop }
    } catch (err) {
      await stop()
      const log = errorLog() + stderr
      if (attempt < 3 && /Address already in use/.test(log)) continue
      throw new Error(`${(err as Error).message}\n${log}`)
    }
  }
}
