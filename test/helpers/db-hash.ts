/**
 * Test helper: a digest of the full logical content of a SQLite database, used to prove
 * "this database did not change". It covers the schema itself (every row of sqlite_schema)
 * and every row of every table, internal `_converge_*` tables included, with each value's
 * storage class (so 1 and 1.0, '1' and x'31' hash differently) and exact bits (doubles are
 * hashed by their IEEE-754 representation, integers as 64-bit bigint). Rows are sorted by
 * their serialized form, so the digest does not depend on scan order; rowid tables also
 * hash their rowid. PRAGMA user_version and application_id are included.
 */
import { createHash } from 'node:crypto'
import Database from 'better-sqlite3'

/** The part of a better-sqlite3 connection the helper uses. */
type Db = Pick<Database.Database, 'prepare'>

/** Serializes one SQLite value with its storage class, losslessly. */
export function serializeValue(v: unknown): string {
  if (v === null) return 'n'
  if (typeof v === 'bigint') return `i${v.toString()}`
  if (typeof v === 'number') {
    // Only reachable for REAL values (INTEGER comes back as bigint with safeIntegers).
    const view = new DataView(new ArrayBuffer(8))
    view.setFloat64(0, v)
    return `r${view.getBigUint64(0).toString(16).padStart(16, '0')}`
  }
  if (typeof v === 'string') return `t${JSON.stringify(v)}`
  if (v instanceof Uint8Array) return `b${Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex')}`
  throw new TypeError(`unexpected SQLite value ${String(v)}`)
}

function quoteId(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}

/** Rows of one table, serialized, sorted. */
function tableRows(db: Db, table: string): string[] {
  const q = quoteId(table)
  let stmt: Database.Statement
  try {
    // `_rowid_` fails on WITHOUT ROWID tables; then the primary key is the identity.
    stmt = db.prepare(`SELECT _rowid_, * FROM ${q}`)
  } catch {
    stmt = db.prepare(`SELECT * FROM ${q}`)
  }
  const rows = stmt.raw().safeIntegers().all() as unknown[][]
  return rows.map((r) => r.map(serializeValue).join('|')).sort()
}

/** Per-table digests plus one for the schema; handy for showing which table changed. */
export function dbContents(db: Db): Map<string, string> {
  const out = new Map<string, string>()
  const schema = db
    .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name, tbl_name, coalesce(sql, '')")
    .raw()
    .all() as unknown[][]
  const pragmas = [
    db.prepare('PRAGMA user_version').pluck().safeIntegers().get(),
    db.prepare('PRAGMA application_id').pluck().safeIntegers().get(),
  ]
  out.set('<schema>', sha(JSON.stringify(schema) + pragmas.map(serializeValue).join('|')))
  for (const [type, name] of schema) {
    if (type !== 'table') continue
    const sql = schema.find((r) => r[1] === name)?.[3]
    // Virtual tables may need a module that is not loaded; their shadow tables are hashed anyway.
    if (typeof sql === 'string' && /^\s*CREATE\s+VIRTUAL/i.test(sql)) continue
    out.set(String(name), sha(tableRows(db, String(name)).join('\n')))
  }
  return out
}

/** One digest over the whole logical content of the database. */
export function dbHash(db: Db): string {
  const parts = [...dbContents(db)].map(([k, v]) => `${k}=${v}`)
  return sha(parts.join('\n'))
}

/** Names of the tables (or '<schema>') whose content differs between two {@link dbContents} snapshots. */
export function diffContents(a: Map<string, string>, b: Map<string, string>): string[] {
  const names = new Set([...a.keys(), ...b.keys()])
  return [...names].filter((n) => a.get(n) !== b.get(n)).sort()
}

function sha(s: string): string {
  return createHash('sha256').update(s).digest('hex')
}

/**
 * The rows of one table by its declared columns (no rowid, which differs between
 * replicas), each value with its storage class, sorted: for comparing replicas.
 */
export function columnRows(db: Db, table: string): string[] {
  const cols = db.prepare('SELECT name FROM pragma_table_info(?)').pluck().all(table) as string[]
  const select = cols.flatMap((c) => [`typeof("${c}")`, `"${c}"`]).join(', ')
  return (db.prepare(`SELECT ${select} FROM "${table}"`).raw().safeIntegers().all() as unknown[][])
    .map((row) => row.map(serializeValue).join('|'))
    .sort()
}

/** {@link dbHash} of a database file, opened read-only for the purpose. */
export function fileHash(path: string): string {
  const db = new Database(path, { readonly: true })
  try {
    return dbHash(db)
  } finally {
    db.close()
  }
}
