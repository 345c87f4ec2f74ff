/**
 * Live sync over a WebSocket, behind `Replica.connect`. Binary frames carry payloads both
 * ways: the session first sends what the server lacks (judged by the vector the server last
 * announced, as the HTTP client does), then every local commit it sees, while the server
 * answers and forwards the changes of other clients. The WebSocket constructor is injected
 * (the `ws` package in Node, the global `WebSocket` elsewhere), so nothing here needs Node.
 */
import { ConvergeError } from '../core/errors.js'
import { dominates, mergeInto, type VersionVector } from '../core/version-vector.js'
import type {
  LiveChange,
  LiveEvents,
  LiveHost,
  LiveOptions,
  LiveSession,
  LiveStatus,
  LiveTransport,
} from '../replica/replica.js'
import { syncUrl } from './http-sync.js'

/** The part of the standard WebSocket API a session uses (browsers, Deno, Node's global, `ws`). */
export interface WebSocketLike {
  binaryType: string
  readonly readyState: number
  /** The subprotocol the server chose ('' or undefined: none). */
  readonly protocol?: string
  onopen: ((event: unknown) => void) | null
  onmessage: ((event: { data: unknown }) => void) | null
  onerror: ((event: { message?: unknown; error?: unknown }) => void) | null
  onclose: ((event: { code: number; reason: string }) => void) | null
  send(data: Uint8Array | string): void
  close(code?: number, reason?: string): void
}

/**
 * Opens a WebSocket to `url` (`ws(s)://HOST:PORT/db/NAME`), presenting `token` when given
 * and offering `protocols` as subprotocols. A factory that ignores `protocols` still works:
 * the session then runs without flow control (see {@link ACK_PROTOCOL}).
 */
export type WebSocketFactory = (url: string, token: string | undefined, protocols?: readonly string[]) => WebSocketLike

/**
 * The WebSocket subprotocol of sessions that acknowledge every payload they imported (a
 * text frame `ack`). A server that chooses it sends such a session one payload at a time:
 * the next one waits for the acknowledgement, so a slow client gets fewer, larger payloads
 * instead of a growing queue.
 */
export const ACK_PROTOCOL = 'converge.ack.v1'
/** The acknowledgement frame. */
export const ACK_FRAME = 'ack'

/**
 * Live payloads announce only the vector entries that moved above what the receiver holds;
 * every this many (the session's frames, the server's flushes) they announce the whole
 * vector, so what each side records of the other (resume point, compaction floor) catches up.
 */
export const FULL_VECTOR_EVERY = 64

const OPEN = 1
const CLOSED = 3
/** Close codes the server uses: credentials refused, frame over the size limit. */
const CLOSE_POLICY = 1008
const CLOSE_TOO_BIG = 1009
/** HTTP statuses a refused upgrade answers, as error codes. */
const UPGRADE_CODES: Record<string, string> = {
  '400': 'BAD_ARGUMENT',
  '401': 'UNAUTHORIZED',
  '404': 'NO_SUCH_DATABASE',
  '413': 'PAYLOAD_TOO_LARGE',
  '429': 'RATE_LIMITED',
}

/**
 * A factory for environments with a global `WebSocket` (browsers): they cannot set
 * headers, so the token travels as the `token` query parameter, which the server accepts.
 */
export const browserWebSocket: WebSocketFactory = (url, token, protocols) => {
  const Ctor = (globalThis as { WebSocket?: new (url: string, protocols?: string[]) => WebSocketLike }).WebSocket
  if (!Ctor) throw new ConvergeError('BAD_ARGUMENT', 'no global WebSocket here; pass a WebSocketFactory')
  const u = new URL(url)
  if (token !== undefined) u.searchParams.set('token', token)
  return new Ctor(u.href, protocols ? [...protocols] : undefined)
}

/** The `ReplicaOptions.live` transport over WebSockets made by `factory`. */
export function liveTransport(factory: WebSocketFactory): LiveTransport {
  return (host, url, options) => new WsSession(host, url, options, factory)
}

type Listener<T> = (value: T) => void

/** A tiny typed event emitter; a throwing listener neither stops the others nor the session. */
class Emitter<E> {
  readonly #listeners = new Map<keyof E, Set<Listener<never>>>()

  on<K extends keyof E>(event: K, listener: Listener<E[K]>): () => void {
    let set = this.#listeners.get(event)
    if (!set) {
      set = new Set()
      this.#listeners.set(event, set)
    }
    const entry = listener as Listener<never>
    set.add(entry)
    return () => void set.delete(entry)
  }

  emit<K extends keyof E>(event: K, value: E[K]): void {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        ;(listener as Listener<E[K]>)(value)
      } catch (err) {
        // Reported like any uncaught error, outside the session's own code path.
        queueMicrotask(() => {
          throw err
        })
      }
    }
  }
}

class WsSession implements LiveSession {
  readonly #host: LiveHost
  readonly #factory: WebSocketFactory
  readonly #wsUrl: string
  /** The key under which the HTTP client remembers this server's site id: both share it. */
  readonly #serverKey: string
  readonly #token: string | undefined
  readonly #minBackoff: number
  readonly #maxBackoff: number
  readonly #pollMs: number
  readonly #events = new Emitter<LiveEvents>()
  #status: LiveStatus = { state: 'connecting' }
  #socket: WebSocketLike | undefined
  #attempt = 0
  #retry: ReturnType<typeof setTimeout> | undefined
  #poll: ReturnType<typeof setInterval> | undefined
  /** The host's local write count at the last push. */
  #pushedWrites = -1
  /** Frames pushed on this connection (see FULL_VECTOR_EVERY). */
  #pushes = 0
  /** What the server holds as far as this connection knows: its announced vectors and what we sent. */
  #serverHas: VersionVector = {}
  #dataVersion = -1
  /** The server chose {@link ACK_PROTOCOL}: every imported payload is acknowledged. */
  #acks = false
  /** The server's site id as remembered in the replica, read once per connection. */
  #serverSite: string | undefined
  #closing: Promise<void> | undefined

  constructor(host: LiveHost, url: string, options: LiveOptions, factory: WebSocketFactory) {
    const target = syncUrl(url)
    this.#host = host
    this.#factory = factory
    this.#wsUrl = target.href.replace(/^http/, 'ws')
    this.#serverKey = `server:${target.href}`
    this.#token = options.token
    this.#minBackoff = positive(options.minBackoffMs, 250, 'minBackoffMs')
    this.#maxBackoff = Math.max(this.#minBackoff, positive(options.maxBackoffMs, 30_000, 'maxBackoffMs'))
    this.#pollMs = positive(options.pollMs, 20, 'pollMs')
    // Let the caller subscribe before the first status event.
    this.#retry = setTimeout(() => this.#connect(), 0)
  }

  get status(): LiveStatus {
    return this.#status
  }

  on<K extends keyof LiveEvents>(event: K, listener: (value: LiveEvents[K]) => void): () => void {
    return this.#events.on(event, listener)
  }

  close(): Promise<void> {
    if (this.#closing) return this.#closing
    // Send what was committed until now before leaving.
    if (this.#socket?.readyState === OPEN) this.#tick()
    this.#stopTimers()
    const socket = this.#socket
    this.#socket = undefined
    this.#closing = new Promise<void>((done) => {
      if (!socket || socket.readyState === CLOSED) return done()
      const timer = setTimeout(done, 2000)
      socket.onmessage = null
      socket.onerror = () => {}
      socket.onclose = () => {
        clearTimeout(timer)
        done()
      }
      socket.close(1000, 'session closed')
    }).then(() => {
      if (this.#status.state !== 'offline' || this.#status.error) this.#setStatus({ state: 'offline' })
    })
    return this.#closing
  }

  #connect(): void {
    this.#retry = undefined
    if (this.#closing) return
    this.#setStatus({ state: 'connecting' })
    let socket: WebSocketLike
    try {
      socket = this.#factory(this.#wsUrl, this.#token, [ACK_PROTOCOL])
      socket.binaryType = 'arraybuffer'
    } catch (err) {
      this.#dropped(errorInfo(err, 'NETWORK'))
      return
    }
    this.#socket = socket
    let failure: LiveStatus['error']
    socket.onopen = () => {
      if (socket === this.#socket) this.#opened()
    }
    socket.onmessage = (event) => {
      if (socket === this.#socket) this.#message(event.data)
    }
    socket.onerror = (event) => {
      failure ??= socketError(event)
    }
    socket.onclose = (event) => {
      if (socket !== this.#socket) return
      this.#socket = undefined
      this.#dropped(
        closeError(event.code, event.reason) ??
          failure ?? { code: 'NETWORK', message: `connection closed (${event.code})` },
      )
    }
  }

  #opened(): void {
    this.#acks = this.#socket?.protocol === ACK_PROTOCOL
    this.#setStatus({ state: 'online' })
    // Resume from the last position the server acknowledged: whatever it announced last.
    this.#serverSite = this.#host.recall(this.#serverKey)
    this.#serverHas = this.#serverVector()
    this.#dataVersion = -1
    this.#pushes = 0
    try {
      this.#push(true)
    } catch (err) {
      this.#localError(err)
    }
    this.#poll = setInterval(() => this.#tick(), this.#pollMs)
  }

  /** Looks for commits cheaply; pushes only when the server lacks something. */
  #tick(): void {
    try {
      // Never export writes of an open transaction: the app may still roll it back.
      if (this.#host.inTransaction()) return
      const version = this.#host.dataVersion()
      if (version === this.#dataVersion && !this.#host.hasPendingChanges()) return
      this.#dataVersion = version
      this.#push(false)
    } catch (err) {
      this.#localError(err)
    }
  }

  #push(always: boolean): void {
    const socket = this.#socket
    if (!socket || socket.readyState !== OPEN) return
    if (!always && dominates(this.#serverHas, this.#host.versionVector())) return
    // The server holds #serverHas: past the first frame, announcing what moved above it is
    // enough, and every FULL_VECTOR_EVERY frames the whole vector keeps what the server
    // records of this replica (its compaction floor) up to date.
    const whole = this.#pushes++ % FULL_VECTOR_EVERY === 0
    const exported = whole ? this.#host.exportChanges(this.#serverHas) : this.#host.exportChangedOnly(this.#serverHas)
    const header = this.#host.payloadHeader(exported)
    // A plain copy: exports live in a resizable ArrayBuffer, which some sockets refuse.
    const payload = new Uint8Array(exported)
    this.#pushedWrites = this.#host.localWrites()
    socket.send(payload)
    mergeInto(this.#serverHas, header.vector)
  }

  #message(data: unknown): void {
    if (typeof data === 'string') {
      this.#setStatus({ state: 'online', error: serverError(data) })
      return
    }
    const bytes =
      data instanceof ArrayBuffer
        ? new Uint8Array(data)
        : ArrayBuffer.isView(data)
          ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
          : undefined
    if (!bytes) return
    let change: LiveChange | undefined
    try {
      change = this.#import(bytes)
    } catch (err) {
      this.#localError(err)
    }
    // Imported or refused, the payload is done with: the server may send the next one.
    if (this.#acks && this.#socket?.readyState === OPEN) this.#socket.send(ACK_FRAME)
    if (change) this.#events.emit('change', change)
  }

  /** Imports a payload from the server; returns the change event it makes, if any. */
  #import(bytes: Uint8Array): LiveChange | undefined {
    const result = this.#host.importChanges(bytes)
    const header = this.#host.payloadHeader(bytes)
    if (this.#serverSite !== header.sender) {
      this.#host.remember(this.#serverKey, header.sender)
      this.#serverSite = header.sender
    }
    // Payloads arrive one after another: raise the vector in place instead of copying it.
    mergeInto(this.#serverHas, header.vector)
    // The import folded any local writes not pushed yet; the poll would no longer see them
    // in the change log, so push them now.
    if (this.#host.localWrites() !== this.#pushedWrites) this.#push(false)
    // The server answered: this connection works, so the next failure starts a fresh backoff.
    this.#attempt = 0
    if (result.applied === 0 && result.conflicts === 0) return undefined
    return { tables: Object.keys(header.rows), rows: header.rows, applied: result.applied, conflicts: result.conflicts }
  }

  #localError(err: unknown): void {
    if (err instanceof ConvergeError && err.code === 'CLOSED') {
      // The replica was closed under the session: nothing left to sync.
      void this.close()
      return
    }
    this.#setStatus({ state: this.#status.state, error: errorInfo(err, 'SERVER_ERROR') })
  }

  #dropped(error: NonNullable<LiveStatus['error']>): void {
    this.#stopTimers()
    if (this.#closing) return
    this.#setStatus({ state: 'offline', error })
    const base = Math.min(this.#maxBackoff, this.#minBackoff * 2 ** this.#attempt)
    this.#attempt = Math.min(this.#attempt + 1, 30)
    this.#retry = setTimeout(() => this.#connect(), base * (0.5 + Math.random()))
  }

  #serverVector(): VersionVector {
    const site = this.#serverSite
    return { ...((site && this.#host.peers().find((p) => p.siteId === site)?.vector) || {}) }
  }

  #stopTimers(): void {
    if (this.#poll !== undefined) clearInterval(this.#poll)
    if (this.#retry !== undefined) clearTimeout(this.#retry)
    this.#poll = undefined
    this.#retry = undefined
  }

  #setStatus(status: LiveStatus): void {
    this.#status = status
    this.#events.emit('status', status)
  }
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback
  if (!Number.isFinite(value) || value <= 0) {
    throw new ConvergeError('BAD_ARGUMENT', `${name} must be a positive number`, { [name]: value })
  }
  return value
}

function errorInfo(err: unknown, fallback: string): { code: string; message: string } {
  if (err instanceof ConvergeError) return { code: err.code, message: err.message }
  return { code: fallback, message: err instanceof Error ? err.message : String(err) }
}

/** A refused upgrade shows as "Unexpected server response: 401" (Node's `ws`); browsers say less. */
function socketError(event: { message?: unknown; error?: unknown }): { code: string; message: string } {
  const message =
    typeof event.message === 'string' && event.message
      ? event.message
      : event.error instanceof Error
        ? event.error.message
        : 'WebSocket error'
  const status = /Unexpected server response: (\d{3})/.exec(message)?.[1]
  if (status) return { code: UPGRADE_CODES[status] ?? 'SERVER_ERROR', message: `server refused: HTTP ${status}` }
  return { code: 'NETWORK', message }
}

function closeError(code: number, reason: string): { code: string; message: string } | undefined {
  if (code === CLOSE_POLICY) return { code: 'UNAUTHORIZED', message: reason || 'credentials refused' }
  if (code === CLOSE_TOO_BIG) return { code: 'PAYLOAD_TOO_LARGE', message: reason || 'frame over the size limit' }
  return undefined
}

function serverError(text: string): { code: string; message: string } {
  try {
    const json = JSON.parse(text) as { code?: unknown; message?: unknown }
    if (typeof json.code === 'string') {
      return { code: json.code, message: typeof json.message === 'string' ? json.message : json.code }
    }
  } catch {
    // not JSON
  }
  return { code: 'SERVER_ERROR', message: text.slice(0, 200) }
}
