/** The storage behind the sync server, kept behind an interface so other backends can follow. */
import type { VersionVector } from '../core/version-vector.js'

/** What the server learnt from a client's payload after merging it. */
export interface AppliedPayload {
  /** The client's site id. */
  readonly sender: string
  /** The vector the client announced: the server answers with what it lacks. */
  readonly vector: VersionVector
  /** Rows in the client's payload. */
  readonly rows: number
  /** Changes that took effect in the store. */
  readonly applied: number
  /** Conflicts the merge recorded. */
  readonly conflicts: number
}

/** Changes exported for a client. */
export interface ExportedPayload {
  readonly payload: Uint8Array
  readonly rows: number
  /**
   * The vector the payload announces (with `changedOnly`, only the entries above `since`): a
   * receiver that held `since` holds both after importing it.
   */
  readonly vector: VersionVector
}

/** One database of the store. */
export interface StoreDatabase {
  readonly name: string
  /** The store's site id for this database. */
  readonly siteId: string
  /**
   * Merges a client's payload atomically; the first payload naming a table defines it.
   * Throws `ConvergeError` (`BAD_PAYLOAD`, `SCHEMA_MISMATCH`, `CLOCK_DRIFT`, ...) and then
   * leaves the database exactly as it was.
   */
  apply(payload: Uint8Array): Promise<AppliedPayload>
  /**
   * Every change not covered by `since`. `changedOnly`: the receiver is known to hold
   * `since`, and the payload announces only the vector entries above it (smaller and
   * cheaper to import with many sites; see docs/design.md, live sync).
   */
  exportFor(since: VersionVector, options?: { changedOnly?: boolean }): Promise<ExportedPayload>
  /** Names of the synced tables. */
  tables(): Promise<string[]>
  /** The newest HLC the database holds (0 when empty). */
  version(): Promise<number>
}

/** A set of named databases. */
export interface SyncStore {
  /** Opens (creating if needed) the database of that name. */
  open(name: string): Promise<StoreDatabase>
  /** Names of the databases that exist. */
  list(): Promise<string[]>
  close(): Promise<void>
}
