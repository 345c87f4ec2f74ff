/**
 * The structural SQLite interface the library needs: the subset of better-sqlite3 it calls.
 * Any object of this shape works, so adapters for node:sqlite or SQLite WASM can follow.
 */

/** Result of a statement that writes. */
export interface RunResult {
  /** Rows changed by the statement. */
  changes: number
  /** Rowid of the last inserted row. */
  lastInsertRowid: number | bigint
}

/** A prepared statement. */
export interface SqliteStatement {
  /** Executes a writing statement. */
  run(...params: unknown[]): RunResult
  /** First result row, or undefined. */
  get(...params: unknown[]): unknown
  /** All result rows. */
  all(...params: unknown[]): unknown[]
  /** Result rows one at a time; no other statement may run on the connection meanwhile. */
  iterate(...params: unknown[]): IterableIterator<unknown>
  /** Rows as arrays instead of objects. */
  raw(toggle?: boolean): this
  /** INTEGER values as bigint instead of number. */
  safeIntegers(toggle?: boolean): this
}

/** A database connection. */
export interface SqliteDatabase {
  /** Compiles a statement. */
  prepare(sql: string): SqliteStatement
  /** Runs one or more statements without results. */
  exec(sql: string): unknown
  /** Closes the connection. */
  close(): unknown
  /** True while a transaction is open on this connection. */
  readonly inTransaction: boolean
  /** False once closed. */
  readonly open: boolean
}
