/** The sync server: HTTP endpoints over a {@link SyncStore}. */
import { readFileSync } from 'node:fs'
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { resolve } from 'node:path'
import { type Logger, pino } from 'pino'
import { ConvergeError, isConvergeError } from '../core/errors.js'
import { SERVER_SITE_HEADER, SERVER_VERSION_HEADER } from '../sync/http-sync.js'
import { Authenticator } from './auth.js'
import {
  checkConfig,
  DEFAULT_MAX_PAYLOAD_BYTES,
  DEFAULT_REQUESTS_PER_MINUTE,
  hasCredentials,
  type ServerConfig,
} from './config.js'
import { Metrics } from './metrics.js'
import { RateLimiter } from './rate-limit.js'
import { DB_NAME_RE, SqliteStore } from './sqlite-store.js'
import { statusPage } from './status-page.js'
import type { SyncStore } from './store.js'
import { LiveHub } from './ws.js'

/** Options of {@link createServer}. */
export interface ServerOptions {
  /** Address to listen on (default 127.0.0.1). */
  host?: string
  /** Port (default 8787; 0 picks a free one). */
  port?: number
  /** Directory of the database files (default ./converge-data); ignored when `store` is given. */
  data?: string
  /** Databases, credentials and limits; see the README. */
  config?: ServerConfig
  /** A pino logger (default: pino at level info on stdout). */
  logger?: Logger
  /** Another storage backend (default: SQLite files under `data`). */
  store?: SyncStore
  /**
   * Shortest time between two fan-outs of a database's new changes to its live clients, in
   * milliseconds (default 25). Changes that arrive in between go out together: one export
   * shared by every client that is up to date, instead of one per client per import.
   */
  liveIntervalMs?: number
}

/** A running server. */
export interface ConvergeServer {
  /** `http://HOST:PORT` (the port actually bound). */
  readonly url: string
  /** Stops accepting requests, ends open connections and closes the databases. */
  close(): Promise<void>
}

/** HTTP status of each error code; anything else is 500 (and logged). */
const STATUS: Record<string, number> = {
  BAD_PAYLOAD: 400,
  BAD_ARGUMENT: 400,
  UNAUTHORIZED: 401,
  NO_SUCH_DATABASE: 404,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  SCHEMA_MISMATCH: 409,
  CLOCK_DRIFT: 409,
  CONSTRAINT: 409,
  PAYLOAD_TOO_LARGE: 413,
  RATE_LIMITED: 429,
}

/** An error answered to the client as `{ code, message }`. */
class HttpError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase()
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h) || h === '::ffff:127.0.0.1'
}

/** Starts a sync server; resolves once it listens. */
export async function createServer(options: ServerOptions = {}): Promise<ConvergeServer> {
  const host = options.host ?? '127.0.0.1'
  const port = options.port ?? 8787
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConvergeError('BAD_ARGUMENT', `bad port ${port}`, { port })
  }
  const interval = options.liveIntervalMs
  if (interval !== undefined && !(Number.isFinite(interval) && interval >= 0)) {
    throw new ConvergeError('BAD_ARGUMENT', `bad liveIntervalMs ${interval}`, { liveIntervalMs: interval })
  }
  const config = checkConfig(options.config)
  const log = options.logger ?? pino()
  const dbs = config.databases
  const open =
    dbs === undefined
      ? ['*']
      : Object.entries(dbs)
          .filter(([, d]) => !hasCredentials(d))
          .map(([n]) => n)
  if (open.length > 0) {
    if (!isLoopback(host)) {
      throw new ConvergeError(
        'BAD_ARGUMENT',
        `refusing to listen on ${host} without credentials: configure apiKeys or jwt for ${
          dbs === undefined ? 'each database (a "databases" section)' : open.join(', ')
        }, or listen on 127.0.0.1`,
        { host },
      )
    }
    log.warn(
      { host, databases: open },
      dbs === undefined
        ? 'no credentials configured: accepting any client on this loopback address'
        : 'databases without credentials accept any client on this loopback address',
    )
  }
  const auth = await Authenticator.create(config)
  const maxBytes = config.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES
  const limiter = new RateLimiter(config.rateLimit?.requestsPerMinute ?? DEFAULT_REQUESTS_PER_MINUTE)
  const store =
    options.store ?? new SqliteStore({ dir: resolve(options.data ?? 'converge-data'), maxPayloadBytes: maxBytes })
  const metrics = new Metrics()
  const version = packageVersion()
  const live = new LiveHub({
    store,
    auth,
    limiter,
    metrics,
    log,
    maxPayloadBytes: maxBytes,
    intervalMs: options.liveIntervalMs,
  })

  const sendJson = (res: ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body)
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
    res.end(text)
  }

  const handleSync = async (req: IncomingMessage, res: ServerResponse, name: string) => {
    const started = performance.now()
    if (!DB_NAME_RE.test(name) || !auth.knows(name))
      throw new HttpError('NO_SUCH_DATABASE', `no database named ${name}`)
    if (req.method !== 'POST') throw new HttpError('METHOD_NOT_ALLOWED', 'sync with POST')
    const ip = req.socket.remoteAddress ?? 'unknown'
    let principal: Awaited<ReturnType<Authenticator['authenticate']>> | undefined
    let authError: unknown
    try {
      principal = await auth.authenticate(name, req.headers.authorization)
    } catch (err) {
      authError = err
    }
    // Valid credentials are limited per credential, everything else per address, so
    // guessing tokens is limited too.
    if (!limiter.allow(principal?.key ? `key:${principal.key}` : `ip:${ip}`)) {
      res.setHeader('retry-after', '60')
      throw new HttpError('RATE_LIMITED', 'too many requests; retry later')
    }
    if (authError) throw authError
    const declared = req.headers['content-length']
    if (declared !== undefined && Number(declared) > maxBytes) {
      throw new HttpError('PAYLOAD_TOO_LARGE', `request body of ${declared} bytes exceeds the limit of ${maxBytes}`)
    }
    const body = await readBody(req, maxBytes)
    metrics.bytesReceived += body.length
    const db = await store.open(name)
    const t0 = performance.now()
    const applied = await db.apply(body)
    const answer = await db.exportFor(applied.vector)
    const serverVersion = await db.version()
    metrics.applySeconds((performance.now() - t0) / 1000)
    metrics.changesReceived += applied.rows
    metrics.changesSent += answer.rows
    metrics.bytesSent += answer.payload.length
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': answer.payload.length,
      [SERVER_SITE_HEADER]: db.siteId,
      [SERVER_VERSION_HEADER]: String(serverVersion),
    })
    res.end(answer.payload)
    live.notify(name, applied)
    const ms = performance.now() - started
    metrics.activity({
      time: Date.now(),
      db: name,
      client: applied.sender,
      changesIn: applied.rows,
      changesOut: answer.rows,
      ms,
    })
    log.info(
      {
        db: name,
        client: applied.sender,
        user: principal?.user ?? undefined,
        changesIn: applied.rows,
        applied: applied.applied,
        conflicts: applied.conflicts,
        changesOut: answer.rows,
        ms: Math.round(ms * 10) / 10,
      },
      'sync',
    )
  }

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname
    const dbMatch = /^\/db\/([^/]*)$/.exec(path)
    try {
      if (dbMatch) {
        try {
          await handleSync(req, res, dbMatch[1] as string)
          metrics.request(dbMatch[1] as string, 200)
        } catch (err) {
          const known = DB_NAME_RE.test(dbMatch[1] as string)
          metrics.request(known ? (dbMatch[1] as string) : '(invalid)', statusOf(err))
          throw err
        }
        return
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError('METHOD_NOT_ALLOWED', 'only GET here')
      if (path === '/health') return sendJson(res, 200, { status: 'ok' })
      if (path === '/metrics') {
        const text = metrics.render(live.connectionsByDatabase())
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' })
        return void res.end(text)
      }
      if (path === '/') {
        const names = await store.list()
        const listed = await Promise.all(
          names.map(async (n) => ({ name: n, tables: await (await store.open(n)).tables() })),
        )
        const html = statusPage(listed, metrics.recent, version, live.connectionsByDatabase())
        res.writeHead(200, {
          'content-type': 'text/html; charset=utf-8',
          'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'",
          'x-content-type-options': 'nosniff',
        })
        return void res.end(html)
      }
      throw new HttpError('NOT_FOUND', `no such path ${path}`)
    } catch (err) {
      const status = statusOf(err)
      const code = err instanceof HttpError || isConvergeError(err) ? err.code : 'INTERNAL'
      metrics.error(code)
      if (status >= 500) log.error({ err, path }, 'request failed')
      else log.debug({ code, path }, (err as Error).message)
      if (res.headersSent) return void res.destroy()
      const message = status >= 500 ? 'internal error (see the server log)' : (err as Error).message
      // A request refused before its body was read: close the connection instead of reading it.
      if (!req.complete) res.setHeader('connection', 'close')
      sendJson(res, status, { code, message })
    }
  }

  const server = createHttpServer((req, res) => {
    handle(req, res).catch((err) => {
      log.error({ err }, 'request handler failed')
      res.destroy()
    })
  })
  // Live sync: WebSocket upgrades of /db/NAME (src/server/ws.ts).
  server.on('upgrade', (req, socket, head) => live.upgrade(req, socket, head))
  await new Promise<void>((ok, fail) => {
    server.once('error', fail)
    server.listen(port, host, () => {
      server.off('error', fail)
      ok()
    })
  })
  const address = server.address() as AddressInfo
  const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address
  const url = `http://${shown}:${address.port}`
  log.info(
    { url, data: options.store ? undefined : resolve(options.data ?? 'converge-data') },
    'converge server listening',
  )
  let closed: Promise<void> | undefined
  return {
    url,
    close: () => {
      closed ??= Promise.all([
        new Promise<void>((ok) => {
          server.close(() => ok())
          server.closeAllConnections()
        }),
        live.close(),
      ]).then(() => store.close())
      return closed
    },
  }
}

function statusOf(err: unknown): number {
  const code = err instanceof HttpError || isConvergeError(err) ? err.code : ''
  return STATUS[code] ?? 500
}

/** Reads a request body, failing with `PAYLOAD_TOO_LARGE` as soon as it passes `max` bytes. */
function readBody(req: IncomingMessage, max: number): Promise<Uint8Array> {
  return new Promise((ok, fail) => {
    const parts: Buffer[] = []
    let size = 0
    let done = false
    const finish = (err: unknown, value?: Uint8Array) => {
      if (done) return
      done = true
      req.off('data', onData)
      if (err) {
        req.pause()
        fail(err)
      } else ok(value as Uint8Array)
    }
    const onData = (chunk: Buffer) => {
      size += chunk.length
      if (size > max) finish(new HttpError('PAYLOAD_TOO_LARGE', `request body exceeds the limit of ${max} bytes`))
      else parts.push(chunk)
    }
    req.on('data', onData)
    req.once('end', () => finish(null, new Uint8Array(Buffer.concat(parts, size))))
    req.once('error', (err) => finish(new HttpError('BAD_PAYLOAD', `request body: ${err.message}`)))
  })
}

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string })
      .version
  } catch {
    return 'unknown'
  }
}
