/**
 * Live sync on the server: WebSocket connections to `/db/NAME`. Credentials, the rate limit
 * and the database name are checked at the HTTP upgrade; then every binary frame is a
 * payload, imported like a POST body and answered with what the client lacks, and every
 * successful import (over HTTP or WebSocket) is forwarded to the other live clients of the
 * database that lack it.
 */
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Logger } from 'pino'
import { type WebSocket, WebSocketServer } from 'ws'
import { ConvergeError, isConvergeError } from '../core/errors.js'
import { dominates, mergeVectors, type VersionVector } from '../core/version-vector.js'
import { nodeCodec } from '../platform/node-codec.js'
import { DecodedPayload } from '../wire/payload.js'
import type { Authenticator, Principal } from './auth.js'
import type { Metrics } from './metrics.js'
import type { RateLimiter } from './rate-limit.js'
import { DB_NAME_RE } from './sqlite-store.js'
import type { AppliedPayload, StoreDatabase, SyncStore } from './store.js'

/** What the hub shares with the HTTP server. */
export interface LiveHubOptions {
  store: SyncStore
  auth: Authenticator
  limiter: RateLimiter
  metrics: Metrics
  log: Logger
  /** Largest frame; a larger one closes the connection with 1009. */
  maxPayloadBytes: number
}

/** One live client. */
interface Client {
  readonly ws: WebSocket
  readonly db: string
  readonly principal: Principal
  /** What the client holds as far as the server knows: its announced vectors and what it was sent. */
  vector: VersionVector
  /** True once its first payload was handled (until then it is sent nothing unasked). */
  ready: boolean
  /** Frames and forwards of one client run one after another. */
  queue: Promise<void>
  /** A forward is queued and has not started: later imports ride on it. */
  forwardQueued: boolean
  site: string | undefined
}

const UPGRADE_STATUS: Record<string, string> = {
  NOT_FOUND: '404 Not Found',
  NO_SUCH_DATABASE: '404 Not Found',
  UNAUTHORIZED: '401 Unauthorized',
  RATE_LIMITED: '429 Too Many Requests',
}

/** Codes after which the connection stays open: the client may send a better payload. */
const RECOVERABLE = new Set(['BAD_PAYLOAD', 'SCHEMA_MISMATCH', 'CLOCK_DRIFT', 'CONSTRAINT', 'PAYLOAD_TOO_LARGE'])

export class LiveHub {
  readonly #o: LiveHubOptions
  readonly #wss: WebSocketServer
  readonly #clients = new Map<string, Set<Client>>()
  #closed = false

  constructor(options: LiveHubOptions) {
    this.#o = options
    this.#wss = new WebSocketServer({ noServer: true, maxPayload: options.maxPayloadBytes })
  }

  /** Live clients of each database that has any. */
  connectionsByDatabase(): Map<string, number> {
    const out = new Map<string, number>()
    for (const [db, set] of this.#clients) if (set.size > 0) out.set(db, set.size)
    return out
  }

  /** Live clients in all (for tests and metrics). */
  get connections(): number {
    let n = 0
    for (const set of this.#clients.values()) n += set.size
    return n
  }

  /** The `upgrade` handler of the HTTP server. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy())
    this.#accept(req, socket, head).catch((err) => {
      this.#o.log.error({ err }, 'websocket upgrade failed')
      socket.destroy()
    })
  }

  async #accept(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const { auth, limiter, metrics, log } = this.#o
    const url = new URL(req.url ?? '/', 'http://x')
    const name = /^\/db\/([^/]*)$/.exec(url.pathname)?.[1]
    const refuse = (code: string, message: string) => {
      metrics.error(code)
      metrics.request(
        name !== undefined && DB_NAME_RE.test(name) ? name : '(invalid)',
        Number.parseInt(UPGRADE_STATUS[code] ?? '400', 10),
      )
      log.debug({ code, path: url.pathname }, message)
      const body = JSON.stringify({ code, message })
      socket.once('finish', () => socket.destroy())
      socket.end(
        `HTTP/1.1 ${UPGRADE_STATUS[code] ?? '400 Bad Request'}\r\nContent-Type: application/json\r\n` +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      )
    }
    if (this.#closed) return void socket.destroy()
    if (name === undefined) return refuse('NOT_FOUND', `no such path ${url.pathname}`)
    if (!DB_NAME_RE.test(name) || !auth.knows(name)) return refuse('NO_SUCH_DATABASE', `no database named ${name}`)
    const query = url.searchParams.get('token')
    const authorization = req.headers.authorization ?? (query ? `Bearer ${query}` : undefined)
    let principal: Principal | undefined
    let authError: unknown
    try {
      principal = await auth.authenticate(name, authorization)
    } catch (err) {
      authError = err
    }
    const ip = req.socket.remoteAddress ?? 'unknown'
    if (!limiter.allow(principal?.key ? `key:${principal.key}` : `ip:${ip}`)) {
      return refuse('RATE_LIMITED', 'too many requests; retry later')
    }
    if (authError || !principal) {
      return refuse('UNAUTHORIZED', isConvergeError(authError) ? authError.message : 'credentials refused')
    }
    if (this.#closed) return void socket.destroy()
    const who = principal
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#connected(ws, name, who))
  }

  #connected(ws: WebSocket, db: string, principal: Principal): void {
    if (this.#closed) return void ws.terminate()
    const client: Client = {
      ws,
      db,
      principal,
      vector: {},
      ready: false,
      queue: Promise.resolve(),
      forwardQueued: false,
      site: undefined,
    }
    let set = this.#clients.get(db)
    if (!set) {
      set = new Set()
      this.#clients.set(db, set)
    }
    set.add(client)
    this.#o.metrics.request(db, 101)
    this.#o.log.info({ db, user: principal.user ?? undefined }, 'live client connected')
    ws.on('message', (data, isBinary) => {
      const bytes = isBinary ? toBytes(data) : undefined
      this.#enqueue(client, () => this.#frame(client, bytes))
    })
    ws.on('error', (err) => this.#o.log.debug({ db, err: err.message }, 'live client error'))
    // A live connection lives no longer than the token that opened it: when a JWT expires,
    // the client must reconnect with a fresh one (close code 1008, policy violation).
    const expiry =
      principal.expiresAt != null
        ? setTimeout(
            () => ws.close(1008, 'credentials expired'),
            Math.max(0, Math.min(principal.expiresAt - Date.now(), 2 ** 31 - 1)),
          )
        : undefined
    ws.on('close', (code) => {
      if (expiry) clearTimeout(expiry)
      set.delete(client)
      if (set.size === 0 && this.#clients.get(db) === set) this.#clients.delete(db)
      this.#o.log.info({ db, client: client.site, code }, 'live client disconnected')
    })
  }

  #enqueue(client: Client, job: () => Promise<void>): void {
    client.queue = client.queue.then(job).catch((err) => {
      this.#o.log.error({ err, db: client.db }, 'live sync failed')
      this.#o.metrics.error('INTERNAL')
      if (client.ws.readyState === client.ws.OPEN) {
        client.ws.send(JSON.stringify({ code: 'SERVER_ERROR', message: 'internal error (see the server log)' }))
        client.ws.close(1011, 'internal error')
      }
    })
  }

  /** Imports one frame (binary: a payload) and answers with what the client lacks. */
  async #frame(client: Client, payload: Uint8Array | undefined): Promise<void> {
    if (this.#closed || client.ws.readyState !== client.ws.OPEN) return
    const { store, metrics, log } = this.#o
    const started = performance.now()
    let db: StoreDatabase
    let applied: AppliedPayload
    try {
      if (!payload) throw new ConvergeError('BAD_PAYLOAD', 'send payloads as binary frames')
      metrics.bytesReceived += payload.length
      db = await store.open(client.db)
      applied = await db.apply(payload)
    } catch (err) {
      const code = isConvergeError(err) ? err.code : ''
      if (!RECOVERABLE.has(code)) throw err
      metrics.error(code)
      log.debug({ db: client.db, code }, (err as Error).message)
      client.ws.send(JSON.stringify({ code, message: (err as Error).message }))
      return
    }
    if (this.#closed) return
    metrics.applySeconds((performance.now() - started) / 1000)
    metrics.changesReceived += applied.rows
    client.site = applied.sender
    client.vector = mergeVectors(client.vector, applied.vector)
    const changesOut = this.#send(client, await db.exportFor(applied.vector), true)
    client.ready = true
    const ms = performance.now() - started
    metrics.activity({
      time: Date.now(),
      db: client.db,
      client: applied.sender,
      changesIn: applied.rows,
      changesOut,
      ms,
    })
    log.info(
      {
        db: client.db,
        client: applied.sender,
        user: client.principal.user ?? undefined,
        live: true,
        changesIn: applied.rows,
        applied: applied.applied,
        conflicts: applied.conflicts,
        changesOut,
        ms: Math.round(ms * 10) / 10,
      },
      'sync',
    )
    this.notify(client.db, applied, client)
  }

  /**
   * After a successful import into `db` (from a POST or a live client): sends every other
   * ready live client of `db` what it lacks, if anything; a client with a forward already
   * queued gets this import in that one.
   */
  notify(db: string, applied: AppliedPayload, except?: unknown): void {
    if (this.#closed) return
    for (const other of this.#clients.get(db) ?? []) {
      if (other === except || !other.ready || dominates(other.vector, applied.vector)) continue
      // One queued forward exports everything the client lacks when it runs, so imports
      // that arrive meanwhile are coalesced into it instead of costing an export each.
      if (other.forwardQueued) continue
      other.forwardQueued = true
      this.#enqueue(other, async () => {
        other.forwardQueued = false
        if (this.#closed || other.ws.readyState !== other.ws.OPEN) return
        const out = await (await this.#o.store.open(db)).exportFor(other.vector)
        if (out.rows > 0) this.#send(other, out, false)
      })
    }
  }

  /** Sends a payload (the answer to a frame even when empty); returns its row count. */
  #send(client: Client, out: { payload: Uint8Array; rows: number }, always: boolean): number {
    if (!always && out.rows === 0) return 0
    if (client.ws.readyState !== client.ws.OPEN) return 0
    const { header } = DecodedPayload.open(out.payload, Number.MAX_SAFE_INTEGER, nodeCodec)
    client.ws.send(out.payload)
    client.vector = mergeVectors(client.vector, header.vector)
    this.#o.metrics.changesSent += out.rows
    this.#o.metrics.bytesSent += out.payload.length
    return out.rows
  }

  /** Ends every live connection (close code 1001) and waits for the queued frames to finish. */
  async close(): Promise<void> {
    this.#closed = true
    const queues: Promise<void>[] = []
    for (const set of this.#clients.values()) {
      for (const c of set) {
        queues.push(c.queue)
        c.ws.close(1001, 'server shutting down')
        // Do not wait for a close handshake a vanished client will never answer.
        setTimeout(() => c.ws.terminate(), 1000).unref()
      }
    }
    this.#clients.clear()
    await Promise.all(queues)
    await new Promise<void>((done) => this.#wss.close(() => done()))
  }
}

function toBytes(data: Buffer | ArrayBuffer | Buffer[]): Uint8Array {
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data))
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
}
