/** SQLite values as they cross the library: integers are bigint internally, so type is never lost. */

/** One SQLite value: NULL, INTEGER (bigint), REAL (number), TEXT, BLOB. */
export type SqlValue = null | bigint | number | string | Uint8Array

/** A value as the app sees it: integers become numbers when a double holds them exactly. */
export type AppValue = null | number | bigint | string | Uint8Array

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)

/** Converts an internal value to what the app gets (as better-sqlite3 returns it by default). */
export function toAppValue(value: SqlValue): AppValue {
  if (typeof value === 'bigint' && value <= MAX_SAFE && value >= -MAX_SAFE) return Number(value)
  return value
}

/** Exact equality of two SQLite values, type included (1 and 1.0 differ). */
export function sameValue(a: SqlValue, b: SqlValue): boolean {
  if (a instanceof Uint8Array && b instanceof Uint8Array) {
    if (a.length !== b.length) return false
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
    return true
  }
  return a === b
}
