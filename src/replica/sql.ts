/** SQL text helpers: identifier quoting and the trigger-safe clock expression. */

/** Quotes an identifier for SQLite ("a b" -> "a b", embedded quotes doubled). */
export function quoteId(name: string): string {
  return `"${name.replaceAll('"', '""')}"`
}

/** Quotes a string literal with single quotes (better-sqlite3 has no double-quoted strings). */
export function quoteString(s: string): string {
  return `'${s.replaceAll("'", "''")}'`
}

/**
 * Wall-clock milliseconds in SQL that every SQLite since 3.8 evaluates, so triggers work in
 * old shells too (no unixepoch('subsec')).
 */
export const NOW_MS_SQL = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"

/** `?, ?, ?` for n parameters. */
export function placeholders(n: number): string {
  return Array.from({ length: n }, () => '?').join(', ')
}
