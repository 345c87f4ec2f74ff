/** A per-connection cache of prepared statements for the small queries every sync repeats. */
import type { SqliteDatabase, SqliteStatement } from '../driver/types.js'

const caches = new WeakMap<SqliteDatabase, Map<string, SqliteStatement>>()

/**
 * The prepared statement for `sql` on `db`, prepared once. `raw()` and `safeIntegers()`
 * stick to the object, so a statement set to them must be set the same way at every use of
 * its SQL text.
 */
export function cached(db: SqliteDatabase, sql: string): SqliteStatement {
  let cache = caches.get(db)
  if (!cache) {
    cache = new Map()
    caches.set(db, cache)
  }
  let stmt = cache.get(sql)
  if (!stmt) {
    stmt = db.prepare(sql)
    cache.set(sql, stmt)
  }
  return stmt
}
