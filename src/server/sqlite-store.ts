/** The SQLite store: one replica file per database, `DATA/NAME.db`. */

import { existsSync, mkdirSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { ConvergeError } from '../core/errors.js'
import { sameBytes } from '../core/values.js'
import type { VersionVector } from '../core/version-vector.js'
import { openReplica, type Replica } from '../index.js'
import { nodeCodec } from '../platform/node-codec.js'
import { schemaDifference } from '../replica/apply.js'
import { PREFIX } from '../replica/metadata.js'
import { exportChangedOnly, payloadSummary } from '../replica/replica.js'
import { affinityOf, type ColumnSpec, schemaHash, type TableOptions } from '../replica/schema.js'
import { quoteId } from '../replica/sql.js'
import { DecodedPayload, type WireTable } from '../wire/payload.js'
import type { AppliedPayload, ExportedPayload, StoreDatabase, SyncStore } from './store.js'

/** Database names the server accepts. */
export const DB_NAME_RE = /^[A-Za-z0-9_-]{1,64}$/
const AFFINITIES = new Set(['INTEGER', 'TEXT', 'BLOB', 'REAL', 'NUMERIC'])

export interface SqliteStoreOptions {
  /** Directory of the database files (created if missing). */
  dir: string
  /** Largest payload accepted. */
  maxPayloadBytes: number
}

export class SqliteStore implements SyncStore {
  readonly #dir: string
  readonly #maxPayloadBytes: number
  readonly #open = new Map<string, SqliteDatabase>()

  constructor(options: SqliteStoreOptions) {
    this.#dir = options.dir
    this.#maxPayloadBytes = options.maxPayloadBytes
    mkdirSync(this.#dir, { recursive: true })
  }

  async open(name: string): Promise<StoreDatabase> {
    if (!DB_NAME_RE.test(name)) throw new ConvergeError('BAD_ARGUMENT', `bad database name ${name}`, { name })
    let db = this.#open.get(name)
    if (!db) {
      db = new SqliteDatabase(name, join(this.#dir, `${name}.db`), this.#maxPayloadBytes)
      this.#open.set(name, db)
    }
    return db
  }

  async list(): Promise<string[]> {
    const names = new Set(this.#open.keys())
    if (existsSync(this.#dir)) {
      for (const f of readdirSync(this.#dir)) {
        const m = /^(.+)\.db$/.exec(f)
        if (m?.[1] && DB_NAME_RE.test(m[1])) names.add(m[1])
      }
    }
    return [...names].sort()
  }

  async close(): Promise<void> {
    for (const db of this.#open.values()) db.close()
    this.#open.clear()
  }
}

/** One database: a replica the server keeps open. */
class SqliteDatabase implements StoreDatabase {
  readonly name: string
  readonly #path: string
  readonly #maxPayloadBytes: number
  #replica: Replica

  constructor(name: string, path: string, maxPayloadBytes: number) {
    this.name = name
    this.#path = path
    this.#maxPayloadBytes = maxPayloadBytes
    this.#replica = this.#openReplica()
  }

  get siteId(): string {
    return this.#replica.siteId
  }

  #openReplica(): Replica {
    return openReplica(this.#path, { maxPayloadBytes: this.#maxPayloadBytes })
  }

  async apply(payload: Uint8Array): Promise<AppliedPayload> {
    const r = this.#replica
    const { header } = DecodedPayload.open(payload, this.#maxPayloadBytes, nodeCodec)
    const synced = new Set(r.syncedTables())
    const missing: WireTable[] = []
    /** Columns clients added to tables the server has: the relay copy grows with them. */
    const added: [string, string, string][] = []
    for (const wt of header.tables) {
      checkWireTable(wt)
      if (!synced.has(wt.name)) {
        missing.push(wt)
        continue
      }
      const local = r.table(wt.name).schema
      const difference = schemaDifference(local, wt)
      if (difference !== null) {
        const localCols = [...local.pk, ...local.data]
        const remote = wt.columns.map((name, j) => `${name} ${wt.affinities[j]}`)
        throw new ConvergeError('SCHEMA_MISMATCH', `table ${wt.name} differs from the server's: ${difference}`, {
          table: wt.name,
          server: localCols.map((c) => `${c.name} ${c.affinity}`),
          client: remote,
        })
      }
      const have = new Set(local.data.map((c) => c.name))
      wt.columns.forEach((name, j) => {
        // Added columns are last-writer-wins (see docs/algorithms.md); others stay unknown here.
        if (j >= wt.pkCount && !have.has(name) && wt.algorithms[j] === 'lww') {
          added.push([wt.name, name, wt.affinities[j] as string])
        }
      })
    }
    let result: { applied: number; conflicts: number }
    if (missing.length === 0 && added.length === 0) {
      result = r.importChanges(payload)
    } else {
      // The first client to sync a table defines it, and a client with a column the
      // server lacks extends it: change the schema and import in one transaction; on any
      // failure roll back and reopen, so the Replica object forgets what it enabled.
      r.db.exec('BEGIN IMMEDIATE')
      try {
        for (const wt of missing) {
          r.db.exec(createTableSql(wt))
          r.enableSync(wt.name, tableOptions(wt))
        }
        for (const [table, column, affinity] of added) {
          r.db.exec(`ALTER TABLE ${quoteId(table)} ADD COLUMN ${quoteId(column)} ${affinity}`)
        }
        result = r.importChanges(payload)
        r.db.exec('COMMIT')
      } catch (err) {
        if (r.db.inTransaction) r.db.exec('ROLLBACK')
        r.db.close()
        this.#replica = this.#openReplica()
        throw err
      }
    }
    return {
      sender: header.sender,
      vector: header.vector,
      rows: header.rowCounts.reduce((a, b) => a + b, 0),
      applied: result.applied,
      conflicts: result.conflicts,
    }
  }

  async exportFor(since: VersionVector, options: { changedOnly?: boolean } = {}): Promise<ExportedPayload> {
    const payload = options.changedOnly ? exportChangedOnly(this.#replica, since) : this.#replica.exportChanges(since)
    const { rows, vector } = payloadSummary(payload, nodeCodec)
    return { payload, rows: Object.values(rows).reduce((a, b) => a + b, 0), vector }
  }

  async tables(): Promise<string[]> {
    return this.#replica.syncedTables()
  }

  async version(): Promise<number> {
    return Math.max(0, ...Object.values(this.#replica.versionVector()))
  }

  close(): void {
    this.#replica.close()
  }
}

/** Refuses table descriptions that could not have come from a replica. */
function checkWireTable(wt: WireTable): void {
  const bad = (why: string) =>
    new ConvergeError('BAD_PAYLOAD', `malformed payload: table ${wt.name} ${why}`, { table: wt.name })
  if (wt.name.startsWith(PREFIX) || wt.name.toLowerCase().startsWith('sqlite_') || wt.name === '') {
    throw bad('has a reserved name')
  }
  if (wt.pkCount < 1 || wt.pkCount > wt.columns.length) throw bad('has no primary key')
  if (new Set(wt.columns.map((c) => c.toLowerCase())).size !== wt.columns.length) throw bad('repeats a column')
  if (wt.affinities.length !== wt.columns.length || !wt.affinities.every((a) => AFFINITIES.has(a))) {
    throw bad('has an unknown column type')
  }
  const cols = wt.columns.map((name, j) => ({
    name,
    affinity: affinityOf(wt.affinities[j] as string),
    algorithm: wt.algorithms[j],
    ...(wt.algorithms[j] === 'text' && { delimiter: wt.delimiters[j] }),
  }))
  if (!sameBytes(schemaHash(wt.name, cols.slice(0, wt.pkCount), cols.slice(wt.pkCount), wt.rows), wt.hash)) {
    throw bad('does not match its schema hash')
  }
}

/** The sync options of a client table, as the server enables its copy. */
function tableOptions(wt: WireTable): TableOptions {
  const columns: Record<string, ColumnSpec> = {}
  wt.columns.forEach((name, j) => {
    const algorithm = wt.algorithms[j] ?? 'lww'
    if (algorithm === 'text') columns[name] = { algorithm, delimiter: wt.delimiters[j] as string }
    else if (algorithm !== 'lww') columns[name] = algorithm
  })
  return { columns, rows: wt.rows }
}

/** The server's copy of a client table: its columns with their affinities as declared types. */
function createTableSql(wt: WireTable): string {
  const cols = wt.columns.map((c, j) => `${quoteId(c)} ${wt.affinities[j]}`)
  const pk = wt.columns.slice(0, wt.pkCount).map(quoteId).join(', ')
  return `CREATE TABLE ${quoteId(wt.name)} (${cols.join(', ')}, PRIMARY KEY (${pk}))`
}
