/** The server's configuration file (`converge.json`): per-database credentials and limits. */
import { ConvergeError } from '../core/errors.js'

/** Credentials of one database. */
export interface DatabaseConfig {
  /** Bearer tokens accepted as they are (compared in constant time). */
  apiKeys?: string[]
  /** JWTs accepted when signed with one of these keys; `aud` must name the database, `exp` is required. */
  jwt?: {
    /** HS256 shared secret. */
    hs256Secret?: string
    /** SPKI PEM public keys (Ed25519 for EdDSA, RSA for RS256). */
    publicKeys?: string[]
  }
}

/** The configuration object of `createServer` (the JSON of `converge serve --config`). */
export interface ServerConfig {
  /** When present, only these databases exist, each with its own credentials. */
  databases?: Record<string, DatabaseConfig>
  /** Largest request body in bytes (default 10 MiB). */
  maxPayloadBytes?: number
  /** Requests per minute per credential (or per IP address without one); default 600. */
  rateLimit?: { requestsPerMinute?: number }
}

export const DEFAULT_MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
export const DEFAULT_REQUESTS_PER_MINUTE = 600

/** Checks the shape of a configuration object; `BAD_ARGUMENT` names the first problem. */
export function checkConfig(value: unknown): ServerConfig {
  const fail = (msg: string) => new ConvergeError('BAD_ARGUMENT', `bad server config: ${msg}`)
  if (value === undefined) return {}
  if (!isObject(value)) throw fail('not an object')
  const { databases, maxPayloadBytes, rateLimit } = value
  if (maxPayloadBytes !== undefined && !(Number.isSafeInteger(maxPayloadBytes) && (maxPayloadBytes as number) > 0)) {
    throw fail('maxPayloadBytes must be a positive integer')
  }
  if (rateLimit !== undefined) {
    if (!isObject(rateLimit)) throw fail('rateLimit must be an object')
    const n = rateLimit.requestsPerMinute
    if (n !== undefined && !(Number.isSafeInteger(n) && (n as number) > 0)) {
      throw fail('rateLimit.requestsPerMinute must be a positive integer')
    }
  }
  if (databases !== undefined) {
    if (!isObject(databases)) throw fail('databases must be an object')
    for (const [name, db] of Object.entries(databases)) {
      if (!/^[A-Za-z0-9_-]{1,64}$/.test(name))
        throw fail(`database name ${JSON.stringify(name)} is not [A-Za-z0-9_-]{1,64}`)
      if (!isObject(db)) throw fail(`databases.${name} must be an object`)
      if (db.apiKeys !== undefined && !isStringArray(db.apiKeys)) {
        throw fail(`databases.${name}.apiKeys must be an array of non-empty strings`)
      }
      if (db.jwt !== undefined) {
        if (!isObject(db.jwt)) throw fail(`databases.${name}.jwt must be an object`)
        const { hs256Secret, publicKeys } = db.jwt
        if (hs256Secret !== undefined && (typeof hs256Secret !== 'string' || hs256Secret.length < 32)) {
          throw fail(`databases.${name}.jwt.hs256Secret must be a string of at least 32 characters`)
        }
        if (publicKeys !== undefined && !isStringArray(publicKeys)) {
          throw fail(`databases.${name}.jwt.publicKeys must be an array of PEM strings`)
        }
      }
    }
  }
  return value as ServerConfig
}

/** True when the database accepts at least one credential. */
export function hasCredentials(db: DatabaseConfig | undefined): boolean {
  return (db?.apiKeys?.length ?? 0) > 0 || db?.jwt?.hs256Secret !== undefined || (db?.jwt?.publicKeys?.length ?? 0) > 0
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function isStringArray(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((s) => typeof s === 'string' && s.length > 0)
}
