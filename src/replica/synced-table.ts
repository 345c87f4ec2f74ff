/** A synced table: its schema, its metadata tables and the prepared statements that touch them. */
import { HLC_TICKS_PER_MS } from '../core/hlc.js'
import { getOrCreate } from '../core/maps.js'
import { isAlive, type RowState, revivedCounterCell, revivedTextCell } from '../core/merge.js'
import type { SqlValue } from '../core/values.js'
import type { VersionVector } from '../core/version-vector.js'
import type { SqliteDatabase, SqliteStatement } from '../driver/types.js'
import { keyString, mapKey } from './fold.js'
import { KeyFilter } from './key-filter.js'
import {
  decodeRow,
  encodeRow,
  keyColumns,
  logTable,
  maskWords,
  PREFIX,
  rowsTable,
  type SiteTable,
  type StoredRow,
} from './metadata.js'
import type { TableSchema } from './schema.js'
import { NOW_MS_SQL, placeholders, quoteId } from './sql.js'
import { cached } from './statements.js'
import { OP_CHECK, OP_DELETE, OP_INSERT } from './triggers.js'

/** A UTF-16 surrogate code unit (no `u` flag: the class matches code units). */
const SURROGATE = /[\uD800-\uDFFF]/

/** True when `s` holds a UTF-16 surrogate (a character beyond U+FFFF). */
function hasSurrogates(s: string): boolean {
  return SURROGATE.test(s)
}

/** Rows of the change log read per fold step; bounds the memory a fold uses. */
export const FOLD_BATCH = 8192
/** Rows per multi-row INSERT of keys never seen before. */
const INSERT_BATCH = 64
/** Below this many leading inserts, the row-by-row fold is as fast as the bulk one. */
const BULK_FOLD_MIN = 256
/** Keys per existence query. */
const KEY_LOOKUP_BATCH = 500
/** Beyond this many keys a change tracker is dropped (memory: about 150 bytes a key); the next export scans and starts it again. */
const MAX_TRACKED = 5000
/** A tracker an export read from is started afresh past this many keys (see startTracking). */
const KEEP_TRACKED = 500
/** Largest key list of one tracked-export query; shorter lists are padded to a power of two. */
const TRACKED_QUERY_KEYS = 256

/**
 * The keys whose metadata rows were written on one connection since `from` was taken: every
 * metadata write of a table goes through {@link SyncedTable} (the bulk fold drops the
 * tracker instead), so while no other connection committed (`dataVersion`), a row whose
 * newest stamp from a site is above what was held of that site in `from` is among `keys`.
 * Exports for a receiver that holds `from` of every site it lacks read those rows by key
 * instead of scanning the table: a live session's one-row push no longer costs a pass over
 * every metadata row. Kept per connection, so that every Replica object on it records into
 * it; a rollback can only leave keys whose rows did not change, which exports skip.
 */
interface ChangeTracker {
  readonly dataVersion: number
  readonly from: ReadonlyMap<string, number>
  /**
   * By key: the key and the row's newest stamp (`clh + md`) as last written, and when the
   * row's only version is its row stamp (`v` NULL: a uniform live row or a bare tombstone),
   * that stamp's site number, so that a receiver that holds it is not even read for.
   */
  readonly keys: Map<string, { readonly pk: readonly SqlValue[]; readonly newest: number; readonly site: number }>
}

const trackers = new WeakMap<SqliteDatabase, Map<number, ChangeTracker>>()

function powerOfTwoAtLeast(n: number): number {
  let size = 1
  while (size < n) size *= 2
  return size
}

/** `key IN (?, ...)` (or a row-value list for composite keys) for `size` keys. */
function keyIn(keys: readonly string[], size: number, prefix: string): string {
  if (keys.length === 1) return `${prefix}${keys[0]} IN (${placeholders(size)})`
  const tuple = `(${placeholders(keys.length)})`
  return `(${keys.map((key) => `${prefix}${key}`).join(', ')}) IN (VALUES ${Array.from({ length: size }, () => tuple).join(', ')})`
}

/** The values of `pks` (`k` columns each), padded with NULL keys, which match nothing, to `size` keys. */
function paddedKeys(pks: readonly (readonly SqlValue[])[], k: number, size: number): SqlValue[] {
  const out: SqlValue[] = []
  for (const pk of pks) for (let c = 0; c < k; c++) out.push(pk[c] as SqlValue)
  for (let p = pks.length * k; p < size * k; p++) out.push(null)
  return out
}

export class SyncedTable {
  readonly id: number
  readonly schema: TableSchema
  /** Data column indexes of counter columns. */
  readonly counters: readonly number[]
  /** Data column indexes of text columns. */
  readonly texts: readonly number[]
  /**
   * The highest causal length of a tombstone compacted away here or by a peer we heard
   * from (even; 0: none). A key with no state starts its first life above it.
   */
  clFloor: number
  readonly #db: SqliteDatabase
  readonly #sites: SiteTable
  readonly #getRow: SqliteStatement
  readonly #putRow: SqliteStatement
  readonly #updateRow: SqliteStatement
  readonly #logBatch: SqliteStatement
  readonly #logClear: SqliteStatement
  readonly #logAny: SqliteStatement
  readonly #readValues: SqliteStatement
  readonly #deleteRow: SqliteStatement
  readonly #rowExists: SqliteStatement
  readonly #logMax: SqliteStatement
  readonly #logEcho: SqliteStatement
  readonly #lastKey: SqliteStatement
  #utf8: boolean | undefined
  #echoGuard = false
  readonly #inserts = new Map<string, SqliteStatement>()
  /**
   * Multi-row statements by size and kind: INSERTs of a power of two of rows (keyed
   * `${rows} ${SQL before the rows}`) and the batch echo DELETEs (`${keys} echo`).
   */
  readonly #multi = new Map<string, SqliteStatement>()
  /** SQL of the multi-row INSERTs before the rows: user table, metadata table. */
  #rowsInsert: string | undefined
  #statesInsert: string | undefined
  /** The statements of {@link changedPages}: first page, and the page after a key. */
  #changed: { size: number; first: SqliteStatement; next: SqliteStatement } | undefined
  /** Existence queries by number of keys, a power of two (lists are padded with NULL keys). */
  readonly #lookups = new Map<number, SqliteStatement>()
  /** The tracked-export queries ({@link changedRowsOf}) by number of keys, a power of two. */
  readonly #byKey = new Map<number, SqliteStatement>()
  #freshRows: unknown[] = []
  /** Keys of queued rows whose log rows must go after their insert (see setEchoGuard). */
  #freshEchoes: (readonly SqlValue[])[] = []
  #freshRowCount = 0
  #freshStates: unknown[] = []
  #freshStateCount = 0
  readonly #updates = new Map<string, SqliteStatement>()
  /** `WHERE` clause matching the user table's key columns to parameters. */
  readonly #keyWhere: string

  constructor(db: SqliteDatabase, sites: SiteTable, id: number, schema: TableSchema, clFloor = 0) {
    this.#db = db
    this.#sites = sites
    this.id = id
    this.schema = schema
    this.counters = schema.data.flatMap((c, i) => (c.algorithm === 'counter' ? [i] : []))
    this.texts = schema.data.flatMap((c, i) => (c.algorithm === 'text' ? [i] : []))
    this.clFloor = clFloor
    const keys = keyColumns(schema.pk.length)
    const keyMatch = keys.map((k) => `${k} = ?`).join(' AND ')
    const table = quoteId(schema.name)
    this.#keyWhere = schema.pk.map((c) => `${quoteId(c.name)} = ?`).join(' AND ')
    this.#getRow = db.prepare(`SELECT cl, clh, cls, md, v FROM ${rowsTable(id)} WHERE ${keyMatch}`).raw()
    this.#updateRow = db.prepare(
      `UPDATE ${rowsTable(id)} SET cl = ?, clh = ?, cls = ?, md = ?, v = ? WHERE ${keyMatch}`,
    )
    this.#putRow = db.prepare(
      `INSERT OR REPLACE INTO ${rowsTable(id)} (${keys.join(', ')}, cl, clh, cls, md, v) VALUES (${placeholders(keys.length + 5)})`,
    )
    const masks = Array.from({ length: maskWords(schema.data.length) }, (_, i) => `m${i}`)
    this.#logBatch = db
      .prepare(
        `SELECT seq, op, ts, ${[...masks, ...keys].join(', ')} FROM ${logTable(id)} WHERE seq > ? ORDER BY seq LIMIT ${FOLD_BATCH}`,
      )
      .raw()
      .safeIntegers()
    this.#logClear = db.prepare(`DELETE FROM ${logTable(id)} WHERE seq <= ?`)
    this.#logAny = db.prepare(`SELECT 1 FROM ${logTable(id)} LIMIT 1`).raw()
    const dataList = schema.data.length ? schema.data.map((c) => quoteId(c.name)).join(', ') : 'NULL'
    this.#readValues = db.prepare(`SELECT ${dataList} FROM ${table} WHERE ${this.#keyWhere}`).raw().safeIntegers()
    this.#deleteRow = db.prepare(`DELETE FROM ${table} WHERE ${this.#keyWhere}`)
    this.#rowExists = db.prepare(`SELECT 1 FROM ${table} WHERE ${this.#keyWhere}`).raw()
    this.#logMax = db.prepare(`SELECT max(seq) AS m FROM ${logTable(id)}`)
    this.#lastKey = db
      .prepare(`SELECT ${keys[0]} FROM ${rowsTable(id)} ORDER BY ${keys[0]} DESC LIMIT 1`)
      .raw()
      .safeIntegers()
    this.#logEcho = db.prepare(
      `DELETE FROM ${logTable(id)} WHERE seq > ? AND ${keys.map((k) => `${k} IS ?`).join(' AND ')}`,
    )
  }

  get name(): string {
    return this.schema.name
  }

  get dataCount(): number {
    return this.schema.data.length
  }

  /** True when the change log holds writes not yet folded. */
  hasPendingWrites(): boolean {
    return this.#logAny.get() !== undefined
  }

  /**
   * Set-based fold for the bulk-load case: when the pending log starts with inserts of keys
   * this replica has never seen, none repeated, each becomes a fresh row state in one
   * statement (the metadata table's primary key rejects anything else, and the savepoint
   * undoes the attempt). With r_i = seq_i - minSeq + 1 (strictly increasing), HLCs are
   * hlc_i = r_i + max(base, max over j <= i of (ts_j * 1024 - r_j)): strictly increasing,
   * above `base`, never before the write's wall time, and equal to the row-by-row fold's
   * max(hlc_{i-1} + 1, ts_i * 1024) when seqs are contiguous. Returns the last HLC and
   * the number of log rows folded, or null
   * when the log does not qualify (the caller then folds row by row).
   */
  foldFreshInserts(base: number): { clock: number; folded: number } | null {
    // Counter and text cells carry parts and blocks that a uniform metadata row cannot hold.
    if (this.counters.length || this.texts.length) return null
    const keys = keyColumns(this.schema.pk.length).join(', ')
    const log = logTable(this.id)
    const other = cached(this.#db, `SELECT min(seq) AS s FROM ${log} WHERE op <> ${OP_INSERT}`).get() as {
      s: number | null
    }
    const range = other.s === null ? '' : `WHERE seq < ${other.s}`
    const s = cached(
      this.#db,
      `SELECT count(*) AS n, min(seq) AS lo, max(seq) AS hi, max(ts * ${HLC_TICKS_PER_MS} - seq) AS lead FROM ${log} WHERE seq < ?`,
    ).get(other.s ?? Number.MAX_SAFE_INTEGER) as { n: number; lo: number | null; hi: number; lead: number }
    if (s.lo === null || s.n < BULK_FOLD_MIN) return null
    const hlc = `(seq - ${s.lo} + 1) + max(?, max(ts * ${HLC_TICKS_PER_MS} - seq) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) + ${s.lo - 1})`
    const staged = quoteId(`${PREFIX}fold_${this.id}`)
    // Rows written here are not seen one by one: exports scan until tracking starts again.
    this.stopTracking()
    this.#db.exec('SAVEPOINT converge_fold')
    try {
      // Staged in the temporary database, in key order (random-order inserts into the
      // key-ordered table cost twice as much), so that the log rows can go first: the
      // metadata rows then reuse the pages they freed instead of growing the file.
      this.#db
        .prepare(
          `CREATE TEMP TABLE ${staged} AS SELECT ${keys}, h FROM (SELECT ${keys}, ${hlc} AS h FROM ${log} ${range}) ORDER BY ${keys}`,
        )
        .run(base)
      this.#db.prepare(`DELETE FROM ${log} WHERE seq <= ?`).run(s.hi)
      this.#db.exec(
        `INSERT INTO ${rowsTable(this.id)} (${keys}, cl, clh, cls, md, v)
         SELECT ${keys}, ${this.clFloor + 1}, h, 0, 0, NULL FROM temp.${staged} ORDER BY rowid`,
      )
    } catch (err) {
      this.#db.exec(`ROLLBACK TO converge_fold; RELEASE converge_fold; DROP TABLE IF EXISTS temp.${staged}`)
      if (String((err as { code?: unknown }).code).startsWith('SQLITE_CONSTRAINT')) return null
      throw err
    }
    this.#db.exec(`RELEASE converge_fold; DROP TABLE temp.${staged}`)
    return { clock: s.hi - s.lo + 1 + Math.max(base, s.lead + s.lo - 1), folded: s.n }
  }

  /**
   * After a row was revived (a new life written locally over a deletion), its counter and
   * text cells take the parts and blocks they held in the old life, as they were: every
   * replica that revives the row carries the same ones, so they join instead of adding up.
   * Each such cell also gets one version of the revival's own (see revivedCounterCell): the
   * carried ones may be covered for a peer that started the same life concurrently.
   */
  carryOver(pk: readonly SqlValue[], was: RowState): void {
    const state = this.loadState(pk)
    if (state === null || !isAlive(state.cl) || (this.counters.length === 0 && this.texts.length === 0)) return
    const cells = state.cells.slice()
    for (const c of this.counters) {
      const parts = was.cells[c]?.parts
      if (parts) cells[c] = revivedCounterCell(state.cl, parts, state.clStamp)
    }
    for (const c of this.texts) {
      const blocks = was.cells[c]?.blocks
      if (blocks) cells[c] = revivedTextCell(state.cl, blocks, state.clStamp)
    }
    this.saveState(pk, { ...state, cells }, true)
  }

  /**
   * Filters of the keys whose tombstones were compacted here, each with the causal length
   * of those tombstones (one per compaction and length; loaded lazily).
   */
  #compactedKeys: { cl: number; filter: KeyFilter }[] | undefined

  /** Records the keys whose tombstones a compaction dropped, with the tombstones' causal lengths. */
  recordCompacted(dropped: readonly { pk: readonly SqlValue[]; cl: number }[]): void {
    const byCl = new Map<number, string[]>()
    for (const { pk, cl } of dropped) getOrCreate(byCl, cl, (): string[] => []).push(keyString(pk as SqlValue[]))
    for (const [cl, keys] of byCl) {
      const filter = KeyFilter.of(keys)
      cached(this.#db, `INSERT INTO ${PREFIX}compacted (tbl, cl, keys) VALUES (?, ?, ?)`).run(
        this.id,
        cl,
        filter.encode(),
      )
      this.#compactedKeys?.push({ cl, filter })
    }
  }

  /**
   * False when the key certainly had no tombstone compacted away here that would beat a
   * life of causal length `cl`.
   */
  mayBeCompacted(pk: readonly SqlValue[], cl: number): boolean {
    if (this.clFloor <= cl) return false
    this.#compactedKeys ??= (
      cached(this.#db, `SELECT cl, keys FROM ${PREFIX}compacted WHERE tbl = ?`).all(this.id) as {
        cl: number
        keys: Uint8Array
      }[]
    ).map((r) => ({ cl: Number(r.cl), filter: KeyFilter.decode(r.keys) }))
    const key = keyString(pk as SqlValue[])
    return this.#compactedKeys.some((f) => f.cl > cl && f.filter.mayHave(key))
  }

  /** Raises the causal-length floor (see {@link clFloor}); stored with the table. */
  raiseClFloor(cl: number): void {
    // Only 'causal' tables are compacted; the floor means nothing for the others.
    if (cl <= this.clFloor || this.schema.rows !== 'causal' || cl % 2 === 1) return
    this.clFloor = cl
    cached(this.#db, `UPDATE ${PREFIX}tables SET clfloor = ? WHERE id = ?`).run(cl, this.id)
  }

  /**
   * Makes the next fold start a new life of a row above the causal-length floor: its state
   * is forgotten (the fold starts a key without one above the floor) and a local insert of
   * every column is logged.
   */
  bumpAboveFloor(pk: readonly SqlValue[]): void {
    const keys = keyColumns(this.schema.pk.length)
    cached(this.#db, `DELETE FROM ${rowsTable(this.id)} WHERE ${keys.map((k) => `${k} = ?`).join(' AND ')}`).run(...pk)
    this.logLocalInsert(pk)
  }

  /** Logs a write of every column of a row, as the INSERT trigger would (the fold stamps it). */
  logLocalInsert(pk: readonly SqlValue[]): void {
    const masks = Array.from({ length: maskWords(this.dataCount) }, (_, i) => `m${i}`)
    const keys = keyColumns(this.schema.pk.length)
    cached(
      this.#db,
      `INSERT INTO ${logTable(this.id)} (op, ts, ${[...masks, ...keys].join(', ')}) VALUES (${OP_INSERT}, ${NOW_MS_SQL}, ${[...masks.map(() => '-1'), ...keys.map(() => '?')].join(', ')})`,
    ).run(...pk)
  }

  /** Up to {@link FOLD_BATCH} log rows after `seq`: [seq, op, ts, ...masks, ...key]. */
  logBatch(afterSeq: bigint): unknown[][] {
    return this.#logBatch.all(afterSeq) as unknown[][]
  }

  clearLog(throughSeq: bigint): void {
    this.#logClear.run(throughSeq)
  }

  /** Decodes a stored metadata row ([cl, clh, cls, md, v]) of this table. */
  decodeStored(stored: StoredRow): RowState {
    return decodeRow(stored, this.dataCount, this.#sites)
  }

  /** The merge state of a key, or null when the replica has never seen it. */
  loadState(pk: readonly SqlValue[]): RowState | null {
    const stored = this.#getRow.get(...pk) as StoredRow | undefined
    return stored === undefined ? null : decodeRow(stored, this.dataCount, this.#sites)
  }

  /** Writes a key's merge state; `existing` (it has one already) allows an in-place update. */
  saveState(pk: readonly SqlValue[], state: RowState, existing = false): void {
    const stored = encodeRow(state, this.#sites)
    if (existing) this.#updateRow.run(...stored, ...pk)
    else this.#putRow.run(...pk, ...stored)
    this.#track(pk, stored)
  }

  /** Records that the metadata row of `pk` was written as `stored` (see {@link ChangeTracker}). */
  #track(pk: readonly SqlValue[], stored: readonly [number, number, number, number, Uint8Array | null]): void {
    const tracker = trackers.get(this.#db)?.get(this.id)
    if (tracker === undefined) return
    const [, clh, cls, md, v] = stored
    tracker.keys.set(mapKey(pk as SqlValue[]), { pk, newest: clh + md, site: v === null ? cls : -1 })
    if (tracker.keys.size > MAX_TRACKED) this.stopTracking()
  }

  /**
   * Starts recording written keys from now (`held`: what is held of each site now), unless
   * a tracker runs, `keep` is set (the export that calls this read its keys) and it holds
   * at most {@link KEEP_TRACKED} keys: past that, starting afresh keeps it small, and a
   * receiver that imports this export holds what a fresh start asks.
   */
  startTracking(held: ReadonlyMap<string, number>, dataVersion: number, keep: boolean): void {
    const mine = getOrCreate(trackers, this.#db, () => new Map<number, ChangeTracker>())
    if (keep && (mine.get(this.id)?.keys.size ?? Number.POSITIVE_INFINITY) <= KEEP_TRACKED) return
    mine.set(this.id, { dataVersion, from: new Map(held), keys: new Map() })
  }

  stopTracking(): void {
    trackers.get(this.#db)?.delete(this.id)
  }

  /**
   * The keys an export for `since` must look at, when the tracker can tell (no other
   * connection committed since it started, and `since` holds what was held then of every
   * site the receiver lacks); undefined: scan the table.
   */
  changedKeys(
    since: VersionVector,
    held: ReadonlyMap<string, number>,
    dataVersion: number,
    floor: number,
  ): SqlValue[][] | undefined {
    const tracker = trackers.get(this.#db)?.get(this.id)
    if (tracker === undefined) return undefined
    if (tracker.dataVersion !== dataVersion) {
      this.stopTracking()
      return undefined
    }
    for (const [site, hlc] of held) {
      const has = since[site] ?? 0
      if (hlc > has && has < (tracker.from.get(site) ?? 0)) return undefined
    }
    const keys: SqlValue[][] = []
    for (const { pk, newest, site } of tracker.keys.values()) {
      if (newest <= floor || (site >= 0 && newest <= (since[this.#sites.hex(site)] ?? 0))) continue
      keys.push(pk as SqlValue[])
    }
    return keys
  }

  /** The keys among `pks` that have merge state here, as {@link mapKey}s. */
  existingKeys(pks: readonly (readonly SqlValue[])[]): Set<string> {
    const found = new Set<string>()
    if (this.#allAfterLast(pks)) return found
    const k = this.schema.pk.length
    const keys = keyColumns(k)
    for (let i = 0; i < pks.length; i += KEY_LOOKUP_BATCH) {
      const part = pks.slice(i, i + KEY_LOOKUP_BATCH)
      const size = powerOfTwoAtLeast(part.length)
      let stmt = this.#lookups.get(size)
      if (!stmt) {
        stmt = this.#db
          .prepare(`SELECT ${keys.join(', ')} FROM ${rowsTable(this.id)} WHERE ${keyIn(keys, size, '')}`)
          .raw()
          .safeIntegers()
        this.#lookups.set(size, stmt)
      }
      const rows = stmt.all(...paddedKeys(part, k, size)) as SqlValue[][]
      for (const row of rows) found.add(mapKey(row))
    }
    return found
  }

  /**
   * True when every key is certainly after the last key of the metadata table (or the table
   * is empty), so none has state here: an initial sync arrives in key order, and this saves
   * looking each key up. Decided only for single text keys whose JavaScript order is
   * SQLite's (no UTF-16 surrogates, so code-unit order is UTF-8 byte order) and for integer
   * keys; anything else answers false.
   */
  #allAfterLast(pks: readonly (readonly SqlValue[])[]): boolean {
    // A few keys are looked up as cheaply as the last key is found.
    if (this.schema.pk.length !== 1 || pks.length < INSERT_BATCH) return false
    // BINARY compares the stored bytes: code-unit order only in a UTF-8 database.
    this.#utf8 ??= (cached(this.#db, 'PRAGMA encoding').get() as { encoding: string }).encoding === 'UTF-8'
    if (!this.#utf8) return false
    const last = (this.#lastKey.get() as [SqlValue] | undefined)?.[0]
    if (last === undefined) return true
    if (typeof last === 'string') {
      if (hasSurrogates(last)) return false
      return pks.every((pk) => {
        const v = pk[0]
        return typeof v === 'string' && v > last && !hasSurrogates(v)
      })
    }
    if (typeof last === 'bigint') {
      // Numbers sort before text and blobs in SQLite; text and blob keys come after any integer.
      return pks.every((pk) => {
        const v = pk[0]
        return (typeof v === 'bigint' && v > last) || (typeof v === 'string' && !hasSurrogates(v))
      })
    }
    return false
  }

  /**
   * Queues a key never seen here: its merge state and, when `values` holds every data
   * column, the row itself. Queued rows are written by {@link flushFresh} in multi-row
   * statements, which costs far less per row than one statement each.
   */
  queueFresh(pk: readonly SqlValue[], state: RowState, values: readonly SqlValue[] | null): void {
    if (values !== null) {
      // With the capture triggers on, the batch's log rows are removed after its insert.
      if (this.#echoGuard) this.#freshEchoes.push(pk)
      const rows = this.#freshRows
      for (let i = 0; i < pk.length; i++) rows.push(pk[i])
      for (let i = 0; i < values.length; i++) rows.push(values[i])
      if (++this.#freshRowCount === INSERT_BATCH) this.#flushRows()
    }
    const states = this.#freshStates
    for (let i = 0; i < pk.length; i++) states.push(pk[i])
    const stored = encodeRow(state, this.#sites)
    states.push(stored[0], stored[1], stored[2], stored[3], stored[4])
    this.#track(pk, stored)
    if (++this.#freshStateCount === INSERT_BATCH) this.#flushStates()
  }

  /** Writes everything {@link queueFresh} holds. */
  flushFresh(): void {
    this.#flushRows()
    this.#flushStates()
  }

  /**
   * While on, this table's triggers stay installed during an import, and each write the
   * import makes removes the log rows it produced for its own key: what remains in the log
   * afterwards is what foreign-key actions did.
   */
  setEchoGuard(on: boolean): void {
    this.#echoGuard = on
  }

  /**
   * After an import, deletions logged by foreign-key actions may have been overtaken by a
   * merged row with the same key: the fold checks whether the row is really gone.
   */
  markCascadeDeletesForCheck(): void {
    cached(this.#db, `UPDATE ${logTable(this.id)} SET op = ${OP_CHECK} WHERE op = ${OP_DELETE}`).run()
  }

  /** Runs one of the import's own writes to the user table. */
  #own(pk: readonly SqlValue[], write: () => void): void {
    if (this.#echoGuard) this.#withoutEcho(pk, write)
    else write()
  }

  /** Runs a write to the user table and removes the log rows it produced for its key. */
  #withoutEcho(pk: readonly SqlValue[], write: () => void): void {
    const before = (this.#logMax.get() as { m: number | null }).m ?? 0
    write()
    this.#logEcho.run(before, ...pk)
  }

  /** Drops queued writes (after a rollback they belong to nothing). */
  discardPending(): void {
    this.#freshEchoes = []
    this.#freshRows = []
    this.#freshRowCount = 0
    this.#freshStates = []
    this.#freshStateCount = 0
  }

  #flushRows(): void {
    const count = this.#freshRowCount
    if (count === 0) return
    const params = this.#freshRows
    this.#freshRows = []
    this.#freshRowCount = 0
    const width = this.schema.pk.length + this.dataCount
    this.#rowsInsert ??= `INSERT INTO ${quoteId(this.name)} (${[...this.schema.pk, ...this.schema.data].map((c) => quoteId(c.name)).join(', ')}) VALUES`
    const echoes = this.#freshEchoes
    if (echoes.length === 0) {
      this.#multiInsert(this.#rowsInsert, width, count, params)
      return
    }
    this.#freshEchoes = []
    const before = (this.#logMax.get() as { m: number | null }).m ?? 0
    this.#multiInsert(this.#rowsInsert, width, count, params)
    // What the insert trigger logged for these keys is the import's own echo.
    const size = powerOfTwoAtLeast(echoes.length)
    const k = this.schema.pk.length
    this.#echoDelete(size).run(before, ...paddedKeys(echoes, k, size))
  }

  /** `DELETE` of the log rows after a sequence number for `size` keys. */
  #echoDelete(size: number): SqliteStatement {
    const key = `${size} echo`
    let stmt = this.#multi.get(key)
    if (!stmt) {
      const keys = keyColumns(this.schema.pk.length)
      stmt = this.#db.prepare(`DELETE FROM ${logTable(this.id)} WHERE seq > ? AND ${keyIn(keys, size, '')}`)
      this.#multi.set(key, stmt)
    }
    return stmt
  }

  #flushStates(): void {
    const count = this.#freshStateCount
    if (count === 0) return
    const params = this.#freshStates
    this.#freshStates = []
    this.#freshStateCount = 0
    const k = this.schema.pk.length
    this.#statesInsert ??= `INSERT INTO ${rowsTable(this.id)} (${keyColumns(k).join(', ')}, cl, clh, cls, md, v) VALUES`
    this.#multiInsert(this.#statesInsert, k + 5, count, params)
  }

  #multiInsert(prefix: string, width: number, count: number, params: unknown[]): void {
    // In pieces of powers of two (45 rows: 32 + 8 + 4 + 1), so that seven statements per
    // prefix serve every count: preparing costs more than a small insert, and a process
    // with hundreds of replicas cannot keep one statement per count for each.
    let at = 0
    for (let piece = INSERT_BATCH; piece >= 1; piece /= 2) {
      while (count - at >= piece) {
        const key = `${piece} ${prefix}`
        let stmt = this.#multi.get(key)
        if (!stmt) {
          const tuple = `(${placeholders(width)})`
          stmt = this.#db.prepare(`${prefix} ${Array.from({ length: piece }, () => tuple).join(', ')}`)
          this.#multi.set(key, stmt)
        }
        stmt.run(...(piece === count ? params : params.slice(at * width, (at + piece) * width)))
        at += piece
      }
    }
  }

  /** Current values of the data columns of a live row, or undefined. */
  readValues(pk: readonly SqlValue[]): SqlValue[] | undefined {
    return this.#readValues.get(...pk) as SqlValue[] | undefined
  }

  /** True when the user table holds a row with this key. */
  rowExists(pk: readonly SqlValue[]): boolean {
    return this.#rowExists.get(...pk) !== undefined
  }

  /** Deletes a row as the app would: the capture triggers log it as a local write. */
  deleteRowLocally(pk: readonly SqlValue[]): void {
    this.#deleteRow.run(...pk)
  }

  deleteRow(pk: readonly SqlValue[]): void {
    this.#own(pk, () => this.#deleteRow.run(...pk))
  }

  /** Inserts a row with the given data columns (others take their defaults). */
  insertRow(pk: readonly SqlValue[], columns: readonly number[], values: readonly SqlValue[]): void {
    const sig = columns.join(',')
    let stmt = this.#inserts.get(sig)
    if (!stmt) {
      const names = [...this.schema.pk.map((c) => c.name), ...columns.map((c) => this.#dataName(c))]
      stmt = this.#db.prepare(
        `INSERT INTO ${quoteId(this.name)} (${names.map(quoteId).join(', ')}) VALUES (${placeholders(names.length)})`,
      )
      this.#inserts.set(sig, stmt)
    }
    this.#own(pk, () => stmt.run(...pk, ...values))
  }

  /** Sets the given data columns of an existing row. */
  updateRow(pk: readonly SqlValue[], columns: readonly number[], values: readonly SqlValue[]): void {
    if (columns.length === 0) return
    const sig = columns.join(',')
    let stmt = this.#updates.get(sig)
    if (!stmt) {
      const sets = columns.map((c) => `${quoteId(this.#dataName(c))} = ?`).join(', ')
      stmt = this.#db.prepare(`UPDATE ${quoteId(this.name)} SET ${sets} WHERE ${this.#keyWhere}`)
      this.#updates.set(sig, stmt)
    }
    this.#own(pk, () => stmt.run(...values, ...pk))
  }

  /** The value of a data column's DEFAULT here (NULL without one). */
  defaultValue(column: number): SqlValue {
    const expr = this.schema.data[column]?.dflt ?? 'NULL'
    const row = cached(this.#db, `SELECT ${expr} AS v`).raw().safeIntegers().get() as SqlValue[]
    return row[0] as SqlValue
  }

  /** Sets one data column of a row without the write being captured as a local change. */
  writeQuietly(pk: readonly SqlValue[], column: number, value: SqlValue): void {
    const stmt = cached(
      this.#db,
      `UPDATE ${quoteId(this.name)} SET ${quoteId(this.#dataName(column))} = ? WHERE ${this.#keyWhere}`,
    )
    this.#withoutEcho(pk, () => stmt.run(value, ...pk))
  }

  /** Sets the given data columns of a row back to their DEFAULT (NULL without one). */
  resetColumns(pk: readonly SqlValue[], columns: readonly number[]): void {
    const sets = columns.map((c) => `${quoteId(this.#dataName(c))} = ${this.schema.data[c]?.dflt ?? 'NULL'}`)
    const stmt = cached(this.#db, `UPDATE ${quoteId(this.name)} SET ${sets.join(', ')} WHERE ${this.#keyWhere}`)
    this.#own(pk, () => stmt.run(...pk))
  }

  #dataName(c: number): string {
    const col = this.schema.data[c]
    if (!col) throw new RangeError(`no data column ${c}`)
    return col.name
  }

  /**
   * The rows {@link changedPages} would yield among `keys` (same columns and filter), a
   * query per {@link TRACKED_QUERY_KEYS} keys, in key order within each.
   */
  *changedRowsOf(keys: readonly (readonly SqlValue[])[], minHlc: number, alive: boolean): Generator<unknown[][]> {
    const k = this.schema.pk.length
    const flag = alive ? 1 : 0
    for (let i = 0; i < keys.length; i += TRACKED_QUERY_KEYS) {
      const part = keys.slice(i, i + TRACKED_QUERY_KEYS)
      // Padded with NULL keys (they match nothing): a few statement sizes serve every list.
      const size = powerOfTwoAtLeast(part.length)
      const page = this.#changedByKey(size).all(minHlc, flag, ...paddedKeys(part, k, size)) as unknown[][]
      if (page.length) yield page
    }
  }

  #changedByKey(size: number): SqliteStatement {
    let stmt = this.#byKey.get(size)
    if (stmt) return stmt
    const keys = keyColumns(this.schema.pk.length)
    stmt = this.#db
      .prepare(
        `${this.#changedSelect()} AND ${keyIn(keys, size, 'r.')} ORDER BY ${keys.map((key) => `r.${key}`).join(', ')}`,
      )
      .raw()
      .safeIntegers()
    this.#byKey.set(size, stmt)
    return stmt
  }

  /** The export's SELECT of changed rows, up to its WHERE clause (two parameters: HLC floor, alive). */
  #changedSelect(): string {
    const keys = keyColumns(this.schema.pk.length)
    const on = this.schema.pk.map((c, i) => `t.${quoteId(c.name)} = r.${keys[i]}`).join(' AND ')
    const values = this.schema.data.map((c) => `t.${quoteId(c.name)}`)
    // Metadata integers read as REAL: exact below 2^53 and no BigInt per column per row.
    const meta = ['cl', 'clh', 'cls'].map((c) => `CAST(r.${c} AS REAL)`)
    return `SELECT ${[...keys.map((key) => `r.${key}`), ...meta, 'r.v', ...values].join(', ')}
        FROM ${rowsTable(this.id)} r LEFT JOIN ${quoteId(this.name)} t ON ${on}
        WHERE r.clh + r.md > ? AND r.cl % 2 = ?`
  }

  /**
   * Every metadata row of live (or of deleted) keys whose newest stamp is above `minHlc`,
   * joined with the live values: [...key, cl, clh, cls, v, ...data values] (no `md`: it
   * only selects), in key order, `pageSize` rows at a time (the last page may be shorter).
   * Each page is read by a query of its own that starts after the last key of the one
   * before: whole pages cost less than one row at a time, and memory stays bounded.
   */
  *changedPages(minHlc: number, alive: boolean, pageSize: number): Generator<unknown[][]> {
    const k = this.schema.pk.length
    let stmts = this.#changed
    if (stmts === undefined || stmts.size !== pageSize) {
      const keys = keyColumns(k)
      const select = this.#changedSelect()
      const order = `ORDER BY ${keys.map((key) => `r.${key}`).join(', ')} LIMIT ${pageSize}`
      // Row values compare like the key's B-tree orders them (no affinity, BINARY).
      const after =
        k === 1 ? `r.${keys[0]} > ?` : `(${keys.map((key) => `r.${key}`).join(', ')}) > (${placeholders(k)})`
      stmts = {
        size: pageSize,
        first: this.#db.prepare(`${select} ${order}`).raw().safeIntegers(),
        next: this.#db.prepare(`${select} AND ${after} ${order}`).raw().safeIntegers(),
      }
      this.#changed = stmts
    }
    const flag = alive ? 1 : 0
    let page = stmts.first.all(minHlc, flag) as unknown[][]
    while (page.length) {
      yield page
      if (page.length < pageSize) return
      const last = page[page.length - 1] as unknown[]
      page = stmts.next.all(minHlc, flag, ...last.slice(0, k)) as unknown[][]
    }
  }
}
