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
