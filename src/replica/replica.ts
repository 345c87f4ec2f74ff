/** The replica: a SQLite database whose synced tables exchange changes with other replicas. */
import { ConvergeError } from '../core/errors.js'
import { exceedsDrift, hlcToMillis } from '../core/hlc.js'
import { cellCovered, DEFAULT_HLC } from '../core/merge.js'
import { type AppValue, type SqlValue, sameValue, toAppValue } from '../core/values.js'
import { dominates, type VersionVector } from '../core/version-vector.js'
import type { SqliteDatabase } from '../driver/types.js'
import { ByteReader, ByteWriter } from '../wire/bytes.js'
import {
  bytesToHex,
  DecodedPayload,
  type PayloadCodec,
  PayloadEncoder,
  type PayloadHeader,
  portableCodec,
} from '../wire/payload.js'
import { readValue, writeValue } from '../wire/values.js'
import { applyPayload, type ConflictRecord, matchTables } from './apply.js'
import {
  announcedVector,
  BUNDLE_DDL,
  type BundleExportOptions,
  type BundleExportResult,
  type BundleHost,
  type BundleImportOptions,
  type BundleImportResult,
  deletePeer,
  exportBundle,
  flushRecordedPeers,
  forgetRecordedPeers,
  importBundle,
  type Peer,
  type ReplicaFiles,
  readPeers,
  recordPeer,
} from './bundles.js'
import {
  dropTombstones,
  needsSnapshot,
  raiseCompactionFloor,
  readCompactionFloor,
  rowsMissingFromSnapshot,
  seenByAll,
} from './compact.js'
import { encodeChanges, scanFloor, wireTable } from './export.js'
import { foldTable } from './fold.js'
import { keyColumns, logTable, METADATA_DDL, maskWords, PREFIX, perTableDdl, SiteTable } from './metadata.js'
import { columnsJson, reconcileTable, type StoredTable, triggersDigest } from './migrate.js'
import {
  checkTableOptions,
  childrenFirst,
  columnAlgorithm,
  readTableSchema,
  type TableOptions,
  type TableSchema,
} from './schema.js'
import { NOW_MS_SQL, quoteId } from './sql.js'
import { cached } from './statements.js'
import { SyncedTable } from './synced-table.js'
import { createTriggersSql, dropTriggersSql, OP_INSERT } from './triggers.js'

/** Options of {@link Replica}. */
export interface ReplicaOptions {
  /** Site id for a new database (32 lowercase hex chars); random by default. */
  siteId?: string
  /** Refuse payloads whose clock is further ahead of ours than this (default 5 minutes). */
  maxClockDriftMs?: number
  /** Refuse payloads larger than this many bytes (default 1 GiB). */
  maxPayloadBytes?: number
  /**
   * Run {@link Replica.compact} after an import once this many rows were deleted (locally or
   * by imports) since the last compaction; false: only when called (default 10000).
   */
  autoCompact?: number | false
  /** Deflate and SHA-256 for payloads (default: pure JS; Node's entry point passes node:zlib and node:crypto). */
  codec?: PayloadCodec
  /** File access for bundles (Node's entry point passes node:fs); without it the bundle methods fail with `BAD_ARGUMENT`. */
  files?: ReplicaFiles
  /** Network sync for {@link Replica.sync} (Node's entry point passes the HTTP client); without it `sync` fails with `BAD_ARGUMENT`. */
  sync?: SyncTransport
  /** Live sync for {@link Replica.connect} (Node's entry point passes the WebSocket client); without it `connect` fails with `BAD_ARGUMENT`. */
  live?: LiveTransport
}

/** Options of {@link Replica.sync}. */
export interface SyncOptions {
  /** Bearer token: an API key or a JWT the server accepts for this database. */
  token?: string
  /** Give up after this many milliseconds (default 60000). */
  timeoutMs?: number
}

/** Result of {@link Replica.sync}. */
export interface SyncResult {
  send: {
    status: 'synced' | 'error'
    /** Rows sent to the server. */
    rows: number
    /** This replica's own version vector entry after the round. */
    localVersion: number
    /** The server's version (newest HLC it holds), from its response. */
    serverVersion: number
  }
  receive: {
    /** Rows in the server's answer (what this replica lacked). */
    rows: number
    /** Changes that took effect here (see {@link ImportResult.applied}). */
    applied: number
    /** New entries in the conflict log. */
    conflicts: number
    /** Tables the answer changed. */
    tables: string[]
  }
}

/** What a {@link SyncTransport} may use of the replica. */
export interface SyncHost {
  readonly siteId: string
  exportChanges(since: VersionVector): Uint8Array
  importChanges(payload: Uint8Array): ImportResult
  versionVector(): VersionVector
  peers(): Peer[]
  /** A value the transport stored for this replica (e.g. a server's site id), or undefined. */
  recall(key: string): string | undefined
  remember(key: string, value: string): void
}

/** Runs one sync round with a server (src/sync/http-sync.ts). */
export type SyncTransport = (host: SyncHost, url: string, options: SyncOptions) => Promise<SyncResult>

/** Options of {@link Replica.connect}. */
export interface LiveOptions {
  /** Bearer token: an API key or a JWT the server accepts for this database. */
  token?: string
  /** First reconnection delay in milliseconds (default 250); it doubles after each failure. */
  minBackoffMs?: number
  /** Longest reconnection delay in milliseconds (default 30000). */
  maxBackoffMs?: number
  /** How often to look for local writes, in milliseconds (default 20). */
  pollMs?: number
}

/** A live session's connection state, with the last error when there was one. */
export interface LiveStatus {
  state: 'connecting' | 'online' | 'offline'
  error?: { code: string; message: string }
}

/** Remote changes a live session merged. */
export interface LiveChange {
  /** Tables the changes touched. */
  tables: string[]
  /** Rows received per table. */
  rows: Record<string, number>
  /** Changes that took effect (see {@link ImportResult.applied}). */
  applied: number
  /** New entries in the conflict log. */
  conflicts: number
}

/** Events of a {@link LiveSession}. */
export interface LiveEvents {
  change: LiveChange
  status: LiveStatus
}

/** A live connection to a sync server (see {@link Replica.connect}). */
export interface LiveSession {
  /** Subscribes to an event; returns the function that unsubscribes. */
  on<K extends keyof LiveEvents>(event: K, listener: (value: LiveEvents[K]) => void): () => void
  /** The current state. */
  readonly status: LiveStatus
  /** Stops reconnecting, closes the connection and the local-write watch. */
  close(): Promise<void>
}

/** What a {@link LiveTransport} may use of the replica. */
export interface LiveHost extends SyncHost {
  /** See {@link Replica.hasPendingChanges}. */
  hasPendingChanges(): boolean
  /** SQLite's `PRAGMA data_version`: changes when another connection commits to the file. */
  dataVersion(): number
  /** True while the app holds a transaction open on the replica's connection. */
  inTransaction(): boolean
  /** Local writes folded so far by this object: moves when an import folded writes the poll had not seen. */
  localWrites(): number
  /** Sender, vector and rows per table of a payload, read with the replica's (fast) codec. */
  payloadHeader(payload: Uint8Array): PayloadSummary
  /** `exportChanges(since)` announcing only the vector entries above `since`, for a receiver that holds it. */
  exportChangedOnly(since: VersionVector): Uint8Array
}

/** What a live session needs of a payload's header. */
export interface PayloadSummary {
  readonly sender: string
  readonly vector: VersionVector
  /** Rows per table name, for tables with rows. */
  readonly rows: Record<string, number>
}

/** Rows per table name, for the tables with rows (`counts` parallel to `tables`). */
function rowsByTable(tables: readonly { name: string }[], counts: readonly number[]): Record<string, number> {
  const rows: Record<string, number> = {}
  tables.forEach((t, i) => {
    const n = counts[i] ?? 0
    if (n > 0) rows[t.name] = n
  })
  return rows
}

/**
 * Summaries of the payloads replicas of this process just exported or imported, so that a
 * live session or the server's store need not decode them again.
 */
const summaries = new WeakMap<Uint8Array, PayloadSummary>()

/** Sender, vector and rows per table of a payload: remembered if made or merged here, else decoded. */
export function payloadSummary(payload: Uint8Array, codec: PayloadCodec): PayloadSummary {
  const known = summaries.get(payload)
  if (known) return known
  return summarize(DecodedPayload.open(payload, Number.MAX_SAFE_INTEGER, codec).header)
}

function summarize(h: PayloadHeader): PayloadSummary {
  return { sender: h.sender, vector: h.vector, rows: rowsByTable(h.tables, h.rowCounts) }
}

/** Opens a live session with a server (src/sync/ws-session.ts). */
export type LiveTransport = (host: LiveHost, url: string, options: LiveOptions) => LiveSession

/** Result of {@link Replica.importChanges}. */
export interface ImportResult {
  /** Changes that took effect: row lives started or ended, plus cells that won. */
  applied: number
  /** Concurrent writes that lost and were added to the conflict log. */
  conflicts: number
}

/** Result of {@link Replica.compact}. */
export interface CompactResult {
  /** Tombstones dropped. */
  tombstones: number
}

/** A concurrent write that lost a merge, kept so the app can restore it. */
export interface Conflict {
  id: number
  table: string
  /** Primary-key values, in key order. */
  pk: AppValue[]
  column: string
  /**
   * 'update': two concurrent writes to the cell, one kept. 'delete': the row was deleted
   * concurrently with this write, and the deletion won (then `kept` is null).
   */
  kind: 'update' | 'delete'
  /** The value the merge kept (now in the table, unless overwritten since). */
  kept: AppValue
  /** The value the merge discarded. */
  lost: AppValue
  keptSite: string
  lostSite: string
  /** Wall-clock milliseconds of the kept and lost writes (from their HLCs). */
  keptAt: number
  lostAt: number
  /** When this replica recorded the conflict (ms since epoch). */
  recordedAt: number
}

/** Progress callback: rows processed so far. */
export type ProgressCallback = (rows: number) => void

const SITE_RE = /^[0-9a-f]{32}$/
/** Imports of at most this many rows keep the capture triggers (see importChanges). */
const ECHO_GUARD_MAX_ROWS = 1000
const DEFAULT_DRIFT_MS = 5 * 60 * 1000
const DEFAULT_MAX_PAYLOAD = 1024 * 1024 * 1024
const DEFAULT_AUTO_COMPACT = 10_000

function randomSiteId(): string {
  return bytesToHex(crypto.getRandomValues(new Uint8Array(16)))
}

/**
 * An export for a receiver known to hold `since` (the sync server's live fan-out): like
 * `exportChanges(since)`, but the header announces only the vector entries above `since`
 * (and answers `since` only for those sites). Such a receiver adopts exactly what it would
 * from the whole vector: where the sender's entry is not above `since`, it holds as much
 * already. What it records of the sender (peers()) then lags behind for the entries left
 * out, which only makes it resend or keep more. Set in Replica's static block (it needs the
 * private export).
 */
export let exportChangedOnly: (replica: Replica, since: VersionVector) => Uint8Array

/** The entries of `vector` above `since`. */
function above(vector: VersionVector, since: VersionVector): VersionVector {
  const out: VersionVector = {}
  for (const site in vector) {
    const hlc = vector[site] as number
    if (hlc > (since[site] ?? 0)) out[site] = hlc
  }
  return out
}

export class Replica {
  static {
    exportChangedOnly = (replica, since) => replica.#exportPayload(since, undefined, false, true).payload
  }

  /** The database connection; the app runs plain SQL on it. */
  readonly db: SqliteDatabase
  /** This replica's site id: 32 lowercase hex chars, stable across reopen. */
  readonly siteId: string
  readonly #options: Required<Omit<ReplicaOptions, 'siteId' | 'files' | 'sync' | 'live'>>
  readonly #files: ReplicaFiles | undefined
  readonly #sync: SyncTransport | undefined
  readonly #live: LiveTransport | undefined
  readonly #sites: SiteTable
  readonly #tables = new Map<string, SyncedTable>()
  #clock: number
  /** Local log rows folded by this object (see LiveHost.localWrites). */
  #localWrites = 0
  /** PRAGMA schema_version when the synced tables were last reconciled. */
  #schemaVersion = -1
  /** Rows deleted (locally or by imports) since the last compaction, by this object. */
  #deletesSinceCompact = 0
  /**
   * `total_changes():data_version` as this object's last transaction of its own committed
   * (read just before its COMMIT, while it held the write lock; its own commit moves
   * neither). Equal at the start of the next one: nothing wrote to the file in between,
   * not this connection (total_changes) nor another (data_version), so what this object
   * holds in memory (clock, sites, vector) is still what the file says.
   */
  #signature: string | undefined
  /** PRAGMA data_version as read at the start of the current (or last) write transaction. */
  #dataVersion = -1
  /** The version vector as of the last read or write of this object; never mutated in place. */
  #vectorCache: Readonly<VersionVector> | undefined
  /** Per site, the highest HLC of any version held from it; kept like #vectorCache. */
  #heldCache: Map<string, number> | undefined

  constructor(db: SqliteDatabase, options: ReplicaOptions = {}) {
    if (options.siteId !== undefined && !SITE_RE.test(options.siteId)) {
      throw new ConvergeError('BAD_ARGUMENT', 'siteId must be 32 lowercase hex characters', { siteId: options.siteId })
    }
    this.db = db
    this.#options = Object.freeze({
      maxClockDriftMs: options.maxClockDriftMs ?? DEFAULT_DRIFT_MS,
      maxPayloadBytes: options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD,
      autoCompact: options.autoCompact ?? DEFAULT_AUTO_COMPACT,
      codec: options.codec ?? portableCodec,
    })
    this.#files = options.files
    this.#sync = options.sync
    this.#live = options.live
    db.exec('BEGIN IMMEDIATE')
    try {
      db.exec(METADATA_DDL)
      db.exec(BUNDLE_DDL)
      // Files from before per-table options and living schemas: add the columns (NULL
      // options read as the defaults; NULL columns and triggers are filled on load).
      for (const [column, type] of [
        ['options', 'TEXT'],
        ['columns', 'TEXT'],
        ['triggers', 'TEXT'],
        ['clfloor', 'INTEGER NOT NULL DEFAULT 0'],
      ]) {
        if (!db.prepare(`SELECT 1 FROM pragma_table_info('${PREFIX}tables') WHERE name = ?`).get(column)) {
          db.exec(`ALTER TABLE ${PREFIX}tables ADD COLUMN ${column} ${type}`)
        }
      }
      const get = (key: string) =>
        (db.prepare(`SELECT value FROM ${PREFIX}state WHERE key = ?`).get(key) as { value: unknown } | undefined)?.value
      let site = get('site') as string | undefined
      if (site === undefined) {
        site = options.siteId ?? randomSiteId()
        db.prepare(`INSERT INTO ${PREFIX}state (key, value) VALUES ('site', ?), ('clock', 0), ('format', 1)`).run(site)
        db.prepare(`INSERT INTO ${PREFIX}sites (idx, site) VALUES (0, ?)`).run(site)
      } else if (options.siteId !== undefined && options.siteId !== site) {
        throw new ConvergeError('BAD_ARGUMENT', `this database already has site id ${site}`, { siteId: site })
      }
      this.siteId = site
      this.#clock = Number(get('clock') ?? 0)
      this.#sites = new SiteTable(db)
      this.#syncTables()
      db.exec('COMMIT')
    } catch (err) {
      db.exec('ROLLBACK')
      throw err
    }
  }

  /**
   * Makes a table syncable; rows already in it become syncable too. Idempotent: enabling
   * a synced table again does nothing, unless `options` differ from the ones it was
   * enabled with (`BAD_ARGUMENT`: algorithms are fixed when a table is first synced).
   */
  enableSync(table: string, options?: TableOptions): void {
    this.#open()
    const wanted = checkTableOptions(table, options)
    const existing = this.#tables.get(table)
    if (existing) {
      if (options !== undefined) checkSameOptions(existing.schema, wanted)
      return
    }
    if (table.startsWith(PREFIX)) throw new ConvergeError('BAD_ARGUMENT', `${table} is an internal table`, { table })
    this.#write(() => {
      const already = this.#tables.get(table)
      if (already) {
        if (options !== undefined) checkSameOptions(already.schema, wanted)
        return
      }
      const schema = readTableSchema(this.db, table, wanted)
      for (const c of schema.data) {
        if (c.algorithm === 'lww') continue
        const types = c.algorithm === 'counter' ? `'integer', 'real'` : `'text', 'null'`
        const bad = this.db
          .prepare(`SELECT count(*) AS n FROM ${quoteId(table)} WHERE typeof(${quoteId(c.name)}) NOT IN (${types})`)
          .get() as { n: number }
        if (bad.n > 0) {
          const what = c.algorithm === 'counter' ? 'INTEGER or REAL' : 'TEXT or NULL'
          throw new ConvergeError(
            'BAD_ARGUMENT',
            `${c.algorithm} column ${c.name} of ${table} holds ${bad.n} value(s) that are not ${what}; convert them first`,
            { table, column: c.name, rows: bad.n },
          )
        }
      }
      const stored = options === undefined ? null : JSON.stringify(wanted)
      const id = Number(
        this.db
          .prepare(`INSERT INTO ${PREFIX}tables (name, hash, options, columns) VALUES (?, ?, ?, ?)`)
          .run(table, schema.hash, stored, columnsJson(schema)).lastInsertRowid,
      )
      this.db.exec(perTableDdl(id, schema.pk.length, schema.data.length))
      this.db.exec(createTriggersSql(id, schema))
      this.db.prepare(`UPDATE ${PREFIX}tables SET triggers = ? WHERE id = ?`).run(triggersDigest(id, schema), id)
      const masks = Array.from({ length: maskWords(schema.data.length) }, (_, i) => `m${i}`)
      const keys = keyColumns(schema.pk.length)
      this.db.exec(
        `INSERT INTO ${logTable(id)} (op, ts, ${[...masks, ...keys].join(', ')})
         SELECT ${OP_INSERT}, ${NOW_MS_SQL}, ${[...masks.map(() => '-1'), ...schema.pk.map((c) => quoteId(c.name))].join(', ')}
         FROM ${quoteId(table)}`,
      )
      const synced = new SyncedTable(this.db, this.#sites, id, schema)
      this.#tables.set(table, synced)
      this.#foldAll()
    })
  }

  /** Names of the synced tables. */
  syncedTables(): string[] {
    return [...this.#tables.keys()]
  }

  /** What this replica has seen: the highest HLC per origin site. */
  versionVector(): VersionVector {
    this.#open()
    return this.#write(() => {
      this.#foldAll()
      return { ...this.#vector() }
    })
  }

  /**
   * Every change not covered by `since` (the receiver's {@link versionVector}; none:
   * everything), as a binary payload for {@link importChanges}.
   */
  exportChanges(since: VersionVector = {}, onProgress?: ProgressCallback): Uint8Array {
    return this.#exportPayload(since, onProgress, false).payload
  }

  /** The export behind {@link exportChanges} and bundles; a snapshot leaves tombstones out. */
  #exportPayload(
    since: VersionVector,
    onProgress: ProgressCallback | undefined,
    snapshot: boolean,
    changedOnly = false,
  ): { payload: Uint8Array; rows: number } {
    this.#open()
    checkVector(since)
    return this.#write(() => {
      const tables = childrenFirst([...this.#tables.values()])
      const encoder = new PayloadEncoder(this.siteId, tables.map(wireTable), this.#options.codec)
      this.#foldAll()
      const held = this.#held()
      // A receiver that has seen less than the compaction floor may hold rows whose
      // deletion is gone from here: it gets every row this replica holds, live or deleted,
      // marked complete, and deletes the rows of lives it has seen that the payload lacks.
      const complete = !snapshot && needsSnapshot(this.db, since)
      const from = complete ? {} : since
      const tombstones = snapshot ? () => false : undefined
      // No other connection can commit while this transaction writes: the version read now
      // holds until it ends (see SyncedTable.changedKeys).
      const dataVersion = this.#dataVersion
      const floor = scanFloor(held, from)
      const tracked = new Set<SyncedTable>()
      const changed = (t: SyncedTable) => {
        const keys = t.changedKeys(from, held, dataVersion, floor)
        if (keys) tracked.add(t)
        return keys
      }
      encodeChanges(encoder, tables, this.#sites, from, floor, onProgress, tombstones, changed)
      // A table just scanned starts tracking afresh from here: the next export for a
      // receiver that holds this much reads only what is written from now on.
      for (const t of tables) t.startTracking(held, dataVersion, tracked.has(t))
      let vector = announcedVector(this.db, this.siteId, this.#vector(), from, snapshot || complete)
      let answers = from
      if (changedOnly && !complete) {
        // For a receiver known to hold `since`: what it does not hold is what moved above it
        // (see exportChangedOnly).
        vector = above(vector, from)
        answers = {}
        for (const site in vector) if (from[site] !== undefined) answers[site] = from[site]
      }
      const payload = encoder.finish(vector, answers, this.#clock, complete)
      summaries.set(payload, { sender: this.siteId, vector, rows: rowsByTable(tables, encoder.tableRows) })
      return { payload, rows: encoder.rows }
    })
  }

  /**
   * Drops the tombstones (metadata of deleted rows) that every peer this replica knows has
   * seen, in 'causal' tables. A peer that has seen less, or one this replica never heard
   * from, later gets a complete snapshot instead of a delta and still converges. Also runs
   * on its own after imports once `autoCompact` deletions have accumulated.
   */
  compact(): CompactResult {
    this.#open()
    return this.#write(() => this.#compact())
  }

  #compact(): CompactResult {
    this.#foldAll()
    const floor = seenByAll(
      this.#vector(),
      readPeers(this.db).map((p) => p.vector),
    )
    const tombstones = dropTombstones(this.db, [...this.#tables.values()], floor)
    if (tombstones > 0) raiseCompactionFloor(this.db, floor)
    this.#deletesSinceCompact = 0
    return { tombstones }
  }

  /** Merges a payload; atomic and idempotent. */
  importChanges(payload: Uint8Array, onProgress?: ProgressCallback): ImportResult {
    this.#open()
    const decoded = DecodedPayload.open(payload, this.#options.maxPayloadBytes, this.#options.codec)
    const { header } = decoded
    summaries.set(payload, summarize(header))
    if (header.sender === this.siteId) return { applied: 0, conflicts: 0 }
    if (exceedsDrift(header.maxHlc, Date.now(), this.#options.maxClockDriftMs)) {
      const aheadMs = hlcToMillis(header.maxHlc) - Date.now()
      throw new ConvergeError(
        'CLOCK_DRIFT',
        `sender's clock is ${Math.round(aheadMs / 1000)} s ahead of ours (limit ${this.#options.maxClockDriftMs / 1000} s); fix the clock of site ${header.sender}`,
        { site: header.sender, aheadMs, limitMs: this.#options.maxClockDriftMs },
      )
    }
    return this.#write((trusted) => {
      const matched = matchTables(decoded, this.#tables)
      // Fresh keys start above every tombstone the sender (or its peers) compacted away.
      for (const wt of header.tables) if (wt.clFloor > 0) this.#tables.get(wt.name)?.raiseClFloor(wt.clFloor)
      cached(this.db, 'PRAGMA defer_foreign_keys = ON').run()
      this.#foldAll()
      const known = this.#vector()
      // Applied changes must not be captured as local writes: triggers come off for the
      // import. Tables that foreign-key actions (CASCADE, SET NULL/DEFAULT) may change keep
      // them, so the effects of a merge on them are captured; their own echoes are removed.
      // Small payloads (live sync) keep every table's triggers and remove echoes instead:
      // dropping and re-creating triggers changes the schema, which costs more than the
      // import itself when it brings a handful of rows.
      const small = header.rowCounts.reduce((a, b) => a + b, 0) <= ECHO_GUARD_MAX_ROWS
      const fkOn = (cached(this.db, 'PRAGMA foreign_keys').get() as { foreign_keys: number }).foreign_keys === 1
      const guarded = [...this.#tables.values()].filter((t) => small || (fkOn && t.schema.fkActions))
      for (const t of this.#tables.values()) {
        if (guarded.includes(t)) t.setEchoGuard(true)
        else this.db.exec(dropTriggersSql(t.id))
      }
      let result: ReturnType<typeof applyPayload>
      try {
        result = applyPayload(decoded, matched, known, readCompactionFloor(this.db), onProgress)
      } finally {
        for (const t of guarded) t.setEchoGuard(false)
      }
      for (const t of this.#tables.values()) {
        if (guarded.includes(t)) t.markCascadeDeletesForCheck()
        else this.db.exec(createTriggersSql(t.id, t.schema))
      }
      for (const [t, rows] of result.revived) for (const { pk } of rows) t.logLocalInsert(pk)
      for (const [t, rows] of result.bumped) for (const { pk } of rows) t.bumpAboveFloor(pk)
      // Ordinary deletes with the capture triggers on: foreign-key actions apply as for any delete.
      for (const [t, keys] of result.killed) for (const pk of keys) t.deleteRowLocally(pk)
      // Rows a complete snapshot lacks were deleted: each counts as a row life ended.
      if (header.complete) result.applied += this.#deleteMissing(decoded, result.conflicts)
      this.#deletesSinceCompact += result.deleted
      this.#foldAll()
      // A revived row's new life keeps what its counter and text cells held (two replicas
      // reviving it concurrently must not count or insert it twice).
      for (const [t, rows] of result.revived) for (const { pk, was } of rows) t.carryOver(pk, was)
      for (const [t, rows] of result.bumped) for (const { pk, was } of rows) t.carryOver(pk, was)
      this.#recordConflicts(result.conflicts)
      const held = cached(this.db, `UPDATE ${PREFIX}sites SET held = max(held, ?) WHERE idx = ?`)
      for (const [site, hlc] of result.held) {
        held.run(hlc, this.#sites.idx(site))
        if (this.#heldCache && hlc > (this.#heldCache.get(site) ?? 0)) this.#heldCache.set(site, hlc)
      }
      // Adopt the sender's knowledge only if the payload answered a vector we had reached:
      // then it holds everything we lacked of what the sender had seen.
      if (result.skipped === 0 && result.unknown === 0 && dominates(known, header.since)) {
        const seen = cached(this.db, `UPDATE ${PREFIX}sites SET seen = max(seen, ?) WHERE idx = ?`)
        let moved: VersionVector | undefined
        for (const [site, hlc] of Object.entries(header.vector)) {
          // `known` was read in this transaction: only entries that move need a write.
          if (site === this.siteId || hlc <= (known[site] ?? 0)) continue
          seen.run(hlc, this.#sites.idx(site))
          ;(moved ??= {})[site] = hlc
        }
        if (moved && this.#vectorCache) this.#vectorCache = { ...this.#vectorCache, ...moved }
      }
      recordPeer(this.db, header.sender, header.vector, trusted)
      this.#setClock(Math.max(this.#clock, header.maxHlc))
      // The snapshot's sender may have compacted deletions this replica never saw: below
      // its vector, this replica too may now lack tombstones.
      if (header.complete && result.unknown === 0 && result.skipped === 0) raiseCompactionFloor(this.db, header.vector)
      const auto = this.#options.autoCompact
      if (auto !== false && this.#deletesSinceCompact >= auto) this.#compact()
      return { applied: result.applied, conflicts: result.conflicts.length }
    })
  }

  /**
   * Writes a bundle file with the changes `options.for` lacks (a peer's site id or a
   * vector; default everything), optionally a snapshot, signed or encrypted.
   */
  exportBundle(path: string, options: BundleExportOptions = {}): BundleExportResult {
    this.#open()
    return exportBundle(this.#bundleHost(), path, options)
  }

  /** Verifies, decrypts and merges a bundle file atomically; a bundle imported before is a no-op. */
  importBundle(path: string, options: BundleImportOptions = {}): BundleImportResult {
    this.#open()
    return importBundle(this.#bundleHost(), path, options)
  }

  /** The peers this replica has imported changes from, with the newest vector each announced. */
  peers(): Peer[] {
    this.#open()
    return readPeers(this.db)
  }

  /**
   * Stops waiting for a peer: {@link compact} no longer keeps tombstones it has not seen.
   * If it comes back, it is sent a complete snapshot and still converges. Returns whether
   * the peer was known.
   */
  forgetPeer(siteId: string): boolean {
    this.#open()
    return this.#write(() => deletePeer(this.db, siteId))
  }

  /**
   * One sync round with a sync server (`http(s)://HOST:PORT/db/NAME`; `ws(s)://` is mapped
   * to http(s)): sends what the server lacks, merges its answer. Failures throw
   * `ConvergeError` with the server's code, or `NETWORK`.
   */
  async sync(url: string, options: SyncOptions = {}): Promise<SyncResult> {
    this.#open()
    const transport = this.#sync
    if (!transport) throw new ConvergeError('BAD_ARGUMENT', 'this replica was opened without a sync transport')
    return transport(this.#syncHost(), url, options)
  }

  /**
   * Live sync with a sync server (`ws(s)://HOST:PORT/db/NAME`; `http(s)://` is mapped to
   * ws(s)): pushes local commits (from any connection to the file) within tens of
   * milliseconds and merges the server's changes as they happen; reconnects on its own.
   */
  connect(url: string, options: LiveOptions = {}): LiveSession {
    this.#open()
    const transport = this.#live
    if (!transport) throw new ConvergeError('BAD_ARGUMENT', 'this replica was opened without a live transport')
    const dataVersion = this.db.prepare('PRAGMA data_version')
    return transport(
      {
        ...this.#syncHost(),
        hasPendingChanges: () => this.hasPendingChanges(),
        dataVersion: () => {
          this.#open()
          return Number((dataVersion.get() as { data_version: number }).data_version)
        },
        inTransaction: () => this.db.inTransaction,
        localWrites: () => this.#localWrites,
        payloadHeader: (payload) => payloadSummary(payload, this.#options.codec),
        exportChangedOnly: (since) => exportChangedOnly(this, since),
      },
      url,
      options,
    )
  }

  /**
   * True when a synced table's change log holds writes not folded into the metadata yet
   * (writes since the last export, import or {@link versionVector}). A read, no write
   * transaction; tables another connection enabled are seen after the next write transaction.
   */
  hasPendingChanges(): boolean {
    this.#open()
    for (const t of this.#tables.values()) if (t.hasPendingWrites()) return true
    return false
  }

  #syncHost(): SyncHost {
    const key = (k: string) => `sync:${k}`
    return {
      siteId: this.siteId,
      exportChanges: (since) => this.exportChanges(since),
      importChanges: (payload) => this.importChanges(payload),
      versionVector: () => this.versionVector(),
      peers: () => this.peers(),
      recall: (k) =>
        (cached(this.db, `SELECT value FROM ${PREFIX}state WHERE key = ?`).get(key(k)) as { value: string } | undefined)
          ?.value,
      remember: (k, v) => {
        this.#open()
        cached(this.db, `INSERT OR REPLACE INTO ${PREFIX}state (key, value) VALUES (?, ?)`).run(key(k), v)
      },
    }
  }

  #bundleHost(): BundleHost {
    return {
      db: this.db,
      siteId: this.siteId,
      files: this.#files,
      codec: this.#options.codec,
      maxPayloadBytes: this.#options.maxPayloadBytes,
      exportPayload: (since, snapshot, onProgress) => this.#exportPayload(since, onProgress, snapshot),
      importChanges: (payload, onProgress) => this.importChanges(payload, onProgress),
      // A bundle import may set vector entries back (finishSnapshot): read them again after.
      write: (fn) =>
        this.#write(() => {
          try {
            return fn()
          } finally {
            this.#vectorCache = undefined
          }
        }),
      versionVector: () => this.versionVector(),
      syncedTable: (name) => this.#tables.get(name),
    }
  }

  /** Unresolved entries of the conflict log, oldest first. */
  conflicts(): Conflict[] {
    this.#open()
    const rows = this.db
      .prepare(
        `SELECT id, tbl, pk, col, kept, lost, kept_site, lost_site, kept_hlc, lost_hlc, at, kind
         FROM ${PREFIX}conflicts WHERE resolved IS NULL ORDER BY id`,
      )
      .raw()
      .safeIntegers()
      .all() as unknown[][]
    return rows.map((r) => ({
      id: Number(r[0]),
      table: r[1] as string,
      pk: decodeKey(r[2] as Uint8Array).map(toAppValue),
      column: r[3] as string,
      kind: r[11] as 'update' | 'delete',
      kept: toAppValue(r[4] as SqlValue),
      lost: toAppValue(r[5] as SqlValue),
      keptSite: r[6] as string,
      lostSite: r[7] as string,
      keptAt: hlcToMillis(Number(r[8])),
      lostAt: hlcToMillis(Number(r[9])),
      recordedAt: Number(r[10]),
    }))
  }

  /**
   * Closes a conflict: `keep` accepts the merged winner; `restore` writes the lost value
   * back as a new local write, which then syncs like any other.
   */
  resolveConflict(id: number, resolution: 'keep' | 'restore'): void {
    this.#open()
    if (resolution !== 'keep' && resolution !== 'restore') {
      throw new ConvergeError('BAD_ARGUMENT', `resolution must be 'keep' or 'restore'`, { resolution })
    }
    this.#write(() => {
      const row = this.db
        .prepare(`SELECT tbl, pk, col, lost FROM ${PREFIX}conflicts WHERE id = ? AND resolved IS NULL`)
        .safeIntegers()
        .get(id) as { tbl: string; pk: Uint8Array; col: string; lost: SqlValue } | undefined
      if (!row) throw new ConvergeError('NO_SUCH_CONFLICT', `no unresolved conflict with id ${id}`, { id })
      if (resolution === 'restore') {
        const t = this.#tables.get(row.tbl)
        if (!t) throw new ConvergeError('NOT_SYNCED', `table ${row.tbl} is not synced`, { table: row.tbl })
        const where = t.schema.pk.map((c) => `${quoteId(c.name)} = ?`).join(' AND ')
        const changed = this.db
          .prepare(`UPDATE ${quoteId(row.tbl)} SET ${quoteId(row.col)} = ? WHERE ${where}`)
          .run(row.lost, ...decodeKey(row.pk)).changes
        if (changed === 0) {
          throw new ConvergeError(
            'CONFLICT_STALE',
            `the row of conflict ${id} no longer exists; resolve it with 'keep'`,
            {
              id,
            },
          )
        }
      }
      this.db.prepare(`UPDATE ${PREFIX}conflicts SET resolved = ? WHERE id = ?`).run(resolution, id)
    })
  }

  /** Folds pending writes and closes the connection. */
  close(): void {
    if (!this.db.open) return
    try {
      this.#write(() => {
        this.#foldAll()
        flushRecordedPeers(this.db)
      })
    } finally {
      // Writes a failed fold left in the change log are folded by the next open.
      this.db.close()
    }
  }

  /** The synced table of that name, or `NOT_SYNCED`. */
  table(name: string): SyncedTable {
    const t = this.#tables.get(name)
    if (!t)
      throw new ConvergeError('NOT_SYNCED', `table ${name} is not synced; call enableSync('${name}') first`, {
        table: name,
      })
    return t
  }

  #open(): void {
    if (!this.db.open) throw new ConvergeError('CLOSED', 'the replica is closed')
  }

  /** Per site, the highest HLC of a version held from it (see _converge_sites.held). */
  #held(): ReadonlyMap<string, number> {
    if (this.#heldCache) return this.#heldCache
    const held = new Map<string, number>()
    const sites = cached(this.db, `SELECT site, held FROM ${PREFIX}sites`).raw().all() as [string, number][]
    for (const [site, hlc] of sites) held.set(site, hlc)
    if (this.db.inTransaction) this.#heldCache = held
    return held
  }

  #vector(): Readonly<VersionVector> {
    if (this.#vectorCache) return this.#vectorCache
    const out: VersionVector = {}
    const rows = cached(this.db, `SELECT site, seen FROM ${PREFIX}sites WHERE seen > 0`).raw().all() as [
      string,
      number,
    ][]
    for (const [site, seen] of rows) out[site] = seen
    // Kept only inside a transaction: #refresh drops it when another writer may have moved it.
    if (this.db.inTransaction) this.#vectorCache = out
    return out
  }

  #foldAll(): void {
    let clock = this.#clock
    let folded = 0
    for (const t of this.#tables.values()) {
      if (!t.hasPendingWrites()) continue
      const r = foldTable(t, this.siteId, clock)
      clock = r.clock
      folded += r.folded
      this.#deletesSinceCompact += r.deleted
    }
    if (folded > 0) {
      this.#localWrites += folded
      cached(this.db, `UPDATE ${PREFIX}sites SET seen = ?, held = ? WHERE idx = 0`).run(clock, clock)
      if (this.#vectorCache) this.#vectorCache = { ...this.#vectorCache, [this.siteId]: clock }
      this.#heldCache?.set(this.siteId, clock)
      this.#setClock(clock)
    }
  }

  #setClock(clock: number): void {
    if (clock === this.#clock) return
    cached(this.db, `UPDATE ${PREFIX}state SET value = ? WHERE key = 'clock'`).run(clock)
    this.#clock = clock
  }

  /**
   * A complete snapshot lacks rows its sender deleted: live rows here whose life its vector
   * covers and that it does not hold are deleted as local writes; cells the sender had not
   * seen go to the conflict log, as any update lost to a concurrent delete.
   */
  #deleteMissing(decoded: DecodedPayload, conflicts: ConflictRecord[]): number {
    const { header } = decoded
    let deleted = 0
    for (const [t, keys] of rowsMissingFromSnapshot(this.db, decoded, this.#tables)) {
      if (t.schema.rows !== 'causal') continue
      for (const pk of keys as SqlValue[][]) {
        const state = t.loadState(pk)
        const values = t.readValues(pk)
        state?.cells.forEach((cell, c) => {
          // A default cell was never written, and a write of the DEFAULT loses nothing.
          if (!cell || cell.hlc === DEFAULT_HLC || cellCovered(header.vector, cell)) return
          if (sameValue((values?.[c] ?? null) as SqlValue, t.defaultValue(c))) return
          conflicts.push({
            table: t.name,
            pk,
            column: t.schema.data[c]?.name as string,
            kind: 'delete',
            kept: null,
            lost: (values?.[c] ?? null) as SqlValue,
            keptStamp: { cl: cell.cl + 1, hlc: header.maxHlc, site: header.sender },
            lostStamp: cell,
          })
        })
        t.deleteRowLocally(pk)
        deleted++
      }
    }
    return deleted
  }

  #recordConflicts(conflicts: readonly ConflictRecord[]): void {
    if (!conflicts.length) return
    const insert = this.db.prepare(
      `INSERT OR IGNORE INTO ${PREFIX}conflicts (tbl, pk, col, kind, kept, lost, kept_site, kept_hlc, lost_site, lost_hlc, at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    )
    const now = Date.now()
    for (const c of conflicts) {
      insert.run(
        c.table,
        encodeKey(c.pk),
        c.column,
        c.kind,
        c.kept,
        c.lost,
        c.keptStamp.site,
        c.keptStamp.hlc,
        c.lostStamp.site,
        c.lostStamp.hlc,
        now,
      )
    }
  }

  /**
   * Runs `fn` in a write transaction of its own, or in a savepoint of the app's, with what
   * another connection or Replica object on the same file may have moved re-read first
   * (see #refresh). `fn` is told whether nothing wrote to the file since this object's last
   * commit (see #signature). Any error rolls everything back.
   */
  #write<T>(fn: (trusted: boolean) => T): T {
    const nested = this.db.inTransaction
    this.db.exec(nested ? 'SAVEPOINT converge_write' : 'BEGIN IMMEDIATE')
    try {
      const trusted = this.#refresh()
      const out = fn(trusted)
      // Taken before COMMIT, while no other connection can commit (data_version as read at
      // the start still holds): after it, one could slip in between and be taken for nothing.
      const signature = nested ? undefined : `${this.#totalChanges()}:${this.#dataVersion}`
      this.db.exec(nested ? 'RELEASE converge_write' : 'COMMIT')
      // The app's transaction may still roll back what this savepoint wrote.
      if (signature === undefined) this.#forget()
      else this.#signature = signature
      return out
    } catch (err) {
      if (nested) this.db.exec('ROLLBACK TO converge_write; RELEASE converge_write')
      else if (this.db.inTransaction) this.db.exec('ROLLBACK')
      for (const t of this.#tables.values()) t.discardPending()
      this.#forget()
      this.#sites.reload()
      this.#refresh()
      throw translateSqliteError(err)
    }
  }

  /** Re-reads what other writers may have moved; true when nothing did (see #signature). */
  #refresh(): boolean {
    this.#dataVersion = Number((cached(this.db, 'PRAGMA data_version').get() as { data_version: number }).data_version)
    const trusted = this.#signature !== undefined && this.#signature === `${this.#totalChanges()}:${this.#dataVersion}`
    if (!trusted) {
      // Peer vectors kept in memory were recorded by transactions that committed (a
      // rollback drops them): merge them into what another writer may have stored.
      if (this.db.inTransaction) flushRecordedPeers(this.db)
      this.#forget()
      const row = cached(this.db, `SELECT value FROM ${PREFIX}state WHERE key = 'clock'`).get() as { value: number }
      this.#clock = Number(row.value)
      this.#sites.refresh()
    }
    // DDL moves neither total_changes nor, on this connection, data_version.
    this.#syncTables(trusted)
    return trusted
  }

  #totalChanges(): number {
    return (cached(this.db, 'SELECT total_changes() AS n').get() as { n: number }).n
  }

  /** Drops what this object holds in memory of the file's sync state. */
  #forget(): void {
    this.#signature = undefined
    this.#vectorCache = undefined
    this.#heldCache = undefined
    forgetRecordedPeers(this.db)
  }

  /**
   * Picks up synced tables registered by this or another connection, and follows schema
   * changes made with plain SQL since the last look (PRAGMA schema_version moves on any
   * DDL): metadata and triggers are brought up to date (see migrate.ts).
   */
  #syncTables(trusted = false): void {
    const version = (cached(this.db, 'PRAGMA schema_version').get() as { schema_version: number }).schema_version
    if (version === this.#schemaVersion) {
      // Nothing wrote to the file since this object's last commit: the tables are as then.
      if (trusted) return
      // The common case, nothing changed: a count, not the stored descriptions, tells.
      const count = (cached(this.db, `SELECT count(*) AS n FROM ${PREFIX}tables`).get() as { n: number }).n
      if (count === this.#tables.size) return
    }
    const rows = cached(
      this.db,
      `SELECT id, name, hash, options, columns, triggers, clfloor FROM ${PREFIX}tables`,
    ).all() as StoredTable[]
    for (const stored of rows) {
      const known = this.#tables.get(stored.name)
      const { schema, rebuilt } = reconcileTable(this.db, stored, known?.schema)
      if (rebuilt) {
        const table = new SyncedTable(this.db, this.#sites, stored.id, schema, Number(stored.clfloor))
        // A migration may rewrite metadata rows behind the tracker's back (added columns
        // turn uniform rows into rows with default cells): exports scan until it restarts.
        table.stopTracking()
        this.#tables.set(stored.name, table)
      } else if (known && Number(stored.clfloor) > known.clFloor) {
        known.clFloor = Number(stored.clfloor) // raised by another connection
      }
    }
    // Read again: the reconciliation may itself have changed the schema (triggers).
    this.#schemaVersion = (cached(this.db, 'PRAGMA schema_version').get() as { schema_version: number }).schema_version
  }
}

/** Refuses to re-enable a synced table with other options than it has. */
function checkSameOptions(schema: TableSchema, wanted: Required<TableOptions>): void {
  const mismatch =
    schema.rows !== wanted.rows ||
    schema.data.some((c) => {
      const w = columnAlgorithm(wanted.columns[c.name])
      return c.algorithm !== w.algorithm || c.delimiter !== w.delimiter
    })
  if (mismatch) {
    throw new ConvergeError(
      'BAD_ARGUMENT',
      `table ${schema.name} is already synced with other options; algorithms and row modes are fixed when a table is first synced`,
      { table: schema.name },
    )
  }
}

function translateSqliteError(err: unknown): unknown {
  if (err instanceof ConvergeError) return err
  const code = (err as { code?: unknown })?.code
  if (typeof code === 'string' && (code.startsWith('SQLITE_CONSTRAINT') || code === 'SQLITE_MISMATCH')) {
    return new ConvergeError(
      'CONSTRAINT',
      `a merged change violates a constraint: ${(err as Error).message}`,
      { sqlite: code },
      { cause: err },
    )
  }
  return err
}

function checkVector(v: unknown): asserts v is VersionVector {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new ConvergeError('BAD_ARGUMENT', 'a version vector must be an object of site id to number')
  }
  for (const [site, hlc] of Object.entries(v)) {
    if (!SITE_RE.test(site) || !Number.isSafeInteger(hlc) || (hlc as number) < 0) {
      throw new ConvergeError('BAD_ARGUMENT', `bad version vector entry ${site}: ${String(hlc)}`, { site })
    }
  }
}

function encodeKey(pk: readonly SqlValue[]): Uint8Array {
  const w = new ByteWriter(32)
  w.uvarint(pk.length)
  for (const v of pk) writeValue(w, v)
  return w.finish().slice()
}

function decodeKey(bytes: Uint8Array): SqlValue[] {
  const r = new ByteReader(bytes)
  const n = r.count()
  return Array.from({ length: n }, () => readValue(r))
}
