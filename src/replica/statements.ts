/** A per-connection cache of prepared statements for the small queries every sync repeats. */
import type { SqliteDatabase, SqliteStatement } from '../driver/types.js'

const caches = new WeakMap<SqliteDatabase, Map<string, SqliteStatement>>()

/**
 * The prepared statement for `sql` on `db`, prepared once. Only for statements used in the
 * default mode (no `raw()` or `safeIntegers()`), since those settings stick to the object.
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
