/**
 * Compaction: tombstones (the metadata of deleted rows) are dropped once every peer this
 * replica knows has seen the deletion. The replica remembers how far it compacted (the
 * compaction floor, a vector); a peer that has seen less than the floor may hold rows
 * whose deletion this replica can no longer send, so it gets a complete snapshot instead
 * of a delta, and deletes the rows the snapshot lacks (see docs/algorithms.md).
 *
 * Only 'causal' tables are compacted: 'add-wins' and 'delete-wins' decide a concurrent
 * update or re-insertion against the deleted life, so they keep their tombstones.
 */
import { DEFAULT_HLC } from '../core/merge.js'
import type { SqlValue } from '../core/values.js'
import { covers, dominates, type VersionVector } from '../core/version-vector.js'
import type { SqliteDatabase } from '../driver/types.js'
import type { DecodedPayload } from '../wire/payload.js'
import { keyColumns, PREFIX, rowsTable, type StoredRow } from './metadata.js'
import { quoteId } from './sql.js'
import { cached } from './statements.js'
import type { SyncedTable } from './synced-table.js'

/** `_converge_state` key of the compaction floor (JSON vector). */
const FLOOR_KEY = 'compacted'

/** The vector below which this replica may lack tombstones. */
export function readCompactionFloor(db: SqliteDatabase): VersionVector {
  const row = cached(db, `SELECT value FROM ${PREFIX}state WHERE key = ?`).get(FLOOR_KEY) as
    | { value: string }
    | undefined
  return row ? (JSON.parse(row.value) as VersionVector) : {}
}

/** Raises the compaction floor to include `vector` (pointwise maximum). */
export function raiseCompactionFloor(db: SqliteDatabase, vector: VersionVector): void {
  const floor = readCompactionFloor(db)
  let moved = false
  for (const [site, hlc] of Object.entries(vector)) {
    if (hlc > (floor[site] ?? 0)) {
      floor[site] = hlc
      moved = true
    }
  }
  if (!moved) return
  const json = JSON.stringify(Object.fromEntries(Object.entries(floor).sort(([a], [b]) => (a < b ? -1 : 1))))
  cached(db, `INSERT OR REPLACE INTO ${PREFIX}state (key, value) VALUES (?, ?)`).run(FLOOR_KEY, json)
}

/** True when a receiver that has seen `since` may lack deletions this replica compacted away. */
export function needsSnapshot(db: SqliteDatabase, since: VersionVector): boolean {
  return !dominates(since, readCompactionFloor(db))
}

/**
 * What every known peer has seen, as far as this replica knows: the pointwise minimum of
 * its own vector and the vectors its peers announced. With no peers, its own vector.
 */
export function seenByAll(own: VersionVector, peers: readonly VersionVector[]): VersionVector {
  const out: VersionVector = {}
  for (const [site, hlc] of Object.entries(own)) {
    let min = hlc
    for (const p of peers) min = Math.min(min, p[site] ?? 0)
    if (min > 0) out[site] = min
  }
  return out
}

/**
 * Drops the tombstones of `tables` whose deletion `floor` covers; returns how many. The
 * caller raises the compaction floor to `floor`.
 */
export function dropTombstones(db: SqliteDatabase, tables: readonly SyncedTable[], floor: VersionVector): number {
  const json = JSON.stringify(floor)
  let dropped = 0
  for (const t of tables) {
    if (t.schema.rows !== 'causal') continue
    const keys = keyColumns(t.schema.pk.length)
    // Candidates: tombstones whose deletion the floor covers. One is dropped only if the
    // floor also covers every version of the ended life its deleter had seen: then a copy
    // of that life arriving later is recognised as seen (and deleted) by the import.
    const candidates = db
      .prepare(
        `SELECT ${keys.join(', ')}, cl, clh, cls, md, v FROM ${rowsTable(t.id)} r WHERE cl % 2 = 0 AND EXISTS (
           SELECT 1 FROM ${PREFIX}sites s JOIN json_each(?) v ON v.key = s.site WHERE s.idx = r.cls AND r.clh <= v.value)`,
      )
      .raw()
      .safeIntegers()
      .all(json) as unknown[][]
    const drop = db.prepare(`DELETE FROM ${rowsTable(t.id)} WHERE ${keys.map((k) => `${k} = ?`).join(' AND ')}`)
    let top = 0
    const gone: { pk: SqlValue[]; cl: number }[] = []
    for (const row of candidates) {
      const pk = row.slice(0, keys.length)
      const state = t.decodeStored(row.slice(keys.length) as StoredRow)
      const seenCovered = (state.seen ?? []).every(
        (s) => s === null || s.hlc === DEFAULT_HLC || covers(floor, s.site, s.hlc),
      )
      if (!seenCovered) continue
      drop.run(...pk)
      gone.push({ pk: pk as SqlValue[], cl: state.cl })
      dropped++
      if (state.cl > top) top = state.cl
    }
    t.raiseClFloor(top)
    t.recordCompacted(gone)
  }
  return dropped
}

/**
 * Rows a complete snapshot says were deleted: live rows here whose life the snapshot's
 * vector covers and that the snapshot lacks, per table. Returns their keys; the caller
 * deletes them as local writes.
 */
export function rowsMissingFromSnapshot(
  db: SqliteDatabase,
  decoded: DecodedPayload,
  tables: ReadonlyMap<string, SyncedTable>,
): Map<SyncedTable, unknown[][]> {
  const { header } = decoded
  const vector = JSON.stringify(header.vector)
  const out = new Map<SyncedTable, unknown[][]>()
  const temps = new Map<number, { t: SyncedTable; name: string; insert: { run(...p: unknown[]): unknown } }>()
  try {
    header.tables.forEach((wt, i) => {
      const t = tables.get(wt.name)
      if (!t) return
      const name = quoteId(`${PREFIX}complete_keys_${t.id}`)
      const keys = keyColumns(t.schema.pk.length)
      db.exec(`DROP TABLE IF EXISTS temp.${name}`)
      db.exec(`CREATE TEMP TABLE ${name} (${keys.join(', ')}, PRIMARY KEY (${keys.join(', ')})) WITHOUT ROWID`)
      const insert = db.prepare(`INSERT OR IGNORE INTO temp.${name} VALUES (${keys.map(() => '?').join(', ')})`)
      temps.set(i, { t, name, insert })
    })
    for (const chunk of decoded.chunks()) {
      const temp = temps.get(chunk.table)
      if (temp) for (const row of chunk.rows) temp.insert.run(...row.pk)
    }
    for (const { t, name } of temps.values()) {
      const keys = keyColumns(t.schema.pk.length)
      const missing = db
        .prepare(
          `SELECT ${keys.map((k) => `r.${k}`).join(', ')} FROM ${rowsTable(t.id)} r
           JOIN ${PREFIX}sites s ON s.idx = r.cls JOIN json_each(?) v ON v.key = s.site
           WHERE r.cl % 2 = 1 AND r.clh <= v.value
             AND NOT EXISTS (SELECT 1 FROM temp.${name} k WHERE ${keys.map((k) => `k.${k} = r.${k}`).join(' AND ')})`,
        )
        .raw()
        .safeIntegers()
        .all(vector) as unknown[][]
      if (missing.length) out.set(t, missing)
    }
  } finally {
    for (const { name } of temps.values()) db.exec(`DROP TABLE IF EXISTS temp.${name}`)
  }
  return out
}
