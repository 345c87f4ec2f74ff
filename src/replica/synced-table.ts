/** A synced table: its schema, its metadata tables and the prepared statements that touch them. */
import type { RowState } from '../core/merge.js'
import type { SqlValue } from '../core/values.js'
import type { SqliteDatabase, SqliteStatement } from '../driver/types.js'
import {
  decodeRow,
  encodeRow,
  keyColumns,
  logTable,
  maskWords,
  rowsTable,
  type SiteTable,
  type StoredRow,
} from './metadata.js'
import type { TableSchema } from './schema.js'
import { placeholders, quoteId } from './sql.js'

/** Rows of the change log read per fold step; bounds the memory a fold uses. */
export const FOLD_BATCH = 8192

export class SyncedTable {
  readonly id: number
  readonly schema: TableSchema
  readonly #db: SqliteDatabase
  readonly #sites: SiteTable
  readonly #getRow: SqliteStatement
  readonly #putRow: SqliteStatement
  readonly #logBatch: SqliteStatement
  readonly #logClear: SqliteStatement
  readonly #logAny: SqliteStatement
  readonly #readValues: SqliteStatement
  readonly #deleteRow: SqliteStatement
  readonly #inserts = new Map<string, SqliteStatement>()
  readonly #updates = new Map<string, SqliteStatement>()
  /** `WHERE` clause matching the user table's key columns to parameters. */
  readonly #keyWhere: string

  constructor(db: SqliteDatabase, sites: SiteTable, id: number, schema: TableSchema) {
    this.#db = db
    this.#sites = sites
    this.id = id
    this.schema = schema
    const keys = keyColumns(schema.pk.length)
    const keyMatch = keys.map((k) => `${k} = ?`).join(' AND ')
    const table = quoteId(schema.name)
    this.#keyWhere = schema.pk.map((c) => `${quoteId(c.name)} = ?`).join(' AND ')
    this.#getRow = db.prepare(`SELECT cl, clh, cls, md, v FROM ${rowsTable(id)} WHERE ${keyMatch}`).raw()
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

  /** Up to {@link FOLD_BATCH} log rows after `seq`: [seq, op, ts, ...masks, ...key]. */
  logBatch(afterSeq: bigint): unknown[][] {
    return this.#logBatch.all(afterSeq) as unknown[][]
  }

  clearLog(throughSeq: bigint): void {
    this.#logClear.run(throughSeq)
  }

  /** The merge state of a key, or null when the replica has never seen it. */
  loadState(pk: readonly SqlValue[]): RowState | null {
    const stored = this.#getRow.get(...pk) as StoredRow | undefined
    return stored === undefined ? null : decodeRow(stored, this.dataCount, this.#sites)
  }

  saveState(pk: readonly SqlValue[], state: RowState): void {
    this.#putRow.run(...pk, ...encodeRow(state, this.#sites))
  }

  /** Current values of the data columns of a live row, or undefined. */
  readValues(pk: readonly SqlValue[]): SqlValue[] | undefined {
    return this.#readValues.get(...pk) as SqlValue[] | undefined
  }

  deleteRow(pk: readonly SqlValue[]): void {
    this.#deleteRow.run(...pk)
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
    stmt.run(...pk, ...values)
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
    stmt.run(...values, ...pk)
  }

  #dataName(c: number): string {
    const col = this.schema.data[c]
    if (!col) throw new RangeError(`no data column ${c}`)
    return col.name
  }

  /**
   * Every metadata row whose newest stamp is above `minHlc`, joined with the live values:
   * [...key, cl, clh, cls, md, v, ...data values]. Iterates; run nothing else meanwhile.
   */
  iterateChanged(minHlc: number): IterableIterator<unknown[]> {
    const keys = keyColumns(this.schema.pk.length)
    const on = this.schema.pk.map((c, i) => `t.${quoteId(c.name)} = r.${keys[i]}`).join(' AND ')
    const values = this.schema.data.map((c) => `t.${quoteId(c.name)}`)
    const sql = `SELECT ${[...keys.map((k) => `r.${k}`), 'r.cl', 'r.clh', 'r.cls', 'r.md', 'r.v', ...values].join(', ')}
      FROM ${rowsTable(this.id)} r LEFT JOIN ${quoteId(this.name)} t ON ${on}
      WHERE r.clh + r.md > ?`
    return this.#db.prepare(sql).raw().safeIntegers().iterate(minHlc) as IterableIterator<unknown[]>
  }
}
