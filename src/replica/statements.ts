/** A per-connection cache of prepared statements for the small queries every sync repeats. */
import { getOrCreate } from '../core/maps.js'
import type { SqliteDatabase, SqliteStatement } from '../driver/types.js'

const caches = new WeakMap<SqliteDatabase, Map<string, SqliteStatement>>()

/**
 * The prepared statement for `sql` on `db`, prepared once. `raw()` and `safeIntegers()`
 * stick to the object, so a statement set to them must be set the same way at every use of
 * its SQL text.
 */
export function cached(db: SqliteDatabase, sql: string): SqliteStatement {
  const cache = getOrCreate(caches, db, () => new Map<string, SqliteStatement>())
  return getOrCreate(cache, sql, () => db.prepare(sql))
}
