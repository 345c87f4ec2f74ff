/** Bearer credentials per database: API keys (constant-time compare) and JWTs (jose). */
import { createHash, createPublicKey, timingSafeEqual } from 'node:crypto'
import { type CryptoKey, importSPKI, type JWTPayload, jwtVerify } from 'jose'
import { ConvergeError } from '../core/errors.js'
import { type DatabaseConfig, hasCredentials, type ServerConfig } from './config.js'

/** Who a request is. */
export interface Principal {
  /** 'anonymous' (open database), 'api-key', or 'jwt'. */
  readonly kind: 'anonymous' | 'api-key' | 'jwt'
  /** The JWT `sub`, or null. */
  readonly user: string | null
  /** A stable key for rate limiting: a hash of the credential, or null when anonymous. */
  readonly key: string | null
  /** When the credential stops being valid (ms since epoch): a JWT's `exp`; null for keys. */
  readonly expiresAt?: number | null
}

interface DatabaseKeys {
  apiKeys: Buffer[]
  secret: Uint8Array | undefined
  publicKeys: { key: CryptoKey; alg: 'EdDSA' | 'RS256' }[]
  open: boolean
}

const sha = (s: string) => createHash('sha256').update(s).digest()

export class Authenticator {
  readonly #databases: Map<string, DatabaseKeys> | null

  private constructor(databases: Map<string, DatabaseKeys> | null) {
    this.#databases = databases
  }

  /** Imports the keys of a configuration; a bad PEM fails with `BAD_ARGUMENT`. */
  static async create(config: ServerConfig): Promise<Authenticator> {
    if (!config.databases) return new Authenticator(null)
    const map = new Map<string, DatabaseKeys>()
    for (const [name, db] of Object.entries(config.databases)) map.set(name, await importKeys(name, db))
    return new Authenticator(map)
  }

  /** True when the database exists in the configuration (always, without a "databases" section). */
  knows(db: string): boolean {
    return this.#databases === null || this.#databases.has(db)
  }

  /** The principal of a request to `db`, or `UNAUTHORIZED`. */
  async authenticate(db: string, authorization: string | undefined): Promise<Principal> {
    const keys = this.#databases?.get(db)
    const token = /^Bearer ([^\s]+)$/i.exec(authorization ?? '')?.[1]
    if (this.#databases === null || keys?.open) {
      return { kind: 'anonymous', user: null, key: token ? sha(token).toString('hex') : null }
    }
    if (!keys) throw unauthorized('no such database')
    if (!token) throw unauthorized('missing bearer token')
    const digest = sha(token)
    // Every key is compared, so the time taken does not tell which one (or whether one) matched.
    let matched = false
    for (const k of keys.apiKeys) matched = timingSafeEqual(k, digest) || matched
    if (matched) return { kind: 'api-key', user: null, key: digest.toString('hex') }
    if (token.split('.').length === 3) {
      const payload = await verifyJwt(db, token, keys)
      if (payload) {
        return {
          kind: 'jwt',
          user: typeof payload.sub === 'string' ? payload.sub : null,
          key: digest.toString('hex'),
          expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 : null,
        }
      }
    }
    throw unauthorized('invalid or expired credentials for this database')
  }
}

async function importKeys(name: string, db: DatabaseConfig): Promise<DatabaseKeys> {
  const publicKeys: DatabaseKeys['publicKeys'] = []
  for (const pem of db.jwt?.publicKeys ?? []) {
    let type: string | undefined
    try {
      type = createPublicKey(pem).asymmetricKeyType
    } catch (err) {
      throw new ConvergeError(
        'BAD_ARGUMENT',
        `databases.${name}.jwt.publicKeys: not a PEM public key`,
        {},
        { cause: err },
      )
    }
    const alg = type === 'ed25519' ? 'EdDSA' : type === 'rsa' ? 'RS256' : undefined
    if (!alg)
      throw new ConvergeError(
        'BAD_ARGUMENT',
        `databases.${name}.jwt.publicKeys: ${type} keys are not supported (Ed25519 or RSA)`,
      )
    publicKeys.push({ key: await importSPKI(pem, alg), alg })
  }
  return {
    apiKeys: (db.apiKeys ?? []).map(sha),
    secret: db.jwt?.hs256Secret === undefined ? undefined : new TextEncoder().encode(db.jwt.hs256Secret),
    publicKeys,
    open: !hasCredentials(db),
  }
}

async function verifyJwt(db: string, token: string, keys: DatabaseKeys): Promise<JWTPayload | null> {
  const options = { audience: db, requiredClaims: ['exp'] }
  const candidates: [CryptoKey | Uint8Array, string][] = [
    ...(keys.secret ? [[keys.secret, 'HS256'] as [Uint8Array, string]] : []),
    ...keys.publicKeys.map((k) => [k.key, k.alg] as [CryptoKey, string]),
  ]
  for (const [key, alg] of candidates) {
    try {
      return (await jwtVerify(token, key, { ...options, algorithms: [alg] })).payload
    } catch {
      // try the next key
    }
  }
  return null
}

function unauthorized(message: string): ConvergeError {
  return new ConvergeError('UNAUTHORIZED', message)
}
