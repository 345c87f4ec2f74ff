/**
 * The bundle file: a change payload in a small envelope that can be signed (Ed25519) and
 * encrypted (XChaCha20-Poly1305, key from a password through scrypt, or a raw key). Pure
 * bytes in, bytes out: no file access and no database. See docs/bundle-format.md.
 *
 *   magic "CVRB" | version | flags | [kdf, scrypt params, salt, nonce] | [signer key]
 *   | body length | header hash | body (payload or ciphertext) | [signature]
 */
import { xchacha20poly1305 } from '@noble/ciphers/chacha.js'
import { ed25519 } from '@noble/curves/ed25519.js'
import { scrypt } from '@noble/hashes/scrypt.js'
import { ConvergeError } from '../core/errors.js'
import { ByteWriter } from './bytes.js'
import { bytesToHex, hexToBytes, type PayloadCodec } from './payload.js'

export const BUNDLE_MAGIC = new Uint8Array([0x43, 0x56, 0x52, 0x42]) // "CVRB"
export const BUNDLE_VERSION = 1

/** Flag bits of the header. */
export const FLAG_SNAPSHOT = 1
export const FLAG_ENCRYPTED = 2
export const FLAG_SIGNED = 4
const KNOWN_FLAGS = FLAG_SNAPSHOT | FLAG_ENCRYPTED | FLAG_SIGNED

/** Key derivation of an encrypted bundle. */
export const KDF_RAW_KEY = 0
export const KDF_SCRYPT = 1

const SALT_BYTES = 16
const NONCE_BYTES = 24
const KEY_BYTES = 32
const TAG_BYTES = 16
const SIGNATURE_BYTES = 64
const HASH_BYTES = 32
/** What the signature signs: this context, then SHA-256 of header and body. */
const SIGNATURE_CONTEXT = new TextEncoder().encode('sqlite-converge bundle v1\n')

/** scrypt cost parameters (RFC 7914). */
export interface ScryptParams {
  /** CPU and memory cost, a power of two (default 2^15). */
  N: number
  /** Block size (default 8). */
  r: number
  /** Parallelism (default 1). */
  p: number
}

/** Default scrypt cost: 32 MiB and about 0.2 s in pure JavaScript; see docs/bundle-format.md. */
export const DEFAULT_SCRYPT: Readonly<ScryptParams> = Object.freeze({ N: 2 ** 15, r: 8, p: 1 })

/** Readers refuse parameters beyond these (a hostile header must not exhaust memory or time). */
export const SCRYPT_LIMITS = Object.freeze({
  maxLog2N: 20,
  maxR: 32,
  maxP: 16,
  /** 128 * N * r bytes of working memory. */
  maxMemoryBytes: 256 * 1024 * 1024,
  /** N * r * p, 64 times the default. */
  maxWork: 2 ** 24,
})

/** How a bundle is encrypted: a raw 32-byte key, or a password stretched by scrypt. */
export type BundleCipher = { key: Uint8Array } | { password: string; scrypt: ScryptParams }

/** What to wrap around a payload. */
export interface BundleWriteOptions {
  snapshot: boolean
  /** Ed25519 private key (32 bytes) to sign with. */
  signKey?: Uint8Array
  encrypt?: BundleCipher
}

/** A bundle file whose framing and header hash were checked; nothing verified or decrypted yet. */
export interface ParsedBundle {
  readonly snapshot: boolean
  readonly encrypted: boolean
  readonly signed: boolean
  /** KDF_RAW_KEY or KDF_SCRYPT (encrypted only). */
  readonly kdf: number | null
  readonly scrypt: ScryptParams | null
  readonly salt: Uint8Array | null
  readonly nonce: Uint8Array | null
  /** The signer's Ed25519 public key (signed only). */
  readonly signer: Uint8Array | null
  /** The whole header, hash included (the AEAD's associated data). */
  readonly header: Uint8Array
  /** The payload, or its ciphertext with the 16-byte tag. */
  readonly body: Uint8Array
  /** Header and body: what the signature covers (through its SHA-256). */
  readonly signedBytes: Uint8Array
  readonly signature: Uint8Array | null
}

/** The error every malformed bundle raises. */
export function badBundle(reason: string): ConvergeError {
  return new ConvergeError('BAD_BUNDLE', `malformed bundle: ${reason}`, { reason })
}

function badArgument(message: string): ConvergeError {
  return new ConvergeError('BAD_ARGUMENT', message)
}

/** Validates scrypt parameters against {@link SCRYPT_LIMITS}; `fail` builds the error. */
export function checkScrypt(s: ScryptParams, fail: (reason: string) => ConvergeError): void {
  const { N, r, p } = s
  if (!Number.isSafeInteger(N) || N < 2 || (N & (N - 1)) !== 0 || N > 2 ** SCRYPT_LIMITS.maxLog2N) {
    throw fail(`scrypt N must be a power of two from 2 to 2^${SCRYPT_LIMITS.maxLog2N}`)
  }
  if (!Number.isSafeInteger(r) || r < 1 || r > SCRYPT_LIMITS.maxR)
    throw fail(`scrypt r must be 1 to ${SCRYPT_LIMITS.maxR}`)
  if (!Number.isSafeInteger(p) || p < 1 || p > SCRYPT_LIMITS.maxP)
    throw fail(`scrypt p must be 1 to ${SCRYPT_LIMITS.maxP}`)
  if (128 * N * r > SCRYPT_LIMITS.maxMemoryBytes) throw fail('scrypt parameters need too much memory')
  if (N * r * p > SCRYPT_LIMITS.maxWork) throw fail('scrypt parameters need too much work')
}

/**
 * A 32-byte key given as bytes or as 64 hex characters; `BAD_ARGUMENT` otherwise.
 * `what` names it in the message.
 */
export function keyBytes(value: unknown, what: string): Uint8Array {
  if (value instanceof Uint8Array) {
    if (value.length !== KEY_BYTES) throw badArgument(`${what} must be ${KEY_BYTES} bytes, not ${value.length}`)
    return value
  }
  if (typeof value === 'string' && /^[0-9a-fA-F]{64}$/.test(value)) return hexToBytes(value.toLowerCase())
  throw badArgument(`${what} must be a ${KEY_BYTES}-byte Uint8Array or 64 hex characters`)
}

/** The Ed25519 public key of a private key. */
export function publicKeyOf(privateKey: Uint8Array): Uint8Array {
  return ed25519.getPublicKey(privateKey)
}

function deriveKey(password: string, salt: Uint8Array, s: ScryptParams): Uint8Array {
  const pw = new TextEncoder().encode(password.normalize('NFC'))
  return scrypt(pw, salt, {
    N: s.N,
    r: s.r,
    p: s.p,
    dkLen: KEY_BYTES,
    maxmem: SCRYPT_LIMITS.maxMemoryBytes + 1024 * 1024,
  })
}

function random(n: number): Uint8Array {
  return globalThis.crypto.getRandomValues(new Uint8Array(n))
}

function signatureMessage(signed: readonly Uint8Array[], codec: PayloadCodec): Uint8Array {
  const out = new Uint8Array(SIGNATURE_CONTEXT.length + HASH_BYTES)
  out.set(SIGNATURE_CONTEXT)
  out.set(codec.sha256(...signed), SIGNATURE_CONTEXT.length)
  return out
}

/**
 * Wraps a payload into a bundle file, returned as the parts to write one after the other
 * (header, body, signature): an unencrypted body is the payload itself, not a copy.
 */
export function encodeBundle(payload: Uint8Array, options: BundleWriteOptions, codec: PayloadCodec): Uint8Array[] {
  const { encrypt, signKey } = options
  const h = new ByteWriter(160)
  h.bytes(BUNDLE_MAGIC)
  h.byte(BUNDLE_VERSION)
  h.byte((options.snapshot ? FLAG_SNAPSHOT : 0) | (encrypt ? FLAG_ENCRYPTED : 0) | (signKey ? FLAG_SIGNED : 0))
  let key: Uint8Array | null = null
  let nonce: Uint8Array | null = null
  if (encrypt) {
    if ('key' in encrypt) {
      h.byte(KDF_RAW_KEY)
      key = encrypt.key
    } else {
      checkScrypt(encrypt.scrypt, badArgument)
      const salt = random(SALT_BYTES)
      h.byte(KDF_SCRYPT)
      h.byte(Math.log2(encrypt.scrypt.N))
      h.byte(encrypt.scrypt.r)
      h.byte(encrypt.scrypt.p)
      h.bytes(salt)
      key = deriveKey(encrypt.password, salt, encrypt.scrypt)
    }
    nonce = random(NONCE_BYTES)
    h.bytes(nonce)
  }
  if (signKey) h.bytes(publicKeyOf(signKey))
  const bodyLength = payload.length + (encrypt ? TAG_BYTES : 0)
  const len = new Uint8Array(8)
  new DataView(len.buffer).setBigUint64(0, BigInt(bodyLength), true)
  h.bytes(len)
  h.bytes(codec.sha256(h.finish()))
  const header = h.finish().slice()
  const body = key && nonce ? xchacha20poly1305(key, nonce, header).encrypt(payload) : payload
  if (!signKey) return [header, body]
  return [header, body, ed25519.sign(signatureMessage([header, body], codec), signKey)]
}

/** Checks the framing and the header hash; `maxBody` bounds the body length. Throws `BAD_BUNDLE`. */
export function parseBundle(file: Uint8Array, maxBody: number, codec: PayloadCodec): ParsedBundle {
  if (!(file instanceof Uint8Array)) throw badBundle('a bundle must be bytes')
  let pos = 0
  const take = (n: number): Uint8Array => {
    if (pos + n > file.length) throw badBundle('truncated file')
    const out = file.subarray(pos, pos + n)
    pos += n
    return out
  }
  const byte = () => take(1)[0] as number
  const magic = take(BUNDLE_MAGIC.length)
  if (!magic.every((b, i) => b === BUNDLE_MAGIC[i])) throw badBundle('not a sqlite-converge bundle (bad magic)')
  const version = byte()
  if (version !== BUNDLE_VERSION) throw badBundle(`unsupported bundle version ${version}`)
  const flags = byte()
  if (flags & ~KNOWN_FLAGS) throw badBundle(`unknown flags ${flags}`)
  const encrypted = (flags & FLAG_ENCRYPTED) !== 0
  const signed = (flags & FLAG_SIGNED) !== 0
  let kdf: number | null = null
  let scryptParams: ScryptParams | null = null
  let salt: Uint8Array | null = null
  let nonce: Uint8Array | null = null
  if (encrypted) {
    kdf = byte()
    if (kdf === KDF_SCRYPT) {
      const logN = byte()
      const r = byte()
      const p = byte()
      if (logN < 1 || logN > SCRYPT_LIMITS.maxLog2N) throw badBundle(`scrypt N = 2^${logN} is out of bounds`)
      scryptParams = { N: 2 ** logN, r, p }
      checkScrypt(scryptParams, badBundle)
      salt = take(SALT_BYTES)
    } else if (kdf !== KDF_RAW_KEY) {
      throw badBundle(`unknown key derivation ${kdf}`)
    }
    nonce = take(NONCE_BYTES)
  }
  const signer = signed ? take(KEY_BYTES) : null
  const lenBytes = take(8)
  const bodyLength = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true)
  const hashed = pos
  const hash = take(HASH_BYTES)
  const digest = codec.sha256(file.subarray(0, hashed))
  if (!hash.every((b, i) => b === digest[i])) throw badBundle('header checksum mismatch')
  const header = file.subarray(0, pos)
  if (bodyLength > BigInt(maxBody) + BigInt(TAG_BYTES)) {
    throw new ConvergeError('BAD_BUNDLE', `bundle body of ${bodyLength} bytes exceeds the limit of ${maxBody}`, {
      reason: 'too large',
      bytes: Number(bodyLength),
      limit: maxBody,
    })
  }
  if (encrypted && bodyLength < BigInt(TAG_BYTES)) throw badBundle('ciphertext shorter than its tag')
  const body = take(Number(bodyLength))
  const signedBytes = file.subarray(0, pos)
  const signature = signed ? take(SIGNATURE_BYTES) : null
  if (pos !== file.length) throw badBundle('trailing bytes')
  return {
    snapshot: (flags & FLAG_SNAPSHOT) !== 0,
    encrypted,
    signed,
    kdf,
    scrypt: scryptParams,
    salt,
    nonce,
    signer,
    header,
    body,
    signedBytes: signedBytes,
    signature,
  }
}

/** True when the bundle is signed and its signature verifies against the key it names. */
export function verifyBundle(bundle: ParsedBundle, codec: PayloadCodec): boolean {
  if (!bundle.signer || !bundle.signature) return false
  try {
    return ed25519.verify(bundle.signature, signatureMessage([bundle.signedBytes], codec), bundle.signer, {
      zip215: false,
    })
  } catch {
    return false
  }
}

/**
 * The payload of a bundle: decrypted with `password` or `key` when encrypted (the one its
 * header asks for). Any failure, including a missing secret, is `DECRYPT_FAILED`.
 */
export function openBundleBody(bundle: ParsedBundle, secrets: { password?: string; key?: Uint8Array }): Uint8Array {
  if (!bundle.encrypted) return bundle.body
  const fail = (message: string) => new ConvergeError('DECRYPT_FAILED', message)
  let key: Uint8Array
  if (bundle.kdf === KDF_SCRYPT) {
    if (secrets.password === undefined) throw fail('the bundle is encrypted with a password; pass options.password')
    key = deriveKey(secrets.password, bundle.salt as Uint8Array, bundle.scrypt as ScryptParams)
  } else {
    if (secrets.key === undefined) throw fail('the bundle is encrypted with a raw key; pass options.key')
    key = secrets.key
  }
  try {
    return xchacha20poly1305(key, bundle.nonce as Uint8Array, bundle.header).decrypt(bundle.body)
  } catch {
    throw fail('cannot decrypt the bundle: wrong password or key, or the file was altered')
  }
}

/** Lowercase hex of a key, for messages. */
export function keyHex(key: Uint8Array): string {
  return bytesToHex(key)
}
