/** Table introspection and the schema hash that two replicas compare before merging. */
import { sha256 } from '@noble/hashes/sha2.js'
import { ConvergeError } from '../core/errors.js'
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
}

/** What the replica knows about a synced table's shape. */
export interface TableSchema {
  readonly name: string
  /** Primary-key columns, in key order. */
  readonly pk: readonly ColumnInfo[]
  /** Other columns in table order (ADD COLUMN appends, so indices stay stable). */
  readonly data: readonly ColumnInfo[]
  /** 16 bytes: hash of name, key columns and data columns with their affinities. */
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
  pk: number
}

/** Reads a table's columns and key; fails with `NO_SUCH_TABLE` or `NO_PRIMARY_KEY`. */
export function readTableSchema(db: SqliteDatabase, table: string): TableSchema {
  const exists = db.prepare(`SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?`).get(table)
  if (!exists) throw new ConvergeError('NO_SUCH_TABLE', `no table named ${table}`, { table })
  const rows = db
    .prepare(`SELECT name, type, "notnull", pk FROM pragma_table_info(${quoteString(table)})`)
    .all() as PragmaColumn[]
  const toInfo = (c: PragmaColumn): ColumnInfo => ({
    name: c.name,
    type: c.type,
    affinity: affinityOf(c.type),
    notNull: c.notnull === 1,
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
  return {
    name: table,
    pk,
    data,
    hash: schemaHash(table, pk, data),
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

/**
 * Hash of what must agree between replicas: table name, key columns in key order, and the
 * other columns by name (their order in CREATE TABLE does not matter), with affinities.
 */
export function schemaHash(table: string, pk: readonly ColumnInfo[], data: readonly ColumnInfo[]): Uint8Array {
  const sorted = [...data].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  const canonical = JSON.stringify([
    table,
    pk.map((c) => [c.name, c.affinity]),
    sorted.map((c) => [c.name, c.affinity]),
  ])
  return sha256(new TextEncoder().encode(canonical)).subarray(0, 16)
}

/** Describes how two column lists differ, for SCHEMA_MISMATCH messages. */
export function describeColumnDifference(
  local: readonly { name: string; affinity: string }[],
  remote: readonly { name: string; affinity: string }[],
): string {
  const l = new Map(local.map((c) => [c.name, c.affinity]))
  const r = new Map(remote.map((c) => [c.name, c.affinity]))
  const parts: string[] = []
  const missingHere = [...r.keys()].filter((n) => !l.has(n))
  const missingThere = [...l.keys()].filter((n) => !r.has(n))
  const retyped = [...l.keys()].filter((n) => r.has(n) && r.get(n) !== l.get(n))
  if (missingHere.length) parts.push(`columns only in the payload: ${missingHere.join(', ')}`)
  if (missingThere.length) parts.push(`columns only here: ${missingThere.join(', ')}`)
  if (retyped.length) {
    parts.push(
      `columns of another type: ${retyped.map((n) => `${n} (${l.get(n)} here, ${r.get(n)} there)`).join(', ')}`,
    )
  }
  return parts.length ? parts.join('; ') : 'primary key columns or their order differ'
}
