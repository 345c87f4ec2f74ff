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

/** True when two byte arrays hold the same bytes. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

/** True when two values are the same SQLite value (BLOBs compared by content). */
export function sameValue(a: SqlValue, b: SqlValue): boolean {
  if (a instanceof Uint8Array && b instanceof Uint8Array) return sameBytes(a, b)
  return a === b
}
