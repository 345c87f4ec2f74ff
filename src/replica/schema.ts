/** Table introspection and the schema hash that two replicas compare before merging. */
import { sha256 } from '@noble/hashes/sha2.js'
import { COLUMN_ALGORITHMS, type ColumnAlgorithm, ROW_MODES, type RowMode } from '../core/algorithms.js'
import { ConvergeError } from '../core/errors.js'
import { DEFAULT_DELIMITER } from '../core/text.js'
import type { SqliteDatabase } from '../driver/types.js'
import { quoteString } from './sql.js'

/** One column of a synced table. */
export interface ColumnInfo {
  readonly name: string
  /** Declared type as written in CREATE TABLE. */
  readonly type: string
  /** SQLite type affinity derived from the declared type. */
  readonly affinity: 'INTEGER' | 'TEXT' | 'BLOB' | 'REAL' | 'NUMERIC'
  readonly notNull: boolean
  /** The DEFAULT expression as written, or null. */
  readonly dflt?: string | null
  /** How the column merges (key columns: always 'lww'). */
  readonly algorithm: ColumnAlgorithm
  /** Text columns: the string that separates blocks (default a newline). */
  readonly delimiter?: string
}

/** A column's algorithm in `enableSync` options: its name, or for text, with a delimiter. */
export type ColumnSpec = ColumnAlgorithm | { algorithm: 'text'; delimiter?: string }

/** Per-table sync options of `enableSync`. */
export interface TableOptions {
  /** Column algorithms other than last-writer-wins, by column name. */
  columns?: Record<string, ColumnSpec>
  /** How rows live and die (default 'causal'). */
  rows?: RowMode
}

/** What the replica knows about a synced table's shape. */
export interface TableSchema {
  readonly name: string
  /** Primary-key columns, in key order. */
  readonly pk: readonly ColumnInfo[]
  /** Other columns in table order (ADD COLUMN appends, so indices stay stable). */
  readonly data: readonly ColumnInfo[]
  /** How rows live and die. */
  readonly rows: RowMode
  /** 16 bytes: hash of name, key columns and data columns with their affinities and algorithms, and the row mode. */
  readonly hash: Uint8Array
  /**
   * Column lists of the UNIQUE constraints and indexes other than the primary key (those on
   * plain columns): a REPLACE that conflicts on one deletes a row without a DELETE trigger.
   */
  readonly uniques: readonly (readonly string[])[]
  /** True when a foreign key of this table has an ON DELETE/UPDATE action that writes to it. */
  readonly fkActions: boolean
  /** Tables this one references through foreign keys. */
  readonly parents: readonly string[]
}

/** SQLite's affinity rules (section 3.1 of the datatype documentation). */
export function affinityOf(declared: string): ColumnInfo['affinity'] {
  const t = declared.toUpperCase()
  if (t.includes('INT')) return 'INTEGER'
  if (t.includes('CHAR') || t.includes('CLOB') || t.includes('TEXT')) return 'TEXT'
  if (t.includes('BLOB') || t === '') return 'BLOB'
  if (t.includes('REAL') || t.includes('FLOA') || t.includes('DOUB')) return 'REAL'
  return 'NUMERIC'
}

interface PragmaColumn {
  name: string
  type: string
  notnull: number
  dflt_value: string | null
  pk: number
}

/** The algorithm (and text delimiter) a column spec stands for. */
export function columnAlgorithm(spec: ColumnSpec | undefined): Pick<ColumnInfo, 'algorithm' | 'delimiter'> {
  if (spec === undefined) return { algorithm: 'lww' }
  if (typeof spec === 'object') return { algorithm: 'text', delimiter: spec.delimiter ?? DEFAULT_DELIMITER }
  return spec === 'text' ? { algorithm: 'text', delimiter: DEFAULT_DELIMITER } : { algorithm: spec }
}

/** Checks `enableSync` options; returns them with defaults filled in. */
export function checkTableOptions(table: string, options: unknown): Required<TableOptions> {
  const bad = (why: string) => new ConvergeError('BAD_ARGUMENT', `enableSync('${table}'): ${why}`, { table })
  if (options === undefined || options === null) return { columns: {}, rows: 'causal' }
  if (typeof options !== 'object') throw bad('options must be an object')
  const { columns = {}, rows = 'causal', ...rest } = options as TableOptions
  const unknown = Object.keys(rest)
  if (unknown.length) throw bad(`unknown option ${unknown.join(', ')}`)
  if (!ROW_MODES.includes(rows)) throw bad(`rows must be one of ${ROW_MODES.join(', ')}`)
  if (typeof columns !== 'object' || columns === null) throw bad('columns must be an object')
  for (const [name, spec] of Object.entries(columns)) {
    if (typeof spec === 'object' && spec !== null) {
      const { algorithm, delimiter, ...other } = spec as { algorithm: unknown; delimiter?: unknown }
      if (algorithm !== 'text' || Object.keys(other).length) {
        throw bad(`column ${name}: an object spec is { algorithm: 'text', delimiter?: string }`)
      }
      if (delimiter !== undefined && (typeof delimiter !== 'string' || delimiter === '')) {
        throw bad(`column ${name}: the text delimiter must be a non-empty string`)
      }
    } else if (!COLUMN_ALGORITHMS.includes(spec as ColumnAlgorithm)) {
      throw bad(`column ${name}: algorithm must be one of ${COLUMN_ALGORITHMS.join(', ')}`)
    }
  }
  return { columns: { ...columns }, rows }
}

/**
 * Reads a table's columns and key; fails with `NO_SUCH_TABLE` or `NO_PRIMARY_KEY`, or
 * `BAD_ARGUMENT` when `options` name a column the table lacks or a key column.
 */
export function readTableSchema(
  db: SqliteDatabase,
  table: string,
  options: Required<TableOptions> = { columns: {}, rows: 'causal' },
): TableSchema {
  const exists = db.prepare(`SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?`).get(table)
  if (!exists) throw new ConvergeError('NO_SUCH_TABLE', `no table named ${table}`, { table })
  const rows = db
    .prepare(`SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info(${quoteString(table)})`)
    .all() as PragmaColumn[]
  const toInfo = (c: PragmaColumn): ColumnInfo => ({
    name: c.name,
    type: c.type,
    affinity: affinityOf(c.type),
    notNull: c.notnull === 1,
    dflt: c.dflt_value,
    ...columnAlgorithm(c.pk > 0 ? undefined : options.columns[c.name]),
  })
  const pk = rows
    .filter((c) => c.pk > 0)
    .sort((a, b) => a.pk - b.pk)
    .map(toInfo)
  if (pk.length === 0) {
    throw new ConvergeError(
      'NO_PRIMARY_KEY',
      `table ${table} has no PRIMARY KEY; sync needs a stable row identity (add a primary key column)`,
      { table },
    )
  }
  const data = rows.filter((c) => c.pk === 0).map(toInfo)
  for (const name of Object.keys(options.columns)) {
    const col = rows.find((c) => c.name === name)
    if (!col || col.pk > 0) {
      throw new ConvergeError(
        'BAD_ARGUMENT',
        col
          ? `column ${name} of ${table} is part of the primary key; key columns merge as a whole`
          : `table ${table} has no column ${name}`,
        { table, column: name },
      )
    }
  }
  return {
    name: table,
    pk,
    data,
    rows: options.rows,
    hash: schemaHash(table, pk, data, options.rows),
    uniques: uniqueColumnSets(db, table),
    fkActions: hasForeignKeyActions(db, table),
    parents: (
      db.prepare(`SELECT DISTINCT "table" AS t FROM pragma_foreign_key_list(${quoteString(table)})`).all() as {
        t: string
      }[]
    ).map((r) => r.t),
  }
}

function hasForeignKeyActions(db: SqliteDatabase, table: string): boolean {
  const row = db
    .prepare(
      `SELECT 1 FROM pragma_foreign_key_list(${quoteString(table)})
       WHERE on_delete IN ('CASCADE', 'SET NULL', 'SET DEFAULT') OR on_update IN ('CASCADE', 'SET NULL', 'SET DEFAULT')`,
    )
    .get()
  return row !== undefined
}

function uniqueColumnSets(db: SqliteDatabase, table: string): string[][] {
  const indexes = db
    .prepare(`SELECT name FROM pragma_index_list(${quoteString(table)}) WHERE "unique" = 1 AND origin <> 'pk'`)
    .all() as { name: string }[]
  const sets: string[][] = []
  for (const { name } of indexes) {
    const cols = db.prepare(`SELECT cid, name FROM pragma_index_info(${quoteString(name)})`).all() as {
      cid: number
      name: string | null
    }[]
    // Indexes on expressions or the rowid cannot be matched column by column; see docs/design.md.
    if (cols.length && cols.every((c) => c.cid >= 0 && c.name !== null)) sets.push(cols.map((c) => c.name as string))
  }
  return sets
}

/**
 * Orders tables so that every table comes before the tables it references (children
 * before parents; cycles broken arbitrarily). An import applied in this order updates
 * children before their old parents are deleted, so ON DELETE actions on the receiver only
 * reach the children the sender's own cascade reached.
 */
export function childrenFirst<T extends { schema: TableSchema }>(tables: readonly T[]): T[] {
  const out: T[] = []
  const done = new Set<T>()
  const visit = (t: T) => {
    if (done.has(t)) return
    done.add(t)
    for (const child of tables) if (child.schema.parents.includes(t.schema.name)) visit(child)
    out.push(t)
  }
  for (const t of tables) visit(t)
  return out
}

/** What the schema hash covers of a column. */
export type HashedColumn = Pick<ColumnInfo, 'name' | 'affinity'> & {
  readonly algorithm?: ColumnAlgorithm
  readonly delimiter?: string
}

/**
 * Hash of what must agree between replicas: table name, key columns in key order, and the
 * other columns by name (their order in CREATE TABLE does not matter), with affinities and
 * algorithms, and the row mode. Defaults are left out, so a table without options hashes
 * as it did before options existed.
 */
export function schemaHash(
  table: string,
  pk: readonly HashedColumn[],
  data: readonly HashedColumn[],
  rows: RowMode = 'causal',
): Uint8Array {
  const sorted = [...data].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  const col = (c: HashedColumn) =>
    c.algorithm === 'text'
      ? [c.name, c.affinity, c.algorithm, c.delimiter ?? DEFAULT_DELIMITER]
      : c.algorithm && c.algorithm !== 'lww'
        ? [c.name, c.affinity, c.algorithm]
        : [c.name, c.affinity]
  const parts: unknown[] = [table, pk.map((c) => [c.name, c.affinity]), sorted.map(col)]
  if (rows !== 'causal') parts.push(rows)
  const canonical = JSON.stringify(parts)
  // Every import checks the hash of each table its payload describes: the same few texts.
  let hash = hashes.get(canonical)
  if (hash === undefined) {
    hash = sha256(new TextEncoder().encode(canonical)).slice(0, 16)
    if (hashes.size >= MAX_CACHED_HASHES) hashes.clear()
    hashes.set(canonical, hash)
  }
  return hash.slice()
}

/** Schema hashes by canonical text (see schemaHash). */
const hashes = new Map<string, Uint8Array>()
const MAX_CACHED_HASHES = 1000
