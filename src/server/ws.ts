/**
 * Live sync on the server: WebSocket connections to `/db/NAME`. Credentials, the rate limit
 * and the database name are checked at the HTTP upgrade; then every binary frame is a
 * payload, imported like a POST body. Answers and forwards are coalesced per database: after
 * imports (over HTTP or WebSocket) a flush runs, at most once per `intervalMs`, and sends every
 * live client that lacks something, and every client with a frame to answer, one payload.
 * Clients that hold what a recent flush sent share one payload per such flush, exported once
 * (the changes since it); the others get an export of their own. A client that speaks the
 * acknowledging subprotocol is sent one payload at a time (flow control): the next waits for
 * its `ack`, so a slow client gets fewer, larger payloads rather than a growing queue.
 */
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Logger } from 'pino'
import { type WebSocket, WebSocketServer } from 'ws'
import { ConvergeError, isConvergeError } from '../core/errors.js'
import { dominates, mergeInto, type VersionVector } from '../core/version-vector.js'
import { ACK_FRAME, ACK_PROTOCOL, FULL_VECTOR_EVERY } from '../sync/ws-session.js'
import type { Authenticator, Principal } from './auth.js'
import type { Metrics } from './metrics.js'
import type { RateLimiter } from './rate-limit.js'
import { DB_NAME_RE } from './sqlite-store.js'
import type { AppliedPayload, ExportedPayload, SyncStore } from './store.js'

/** What the hub shares with the HTTP server. */
export interface LiveHubOptions {
  store: SyncStore
  auth: Authenticator
  limiter: RateLimiter
  metrics: Metrics
  log: Logger
  /** Largest frame; a larger one closes the connection with 1009. */
  maxPayloadBytes: number
  /** Shortest time between two flushes of a database, in milliseconds (default 25). */
  intervalMs?: number
}

/** A frame imported and not answered yet. */
interface Pending {
  readonly applied: AppliedPayload
  /** performance.now() when the frame arrived. */
  readonly started: number
}

/** One live client. */
interface Client {
  readonly ws: WebSocket
  readonly room: Room
  readonly principal: Principal
  /** What the client holds as far as the server knows: its announced vectors and what it was sent. */
  readonly vector: VersionVector
  /** True once its first payload was imported (until then it is sent nothing unasked). */
  ready: boolean
  /** Frames of one client are imported one after another. */
  queue: Promise<void>
  /** Frames imported since the last flush: the next flush answers them. */
  readonly pending: Pending[]
  site: string | undefined
  /** It acknowledges every payload it imported ({@link ACK_PROTOCOL}). */
  readonly acks: boolean
  /** A payload was sent and not acknowledged yet: it is sent nothing more until then. */
  inFlight: boolean
  /** The last flush that brought it up to that flush's base (see {@link Room.bases}), or -1. */
  gen: number
  /** {@link Room.knownVersion} when its vector last covered `known`: until it moves, it lacks nothing. */
  covered: number
}

/** The live clients of one database, and its flush state. */
interface Room {
  readonly db: string
  readonly clients: Set<Client>
  /** Everything clients announced (live or over HTTP): a client that holds it lacks nothing. */
  readonly known: VersionVector
  /** Raised whenever `known` rises. */
  knownVersion: number
  /**
   * Per recent flush (by number, oldest first), a vector every client it brought up to date
   * holds: the pointwise minimum of what it sent them. Clients that hold one share one export
   * of the changes since it.
   */
  readonly bases: Map<number, VersionVector>
  /** Number of the last flush. */
  gen: number
  /** A flush is scheduled. */
  timer: { cancel(): void } | undefined
  /** The flush running, if any. */
  flushing: Promise<void> | undefined
  /** Something arrived during the running flush: flush again after it. */
  again: boolean
  /** performance.now() when the last flush started. */
  lastFlush: number
  /** How long the last flush took, in milliseconds. */
  flushMs: number
}

const UPGRADE_STATUS: Record<string, string> = {
  NOT_FOUND: '404 Not Found',
  NO_SUCH_DATABASE: '404 Not Found',
  UNAUTHORIZED: '401 Unauthorized',
  RATE_LIMITED: '429 Too Many Requests',
}

/** Codes after which the connection stays open: the client may send a better payload. */
const RECOVERABLE = new Set(['BAD_PAYLOAD', 'SCHEMA_MISMATCH', 'CLOCK_DRIFT', 'CONSTRAINT', 'PAYLOAD_TOO_LARGE'])

const DEFAULT_INTERVAL_MS = 25
/** Flush bases kept per database: a client more flushes behind gets an export of its own. */
const KEPT_BASES = 16

export class LiveHub {
  readonly #o: LiveHubOptions
  readonly #wss: WebSocketServer
  readonly #rooms = new Map<string, Room>()
  readonly #intervalMs: number
  #closed = false

  constructor(options: LiveHubOptions) {
    this.#o = options
    this.#intervalMs = options.intervalMs ?? DEFAULT_INTERVAL_MS
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: options.maxPayloadBytes,
      handleProtocols: (offered) => (offered.has(ACK_PROTOCOL) ? ACK_PROTOCOL : false),
    })
  }

  /** Live clients of each database that has any. */
  connectionsByDatabase(): Map<string, number> {
    const out = new Map<string, number>()
    for (const [db, room] of this.#rooms) if (room.clients.size > 0) out.set(db, room.clients.size)
    return out
  }

  /** Live clients in all (for tests and metrics). */
  get connections(): number {
    let n = 0
    for (const room of this.#rooms.values()) n += room.clients.size
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
    let room = this.#rooms.get(db)
    if (!room) {
      room = {
        db,
        clients: new Set(),
        known: {},
        knownVersion: 0,
        bases: new Map(),
        gen: 0,
        timer: undefined,
        flushing: undefined,
        again: false,
        lastFlush: Number.NEGATIVE_INFINITY,
        flushMs: 0,
      }
      this.#rooms.set(db, room)
    }
    const client: Client = {
      ws,
      room,
      principal,
      vector: {},
      ready: false,
      queue: Promise.resolve(),
      pending: [],
      site: undefined,
      acks: ws.protocol === ACK_PROTOCOL,
      inFlight: false,
      gen: -1,
      covered: -1,
    }
    room.clients.add(client)
    this.#o.metrics.request(db, 101)
    this.#o.log.info({ db, user: principal.user ?? undefined }, 'live client connected')
    ws.on('message', (data, isBinary) => {
      if (!isBinary && client.acks && isAck(data)) return this.#acked(client)
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
    const joined = room
    ws.on('close', (code) => {
      if (expiry) clearTimeout(expiry)
      joined.clients.delete(client)
      if (joined.clients.size === 0 && this.#rooms.get(db) === joined) {
        joined.timer?.cancel()
        joined.timer = undefined
        this.#rooms.delete(db)
      }
      this.#o.log.info({ db, client: client.site, code }, 'live client disconnected')
    })
  }

  /** The client imported the payload in flight: it may be sent the next one. */
  #acked(client: Client): void {
    if (!client.inFlight) return
    client.inFlight = false
    const room = client.room
    if (client.pending.length > 0 || (client.ready && lacks(client))) this.#schedule(room)
  }

  #enqueue(client: Client, job: () => Promise<void>): void {
    client.queue = client.queue.then(job).catch((err) => this.#failed(client, err))
  }

  #failed(client: Client, err: unknown): void {
    this.#o.log.error({ err, db: client.room.db }, 'live sync failed')
    this.#o.metrics.error('INTERNAL')
    if (client.ws.readyState === client.ws.OPEN) {
      client.ws.send(JSON.stringify({ code: 'SERVER_ERROR', message: 'internal error (see the server log)' }))
      client.ws.close(1011, 'internal error')
    }
  }

  /** Imports one frame (binary: a payload); the next flush answers it. */
  async #frame(client: Client, payload: Uint8Array | undefined): Promise<void> {
    if (this.#closed || client.ws.readyState !== client.ws.OPEN) return
    const { store, metrics, log } = this.#o
    const room = client.room
    const started = performance.now()
    let applied: AppliedPayload
    try {
      if (!payload) throw new ConvergeError('BAD_PAYLOAD', 'send payloads as binary frames')
      metrics.bytesReceived += payload.length
      const db = await store.open(room.db)
      applied = await db.apply(payload)
    } catch (err) {
      const code = isConvergeError(err) ? err.code : ''
      if (!RECOVERABLE.has(code)) throw err
      metrics.error(code)
      log.debug({ db: room.db, code }, (err as Error).message)
      client.ws.send(JSON.stringify({ code, message: (err as Error).message }))
      return
    }
    if (this.#closed) return
    metrics.applySeconds((performance.now() - started) / 1000)
    metrics.changesReceived += applied.rows
    client.site = applied.sender
    mergeInto(client.vector, applied.vector)
    if (mergeInto(room.known, applied.vector)) room.knownVersion++
    client.pending.push({ applied, started })
    client.ready = true
    this.#schedule(room)
  }

  /**
   * After a successful import into `db` over HTTP: the next flush sends every ready live
   * client of `db` what it lacks.
   */
  notify(db: string, applied: AppliedPayload): void {
    const room = this.#rooms.get(db)
    if (this.#closed || !room) return
    if (mergeInto(room.known, applied.vector)) room.knownVersion++
    this.#schedule(room)
  }

  /**
   * Schedules a flush of `room`: right after the current I/O, or `intervalMs` after the last
   * one started, and never sooner than the last one took again (so flushes of a database
   * take at most half of the server's time, and imports get the rest).
   */
  #schedule(room: Room): void {
    if (this.#closed) return
    if (room.flushing) {
      room.again = true
      return
    }
    if (room.timer) return
    const run = () => {
      room.timer = undefined
      room.flushing = this.#flush(room)
        .catch((err) => {
          this.#o.log.error({ err, db: room.db }, 'live flush failed')
          this.#o.metrics.error('INTERNAL')
        })
        .finally(() => {
          room.flushing = undefined
          if (room.again) {
            room.again = false
            this.#schedule(room)
          }
        })
    }
    const wait = room.lastFlush + Math.max(this.#intervalMs, 2 * room.flushMs) - performance.now()
    if (wait > 0) {
      const t = setTimeout(run, wait)
      room.timer = { cancel: () => clearTimeout(t) }
    } else {
      // Frames read in the same turn of the event loop go out together.
      const t = setImmediate(run)
      room.timer = { cancel: () => clearImmediate(t) }
    }
  }

  /**
   * Sends every client with frames to answer, and every ready client that lacks something,
   * one payload: the shared export of the changes since `room.base` when it holds that
   * base, or one of its own otherwise.
   */
  async #flush(room: Room): Promise<void> {
    room.lastFlush = performance.now()
    const { store, metrics, log } = this.#o
    const db = await store.open(room.db)
    const gen = ++room.gen
    /** Exports of the changes since a recent flush's base, by flush number. */
    const shared = new Map<number, ExportedPayload>()
    /** The pointwise minimum of what this flush brought clients up to: its base. */
    let base: VersionVector | undefined
    /** Exports made and payloads sent by this flush. */
    let exports = 0
    let sends = 0
    for (const c of [...room.clients]) {
      if (this.#closed) return
      if (c.ws.readyState !== c.ws.OPEN || c.inFlight) continue
      const answering = c.pending.length > 0
      if (!answering && (!c.ready || !lacks(c))) continue
      const from = baseHeld(room, c)
      let out: ExportedPayload | undefined = from === undefined ? undefined : shared.get(from)
      if (!out) {
        const since = from === undefined ? c.vector : (room.bases.get(from) as VersionVector)
        // Payloads for a base the client holds announce only the vector entries that moved
        // (a one-row payload among 500 sites is a few hundred bytes, not 25 kB); a client's
        // first answer and every FULL_VECTOR_EVERY-th flush announce the whole vector.
        out = await db.exportFor(since, { changedOnly: c.gen >= 0 && gen % FULL_VECTOR_EVERY !== 0 })
        exports++
        if (from !== undefined) shared.set(from, out)
      }
      if (c.ws.readyState !== c.ws.OPEN) continue
      // It held what the export answered; after it, that and what the export announces.
      mergeInto(c.vector, out.vector)
      c.gen = gen
      base = base === undefined ? { ...c.vector } : meetInto(base, c.vector)
      // Nothing it lacks: it holds what the export announces, as if it had imported it.
      if (!answering && out.rows === 0) continue
      const pending = c.pending.splice(0)
      c.ws.send(out.payload)
      c.inFlight = c.acks
      sends++
      metrics.changesSent += out.rows
      metrics.bytesSent += out.payload.length
      pending.forEach(({ applied, started }, i) => {
        const changesOut = i === 0 ? out.rows : 0
        const ms = performance.now() - started
        metrics.activity({
          time: Date.now(),
          db: room.db,
          client: applied.sender,
          changesIn: applied.rows,
          changesOut,
          ms,
        })
        log.info(
          {
            db: room.db,
            client: applied.sender,
            user: c.principal.user ?? undefined,
            live: true,
            changesIn: applied.rows,
            applied: applied.applied,
            conflicts: applied.conflicts,
            changesOut,
            ms: Math.round(ms * 10) / 10,
          },
          'sync',
        )
      })
    }
    if (base !== undefined) {
      room.bases.set(gen, base)
      for (const old of room.bases.keys()) {
        if (room.bases.size <= KEPT_BASES) break
        room.bases.delete(old)
      }
    }
    room.flushMs = performance.now() - room.lastFlush
    log.debug({ db: room.db, exports, sends, ms: Math.round(room.flushMs * 10) / 10 }, 'live flush')
  }

  /** Ends every live connection (close code 1001) and waits for the queued frames to finish. */
  async close(): Promise<void> {
    this.#closed = true
    const waits: Promise<void>[] = []
    for (const room of this.#rooms.values()) {
      room.timer?.cancel()
      room.timer = undefined
      if (room.flushing) waits.push(room.flushing)
      for (const c of room.clients) {
        waits.push(c.queue)
        c.ws.close(1001, 'server shutting down')
        // Do not wait for a close handshake a vanished client will never answer.
        setTimeout(() => c.ws.terminate(), 1000).unref()
      }
    }
    this.#rooms.clear()
    await Promise.all(waits)
    await new Promise<void>((done) => this.#wss.close(() => done()))
  }
}

/**
 * The newest recent flush whose base `c` holds: the last flush that brought it up to date,
 * or a later one whose base it holds anyway (it was up to date and skipped, or announced
 * more). Undefined: none is kept, it needs an export of its own.
 */
function baseHeld(room: Room, c: Client): number | undefined {
  let found: number | undefined
  for (const [gen, base] of room.bases) {
    if (gen === c.gen || (gen > c.gen && dominates(c.vector, base))) found = gen
  }
  return found
}

/** Whether `c` lacks something its room's clients announced (remembered until that moves). */
function lacks(c: Client): boolean {
  const room = c.room
  if (c.covered === room.knownVersion) return false
  if (!dominates(c.vector, room.known)) return true
  c.covered = room.knownVersion
  return false
}

function isAck(data: Buffer | ArrayBuffer | Buffer[]): boolean {
  return Buffer.isBuffer(data) && data.length === ACK_FRAME.length && data.toString('latin1') === ACK_FRAME
}

/** Lowers `into` to the pointwise minimum of both (a site missing from either is dropped). */
function meetInto(into: VersionVector, other: VersionVector): VersionVector {
  for (const site in into) {
    const hlc = other[site]
    if (hlc === undefined) delete into[site]
    else if (hlc < (into[site] as number)) into[site] = hlc
  }
  return into
}

function toBytes(data: Buffer | ArrayBuffer | Buffer[]): Uint8Array {
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data))
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
}
