/**
 * Bundle files and peers: `exportBundle` / `importBundle` wrap a change payload in the
 * envelope of src/wire/bundle.ts and move it through the replica's file access; every
 * import records the sender and the vector it announced, so a later export can send a
 * peer exactly what it lacks. Snapshot bundles leave tombstones out; the bookkeeping that
 * keeps that safe (the tombstone floor) lives here too. See docs/bundle-format.md.
 */

import { ConvergeError, isConvergeError } from '../core/errors.js'
import { getOrCreate } from '../core/maps.js'
import { sameBytes } from '../core/values.js'
import { mergeInto, mergeVectors, type VersionVector } from '../core/version-vector.js'
import type { SqliteDatabase } from '../driver/types.js'
import {
  type BundleCipher,
  checkScrypt,
  DEFAULT_SCRYPT,
  encodeBundle,
  keyBytes,
  keyHex,
  openBundleBody,
  parseBundle,
  type ScryptParams,
  verifyBundle,
} from '../wire/bundle.js'
import { DecodedPayload, type PayloadCodec } from '../wire/payload.js'
import { schemaDifference } from './apply.js'
import { keyColumns, PREFIX, rowsTable } from './metadata.js'
import type { ImportResult, ProgressCallback } from './replica.js'
import { quoteId } from './sql.js'
import { cached } from './statements.js'
import type { SyncedTable } from './synced-table.js'

/** Synchronous file access for bundles; the Node entry point passes node:fs. */
export interface ReplicaFiles {
  /** The whole file. */
  readFile(path: string): Uint8Array
  /** Creates or replaces the file with the parts, in order (and should flush it to disk before returning). */
  writeFile(path: string, parts: readonly Uint8Array[]): void
  /** Renames a file, replacing `to` atomically. */
  rename(from: string, to: string): void
}

/** A 32-byte key: bytes, or 64 hex characters. */
export type KeyInput = Uint8Array | string

/** Progress of a bundle export or import: rows so far, and the total when known. */
export type BundleProgressCallback = (rows: number, total?: number) => void

/** Options of {@link Replica.exportBundle}. */
export interface BundleExportOptions {
  /** Whom the bundle is for: a peer's site id (what it last announced to us) or a vector; none or unknown: everything. */
  for?: string | VersionVector
  /** Current state only: every live row, no tombstones (cannot be combined with `for`). */
  snapshot?: boolean
  /** Sign with this Ed25519 private key (32 bytes or 64 hex). */
  sign?: { privateKey: KeyInput }
  /** Encrypt with a password (scrypt) or a raw 32-byte key. */
  encrypt?: BundlePasswordEncryption | { key: KeyInput }
  /** Called as rows are exported. */
  onProgress?: BundleProgressCallback
}

/** Password encryption; `scrypt` overrides the default cost (N 2^15, r 8, p 1). */
export interface BundlePasswordEncryption {
  password: string
  /** Advanced: scrypt cost written into the bundle header; readers refuse absurd values. */
  scrypt?: Partial<ScryptParams>
}

/** Result of {@link Replica.exportBundle}. */
export interface BundleExportResult {
  /** Row versions in the bundle. */
  changes: number
  /** Size of the file written. */
  bytes: number
}

/** Options of {@link Replica.importBundle}. */
export interface BundleImportOptions {
  /** Password of a password-encrypted bundle. */
  password?: string
  /** Key of a bundle encrypted with a raw key (32 bytes or 64 hex). */
  key?: KeyInput
  /** Accept only bundles signed by one of these Ed25519 public keys (32 bytes or 64 hex). */
  trust?: KeyInput[]
  /** Called as rows are merged, with the bundle's row count as total. */
  onProgress?: BundleProgressCallback
}

/** Result of {@link Replica.importBundle}. */
export interface BundleImportResult extends ImportResult {
  /** True when this bundle was imported before; then nothing changed. */
  duplicate: boolean
  /** Site id of the replica that exported it. */
  from: string
}

/** A replica this one has received changes from. */
export interface Peer {
  siteId: string
  /** The newest knowledge it announced: pointwise maximum of the vectors in its payloads. */
  vector: VersionVector
  /** When we last imported a payload from it that announced something new (ms since epoch). */
  lastSeen: number
}

/** The metadata tables of this module, created with the others when a replica opens. */
export const BUNDLE_DDL = `
CREATE TABLE IF NOT EXISTS ${PREFIX}peers (site TEXT PRIMARY KEY, vector TEXT NOT NULL, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ${PREFIX}bundles (id BLOB PRIMARY KEY, sender TEXT NOT NULL, at INTEGER NOT NULL);
`

/** `_converge_state` key of the tombstone floor (JSON vector); see {@link announcedVector}. */
const FLOOR_KEY = 'tombstone_floor'
const SITE_RE = /^[0-9a-f]{32}$/

/** What the bundle functions need from a {@link Replica}. */
export interface BundleHost {
  readonly db: SqliteDatabase
  readonly siteId: string
  readonly files: ReplicaFiles | undefined
  readonly codec: PayloadCodec
  readonly maxPayloadBytes: number
  /** `exportChanges`, optionally without tombstones, with the number of rows exported. */
  exportPayload(
    since: VersionVector,
    snapshot: boolean,
    onProgress?: ProgressCallback,
  ): { payload: Uint8Array; rows: number }
  importChanges(payload: Uint8Array, onProgress?: ProgressCallback): ImportResult
  /** Runs `fn` in the replica's write transaction (nested calls become savepoints). */
  write<T>(fn: () => T): T
  /** Folds pending writes and returns the version vector. */
  versionVector(): VersionVector
  syncedTable(name: string): SyncedTable | undefined
}

function badArgument(message: string, details: Record<string, unknown> = {}): ConvergeError {
  return new ConvergeError('BAD_ARGUMENT', message, details)
}

function untrusted(message: string, details: Record<string, unknown> = {}): ConvergeError {
  return new ConvergeError('UNTRUSTED_BUNDLE', message, details)
}

function requireFiles(host: BundleHost): ReplicaFiles {
  if (!host.files) throw badArgument('this replica has no file access; pass options.files to the Replica')
  return host.files
}

function checkPath(path: unknown): asserts path is string {
  if (typeof path !== 'string' || path === '') throw badArgument('a bundle path must be a non-empty string')
}

function checkProgress(cb: unknown): BundleProgressCallback | undefined {
  if (cb !== undefined && typeof cb !== 'function') throw badArgument('onProgress must be a function')
  return cb as BundleProgressCallback | undefined
}

function cipherOption(encrypt: BundleExportOptions['encrypt']): BundleCipher | undefined {
  if (encrypt === undefined) return undefined
  if (typeof encrypt !== 'object' || encrypt === null) throw badArgument('encrypt must be { password } or { key }')
  const hasPassword = 'password' in encrypt
  const hasKey = 'key' in encrypt
  if (hasPassword === hasKey) throw badArgument('encrypt takes exactly one of password and key')
  if (hasKey) return { key: keyBytes(encrypt.key, 'encrypt.key') }
  const { password, scrypt } = encrypt as BundlePasswordEncryption
  if (typeof password !== 'string' || password === '') throw badArgument('encrypt.password must be a non-empty string')
  if (scrypt !== undefined && (typeof scrypt !== 'object' || scrypt === null)) {
    throw badArgument('encrypt.scrypt must be { N, r, p }')
  }
  const params: ScryptParams = { ...DEFAULT_SCRYPT, ...(scrypt ?? {}) }
  checkScrypt(params, (reason) => badArgument(reason))
  return { password, scrypt: params }
}

/** The vector to export against: `for` as a vector, or what that peer last announced. */
function sinceFor(host: BundleHost, target: BundleExportOptions['for']): VersionVector {
  if (target === undefined) return {}
  if (typeof target === 'string') {
    if (!SITE_RE.test(target)) throw badArgument('for must be a site id (32 lowercase hex) or a version vector')
    // An unknown peer gets everything: always safe, only larger.
    return readPeers(host.db).find((p) => p.siteId === target)?.vector ?? {}
  }
  return target
}

/** Writes a bundle file: export, wrap (sign, encrypt), write to `path.tmp`, rename over `path`. */
export function exportBundle(host: BundleHost, path: string, options: BundleExportOptions = {}): BundleExportResult {
  checkPath(path)
  if (typeof options !== 'object' || options === null) throw badArgument('options must be an object')
  const files = requireFiles(host)
  if (options.snapshot !== undefined && typeof options.snapshot !== 'boolean') {
    throw badArgument('snapshot must be a boolean')
  }
  const snapshot = options.snapshot === true
  if (snapshot && options.for !== undefined) {
    throw badArgument('a snapshot holds the whole current state; it cannot be exported for a peer')
  }
  if (options.sign !== undefined && (typeof options.sign !== 'object' || options.sign === null)) {
    throw badArgument('sign must be { privateKey }')
  }
  const signKey = options.sign ? keyBytes(options.sign.privateKey, 'sign.privateKey') : undefined
  const encrypt = cipherOption(options.encrypt)
  const onProgress = checkProgress(options.onProgress)
  const since = sinceFor(host, options.for)
  const { payload, rows } = host.exportPayload(since, snapshot, onProgress && ((n) => onProgress(n)))
  const parts = encodeBundle(
    payload,
    { snapshot, ...(signKey && { signKey }), ...(encrypt && { encrypt }) },
    host.codec,
  )
  const tmp = `${path}.tmp`
  files.writeFile(tmp, parts)
  files.rename(tmp, path)
  return { changes: rows, bytes: parts.reduce((n, part) => n + part.length, 0) }
}

/** A `BAD_PAYLOAD` from the inner payload is a `BAD_BUNDLE` to the caller of importBundle. */
function asBundleError(err: unknown): unknown {
  if (!isConvergeError(err, 'BAD_PAYLOAD')) return err
  return new ConvergeError('BAD_BUNDLE', err.message.replace(/^malformed payload/, 'malformed bundle'), err.details, {
    cause: err,
  })
}

/**
 * Reads, verifies, decrypts and merges a bundle file, all or nothing. A bundle imported
 * before (same payload) reports `duplicate` and changes nothing.
 */
export function importBundle(host: BundleHost, path: string, options: BundleImportOptions = {}): BundleImportResult {
  checkPath(path)
  if (typeof options !== 'object' || options === null) throw badArgument('options must be an object')
  const files = requireFiles(host)
  if (options.trust !== undefined && !Array.isArray(options.trust)) throw badArgument('trust must be an array of keys')
  const trust = options.trust?.map((k, i) => keyBytes(k, `trust[${i}]`))
  const key = options.key === undefined ? undefined : keyBytes(options.key, 'key')
  if (options.password !== undefined && typeof options.password !== 'string') {
    throw badArgument('password must be a string')
  }
  const onProgress = checkProgress(options.onProgress)

  const bundle = parseBundle(files.readFile(path), host.maxPayloadBytes, host.codec)
  if (bundle.signed && !verifyBundle(bundle, host.codec)) {
    throw untrusted('the bundle signature does not verify: the file was altered or damaged', {
      signer: keyHex(bundle.signer as Uint8Array),
    })
  }
  if (trust) {
    if (!bundle.signer) throw untrusted('the bundle is not signed, and options.trust requires a trusted signature')
    const signer = bundle.signer
    if (!trust.some((k) => sameBytes(k, signer))) {
      throw untrusted(`the bundle is signed by key ${keyHex(signer)}, which is not in options.trust`, {
        signer: keyHex(signer),
      })
    }
  }
  const payload = openBundleBody(bundle, {
    ...(options.password !== undefined && { password: options.password }),
    ...(key && { key }),
  })
  try {
    const decoded = DecodedPayload.open(payload, host.maxPayloadBytes, host.codec)
    const { header } = decoded
    const id = host.codec.sha256(payload)
    const total = header.rowCounts.reduce((a, b) => a + b, 0)
    return host.write(() => {
      const db = host.db
      if (db.prepare(`SELECT 1 FROM ${PREFIX}bundles WHERE id = ?`).get(id) !== undefined) {
        return { applied: 0, conflicts: 0, duplicate: true, from: header.sender }
      }
      const snapshot = bundle.snapshot && header.sender !== host.siteId ? prepareSnapshot(host, decoded) : null
      const result = host.importChanges(payload, onProgress && ((n) => onProgress(n, total)))
      if (snapshot) finishSnapshot(host, snapshot, header.vector)
      db.prepare(`INSERT INTO ${PREFIX}bundles (id, sender, at) VALUES (?, ?, ?)`).run(id, header.sender, Date.now())
      return { applied: result.applied, conflicts: result.conflicts, duplicate: false, from: header.sender }
    })
  } catch (err) {
    throw asBundleError(err)
  }
}

// --- Peers -----------------------------------------------------------------------------

/**
 * Records that `site` sent a payload announcing `vector`; called inside the import's write
 * transaction. A payload that announces nothing new (one imported again, or an older one)
 * writes nothing, so importing a payload twice still leaves the database as once.
 *
 * `trusted`: nothing wrote to the file since the caller's last commit, so the vector this
 * connection last wrote for `site` is still the stored one. Then a vector that moved within
 * {@link PEER_WRITE_MS} of the last write is only kept in memory (a live session imports
 * many payloads a second from its server, and among 500 sites each write is a 25 kB JSON
 * text): {@link readPeers} on this connection merges it in, {@link flushRecordedPeers}
 * writes it, and until then other connections read an older vector, which can only make
 * them resend or keep more. A crash or a rollback loses it the same way.
 */
export function recordPeer(db: SqliteDatabase, site: string, vector: VersionVector, trusted = false): void {
  const now = Date.now()
  const known = recorded.get(db)?.get(site)
  let before: VersionVector | undefined
  if (trusted && known) {
    before = known.vector
  } else {
    const old = cached(db, `SELECT vector FROM ${PREFIX}peers WHERE site = ?`).get(site) as
      | { vector: string }
      | undefined
    // The vector as last written here, unless another connection wrote since (the texts differ).
    before = old ? (known?.json === old.vector ? known.vector : (JSON.parse(old.vector) as VersionVector)) : undefined
  }
  // Nothing new (a payload imported again, or an older one): no write.
  if (before && Object.entries(vector).every(([s, hlc]) => hlc <= (before[s] ?? 0))) return
  if (trusted && known && now - known.at < PEER_WRITE_MS) {
    // Raised in place: the object is this map's own (readPeers hands out merged copies).
    mergeInto(known.vector, vector)
    known.dirty = true
    known.seen = now
    return
  }
  writePeer(db, site, before ? mergeVectors(before, vector) : { ...vector }, now)
}

function writePeer(db: SqliteDatabase, site: string, vector: VersionVector, at: number): void {
  // Entries keep the order they came in; the text only has to parse back to the vector.
  const json = JSON.stringify(vector)
  cached(db, `INSERT OR REPLACE INTO ${PREFIX}peers (site, vector, at) VALUES (?, ?, ?)`).run(site, json, at)
  getOrCreate(recorded, db, () => new Map()).set(site, { json, vector, at, dirty: false, seen: at })
}

/**
 * Writes the peer vectors {@link recordPeer} kept in memory, merged with what is stored
 * (another connection may have written since); inside a write transaction.
 */
export function flushRecordedPeers(db: SqliteDatabase): void {
  for (const [site, r] of recorded.get(db) ?? []) {
    if (!r.dirty) continue
    const old = cached(db, `SELECT vector, at FROM ${PREFIX}peers WHERE site = ?`).get(site) as
      | { vector: string; at: number }
      | undefined
    const stored = old && old.vector !== r.json ? (JSON.parse(old.vector) as VersionVector) : undefined
    writePeer(db, site, stored ? mergeVectors(stored, r.vector) : r.vector, Math.max(r.seen, Number(old?.at ?? 0)))
  }
}

/** Shortest time between two writes of one peer's vector by one connection (see recordPeer). */
const PEER_WRITE_MS = 1000

/**
 * Per connection and peer: the vector recordPeer last wrote, its text and when; `dirty`: a
 * newer vector (imported at `seen`) waits in memory.
 */
const recorded = new WeakMap<
  SqliteDatabase,
  Map<string, { json: string; vector: VersionVector; at: number; dirty: boolean; seen: number }>
>()

/** Drops the vectors recordPeer remembers for `db` (after a rollback they may be gone). */
export function forgetRecordedPeers(db: SqliteDatabase): void {
  recorded.delete(db)
}

/** Deletes what is recorded of `site` (see Replica.forgetPeer); true if it was known. */
export function deletePeer(db: SqliteDatabase, site: string): boolean {
  recorded.get(db)?.delete(site)
  return cached(db, `DELETE FROM ${PREFIX}peers WHERE site = ?`).run(site).changes > 0
}

/** Every peer heard from, by site id. */
export function readPeers(db: SqliteDatabase): Peer[] {
  const rows = db.prepare(`SELECT site, vector, at FROM ${PREFIX}peers ORDER BY site`).all() as {
    site: string
    vector: string
    at: number
  }[]
  const mine = recorded.get(db)
  return rows.map((r) => {
    const stored = JSON.parse(r.vector) as VersionVector
    // A vector recordPeer kept in memory is newer than what this connection wrote.
    const waiting = mine?.get(r.site)
    if (!waiting?.dirty) return { siteId: r.site, vector: stored, lastSeen: Number(r.at) }
    return {
      siteId: r.site,
      vector: mergeVectors(stored, waiting.vector),
      lastSeen: Math.max(Number(r.at), waiting.seen),
    }
  })
}

function vectorJson(v: VersionVector): string {
  return JSON.stringify(Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))))
}

// --- Snapshots and the tombstone floor -------------------------------------------------
//
// A snapshot carries no tombstones, yet its vector covers the deletes it leaves out. Two
// rules keep that sound:
// 1. A receiver that still holds a live row the snapshot's sender has deleted (a live row
//    whose life the sender has seen, absent from the snapshot) would keep it forever if it
//    adopted the vector. It merges the snapshot but keeps its own vector, so a later
//    ordinary export brings the deletes.
// 2. A receiver that adopts the vector cannot pass those deletes on. It records the vector
//    as its tombstone floor, and its exports to a peer that has seen less of a site than
//    the floor do not announce that site's entry (the peer merges what it gets but does not
//    adopt that entry, and later receives the deletes from a replica that holds them).

interface SnapshotCheck {
  /** Vector before the import. */
  before: VersionVector
  /** The receiver holds rows the snapshot hides deletes of. */
  hidden: boolean
}

function readSeen(db: SqliteDatabase): VersionVector {
  const out: VersionVector = {}
  for (const r of db.prepare(`SELECT site, seen FROM ${PREFIX}sites`).all() as { site: string; seen: number }[]) {
    out[r.site] = Number(r.seen)
  }
  return out
}

function prepareSnapshot(host: BundleHost, decoded: DecodedPayload): SnapshotCheck {
  host.versionVector() // folds pending writes, so their rows are judged as they are now
  const before = readSeen(host.db)
  return { before, hidden: holdsHiddenDeletes(host, decoded) }
}

/**
 * True when this replica has a live row whose life the snapshot's sender has seen (its
 * causal-length stamp is covered by the sender's vector) and that the snapshot lacks: the
 * sender holds it deleted.
 */
function holdsHiddenDeletes(host: BundleHost, decoded: DecodedPayload): boolean {
  const { header } = decoded
  const vectorJsonText = JSON.stringify(header.vector)
  const covered = (t: SyncedTable, extra: string) =>
    `SELECT 1 FROM ${rowsTable(t.id)} r JOIN ${PREFIX}sites s ON s.idx = r.cls JOIN json_each(?) v ON v.key = s.site
     WHERE r.cl % 2 = 1 AND r.clh <= v.value ${extra} LIMIT 1`
  const suspects = new Map<number, SyncedTable>()
  header.tables.forEach((wt, i) => {
    const t = host.syncedTable(wt.name)
    // A table the sender does not sync, or syncs with an incompatible schema, never held our rows.
    if (!t || schemaDifference(t.schema, wt) !== null) return
    if (host.db.prepare(covered(t, '')).get(vectorJsonText) !== undefined) suspects.set(i, t)
  })
  if (suspects.size === 0) return false
  const temps: string[] = []
  try {
    const inserts = new Map<number, { run(...params: unknown[]): unknown }>()
    for (const [i, t] of suspects) {
      const name = quoteId(`${PREFIX}snapshot_keys_${t.id}`)
      const keys = keyColumns(t.schema.pk.length)
      host.db.exec(`DROP TABLE IF EXISTS temp.${name}`)
      host.db.exec(`CREATE TEMP TABLE ${name} (${keys.join(', ')}, PRIMARY KEY (${keys.join(', ')})) WITHOUT ROWID`)
      temps.push(name)
      inserts.set(
        i,
        host.db.prepare(`INSERT OR IGNORE INTO temp.${name} VALUES (${keys.map(() => '?').join(', ')})`) as {
          run(...params: unknown[]): unknown
        },
      )
    }
    for (const chunk of decoded.chunks()) {
      const insert = inserts.get(chunk.table)
      if (insert) for (const row of chunk.rows) insert.run(...row.pk)
    }
    for (const t of suspects.values()) {
      const name = quoteId(`${PREFIX}snapshot_keys_${t.id}`)
      const keys = keyColumns(t.schema.pk.length)
      const absent = `AND NOT EXISTS (SELECT 1 FROM temp.${name} k WHERE ${keys.map((k) => `k.${k} = r.${k}`).join(' AND ')})`
      if (host.db.prepare(covered(t, absent)).get(vectorJsonText) !== undefined) return true
    }
    return false
  } finally {
    for (const name of temps) host.db.exec(`DROP TABLE IF EXISTS temp.${name}`)
  }
}

function finishSnapshot(host: BundleHost, check: SnapshotCheck, sent: VersionVector): void {
  const db = host.db
  const after = readSeen(db)
  if (check.hidden) {
    // Rule 1: keep the vector we had, so the deletes we lack are sent to us later.
    const reset = db.prepare(`UPDATE ${PREFIX}sites SET seen = ? WHERE site = ?`)
    for (const [site, seen] of Object.entries(after)) {
      const was = check.before[site] ?? 0
      if (site !== host.siteId && seen > was) reset.run(was, site)
    }
    return
  }
  // Rule 2: what the adopted vector covers without our holding the tombstones.
  const floor = readFloor(db)
  let moved = false
  for (const [site, hlc] of Object.entries(sent)) {
    if (site === host.siteId) continue
    if ((check.before[site] ?? 0) < hlc && (after[site] ?? 0) >= hlc && (floor[site] ?? 0) < hlc) {
      floor[site] = hlc
      moved = true
    }
  }
  if (moved) {
    db.prepare(`INSERT OR REPLACE INTO ${PREFIX}state (key, value) VALUES (?, ?)`).run(FLOOR_KEY, vectorJson(floor))
  }
}

function readFloor(db: SqliteDatabase): VersionVector {
  const row = cached(db, `SELECT value FROM ${PREFIX}state WHERE key = ?`).get(FLOOR_KEY) as
    | { value: string }
    | undefined
  return row ? (JSON.parse(row.value) as VersionVector) : {}
}

/**
 * The vector an export announces to a receiver that has seen `since`: this replica's
 * vector, except that a site whose deletes up to the tombstone floor this replica may
 * lack (it adopted a snapshot) is not announced beyond what the receiver has already seen.
 * A snapshot announces the whole vector: it carries no tombstones anyway, and its
 * receiver applies the snapshot rules above.
 */
export function announcedVector(
  db: SqliteDatabase,
  self: string,
  vector: VersionVector,
  since: VersionVector,
  snapshot = false,
): VersionVector {
  if (snapshot) return vector
  const floor = readFloor(db)
  let out = vector
  for (const [site, hlc] of Object.entries(floor)) {
    const has = since[site] ?? 0
    if (site === self || has >= hlc || (out[site] ?? 0) <= has) continue
    if (out === vector) out = { ...vector }
    if (has > 0) out[site] = has
    else delete out[site]
  }
  return out
}
