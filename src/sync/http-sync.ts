/**
 * The HTTP sync client behind `Replica.sync`: one round trip per sync. The replica sends
 * what the server lacks (judged by the vector the server announced in its last answer),
 * the server merges it and answers with what the replica lacks.
 */
import { ConvergeError, type ConvergeErrorCode } from '../core/errors.js'
import type { SyncHost, SyncOptions, SyncResult } from '../replica/replica.js'
import { DecodedPayload } from '../wire/payload.js'

/** Response header: the server replica's site id. */
export const SERVER_SITE_HEADER = 'x-converge-server-site'
/** Response header: the newest HLC the server holds. */
export const SERVER_VERSION_HEADER = 'x-converge-server-version'

const DB_PATH_RE = /^\/db\/[A-Za-z0-9_-]{1,64}$/
const SITE_RE = /^[0-9a-f]{32}$/
const SERVER_CODES: ReadonlySet<string> = new Set<ConvergeErrorCode>([
  'BAD_PAYLOAD',
  'SCHEMA_MISMATCH',
  'CLOCK_DRIFT',
  'CONSTRAINT',
  'BAD_ARGUMENT',
  'UNAUTHORIZED',
  'PAYLOAD_TOO_LARGE',
  'RATE_LIMITED',
  'NO_SUCH_DATABASE',
])

/** Maps `ws(s)://` to `http(s)://` and checks the `/db/NAME` path; `BAD_ARGUMENT` otherwise. */
export function syncUrl(url: string): URL {
  let u: URL
  try {
    u = new URL(url)
  } catch {
    throw new ConvergeError('BAD_ARGUMENT', `not a URL: ${url}`, { url })
  }
  const protocol = { 'ws:': 'http:', 'wss:': 'https:', 'http:': 'http:', 'https:': 'https:' }[u.protocol]
  if (!protocol) throw new ConvergeError('BAD_ARGUMENT', `unsupported URL scheme ${u.protocol}`, { url })
  if (!DB_PATH_RE.test(u.pathname)) {
    throw new ConvergeError('BAD_ARGUMENT', 'a sync URL ends in /db/NAME (NAME: 1 to 64 of A-Z a-z 0-9 _ -)', { url })
  }
  // Not `u.protocol = ...`: WHATWG URL refuses to switch between special schemes that way.
  return new URL(`${protocol}//${u.host}${u.pathname}`)
}

/** One sync round over HTTP (the `SyncTransport` Node's entry point gives replicas). */
export async function httpSync(host: SyncHost, url: string, options: SyncOptions): Promise<SyncResult> {
  const target = syncUrl(url)
  const serverKey = `server:${target.href}`
  const serverSite = host.recall(serverKey)
  const since = (serverSite && host.peers().find((p) => p.siteId === serverSite)?.vector) || {}
  // A plain copy: exports live in a resizable ArrayBuffer, which fetch refuses.
  const body = new Uint8Array(host.exportChanges(since))
  const sent = DecodedPayload.open(body, Number.MAX_SAFE_INTEGER).header.rowCounts.reduce((a, b) => a + b, 0)

  let response: Response
  try {
    response = await fetch(target, {
      method: 'POST',
      headers: {
        'content-type': 'application/octet-stream',
        ...(options.token !== undefined && { authorization: `Bearer ${options.token}` }),
      },
      body,
      signal: AbortSignal.timeout(options.timeoutMs ?? 60_000),
    })
  } catch (err) {
    throw new ConvergeError(
      'NETWORK',
      `cannot reach ${target.origin}: ${describe(err)}`,
      { url: target.href },
      { cause: err },
    )
  }
  let answer: Uint8Array
  try {
    answer = new Uint8Array(await response.arrayBuffer())
  } catch (err) {
    throw new ConvergeError(
      'NETWORK',
      `connection to ${target.origin} failed: ${describe(err)}`,
      { url: target.href },
      { cause: err },
    )
  }
  if (response.status !== 200) throw serverError(response.status, answer)

  const site = response.headers.get(SERVER_SITE_HEADER)
  const serverVersion = Number(response.headers.get(SERVER_VERSION_HEADER) ?? 0)
  const decoded = DecodedPayload.open(answer, Number.MAX_SAFE_INTEGER)
  const { header } = decoded
  const result = host.importChanges(answer)
  if (site && SITE_RE.test(site) && site === header.sender && site !== serverSite) host.remember(serverKey, site)
  return {
    send: {
      status: 'synced',
      rows: sent,
      localVersion: host.versionVector()[host.siteId] ?? 0,
      serverVersion: Number.isSafeInteger(serverVersion) ? serverVersion : 0,
    },
    receive: {
      rows: header.rowCounts.reduce((a, b) => a + b, 0),
      applied: result.applied,
      conflicts: result.conflicts,
      tables: header.tables.filter((_, i) => (header.rowCounts[i] ?? 0) > 0).map((t) => t.name),
    },
  }
}

function serverError(status: number, body: Uint8Array): ConvergeError {
  let code = 'SERVER_ERROR'
  let message = `server answered HTTP ${status}`
  try {
    const json = JSON.parse(new TextDecoder().decode(body)) as { code?: unknown; message?: unknown }
    if (typeof json.code === 'string') code = json.code
    if (typeof json.message === 'string') message = json.message
  } catch {
    // not JSON: keep the generic message
  }
  const known = SERVER_CODES.has(code) ? (code as ConvergeErrorCode) : 'SERVER_ERROR'
  return new ConvergeError(known, message, { status, serverCode: code })
}

function describe(err: unknown): string {
  const cause = (err as { cause?: { code?: unknown; message?: unknown } })?.cause
  if (cause && typeof cause.code === 'string') return cause.code
  return err instanceof Error ? err.message : String(err)
}
