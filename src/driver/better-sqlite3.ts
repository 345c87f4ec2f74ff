/** The default driver: better-sqlite3, opened with WAL and a busy timeout. */
import Database from 'better-sqlite3'
import type { SqliteDatabase } from './types.js'

/** Opens (or creates) a database file with the settings the replica relies on. */
export function openBetterSqlite3(path: string): Database.Database & SqliteDatabase {
  const db = new Database(path)
  db.pragma('busy_timeout = 5000')
  if (path !== ':memory:' && path !== '') db.pragma('journal_mode = WAL')
  return db
}
